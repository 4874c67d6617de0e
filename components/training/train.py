"""Supervised training of a classifier on the labelled set (one loop, any loss).

The teacher is retrained from scratch every active-learning round, the usual protocol: a model
warm-started on earlier rounds carries their selection bias.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from components.training import models

LossFn = Callable[..., torch.Tensor]


def fit(model: nn.Module, tensors: tuple[torch.Tensor, ...], loss_fn: LossFn, epochs: int,
        lr: float, batch_size: int, seed: int,
        on_epoch: Callable[[int, float], None] | None = None) -> nn.Module:
    """Adam on shuffled mini-batches of ``tensors``; ``loss_fn(model, *batch)`` gives the loss.

    Args:
        tensors: equally long tensors, the first being the inputs ``(N, D)``.
        on_epoch: called with ``(epoch, mean_loss)`` after each epoch (progress, MLflow).
    """
    if len(tensors[0]) == 0:
        raise ValueError("cannot train on an empty set")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout and init draw from the global generator
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(tensors[0])
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, batch_size):
            batch = [t[order[start:start + batch_size]] for t in tensors]
            loss = loss_fn(model, *batch)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch[0])
        if on_epoch:
            on_epoch(epoch, total / n)
    return model.eval()


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def train_classifier(features, labels, meta: dict, arch: str, arch_kwargs: dict, epochs: int,
                     lr: float, batch_size: int, seed: int, on_epoch=None) -> nn.Module:
    """A fresh ``arch`` model trained with cross-entropy on ``(features, labels)``."""
    torch.manual_seed(seed)
    model = models.build(arch, meta, **arch_kwargs)
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    return fit(model, (x, y), cross_entropy, epochs, lr, batch_size, seed, on_epoch)


def accuracy(model: nn.Module, features, labels) -> float:
    predicted = models.predict_proba(model, features).argmax(-1).numpy()
    return float((predicted == labels).mean())
