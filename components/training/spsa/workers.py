"""SPSA worker processes: the membership plan, the rendezvous, and one worker's rounds.

Zelikman et al., "Just One Byte (per gradient)", arXiv:2306.10015, 2023 (the maths:
:mod:`distillery.components.training.spsa.algorithm`).

Membership changes between rounds ("rounds in epochs of membership"): an :class:`Epoch` of the plan is a
number of rounds run by a fixed set of workers in their own process group (torch.distributed, gloo). At
the start of an epoch the members exchange their model shapes (a mismatch names the worker), and a
newcomer receives the weights by a broadcast of the state dict from a veteran. A worker that leaves
simply does not join the next epoch's group. Each round the members exchange their one-byte projected
gradients, apply the same update, and compare 32-byte weight hashes.

:func:`run_worker` runs one worker under any rendezvous: :class:`FileRendezvous` (a fresh group per
epoch, as :func:`distillery.components.training.spsa.launcher.launch` uses) or :class:`EnvRendezvous`
(the group ``torchrun`` describes).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distillery.components.training.spsa.algorithm import (
    FlatParams,
    apply_updates,
    perturbation,
    projected_gradient,
    sample_seed,
    shape_signature,
    weights_hash,
)
from distillery.components.training.spsa.jobs import SPSAJob

# --------------------------------------------------------------------------------- membership plan

@dataclass(frozen=True)
class Epoch:
    """``rounds`` rounds run by the fixed set ``workers`` (worker ids, not ranks)."""

    rounds: int
    workers: tuple[int, ...]


def validate_plan(plan: Sequence[Epoch]) -> list[Epoch]:
    """A membership plan: non-empty epochs, every later epoch keeping at least one worker (the one
    that hands the weights on), and no worker coming back after it left (its process has ended)."""
    plan = [Epoch(int(e.rounds), tuple(int(w) for w in e.workers)) for e in plan]
    if not plan:
        raise ValueError("the membership plan has no epochs")
    left: set[int] = set()
    for i, epoch in enumerate(plan):
        if epoch.rounds < 1 or not epoch.workers or len(set(epoch.workers)) != len(epoch.workers):
            raise ValueError(f"epoch {i}: needs rounds >= 1 and distinct workers, got {epoch}")
        if min(epoch.workers) < 0:
            raise ValueError(f"epoch {i}: worker ids must be >= 0, got {epoch.workers}")
        if back := left & set(epoch.workers):
            raise ValueError(f"epoch {i}: worker(s) {sorted(back)} left earlier and cannot rejoin; "
                             "start a new worker id instead")
        if i and not set(epoch.workers) & set(plan[i - 1].workers):
            raise ValueError(f"epoch {i}: shares no worker with epoch {i - 1}, so nobody holds the weights")
        if i:
            left |= set(plan[i - 1].workers) - set(epoch.workers)
    return plan


# ------------------------------------------------------------------------------- worker bookkeeping

class ShapeMismatchError(ValueError):
    """Workers hold models of different shapes (detected when a membership epoch starts)."""


class WeightMismatchError(RuntimeError):
    """Workers' weights diverged: their hashes differ after a round."""


@dataclass
class ByteCounter:
    """Bytes this worker contributed to collectives, by purpose.

    Counted at the API: the tensor (or pickled object) a worker hands to ``all_gather``/``broadcast``.
    ``gradients`` is the method's payload; ``verification`` the per-round weight hash; ``membership``
    the shape handshake and, for the worker that hands weights to a newcomer, the state dict.
    """

    gradients: int = 0
    verification: int = 0
    membership: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"gradients": self.gradients, "verification": self.verification, "membership": self.membership}


class CollectiveCounter:
    """Bytes this process hands to torch.distributed's collectives, counted inside torch.distributed.

    :meth:`installed` wraps ``all_gather``, ``all_gather_into_tensor``, ``all_reduce`` and ``broadcast``
    in both ``torch.distributed`` and ``torch.distributed.distributed_c10d`` (so calls torch makes
    itself count too, e.g. the size exchange and padded payload of ``all_gather_object``, or a DDP
    comm hook's ``all_reduce``), and restores them on exit. Each call adds the bytes of the tensor this
    process contributes (``broadcast``: the source's tensor; receivers send nothing) to the current
    :meth:`purpose`. gloo's framing and relaying are not counted. Use it in a process of its own (a
    worker): the wrappers are process-wide.
    """

    OPS = ("all_gather", "all_gather_into_tensor", "all_reduce", "broadcast")

    def __init__(self) -> None:
        self.bytes: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self._purpose = "untagged"

    @contextmanager
    def purpose(self, name: str) -> Iterator[None]:
        """Attribute the collectives called inside to ``name``."""
        previous, self._purpose = self._purpose, name
        try:
            yield
        finally:
            self._purpose = previous

    @contextmanager
    def installed(self) -> Iterator[CollectiveCounter]:
        import torch.distributed as dist
        from torch.distributed import distributed_c10d as c10d

        saved = [(module, op, getattr(module, op)) for op in self.OPS for module in (dist, c10d)]
        for op in self.OPS:
            wrapper = self._wrap(op, getattr(c10d, op))
            setattr(dist, op, wrapper)
            setattr(c10d, op, wrapper)
        try:
            yield self
        finally:
            for module, op, original in saved:
                setattr(module, op, original)

    def _wrap(self, op: str, original: Callable) -> Callable:
        import functools
        import inspect

        signature = inspect.signature(original)

        @functools.wraps(original)
        def counted(*args, **kwargs):
            call = signature.bind(*args, **kwargs)
            self._add(self._sent(op, call.arguments))
            return original(*args, **kwargs)

        return counted

    @staticmethod
    def _sent(op: str, arguments: dict) -> int:
        import torch.distributed as dist

        tensor = arguments["input_tensor" if op == "all_gather_into_tensor" else "tensor"]
        if op == "broadcast":
            group = arguments.get("group")
            if arguments.get("src") is not None:
                is_source = dist.get_rank() == arguments["src"]
            else:
                is_source = dist.get_rank(group) == arguments.get("group_src")
            if not is_source:
                return 0
        return tensor.numel() * tensor.element_size()

    def _add(self, n: int) -> None:
        self.bytes[self._purpose] = self.bytes.get(self._purpose, 0) + n
        self.calls[self._purpose] = self.calls.get(self._purpose, 0) + 1


def check_agreement(hashes: dict[int, bytes], when: str) -> None:
    """Raise :class:`WeightMismatchError` naming every worker whose hash differs from the majority's
    (ties broken towards the lowest worker id); ``when`` says at which point, e.g. ``"after round 3"``."""
    groups: dict[bytes, list[int]] = {}
    for worker in sorted(hashes):
        groups.setdefault(hashes[worker], []).append(worker)
    if len(groups) == 1:
        return
    reference = max(groups, key=lambda h: (len(groups[h]), -groups[h][0]))
    odd = sorted(w for h, ws in groups.items() if h != reference for w in ws)
    details = ", ".join(f"worker {w} has {hashes[w].hex()[:12]}" for w in odd)
    raise WeightMismatchError(f"weights diverged {when}: {details}; workers "
                              f"{groups[reference]} agree on {reference.hex()[:12]}")


def check_shapes(signatures: dict[int, list], reference: int) -> None:
    """Raise :class:`ShapeMismatchError` naming each worker whose model differs from ``reference``'s."""
    expected = signatures[reference]
    problems = []
    for worker in sorted(signatures):
        theirs = signatures[worker]
        if worker == reference or theirs == expected:
            continue
        differing = [f"{a[0]} {a[1]} vs {b[1]}" for a, b in zip(expected, theirs) if a != b]
        if len(theirs) != len(expected):
            differing.append(f"{len(theirs)} tensors vs {len(expected)}")
        problems.append(f"worker {worker}'s model does not match worker {reference}'s: {'; '.join(differing[:3])}")
    if problems:
        raise ShapeMismatchError(" | ".join(problems))


@dataclass
class WorkerReport:
    """What one worker did. ``shard_losses``: ``[(round, mean loss over its whole shard)]``;
    ``hashes``: ``[(round, hex digest after the round)]``; ``rounds``: global rounds it ran.
    ``bytes``: what the worker itself accounts (:class:`ByteCounter`); ``collective_bytes`` /
    ``collective_calls``: what a :class:`CollectiveCounter` counted inside torch.distributed, by the
    same purposes (only when the job's ``count_collectives`` is set; empty otherwise)."""

    worker: int
    rounds: list[int] = field(default_factory=list)
    probe_losses: list[float] = field(default_factory=list)
    shard_losses: list[tuple[int, float]] = field(default_factory=list)
    hashes: list[tuple[int, str]] = field(default_factory=list)
    bytes: dict[str, int] = field(default_factory=dict)
    collective_bytes: dict[str, int] = field(default_factory=dict)
    collective_calls: dict[str, int] = field(default_factory=dict)
    joined_at: int = 0
    parameters: int = 0
    state_path: str | None = None

    @property
    def gradient_bytes_per_step(self) -> float:
        return self.bytes["gradients"] / max(len(self.rounds), 1)


# ----------------------------------------------------------------------------------- rendezvous

class FileRendezvous:
    """A fresh gloo process group per membership epoch, met through a file in ``folder``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def __call__(self, epoch: int, rank: int, world_size: int, timeout: timedelta) -> None:
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"file://{self.folder / f'epoch-{epoch}'}",
                                rank=rank, world_size=world_size, timeout=timeout)


class EnvRendezvous:
    """The group torchrun describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...): one epoch only."""

    def __call__(self, epoch: int, rank: int, world_size: int, timeout: timedelta) -> None:
        import torch.distributed as dist

        if epoch:
            raise RuntimeError("under torchrun, membership changes restart every worker: plan one epoch")
        if (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) != (rank, world_size):
            raise RuntimeError(f"torchrun gave rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}, "
                               f"the plan expects rank {rank} of {world_size}")
        dist.init_process_group("gloo", init_method="env://", timeout=timeout)


@contextmanager
def _process_group(rendezvous, epoch: int, rank: int, world_size: int, timeout_s: float) -> Iterator[None]:
    import torch.distributed as dist

    rendezvous(epoch, rank, world_size, timedelta(seconds=timeout_s))
    try:
        yield
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------- worker

class _Worker:
    """One worker's state across membership epochs (see :func:`run_worker`)."""

    def __init__(self, worker_id: int, job: SPSAJob, initial: bool, report: Callable[[str, Any], None]):
        self.id, self.job, self.cfg = worker_id, job, job.config
        self.model = job.model_fn(worker_id, initial).eval()  # eval: dropout would make L noisy and θ-dependent
        self.flat = FlatParams(self.model)
        self.shard = job.shard_fn(worker_id)
        self.data_rng = torch.Generator().manual_seed(sample_seed(-1, worker_id, 0, self.cfg.seed))
        self.has_weights = initial
        self.round = 0
        self.bytes = ByteCounter()
        self.wire = CollectiveCounter()  # counts only while installed (job.count_collectives)
        self.out = WorkerReport(worker_id, parameters=self.flat.size)
        self.send = report

    # collectives, each counting what this worker contributes
    def _all_gather(self, tensor: torch.Tensor, purpose: str) -> list[torch.Tensor]:
        import torch.distributed as dist

        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        with self.wire.purpose(purpose):
            dist.all_gather(gathered, tensor)
        self._count(purpose, tensor.numel() * tensor.element_size())
        return gathered

    def _all_gather_object(self, obj: Any, purpose: str) -> list[Any]:
        import pickle

        import torch.distributed as dist

        gathered: list[Any] = [None] * dist.get_world_size()
        with self.wire.purpose(purpose):
            dist.all_gather_object(gathered, obj)
        self._count(purpose, len(pickle.dumps(obj)))
        return gathered

    def _count(self, purpose: str, n: int) -> None:
        setattr(self.bytes, purpose, getattr(self.bytes, purpose) + n)

    def join(self, members: list[int]) -> None:
        """Handshake of a new membership epoch: shapes, who holds weights, the round counter; then a
        veteran broadcasts its state dict if any member is new."""
        import torch.distributed as dist

        mine = {"worker": self.id, "has_weights": self.has_weights, "round": self.round,
                "shapes": shape_signature(self.model)}
        infos = {i["worker"]: i for i in self._all_gather_object(mine, "membership")}
        holders = [w for w in members if infos[w]["has_weights"]]
        if not holders:
            raise RuntimeError(f"no worker among {members} holds weights to start from")
        source = holders[0]
        check_shapes({w: infos[w]["shapes"] for w in members}, reference=source)
        if len(holders) < len(members):
            for tensor in self.model.state_dict().values():  # views: writes land in the model
                with self.wire.purpose("membership"):
                    dist.broadcast(tensor, src=members.index(source))
                if self.id == source:
                    self._count("membership", tensor.numel() * tensor.element_size())
            if not self.has_weights:
                self.out.joined_at = infos[source]["round"]
        self.round = infos[source]["round"]
        self.has_weights = True
        # a failed copy, or first-epoch workers that loaded different bases, are caught before any step
        self.verify(members, f"when workers {members} met at round {self.round}")

    def verify(self, members: list[int], when: str) -> str:
        """Exchange weight hashes; raise naming any worker that differs. Returns this worker's (hex)."""
        mine = weights_hash(self.model)
        gathered = self._all_gather(torch.frombuffer(bytearray(mine), dtype=torch.uint8), "verification")
        check_agreement({w: bytes(h.tolist()) for w, h in zip(members, gathered)}, when)
        return mine.hex()

    def step(self, members: list[int]) -> None:
        """One round: own projected gradients -> bytes -> everyone's bytes -> identical update -> hash check."""
        cfg, t = self.cfg, self.round
        g, probe = torch.empty(cfg.samples_per_worker, dtype=torch.float64), []
        for s in range(cfg.samples_per_worker):
            z = perturbation(sample_seed(t, self.id, s, cfg.seed), self.flat.size, self.flat.vector.dtype)
            x, y = self.shard.batch(cfg.batch_size, self.data_rng)
            g[s], loss = projected_gradient(self.flat, lambda: self.job.loss_fn(self.model, x, y), z, cfg.eps)
            probe.append(loss)
        codes = cfg.quantiser.encode(g)
        gathered = self._all_gather(codes, "gradients")
        # ranks follow sorted worker ids, so every machine walks the same (worker, sample) order
        seeds = [sample_seed(t, w, s, cfg.seed) for w in members for s in range(cfg.samples_per_worker)]
        apply_updates(self.flat, seeds, cfg.quantiser.decode(torch.cat(gathered)), cfg.lr)
        digest = self.verify(members, f"after round {t}")
        self.round += 1
        self._record(t, float(np.mean(probe)), digest)

    def _record(self, t: int, probe_loss: float, digest: str) -> None:
        self.out.rounds.append(t)
        self.out.probe_losses.append(probe_loss)
        self.out.hashes.append((t, digest))
        metrics = {"loss": probe_loss, "bytes_sent": float(sum(self.bytes.as_dict().values())),
                   "gradient_bytes": float(self.bytes.gradients), "hash_agreement": 1.0}
        if len(self.out.rounds) == 1 or (t + 1) % self.cfg.eval_every == 0:
            metrics["shard_loss"] = self.evaluate()
            self.out.shard_losses.append((t, metrics["shard_loss"]))
        self.send("round", (self.id, t, metrics))

    @torch.no_grad()
    def evaluate(self) -> float:
        x, y = self.shard.x, self.shard.y
        return float(sum(self.job.loss_fn(self.model, x[i:i + 2048], y[i:i + 2048]) * len(x[i:i + 2048])
                         for i in range(0, len(x), 2048)) / len(x))

    def finish(self) -> WorkerReport:
        if self.out.rounds and self.out.shard_losses[-1][0] != self.out.rounds[-1]:
            self.out.shard_losses.append((self.out.rounds[-1], self.evaluate()))
        self.out.bytes = self.bytes.as_dict()
        self.out.collective_bytes, self.out.collective_calls = dict(self.wire.bytes), dict(self.wire.calls)
        if self.job.out_dir:
            self.out.state_path = str(Path(self.job.out_dir) / f"worker-{self.id}.pt")
            torch.save(self.model.state_dict(), self.out.state_path)
        return self.out


def run_worker(worker_id: int, plan: Sequence[Epoch], job: SPSAJob, rendezvous,
               report: Callable[[str, Any], None] | None = None,
               holders: Sequence[int] | None = None) -> WorkerReport:
    """Run one worker through every membership epoch of ``plan`` that includes it.

    Args:
        worker_id: this worker's stable id (seeds use it; ranks are re-derived per epoch as the index
            in the sorted member list).
        plan: the membership plan (:func:`validate_plan`), identical on every worker.
        rendezvous: ``rendezvous(epoch, rank, world_size, timeout)`` initialises the default process
            group of one epoch (:class:`FileRendezvous`, :class:`EnvRendezvous`).
        report: ``report(kind, payload)``; kind ``"round"`` carries ``(worker, round, metrics)``.
        holders: the first-epoch workers that start with the (same) initial weights; the others
            receive them by broadcast. Default: every worker of the first epoch.
    """
    plan = validate_plan(plan)
    initial = worker_id in (plan[0].workers if holders is None else holders)
    worker = _Worker(worker_id, job, initial=initial, report=report or (lambda *_: None))
    with worker.wire.installed() if job.count_collectives else nullcontext():
        for index, epoch in enumerate(plan):
            members = sorted(epoch.workers)
            if worker_id not in members:
                if worker.has_weights:
                    break  # this worker has left
                continue  # not joined yet
            with _process_group(rendezvous, index, members.index(worker_id), len(members), job.config.timeout_s):
                worker.join(members)
                for _ in range(epoch.rounds):
                    worker.step(members)
    return worker.finish()
