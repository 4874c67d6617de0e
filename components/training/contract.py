"""Contract of a training method: train the round's teacher on the labelled set.

:func:`distillery.components.training.tasks.run_training` calls the registered target as::

    model = target(features, labels, meta, arch, arch_kwargs, epochs, lr, batch_size, seed, on_epoch,
                   **method_kwargs, **hooks)

* ``features``: ``(L, D)`` the labelled rows' features as stored (float32; the model preprocesses);
  ``labels``: ``(L,)`` int64; ``meta``: the dataset's ``dataset.json`` (``feature_shape``, ``classes``, ...).
* ``arch``/``arch_kwargs``: the model-zoo architecture and its keywords: the ``arch``/``arch_kwargs``
  parameters, or, for a method without ``arch_kwargs`` (``small_cnn``), the method's name and every
  parameter but ``epochs``/``lr``/``batch_size``.
* ``epochs``, ``lr``, ``batch_size``: the parameters of those names; ``seed``: the run's seed plus the
  round; ``on_epoch(epoch, loss)``: logs ``train_loss``.
* ``method_kwargs``: every other resolved parameter, by keyword.
* ``hooks`` (:data:`HOOKS`), by the method's ``execution``: ``"torchrun"`` methods also get
  ``checkpoint_dir`` (``None`` or a folder to resume from), ``on_workers(epoch, workers)``,
  ``on_record(record)`` and ``on_line(line)``; ``"cluster"`` methods get ``run_id`` and
  ``tracking_uri`` (the task's MLflow run, to stage data and model through), ``name`` (a fresh object
  name), ``job_labels``, ``on_line(line)`` and ``on_job(manifest, state)``.

Returns a ``torch.nn.Module`` built as ``models.build(arch, meta, **arch_kwargs)`` (the task saves it
with those, so state-dict keys must match), mapping ``(B, D)`` features to ``(B, K)`` logits.
Registry ``inputs`` the task supplies (:data:`INPUTS`): ``unlabelled``, the unlabelled pool's features
``(U, D)`` (every training row not yet labelled; never the test split), for pool-aware methods.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

INPUTS: tuple[str, ...] = ("unlabelled",)  # keyword inputs beyond the call above that the task can supply
HOOKS: dict[str, tuple[str, ...]] = {  # keywords the task adds by the method's execution
    "in_process": (),
    "torchrun": ("checkpoint_dir", "on_workers", "on_record", "on_line"),
    "cluster": ("run_id", "tracking_uri", "name", "job_labels", "on_line", "on_job"),
}


class TrainingMethod(Protocol):
    def __call__(self, features: np.ndarray, labels: np.ndarray, meta: dict[str, Any], arch: str,
                 arch_kwargs: dict[str, Any], epochs: int, lr: float, batch_size: int, seed: int,
                 on_epoch: Callable[[int, float], None] | None, /, **kwargs: Any) -> nn.Module: ...
