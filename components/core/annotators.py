"""Annotators: who gives the selected items their labels.

The simulated annotator reveals the labels a dataset already has, the standard protocol for
measuring active learning (Settles, Active Learning Literature Survey, 2009). The Label
Studio annotator answers with human labels imported from Label Studio (``distillery labels import``)
into a DVC-versioned label set; items it has no label for raise :class:`MissingLabels`.

Every annotator is built for a task by ``from_task(data, source, **params)`` (``data``: the curated
:class:`~distillery.components.core.datasets.LabelledData`; ``source``: the config's ``data`` section, repo/path/rev)
and answers ``annotate(rows) -> labels``.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def check_rows(rows: np.ndarray, n: int) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise IndexError(f"rows outside the dataset of {n} items")
    return rows


class SimulatedAnnotator:
    """Answers with the dataset's own labels.

    Args:
        labels: ``(N,)`` ground-truth labels of the curated dataset, indexed by row.
    """

    def __init__(self, labels: np.ndarray):
        self.labels = labels

    @classmethod
    def from_task(cls, data: Any, source: dict) -> SimulatedAnnotator:
        return cls(data.labels)

    def annotate(self, rows: np.ndarray) -> np.ndarray:
        """Labels ``(len(rows),)`` for dataset rows ``rows``."""
        return self.labels[check_rows(rows, len(self.labels))]


