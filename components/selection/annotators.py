"""Annotators: who gives the selected items their labels.

The simulated annotator reveals the labels a dataset already has, the standard protocol for
measuring active learning (every benchmark in ``../shared/methods.md`` §1 uses it).
"""
from __future__ import annotations

import numpy as np


class SimulatedAnnotator:
    """Answers with the dataset's own labels.

    Args:
        labels: ``(N,)`` ground-truth labels of the curated dataset, indexed by row.
    """

    def __init__(self, labels: np.ndarray):
        self.labels = labels

    def annotate(self, rows: np.ndarray) -> np.ndarray:
        """Labels ``(len(rows),)`` for dataset rows ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self.labels)):
            raise IndexError(f"rows outside the dataset of {len(self.labels)} items")
        return self.labels[rows]
