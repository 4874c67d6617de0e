"""Contract of a dataset-distillation method: distil a dataset into a few synthetic items per class.

:func:`distillery.components.dataset_distillation.tasks.run_dataset_distillation` calls the
registered target as::

    synthetic = target(data, seed=seed, on_iteration=on_iteration, source=source, **params)

* ``data``: the source :class:`~distillery.components.core.datasets.LabelledData`: features ``(N, D)``
  (images flattened, ``meta["feature_shape"]`` ``[C, H, W]``), labels ``(N,)`` int64, ids, meta.
* ``seed``: the run's seed; ``on_iteration(iteration, loss)``: logs the method's loss;
  ``source``: how the result's meta names its parent (dataset folder and data version).
* ``params``: the method's resolved defaults, by keyword; ``ipc`` (items per class) is one of them
  (the task draws the result as a grid of ``ipc`` columns).

Returns a new ``LabelledData``: features ``(K * ipc, D)`` float32, labels ``(K * ipc,)`` int64, ids,
and meta with a provenance record. The task supplies no extra inputs (:data:`INPUTS`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from distillery.components.core.datasets import LabelledData

INPUTS: tuple[str, ...] = ()  # keyword inputs beyond the call above that the task can supply


class DatasetDistillationMethod(Protocol):
    def __call__(self, data: LabelledData, /, *, seed: int, on_iteration: Callable[[int, float], None] | None,
                 source: str, **params: Any) -> LabelledData: ...
