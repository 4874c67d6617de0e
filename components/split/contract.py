"""Contract of a split method: the held-out test rows, the unlabelled pool and the seed labels.

:func:`distillery.components.split.tasks.run_split` calls the registered target positionally with
the parameters it knows (a split method's parameters are exactly ``test_fraction``,
``seed_labels`` and ``label_all``)::

    test_rows, pool_rows, seed_rows = target(labels, test_fraction, seed_labels, seed, label_all)

* ``labels``: ``(N,)`` int64 class labels of the curated dataset (to stratify by).
* ``test_fraction``: float in (0, 1); ``seed_labels``: int, size of the first labelled set;
  ``seed``: the run's seed; ``label_all``: bool, every training row labelled (empty pool).

Returns three disjoint ``(n,)`` int row-index arrays into the dataset, together covering every row.
The task labels ``seed_rows`` with the dataset's own labels. It supplies no extra inputs (:data:`INPUTS`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

INPUTS: tuple[str, ...] = ()  # keyword inputs beyond the call above that the task can supply


class SplitMethod(Protocol):
    def __call__(self, labels: np.ndarray, test_fraction: float, seed_labels: int, seed: int, label_all: bool,
                 /) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
