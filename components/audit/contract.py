"""Contract of a dataset-audit method: audit a (distilled) dataset against held-out real items.

:func:`distillery.components.audit.tasks.run_audit` calls the registered target as::

    result = target(data, test_features, test_labels, trigger, target_class, arch=..., arch_kwargs=...,
                    epochs=..., lr=..., batch_size=..., seed=seed, floor=..., factor=...)

* ``data``: the :class:`~distillery.components.core.datasets.LabelledData` to audit (features
  ``(N, D)`` float32 of images, ``meta["feature_shape"]`` ``[C, H, W]``, labels ``(N,)`` int64).
* ``test_features``: ``(M, D)`` and ``test_labels``: ``(M,)`` int64, held-out real items.
* ``trigger``: the patch to stamp (:class:`~distillery.components.audit.backdoor_audit.Trigger`,
  from the ``trigger_size``, ``trigger_corner`` and ``trigger_pattern`` parameters);
  ``target_class``: int class index.
* the keywords: the parameters of those names; ``seed``: the run's seed.

Returns a result with ``metrics()`` (numbers to log), ``verdict`` (``"pass"`` or
``"backdoor-suspected"``), ``attack_success_rate``, ``threshold``, ``baseline_rate`` and
``clean_accuracy``. The task supplies no extra inputs (:data:`INPUTS`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np

    from distillery.components.core.datasets import LabelledData

INPUTS: tuple[str, ...] = ()  # keyword inputs beyond the call above that the task can supply


class AuditMethod(Protocol):
    def __call__(self, data: LabelledData, test_features: np.ndarray, test_labels: np.ndarray, trigger: Any,
                 target_class: int, /, *, arch: str, arch_kwargs: dict[str, Any], epochs: int, lr: float,
                 batch_size: int, seed: int, floor: float, factor: float) -> Any: ...
