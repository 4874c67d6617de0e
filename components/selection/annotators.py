"""Annotators: who gives the selected items their labels.

The simulated annotator reveals the labels a dataset already has, the standard protocol for
measuring active learning (every benchmark in ``../shared/methods.md`` §1 uses it). The Label
Studio annotator answers with human labels imported from Label Studio (``distillery labels import``)
into a DVC-versioned label set; items it has no label for raise :class:`MissingLabels`.

Every annotator is built for a task by ``from_task(data, source, **params)`` (``data``: the curated
:class:`~components.datasets.LabelledData`; ``source``: the config's ``data`` section, repo/path/rev)
and answers ``annotate(rows) -> labels``.
"""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import numpy as np


def _check_rows(rows: np.ndarray, n: int) -> np.ndarray:
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
    def from_task(cls, data: Any, source: dict) -> "SimulatedAnnotator":
        return cls(data.labels)

    def annotate(self, rows: np.ndarray) -> np.ndarray:
        """Labels ``(len(rows),)`` for dataset rows ``rows``."""
        return self.labels[_check_rows(rows, len(self.labels))]


class MissingLabels(LookupError):
    """Some rows have no human label yet. ``rows``/``ids``: those rows and their dataset ids."""

    def __init__(self, rows: np.ndarray, ids: np.ndarray, label_set: str | None, exists: bool):
        self.rows, self.ids, self.label_set, self.exists = rows, ids, label_set, exists
        where = (f"label set {label_set}" + ("" if exists else " (not created yet)")) if label_set \
            else "no label set (labelling.params.label_set is not set)"
        super().__init__(f"{len(rows)} item(s) have no human label in {where}")


class LabelStudioAnnotator:
    """Answers with human labels from a Label Studio label set (``data/labels/<dataset>/<name>.json``).

    Args:
        ids: ``(N,)`` dataset item ids of the curated dataset, indexed by row.
        classes: the dataset's class names (index = label).
        labels: ``{dataset id: class name}`` from the label set.
        label_set: the label set's path (for messages); ``exists``: whether it exists yet.
    """

    def __init__(self, ids: np.ndarray, classes: list[str], labels: dict[int, str],
                 label_set: str | None = None, exists: bool = True):
        index = {str(c): i for i, c in enumerate(classes)}
        unknown = sorted({name for name in labels.values() if name not in index})
        if unknown:
            raise ValueError(f"label set {label_set} uses class(es) {unknown} the dataset does not have "
                             f"({list(index)})")
        self.ids = np.asarray(ids, dtype=np.int64)
        self.labels = {int(i): index[name] for i, name in labels.items()}
        self.label_set, self.exists = label_set, exists

    @classmethod
    def from_task(cls, data: Any, source: dict, label_set: str | None = None) -> "LabelStudioAnnotator":
        """Read ``label_set`` at the run's data revision through DVC, like the dataset."""
        from components.selection.labelstudio import read_label_set

        body = read_label_set(source["repo"], label_set, source.get("rev")) if label_set else None
        if body is not None and PurePosixPath(body["dataset"]) != PurePosixPath(source["path"]):
            raise ValueError(f"label set {label_set} labels {body['dataset']}, but this run reads {source['path']}")
        return cls(data.ids, data.meta["classes"], body["labels"] if body else {}, label_set, body is not None)

    def annotate(self, rows: np.ndarray) -> np.ndarray:
        """Labels ``(len(rows),)`` for dataset rows ``rows``; :class:`MissingLabels` if any has none."""
        rows = _check_rows(rows, len(self.ids))
        ids = self.ids[rows]
        missing = np.array([i not in self.labels for i in ids.tolist()], dtype=bool)
        if missing.any():
            raise MissingLabels(rows[missing], ids[missing], self.label_set, self.exists)
        return np.array([self.labels[i] for i in ids.tolist()], dtype=np.int64)
