"""Contract of a distillation method: train a student from the final teacher.

:func:`distillery.components.distillation.tasks.run_distillation` calls the registered target as::

    student = target(teacher, student, labelled_features, labels, unlabelled_features,
                     seed=seed, on_epoch=on_epoch, **params)

* ``teacher``: the trained teacher (``torch.nn.Module``, ``(B, D) -> (B, K)`` logits); ``student``: a
  fresh student of the ``student`` architecture (with ``student_kwargs`` and the ``hidden``/``input_proxy``
  shorthands), both on the stage's device; the task has checked they agree on D and K.
* ``labelled_features``: ``(L, D)`` float32 with ``labels`` ``(L,)`` int64; ``unlabelled_features``:
  ``(U, D)`` float32, the pool (may be empty).
* ``seed``: the run's seed; ``on_epoch(epoch, loss)``: logs ``distillation_loss`` (one count across
  a method's stages).
* ``params``: the resolved parameters except the student architecture's (``student``,
  ``student_kwargs``, ``hidden``, ``input_proxy``), by keyword.
* extra inputs (:data:`INPUTS`), only when the method's registry entry lists them in ``inputs``:
  ``sensitive``: ``(L + U,)`` the group of each item of the dataset's sensitive attribute (labelled
  items first), picked by the ``sensitive_attribute`` parameter, which the task consumes.

Returns the trained student (the same architecture; the task saves and exports it to ONNX).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

INPUTS: tuple[str, ...] = ("sensitive",)  # keyword inputs beyond the call above that the task can supply


class DistillationMethod(Protocol):
    def __call__(self, teacher: nn.Module, student: nn.Module, labelled_features: np.ndarray, labels: np.ndarray,
                 unlabelled_features: np.ndarray, /, *, seed: int, on_epoch: Callable[[int, float], None] | None,
                 **params: Any) -> nn.Module: ...
