"""Supervised training of a classifier on the labelled set (one loop, any loss).

The teacher is retrained from scratch every active-learning round, the usual protocol: a model
warm-started on earlier rounds carries their selection bias.

The same loop, :func:`fit`, runs in a single process and as one rank of a data-parallel job
(PyTorch DistributedDataParallel: Li et al., "PyTorch Distributed: Experiences on Accelerating Data
Parallel Training", VLDB 2020), launched by ``distillery.components.training.distributed``. Data parallelism
keeps the single-process semantics of a *global* batch: every rank draws the same shuffled order,
rank ``r`` of ``N`` takes rows ``r, r+N, r+2N, ...`` of each global batch, and DDP's gradient
all-reduce (a mean over ranks) is weighted so that it equals the gradient of the global-batch mean
loss. N processes therefore follow the single-process trajectory up to floating-point rounding:
exactly so for models without dropout; with dropout each rank draws its own masks (same
distribution, other numbers).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distillery.components.core import checkpoint, devices, models

LossFn = Callable[..., torch.Tensor]


@dataclass
class Checkpointing:
    """How :func:`fit` saves and resumes (see :mod:`distillery.components.core.checkpoint`).

    Attributes:
        directory: where checkpoints go; in a multi-node job only rank 0's copy is read.
        every: save after every ``every`` epochs (and after the last epoch).
        keep: how many complete checkpoints to keep (>= 1; 2 keeps one to fall back to).
        resume: start from the newest checkpoint in ``directory`` when there is one.
        fingerprint: what must be equal to resume (hyper-parameters, a hash of the data); a
            checkpoint of a different training is refused, not silently continued.
        crash_after_epoch: testing aid: raise :class:`SimulatedCrash` right after this epoch
            (after its checkpoint, if one is due), as a killed job would stop.
    """

    directory: str | Path
    every: int = 1
    keep: int = 2
    resume: bool = True
    fingerprint: dict[str, Any] = field(default_factory=dict)
    crash_after_epoch: int | None = None

    def __post_init__(self):
        if not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"checkpoint every must be an integer >= 1 epoch, got {self.every!r}")


class SimulatedCrash(RuntimeError):
    """Raised by :func:`fit` after ``Checkpointing.crash_after_epoch`` epochs (tests of resuming)."""


@dataclass
class WorkerStats:
    """One rank's share of an epoch: mean loss over its samples, their count, its wall time."""

    rank: int
    loss: float
    samples: int
    seconds: float


def _world(distributed: bool) -> tuple[int, int]:
    if not distributed:
        return 0, 1
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("fit(distributed=True) needs an initialised process group: run it under torchrun "
                           "(python -m distillery.components.training.distributed)")
    return dist.get_rank(), dist.get_world_size()


def fit(model: nn.Module, tensors: tuple[torch.Tensor, ...], loss_fn: LossFn, epochs: int,
        lr: float, batch_size: int, seed: int,
        on_epoch: Callable[[int, float], None] | None = None, *,
        distributed: bool = False, checkpointing: Checkpointing | None = None,
        on_workers: Callable[[int, list[WorkerStats]], None] | None = None,
        optimiser: torch.optim.Optimizer | None = None) -> nn.Module:
    """Adam on shuffled mini-batches of ``tensors``; ``loss_fn(model, *batch)`` gives the loss.

    Args:
        tensors: equally long tensors, the first being the inputs ``(N, D)``; anywhere: each batch
            moves to the model's device (kept on the CPU, a large set never has to fit on a GPU).
            Forward passes run in the current precision (:func:`distillery.components.core.devices.autocast`).
        loss_fn: the *mean* of per-sample losses over the batch it is given (what makes the
            data-parallel gradient equal the single-process one).
        batch_size: the global batch: under DDP with ``W`` ranks each rank takes
            ``batch_size / W`` of it (the remainder spread one row at a time over the first ranks).
        on_epoch: called with ``(epoch, mean_loss)`` after each epoch (progress, MLflow); under
            DDP on every rank, with the mean over all ranks' samples.
        distributed: run as one rank of the initialised default process group (DDP).
        checkpointing: save every k epochs (rank 0 writes) and resume from the newest checkpoint.
        on_workers: called with ``(epoch, [WorkerStats per rank])`` after each epoch.
        optimiser: continue with this optimiser of ``model``'s parameters, moments and all (``lr`` is
            then its own); by default a new Adam with ``lr``.
    """
    if len(tensors[0]) == 0:
        raise ValueError("cannot train on an empty set")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rank, world = _world(distributed)
    generator = torch.Generator().manual_seed(seed)
    # Dropout and init draw from the global generator. Rank r seeds it with seed + r: identical
    # seeds would give every rank the same dropout masks on different samples (correlated noise),
    # and rank 0 (the single process) keeps exactly today's stream.
    torch.manual_seed(seed + rank)
    if optimiser is None:
        optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    start_epoch = _resume(checkpointing, model, optimiser, generator, seed, rank, world) if checkpointing else 0
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        cuda = next(model.parameters()).device
        # Constructing DDP broadcasts rank 0's parameters, so every rank starts from one model.
        net = DistributedDataParallel(model, device_ids=[cuda.index] if cuda.type == "cuda" else None)
    n = len(tensors[0])
    device = devices.model_device(model)

    def on_device(rows: torch.Tensor) -> list[torch.Tensor]:
        return [t[rows].to(device, non_blocking=True) for t in tensors]

    for epoch in range(start_epoch, epochs):
        model.train()
        started = time.perf_counter()
        order = torch.randperm(n, generator=generator)
        total, seen = 0.0, 0
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            if world == 1:
                batch = on_device(rows)
                with devices.autocast(device):
                    loss = objective = loss_fn(net, *batch)
            else:
                local = rows[rank::world]
                batch = on_device(local)
                if len(local):
                    with devices.autocast(device):
                        loss = loss_fn(net, *batch)
                    # DDP averages gradients over ranks; weighting each rank's mean by its share of
                    # the global batch makes that average the global-batch mean, uneven shards too.
                    objective = loss * (len(local) * world / len(rows))
                else:
                    # A short last batch can leave this rank without rows; it must still take part
                    # in the all-reduce (or the others wait forever), with a zero gradient.
                    with devices.autocast(device):
                        loss, objective = None, net(batch[0]).sum()
            optimiser.zero_grad()
            objective.backward()
            optimiser.step()
            if loss is not None:
                total += loss.item() * len(batch[0])
                seen += len(batch[0])
        seconds = time.perf_counter() - started
        workers = [WorkerStats(rank, total / max(seen, 1), seen, seconds)]
        if world > 1:
            workers = _gather_stats(workers[0], world)
        mean_loss = sum(w.loss * w.samples for w in workers) / n if world > 1 else total / n
        if on_epoch:
            on_epoch(epoch, mean_loss)
        if on_workers:
            on_workers(epoch, workers)
        if checkpointing and ((epoch + 1) % checkpointing.every == 0 or epoch + 1 == epochs):
            _save(checkpointing, epoch + 1, model, optimiser, generator, rank, world, mean_loss)
        if checkpointing and checkpointing.crash_after_epoch == epoch + 1:
            raise SimulatedCrash(f"simulated crash after epoch {epoch + 1} (rank {rank})")
    return model.eval()


def _gather_stats(mine: WorkerStats, world: int) -> list[WorkerStats]:
    import torch.distributed as dist

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL only moves GPU tensors
    local = torch.tensor([mine.loss * mine.samples, mine.samples, mine.seconds], dtype=torch.float64, device=device)
    out = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(out, local)
    return [WorkerStats(r, float(t[0] / max(t[1], 1)), int(t[1]), float(t[2])) for r, t in enumerate(out)]


def _save(cfg: Checkpointing, epochs_done: int, model: nn.Module, optimiser, generator: torch.Generator,
          rank: int, world: int, loss: float) -> None:
    # Every rank's RNG state goes into the checkpoint (collective), so a resumed run draws the same
    # dropout masks as an uninterrupted one; only rank 0 writes.
    rng = [checkpoint.rng_state()]
    if world > 1:
        import torch.distributed as dist

        rng = [None] * world
        dist.all_gather_object(rng, checkpoint.rng_state())
    if rank == 0:
        state = {"epoch": epochs_done, "loss": loss, "world_size": world, "fingerprint": cfg.fingerprint,
                 "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "optimiser": optimiser.state_dict(), "generator": generator.get_state(), "rng": rng}
        checkpoint.save(cfg.directory, epochs_done, state, keep=cfg.keep)
    if world > 1:
        import torch.distributed as dist

        # No rank runs on (or exits, and gets its peers torn down) while rank 0 is still writing.
        dist.barrier()


def _resume(cfg: Checkpointing, model: nn.Module, optimiser, generator: torch.Generator, seed: int,
            rank: int, world: int) -> int:
    """Restore the newest checkpoint (read by rank 0, broadcast); the number of epochs it holds."""
    if not cfg.resume:
        return 0
    payload: tuple[str, Any] = ("none", None)
    if rank == 0:
        try:
            found = checkpoint.load_latest(cfg.directory)
            payload = ("ok", found[0]) if found else ("none", None)
            if found and found[0].get("fingerprint") != cfg.fingerprint:
                theirs, ours = found[0].get("fingerprint") or {}, cfg.fingerprint
                diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
                payload = ("error", f"checkpoint {found[1]} belongs to a different training (differs in {diff}); "
                                    f"refusing to resume from it: use another checkpoint directory or delete it")
        except checkpoint.CheckpointError as exc:
            payload = ("error", str(exc))
    if world > 1:
        import torch.distributed as dist

        # Rank 0 decides for everyone, errors included, so no rank is left waiting in a collective.
        box = [payload]
        dist.broadcast_object_list(box, src=0)
        payload = box[0]
    kind, state = payload
    if kind == "error":
        raise checkpoint.CheckpointError(state)
    if kind == "none":
        return 0
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    generator.set_state(state["generator"])
    if state["world_size"] == world:
        checkpoint.set_rng_state(state["rng"][rank])
    else:
        # Another world size (an elastic restart): shuffling and weights continue exactly, only the
        # per-rank dropout streams cannot; reseed them reproducibly from the epoch.
        torch.manual_seed(seed + rank + 7919 * state["epoch"])
        if rank == 0:
            print(f"resuming a {state['world_size']}-process checkpoint with {world} processes: "
                  "dropout RNG streams reseeded", flush=True)
    return int(state["epoch"])


TRAINING_KEYS = ("epochs", "lr", "batch_size")  # what every training method takes besides its own keywords


def method_call(name: str, params: dict) -> tuple[str, dict, dict]:
    """``(arch, arch_kwargs, method_kwargs)``: how a training method's resolved ``params`` map onto its
    call, the one mapping the training task, the contract tests and the benchmarks share. ``arch`` names
    the architecture (a method without one is named after its own, e.g. ``small_cnn``); with an
    ``arch_kwargs`` parameter every other parameter but :data:`TRAINING_KEYS` is a keyword of the method,
    without one every such parameter is an architecture argument."""
    arch = params.get("arch", name)
    if "arch_kwargs" in params:
        rest = {k: v for k, v in params.items() if k not in (*TRAINING_KEYS, "arch", "arch_kwargs")}
        return arch, dict(params["arch_kwargs"]), rest
    return arch, {k: v for k, v in params.items() if k not in (*TRAINING_KEYS, "arch")}, {}


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def train_classifier(features, labels, meta: dict, arch: str, arch_kwargs: dict, epochs: int,
                     lr: float, batch_size: int, seed: int, on_epoch=None, *, device: Any = None,
                     **fit_kwargs: Any) -> nn.Module:
    """A fresh ``arch`` model trained with cross-entropy on ``(features, labels)``.

    ``device`` holds the model (default: the current placement's, :func:`distillery.components.core.devices.current`;
    the CPU outside a task); batches move there one at a time. ``fit_kwargs`` go to :func:`fit`
    (``distributed``, ``checkpointing``, ``on_workers``). The model comes back on ``device``.
    """
    torch.manual_seed(seed)
    model = models.standardise(models.build(arch, meta, **arch_kwargs), features)
    model = model.to(device or devices.current().device)
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    return fit(model, (x, y), cross_entropy, epochs, lr, batch_size, seed, on_epoch, **fit_kwargs)


def accuracy(model: nn.Module, features, labels) -> float:
    predicted = models.predict_proba(model, features).argmax(-1).numpy()
    return float((predicted == labels).mean())
