"""What every student-distillation method shares: the compatibility check and the training data.

Every method has the signature (``target`` in the registry)::

    distil(teacher, student, labelled_features, labels, unlabelled_features, *, seed, on_epoch=None,
           epochs, lr, batch_size, **method_params) -> nn.Module

with raw features ``(N, D)`` as stored in the dataset, labels ``(N,)`` and an unlabelled pool
``(U, D)`` (may be empty), and calls :func:`check_compatible` before it spends any training time.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from distillery.components.core import models
from distillery.components.core.devices import model_device

UNLABELLED = -1


def output_shape(model: nn.Module, num_features: int) -> tuple[int, ...]:
    """Shape of ``model``'s output for one all-zero input ``(1, num_features)`` (mode and grads untouched)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return tuple(model(torch.zeros(1, num_features, device=model_device(model))).shape[1:])
    finally:
        model.train(was_training)


def check_compatible(teacher: nn.Module | Iterable[nn.Module], student: nn.Module, num_features: int,
                     num_classes: int | None = None, labels=None) -> int:
    """Raise a ``ValueError`` naming the model at fault unless every teacher and the student take
    ``(N, num_features)`` inputs and give ``(N, num_classes)`` logits; returns ``num_classes``.

    ``num_classes`` defaults to the (last) teacher's output width, so the student is checked against
    the teacher; ``labels``, when given, must lie in ``[0, num_classes)``. ``teacher`` may be one
    model or a chain of teachers (PROD). Runs one forward pass of a single zero row per model:
    cheap, and done before any training.
    """
    teachers = [teacher] if isinstance(teacher, nn.Module) else list(teacher)
    if not teachers:
        raise ValueError("distillation needs at least one teacher")
    named = [(f"teacher {i}" if len(teachers) > 1 else "teacher", t) for i, t in enumerate(teachers)]
    shapes = {}
    for name, model in [*named, ("student", student)]:
        try:
            shapes[name] = output_shape(model, num_features)
        except RuntimeError as exc:  # shape errors of Linear/Conv/reshape surface as RuntimeError
            raise ValueError(f"the {name} does not accept inputs of {num_features} features (the dataset's "
                             f"feature count): {exc}") from exc
    for name, shape in shapes.items():
        if len(shape) != 1:
            raise ValueError(f"the {name} must output (N, classes) logits, got per-item shape {shape}")
    # every model against one reference: the dataset's classes, or else the (final) teacher's
    reference = "dataset" if num_classes is not None else named[-1][0]
    num_classes = shapes[reference][0] if num_classes is None else num_classes
    for name, shape in shapes.items():
        if name != reference and shape[0] != num_classes:
            raise ValueError(f"{reference} has {num_classes} classes but the {name} {shape[0]}: teacher and "
                             f"student must predict the same classes")
    if labels is not None and len(labels):
        labels = np.asarray(labels)
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}) (the models' classes), got "
                             f"[{labels.min()}, {labels.max()}]")
    return int(num_classes)


def training_tensors(labelled_features, labels, unlabelled_features) -> tuple[torch.Tensor, torch.Tensor]:
    """Labelled and unlabelled items stacked: inputs ``(L + U, D)`` float32, labels ``(L + U,)``
    with :data:`UNLABELLED` (-1) on the pool."""
    labelled_features, unlabelled_features = np.asarray(labelled_features), np.asarray(unlabelled_features)
    d = labelled_features.shape[1]
    if len(labels) != len(labelled_features):
        raise ValueError(f"{len(labelled_features)} labelled items but {len(labels)} labels")
    if unlabelled_features.size and (unlabelled_features.ndim != 2 or unlabelled_features.shape[1] != d):
        raise ValueError(f"unlabelled features have shape {unlabelled_features.shape}, the labelled ones {d} "
                         f"features per item")
    x = torch.cat([torch.as_tensor(labelled_features, dtype=torch.float32),
                   torch.as_tensor(np.asarray(unlabelled_features), dtype=torch.float32).reshape(-1, d)])
    y = torch.cat([torch.as_tensor(np.asarray(labels), dtype=torch.long),
                   torch.full((len(x) - len(labelled_features),), UNLABELLED, dtype=torch.long)])
    return x, y


def logits_of(model: nn.Module, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """``model``'s logits ``(N, K)`` for ``x`` ``(N, D)`` in eval mode: float32, on the CPU beside
    ``x`` (:func:`distillery.components.core.models.logits`, chunked on the model's device)."""
    return models.logits(model, x, batch_size)


class StageEpochs:
    """Numbers epochs consecutively across the stages of a multi-stage method, so ``on_epoch``
    (MLflow's ``distillation_loss`` step) sees one increasing epoch count."""

    def __init__(self, on_epoch=None):
        self.on_epoch, self.done = on_epoch, 0

    def next(self, epochs: int):
        """The ``on_epoch`` callback for the next stage of ``epochs`` epochs (``None`` if none was given)."""
        offset, self.done = self.done, self.done + epochs
        if self.on_epoch is None:
            return None
        return lambda epoch, loss: self.on_epoch(offset + epoch, loss)
