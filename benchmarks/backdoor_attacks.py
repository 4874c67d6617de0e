"""Backdoor attacks on dataset distillation, for tests and benchmarks of the audit only.

Liu et al., "Backdoor Attacks Against Dataset Distillation", NDSS 2023 (ref. code liuyugeng/baadd);
The pipeline never runs these: they exist to prove that
:func:`distillery.components.audit.backdoor_audit.audit_backdoor` catches a poisoned distilled set.

- NAIVEATTACK: before distillation, a ``fraction`` of the real training images (taken from the
  non-target classes) get the trigger pasted and their label set to the target class; the set is
  then distilled as usual.
- DOORPING: the same poisoning, but the trigger is optimised *during* distillation, alternating with
  the synthetic-data updates: each iteration (every ``update_every``) the patch is updated so that the
  most weighted neuron of the current network's penultimate layer (largest total absolute weight into
  the last layer) fires ``alpha`` (10) times as strongly as it did (MSE, Adam on the masked pixels),
  and re-pasted into the poisoned real images. Under distribution matching the current network is
  that iteration's random embedder, its embedding the penultimate layer.

  Adaptation to DM: the ref. code (gradient matching, networks trained on the synthetic set) runs a
  full optimisation per update (Adam lr 0.08, up to 1,000 steps). DM's network is a fresh random one
  every iteration, so a full optimisation each time makes the patch a random walk that the synthetic
  images cannot follow (measured here: ASR 0.18 with 20 steps at lr 0.08 against 0.81 below). A few
  small steps per iteration (default 2 at lr 0.01) turn it into one running optimisation over the
  stream of random networks, and the pasted trigger changes slowly enough for DM to imprint it.
"""
from __future__ import annotations

import numpy as np
import torch

from distillery.components.audit.backdoor_audit import Trigger
from distillery.components.core.datasets import LabelledData
from distillery.components.dataset_distillation import (
    distribution_matching as dataset_dm,
)


def poisoned_rows(labels: np.ndarray, target_class: int, fraction: float, seed: int) -> np.ndarray:
    """``round(fraction * N)`` random rows outside the target class (sorted)."""
    if not 0 < fraction < 1:
        raise ValueError(f"poison fraction must be in (0, 1), got {fraction}")
    candidates = np.flatnonzero(np.asarray(labels) != target_class)
    n = max(1, int(round(fraction * len(labels))))
    return np.sort(np.random.default_rng(seed).choice(candidates, size=min(n, len(candidates)), replace=False))


def naive_attack(data: LabelledData, trigger: Trigger, target_class: int, fraction: float = 0.01,
                 seed: int = 0) -> LabelledData:
    """NAIVEATTACK's poisoned training set: the trigger on ``fraction`` of the rows, relabelled."""
    rows = poisoned_rows(data.labels, target_class, fraction, seed)
    features, labels = data.features.astype(np.float32), data.labels.copy()
    features[rows] = trigger.stamp(features[rows], data.meta)
    labels[rows] = target_class
    return LabelledData(features, labels, data.ids, data.meta)


def optimise_trigger(embedder: dataset_dm.ConvEmbedder, pattern: torch.Tensor, mask: torch.Tensor, *,
                     alpha: float = 10.0, steps: int = 2, lr: float = 0.01) -> None:
    """DOORPING's trigger update, in place on ``pattern`` ``(C, H, W)`` in ``[0, 1]``.

    The neuron is the embedding unit with the largest total absolute weight into ``embedder.head``;
    the trigger alone (on a black image, as the ref. code feeds it) is pushed by MSE towards
    ``alpha`` times that neuron's first activation. Only the masked pixels change.
    """
    neuron = int(embedder.head.weight.abs().sum(0).argmax())
    pattern.requires_grad_(True)
    optimiser = torch.optim.Adam([pattern], lr=lr, betas=(0.9, 0.99))
    goal = None
    for _ in range(steps):
        activation = embedder((pattern * mask)[None])[0, neuron]
        if goal is None:  # a silent neuron (0 after ReLU) still gets a positive goal
            goal = alpha * activation.detach().abs().clamp_min(1e-2)
        loss = (activation - goal) ** 2
        optimiser.zero_grad()
        loss.backward()
        pattern.grad.mul_(mask)
        optimiser.step()
        with torch.no_grad():
            pattern.clamp_(0.0, 1.0)
    pattern.requires_grad_(False)


def doorping(data: LabelledData, target_class: int, ipc: int, *, trigger_size: int = 4,
             corner: str = "bottom-right", fraction: float = 0.01, alpha: float = 10.0, trigger_steps: int = 2,
             trigger_lr: float = 0.01, update_every: int = 1, seed: int = 0,
             **dm_params) -> tuple[LabelledData, Trigger]:
    """Distil ``data`` by distribution matching while running DOORPING; returns the poisoned
    distilled set and the optimised trigger (what an attacker would later stamp on inputs).

    The trigger starts as random values in a ``trigger_size`` square in ``corner`` (the ref. code
    starts from random values too); ``dm_params`` go to :func:`dataset_dm.distil_dataset`.
    """
    meta = data.meta
    start = Trigger.square(meta["feature_shape"], trigger_size, corner)
    mask = torch.as_tensor(start.mask)
    pattern = torch.rand(start.mask.shape, generator=torch.Generator().manual_seed(seed)) * mask
    rows = torch.as_tensor(poisoned_rows(data.labels, target_class, fraction, seed))
    clean = dataset_dm.to_unit(data.features, meta)
    real = clean.clone()
    labels = data.labels.copy()
    labels[rows.numpy()] = target_class

    def paste() -> None:
        real[rows] = clean[rows] * (1 - mask) + mask * pattern

    def on_embedder(embedder: dataset_dm.ConvEmbedder, iteration: int) -> None:
        if iteration % update_every == 0:
            optimise_trigger(embedder, pattern, mask, alpha=alpha, steps=trigger_steps, lr=trigger_lr)
            paste()

    paste()
    poisoned = LabelledData(dataset_dm.from_unit(real, meta), labels, data.ids, meta)
    distilled = dataset_dm.distil_dataset(poisoned, ipc, seed=seed, real_images=real, on_embedder=on_embedder,
                                          **dm_params)
    return distilled, Trigger(start.mask, pattern.numpy().astype(np.float32))
