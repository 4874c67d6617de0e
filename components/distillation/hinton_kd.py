"""Response-based knowledge distillation.

Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", NIPS Deep Learning
Workshop 2015 (arXiv:1503.02531)

Loss per item: ``alpha * CE(y, s) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))``. In an
active-learning pipeline most of the data is unlabelled, so the KD term also covers the
unlabelled pool, where the CE term is absent (label ``-1``).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from distillery.components.core import models
from distillery.components.core.train import fit
from distillery.components.distillation.common import (
    UNLABELLED,
    check_compatible,
    logits_of,
    training_tensors,
)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    """Mean Hinton KD loss over a batch.

    Args:
        student_logits, teacher_logits: ``(B, K)``.
        labels: ``(B,)`` class indices, ``-1`` for unlabelled items (KD term only).
        temperature: ``T`` > 0.
        alpha: weight of the CE term on labelled items, in [0, 1].
    """
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                  reduction="none", log_target=True).sum(-1) * t * t
    labelled = labels != UNLABELLED
    ce = torch.zeros_like(kl)
    if labelled.any():
        ce[labelled] = F.cross_entropy(student_logits[labelled], labels[labelled], reduction="none")
    weight_kd = torch.where(labelled, torch.full_like(kl, 1 - alpha), torch.ones_like(kl))
    return (alpha * ce + weight_kd * kl).mean()


def check_kd_params(temperature: float, alpha: float) -> None:
    if not 0 <= alpha <= 1 or temperature <= 0:
        raise ValueError(f"need 0 <= alpha <= 1 and temperature > 0, got alpha={alpha}, T={temperature}")


def distil(teacher: nn.Module, student: nn.Module, labelled_features, labels, unlabelled_features, *,
           seed: int, on_epoch=None, epochs: int, lr: float, batch_size: int, temperature: float = 4.0,
           alpha: float = 0.1) -> nn.Module:
    """Train ``student`` on the labelled set and the teacher's soft labels over the pool.

    Args:
        labelled_features: ``(L, D)`` raw features with ``labels`` ``(L,)``.
        unlabelled_features: ``(U, D)`` raw features (may be empty).
    """
    check_kd_params(temperature, alpha)
    check_compatible(teacher, student, labelled_features.shape[1], labels=labels)
    x, y = training_tensors(labelled_features, labels, unlabelled_features)
    teacher_logits = logits_of(teacher, x)  # fixed: computed once, not every epoch

    def loss(model, xb, tb, yb):
        return kd_loss(model(xb), tb, yb, temperature, alpha)

    return fit(student, (x, teacher_logits, y), loss, epochs, lr, batch_size, seed, on_epoch)


def make_student(arch: str, meta: dict, arch_kwargs: dict, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return models.build(arch, meta, **arch_kwargs)
