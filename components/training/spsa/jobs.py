"""What an SPSA worker is handed: its job (model, data shard, loss, settings) and the picklable
builders the training method uses.

Zelikman et al., "Just One Byte (per gradient)", arXiv:2306.10015, 2023: every worker starts from the
same weights and fine-tunes on its own shard; :class:`SPSAJob` is what
:func:`distillery.components.training.spsa.workers.run_worker` needs to do that in any process.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from distillery.components.training.spsa.algorithm import SPSAConfig


@dataclass
class Shard:
    """A worker's own data: inputs ``(n, D)``, targets ``(n,)``."""

    x: torch.Tensor
    y: torch.Tensor

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(len(self.x), (min(size, len(self.x)),), generator=generator)
        return self.x[rows], self.y[rows]


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


@dataclass
class SPSAJob:
    """Everything a worker process needs; picklable, so
    :func:`~distillery.components.training.spsa.launcher.launch` can hand it to spawned processes.

    Attributes:
        model_fn: ``model_fn(worker_id, initial)`` builds the worker's model; ``initial`` is true for
            the workers of the first epoch, which must all load the same starting weights (a newcomer's
            weights are overwritten by a peer's, so it may build an untrained model).
        shard_fn: ``shard_fn(worker_id)`` -> the worker's :class:`Shard`.
        loss_fn: ``loss_fn(model, x, y)`` -> scalar loss.
        out_dir: where each worker saves its final state dict (``worker-<id>.pt``); None: not saved.
        count_collectives: count, inside torch.distributed, the bytes each worker hands to its
            collectives (:class:`~distillery.components.training.spsa.workers.CollectiveCounter`;
            ``WorkerReport.collective_bytes``), e.g. for a benchmark.
    """

    model_fn: Callable[[int, bool], nn.Module]
    shard_fn: Callable[[int], Shard]
    config: SPSAConfig = field(default_factory=SPSAConfig)
    loss_fn: Callable[..., torch.Tensor] = cross_entropy
    out_dir: str | None = None
    count_collectives: bool = False


@dataclass
class MnistModel:
    """Picklable ``model_fn`` for :class:`SPSAJob`: an architecture of :mod:`distillery.components.core.models`
    for a dataset's ``meta`` (the MNIST MLP by default); first-epoch workers load ``base_state`` (a
    state-dict file), newcomers build an untrained model with a worker-specific seed. ``worker_kwargs``
    overrides the architecture per worker id (a heterogeneous, i.e. misconfigured, fleet)."""

    meta: dict
    arch: str = "mlp"
    kwargs: dict = field(default_factory=dict)
    base_state: str | None = None
    worker_kwargs: dict = field(default_factory=dict)

    def __call__(self, worker_id: int, initial: bool) -> nn.Module:
        from distillery.components.core import models

        torch.manual_seed(1000 + worker_id)
        model = models.build(self.arch, self.meta, **{**self.kwargs, **self.worker_kwargs.get(worker_id, {})})
        if initial and self.base_state:
            model.load_state_dict(torch.load(self.base_state, weights_only=True))
        return model


@dataclass
class InMemoryShards:
    """Picklable ``shard_fn`` over arrays held in memory (pickled into each worker): worker ``w`` gets
    rows ``w % n_shards :: n_shards`` of ``x`` ``(N, D)`` and ``y`` ``(N,)``."""

    x: np.ndarray
    y: np.ndarray
    n_shards: int

    def __call__(self, worker_id: int) -> Shard:
        mine = slice(worker_id % self.n_shards, None, self.n_shards)
        return Shard(torch.as_tensor(self.x[mine], dtype=torch.float32),
                     torch.as_tensor(self.y[mine], dtype=torch.long))
