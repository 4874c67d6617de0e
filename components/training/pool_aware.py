"""Pool-aware training: the round's teacher learns from the labelled set and the unlabelled pool.

Two published semi-supervised methods, sharing one loop (:func:`train_pool_aware`):

* **FixMatch** (Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and
  Confidence", NeurIPS 2020): for each unlabelled item, the prediction on a weakly augmented view
  becomes a hard pseudo-label when its top probability reaches ``threshold`` (tau); the model is
  trained to predict it on a strongly augmented view (:func:`fixmatch_loss`). Loss
  ``CE(labelled weak) + lambda_u * mean_u[1(max p_weak >= tau) * CE(p_strong, argmax p_weak)]``,
  ``mu`` unlabelled items per labelled one in each step.
* **Mean teacher** (Tarvainen & Valpola, "Mean teachers are better role models", NeurIPS 2017): a
  teacher whose weights are the exponential moving average of the student's (:func:`ema_update`,
  decay ``ema_decay``); the student is trained to match the teacher's class probabilities on other
  augmented views (squared error, :func:`consistency_loss`), with a weight ramped up as
  ``lambda_u * exp(-5 (1 - t)^2)`` over the first ``rampup`` fraction of training. The teacher is
  the model returned.

Augmentations suit small grayscale and RGB images and, in a documented form, tables
(:mod:`distillery.components.training.augment`). One epoch is one pass over the pool.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from distillery.components.core import devices, models
from distillery.components.core.train import fit
from distillery.components.training.augment import Augmenter

VARIANTS = ("fixmatch", "mean_teacher")


def fixmatch_loss(labelled_logits: torch.Tensor, labels: torch.Tensor, weak_logits: torch.Tensor,
                  strong_logits: torch.Tensor, threshold: float, lambda_u: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's loss and its mask.

    Args:
        labelled_logits: ``(B, K)`` on weakly augmented labelled items; ``labels``: ``(B,)``.
        weak_logits, strong_logits: ``(U, K)`` on the weak and strong views of the same unlabelled items.

    Returns:
        ``(loss, mask)``: the scalar loss and the ``(U,)`` float mask of confident items.
    """
    supervised = F.cross_entropy(labelled_logits, labels)
    confidence, pseudo = weak_logits.detach().float().softmax(-1).max(-1)
    mask = (confidence >= threshold).float()
    unsupervised = (F.cross_entropy(strong_logits, pseudo, reduction="none") * mask).mean()
    return supervised + lambda_u * unsupervised, mask


def consistency_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean teacher's consistency cost: squared error between the class probabilities ``(U, K)``,
    summed over classes and averaged over items; the teacher's side carries no gradient."""
    target = teacher_logits.detach().float().softmax(-1)
    return ((student_logits.float().softmax(-1) - target) ** 2).sum(-1).mean()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``teacher <- decay * teacher + (1 - decay) * student`` for every parameter; buffers (batch-norm
    statistics) are copied."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1 - decay)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


def rampup(progress: float, length: float) -> float:
    """Mean teacher's sigmoid-shaped ramp ``exp(-5 (1 - t)^2)``, ``t = progress / length`` capped at 1."""
    if length <= 0:
        return 1.0
    t = min(1.0, max(0.0, progress / length))
    return math.exp(-5.0 * (1.0 - t) ** 2)


class _LabelledBatches:
    """Labelled batches drawn alongside the pool's: a fresh random order whenever one is used up."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
        self.x, self.y, self.batch_size = x, y, min(batch_size, len(y))
        self.generator = torch.Generator().manual_seed(seed)
        self.order, self.at = torch.randperm(len(y), generator=self.generator), 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.at + self.batch_size > len(self.order):
            self.order, self.at = torch.randperm(len(self.y), generator=self.generator), 0
        rows = self.order[self.at:self.at + self.batch_size]
        self.at += self.batch_size
        return self.x[rows], self.y[rows]


def train_pool_aware(features, labels, meta: dict, arch: str, arch_kwargs: dict, epochs: int, lr: float,
                     batch_size: int, seed: int, on_epoch: Callable[[int, float], None] | None = None, *,
                     unlabelled, variant: str, threshold: float, lambda_u: float, mu: int, ema_decay: float,
                     rampup_fraction: float, device: Any = None) -> nn.Module:
    """A fresh ``arch`` model trained on the labelled rows ``features`` ``(L, D)`` / ``labels`` ``(L,)``
    and the unlabelled rows ``unlabelled`` ``(U, D)`` by ``variant`` (one of :data:`VARIANTS`).

    ``epochs`` passes over the pool, each step ``batch_size`` labelled and ``mu * batch_size``
    unlabelled items; Adam with ``lr``. Without unlabelled rows it is supervised training with the
    weak augmentation.
    """
    if variant not in VARIANTS:
        raise ValueError(f"pool-aware training: variant must be one of {VARIANTS}, got {variant!r}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"pool-aware training: threshold must be in (0, 1], got {threshold}")
    if mu < 1 or lambda_u < 0 or not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"pool-aware training: need mu >= 1, lambda_u >= 0 and 0 <= ema_decay < 1; got "
                         f"mu={mu}, lambda_u={lambda_u}, ema_decay={ema_decay}")
    x_l = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    y_l = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    x_u = torch.as_tensor(np.asarray(unlabelled), dtype=torch.float32).reshape(-1, *x_l.shape[1:])
    if len(x_u) == 0:  # nothing to learn from beyond the labels: one pass over them per epoch
        x_u = x_l
    torch.manual_seed(seed)
    everything = torch.cat([x_l, x_u])
    model = models.standardise(models.build(arch, meta, **arch_kwargs), everything)
    model = model.to(device or devices.current().device)
    augment = Augmenter(meta, everything, seed + 1)
    labelled = _LabelledBatches(x_l, y_l, batch_size, seed + 2)
    steps_per_epoch = math.ceil(len(x_u) / (mu * batch_size))
    total_steps, step = max(1, epochs * steps_per_epoch), [0]
    teacher = copy.deepcopy(model).requires_grad_(False) if variant == "mean_teacher" else None
    target = devices.model_device(model)

    def loss_fn(net: nn.Module, u: torch.Tensor) -> torch.Tensor:
        if teacher is not None and step[0] > 0:  # the EMA follows the student after every optimiser step
            ema_update(teacher, model, ema_decay)
        step[0] += 1
        xb, yb = labelled.next()
        xb, yb, u = xb.to(target), yb.to(target), u.to(target)
        weak_l, weak_u, strong_u = augment.weak(xb), augment.weak(u), augment.strong(u)
        # one forward pass over all views: batch-norm sees one batch, and DDP one forward per backward
        logits = net(torch.cat([weak_l, weak_u, strong_u]))
        logits_l, logits_weak, logits_strong = logits.split([len(xb), len(u), len(u)])
        if teacher is None:
            return fixmatch_loss(logits_l, yb, logits_weak, logits_strong, threshold, lambda_u)[0]
        teacher.train()  # the teacher sees noise too (dropout, augmentation), as in the paper
        with torch.no_grad():
            teacher_logits = teacher(weak_u)
        weight = lambda_u * rampup(step[0], rampup_fraction * total_steps)
        return F.cross_entropy(logits_l, yb) + weight * consistency_loss(logits_strong, teacher_logits)

    fit(model, (x_u,), loss_fn, epochs, lr, mu * batch_size, seed, on_epoch)
    if teacher is None:
        return model
    ema_update(teacher, model, ema_decay)
    return teacher.requires_grad_(True).eval()


def fixmatch(features, labels, meta, arch, arch_kwargs, epochs, lr, batch_size, seed, on_epoch=None, *,
             unlabelled, threshold: float, lambda_u: float, mu: int, device: Any = None) -> nn.Module:
    """FixMatch (Sohn et al., NeurIPS 2020) over the labelled set and the pool; see the module."""
    return train_pool_aware(features, labels, meta, arch, arch_kwargs, epochs, lr, batch_size, seed, on_epoch,
                            unlabelled=unlabelled, variant="fixmatch", threshold=threshold, lambda_u=lambda_u,
                            mu=mu, ema_decay=0.0, rampup_fraction=0.0, device=device)


def mean_teacher(features, labels, meta, arch, arch_kwargs, epochs, lr, batch_size, seed, on_epoch=None, *,
                 unlabelled, lambda_u: float, mu: int, ema_decay: float, rampup_fraction: float,
                 device: Any = None) -> nn.Module:
    """Mean teacher (Tarvainen & Valpola, NeurIPS 2017) over the labelled set and the pool; see the module."""
    return train_pool_aware(features, labels, meta, arch, arch_kwargs, epochs, lr, batch_size, seed, on_epoch,
                            unlabelled=unlabelled, variant="mean_teacher", threshold=1.0, lambda_u=lambda_u,
                            mu=mu, ema_decay=ema_decay, rampup_fraction=rampup_fraction, device=device)
