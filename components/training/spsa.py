"""Shared-randomness SPSA fine-tuning: machines exchange one byte per projected gradient.

Zelikman, Huang, Liang, Haber, Goodman, "Just One Byte (per gradient): A Note on Low-Bandwidth
Decentralized Language Model Finetuning Using Shared Randomness", arXiv:2306.10015, 2023 (the
decentralised extension of MeZO's SPSA, Malladi et al. 2023).

Round ``t``: machine ``m`` draws, for each of its samples ``s``, a direction ``z ~ N(0, I_P)`` over all
``P`` parameters from an RNG seeded by ``(t, m, s)``; it computes the projected gradient
``g = (L(θ + εz) − L(θ − εz)) / 2ε`` (ε = 1e-3) on its own data and sends only ``g``, quantised to one
byte (sign + 7-bit log-magnitude code). Every machine decodes all ``N`` bytes, regenerates each ``z``
from its seed and applies ``θ ← θ − lr · Σ g·z / √N`` in the same order, so every copy of ``θ`` stays
bit-identical; each round the machines exchange a 32-byte hash of the weights to check exactly that.

Membership changes between rounds ("rounds in epochs of membership"): a :class:`Epoch` of the plan is a
number of rounds run by a fixed set of workers in their own process group (torch.distributed, gloo). At
the start of an epoch the members exchange their model shapes (a mismatch names the worker), and a
newcomer receives the weights by a broadcast of the state dict from a veteran. A worker that leaves
simply does not join the next epoch's group.

Layers, each usable alone:

* :class:`ByteQuantiser`: ``g`` (float) <-> one ``uint8``;
* :func:`sample_seed`, :func:`perturbation`: the shared randomness;
* :class:`FlatParams`, :func:`projected_gradient`, :func:`apply_updates`: the estimate and the update;
* :func:`run_worker`: one worker process (any rendezvous: :class:`FileRendezvous` for :func:`launch`,
  :class:`EnvRendezvous` under ``torchrun``);
* :func:`launch`: starts one process per worker of a membership plan and streams their per-round metrics to a
  callback (e.g. :func:`mlflow_callback`);
* ``python -m components.training.spsa`` (alone or under ``torchrun``): fine-tune the MNIST MLP.
"""
from __future__ import annotations

import hashlib
import math
import os
import queue as queue_module
import struct
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

EPS = 1e-3
HASH_BYTES = 32  # sha256
MetricsCallback = Callable[[int, int, dict], None]  # (worker id, round, metrics)


# --------------------------------------------------------------------------------------------- quantiser

@dataclass(frozen=True)
class ByteQuantiser:
    """One byte per scalar: bit 7 is the sign, bits 0-6 a code for ``log2 |g|``.

    Code 0 is zero; codes ``1..127`` are magnitudes ``2 ** (log2_min + (code - 1) * step)`` with
    ``step = (log2_max - log2_min) / 126``, i.e. evenly spaced in log scale. Rounding to the nearest
    code in log scale bounds the relative error of any ``|g|`` in ``[2**log2_min, 2**log2_max]`` by
    :attr:`relative_error_bound`; smaller magnitudes are off by at most ``2**log2_min`` (the smallest
    ones flush to zero) and larger ones saturate at ``2**log2_max``.

    The defaults (``2**-16 ≈ 1.5e-5`` to ``2**8 = 256``, relative error ≤ 6.9%) cover projected gradients
    of float32 losses: below ~1e-5 a central difference with ε = 1e-3 is float32 rounding noise.
    """

    log2_min: float = -16.0
    log2_max: float = 8.0

    def __post_init__(self):
        if not self.log2_max > self.log2_min:
            raise ValueError(f"log2_max ({self.log2_max}) must exceed log2_min ({self.log2_min})")

    @property
    def step(self) -> float:
        return (self.log2_max - self.log2_min) / 126

    @property
    def relative_error_bound(self) -> float:
        return 2 ** (self.step / 2) - 1

    def encode(self, g: torch.Tensor | Sequence[float]) -> torch.Tensor:
        """``(N,)`` floats -> ``(N,)`` uint8 codes. NaN or infinite values are refused."""
        g = torch.as_tensor(g, dtype=torch.float64).reshape(-1)
        if not torch.isfinite(g).all():
            bad = torch.nonzero(~torch.isfinite(g)).reshape(-1).tolist()
            raise ValueError(f"cannot quantise non-finite projected gradient(s) at position(s) {bad}: "
                             f"{g[bad].tolist()} (the loss is NaN/inf: lower lr or check the data)")
        magnitude = g.abs()
        level = torch.round((torch.log2(magnitude.clamp_min(1e-300)) - self.log2_min) / self.step)
        code = level.clamp(0, 126).to(torch.int64) + 1
        # below half a step under the smallest code, zero is the nearer value in log scale
        code[magnitude < 2 ** (self.log2_min - self.step / 2)] = 0
        sign = (g < 0).to(torch.int64) << 7
        return (code | sign).to(torch.uint8)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``(N,)`` uint8 codes -> ``(N,)`` float64 values (identical on every machine)."""
        codes = torch.as_tensor(codes).to(torch.int64).reshape(-1)
        level = codes & 0x7F
        magnitude = torch.where(level > 0, 2.0 ** (self.log2_min + (level - 1).double() * self.step),
                                torch.zeros((), dtype=torch.float64))
        return torch.where(codes & 0x80 > 0, -magnitude, magnitude)


# ------------------------------------------------------------------------------------ shared randomness

def sample_seed(iteration: int, machine: int, sample: int, base_seed: int = 0) -> int:
    """The RNG seed of one perturbation: a hash of ``(base_seed, iteration, machine, sample)``.

    A cryptographic hash rather than arithmetic on the ids, so that neighbouring ids give unrelated
    streams and no two ``(t, m, s)`` collide in practice; any machine can recompute any other's seed.
    """
    digest = hashlib.blake2b(struct.pack("<4q", base_seed, iteration, machine, sample), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2 ** 63 - 1)


def perturbation(seed: int, size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``z ~ N(0, I_size)`` ``(size,)`` from a private CPU generator seeded with ``seed``.

    Always drawn in float32 on the CPU (then cast): the same seed gives the same bits on every machine
    running the same torch build, whatever device or dtype the model uses.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, generator=generator, dtype=torch.float32).to(dtype)


# ------------------------------------------------------------------------------ estimate and the update

class FlatParams:
    """Every parameter of ``model`` re-seated as a view into one flat vector ``(P,)``.

    Perturbing and updating then touch one tensor, and the model sees the change without copies.
    """

    def __init__(self, model: nn.Module):
        params = list(model.parameters())
        if not params:
            raise ValueError("the model has no parameters")
        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1:
            raise ValueError(f"FlatParams needs one parameter dtype, got {sorted(map(str, dtypes))}")
        self.model = model
        self.vector = torch.cat([p.detach().reshape(-1) for p in params]).clone()
        offset = 0
        for p in params:
            p.data = self.vector[offset:offset + p.numel()].view_as(p)
            offset += p.numel()

    @property
    def size(self) -> int:
        return self.vector.numel()


@torch.no_grad()
def projected_gradient(flat: FlatParams, loss: Callable[[], torch.Tensor | float], z: torch.Tensor,
                       eps: float = EPS) -> tuple[float, float]:
    """SPSA estimate of the directional derivative ``∇L(θ)·z``.

    Args:
        flat: the model's parameters ``θ`` ``(P,)``; restored bit-exactly before returning.
        loss: evaluates ``L`` at the model's current parameters (a fixed batch).
        z: direction ``(P,)``.

    Returns:
        ``(g, (L(θ+εz) + L(θ−εz)) / 2)``: the projected gradient and a free estimate of ``L(θ)``.
    """
    theta = flat.vector.clone()  # θ+εz−εz is not θ in floating point: restore by copy, or copies drift
    flat.vector.add_(z, alpha=eps)
    plus = float(loss())
    flat.vector.copy_(theta).add_(z, alpha=-eps)
    minus = float(loss())
    flat.vector.copy_(theta)
    return (plus - minus) / (2 * eps), (plus + minus) / 2


@torch.no_grad()
def apply_updates(flat: FlatParams, seeds: Sequence[int], g: torch.Tensor, lr: float) -> None:
    """``θ ← θ − lr · Σ_k g_k z_k / √N`` with ``z_k = perturbation(seeds[k])``, ``N = len(seeds)``.

    Every machine calls this with the same seeds and decoded ``g`` in the same order, so the float
    operations and hence the resulting bits are identical everywhere.
    """
    if len(seeds) != len(g):
        raise ValueError(f"{len(seeds)} seeds but {len(g)} projected gradients")
    step = torch.zeros_like(flat.vector)
    for seed, gk in zip(seeds, torch.as_tensor(g).tolist()):
        step.add_(perturbation(seed, flat.size, flat.vector.dtype), alpha=gk)
    flat.vector.sub_(step, alpha=lr / math.sqrt(len(seeds)))


def weights_hash(model: nn.Module) -> bytes:
    """sha256 (32 bytes) of every state-dict tensor's bytes, in key order."""
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.digest()


def shape_signature(model: nn.Module) -> list[tuple[str, tuple[int, ...], str]]:
    """``[(key, shape, dtype)]`` of the state dict: what two workers must share to exchange updates."""
    return [(k, tuple(t.shape), str(t.dtype)) for k, t in model.state_dict().items()]


# ------------------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class Epoch:
    """``rounds`` rounds run by the fixed set ``workers`` (worker ids, not ranks)."""

    rounds: int
    workers: tuple[int, ...]


@dataclass(frozen=True)
class SPSAConfig:
    """Hyper-parameters shared by all workers.

    Attributes:
        samples_per_worker: projected gradients (bytes) each worker sends per round.
        batch_size: examples behind each projected gradient (drawn from the worker's own shard).
        lr: step size of ``θ ← θ − lr · Σ g z / √N``.
        eps: SPSA perturbation scale ε.
        seed: base seed mixed into every perturbation seed.
        eval_every: rounds between full-shard loss evaluations (also at the first and last round).
        timeout_s: how long a collective may wait for a peer before failing.
    """

    samples_per_worker: int = 8
    batch_size: int = 64
    lr: float = 5e-3
    eps: float = EPS
    seed: int = 0
    eval_every: int = 10
    timeout_s: float = 120.0
    quantiser: ByteQuantiser = field(default_factory=ByteQuantiser)

    def __post_init__(self):
        for name in ("samples_per_worker", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and self.eps > 0):
            raise ValueError(f"lr and eps must be > 0, got lr={self.lr}, eps={self.eps}")


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
    ``hashes``: ``[(round, hex digest after the round)]``; ``rounds``: global rounds it ran."""

    worker: int
    rounds: list[int] = field(default_factory=list)
    probe_losses: list[float] = field(default_factory=list)
    shard_losses: list[tuple[int, float]] = field(default_factory=list)
    hashes: list[tuple[int, str]] = field(default_factory=list)
    bytes: dict[str, int] = field(default_factory=dict)
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
    """Everything a worker process needs; picklable, so :func:`launch` can hand it to spawned processes.

    Attributes:
        model_fn: ``model_fn(worker_id, initial)`` builds the worker's model; ``initial`` is true for
            the workers of the first epoch, which must all load the same starting weights (a newcomer's
            weights are overwritten by a peer's, so it may build an untrained model).
        shard_fn: ``shard_fn(worker_id)`` -> the worker's :class:`Shard`.
        loss_fn: ``loss_fn(model, x, y)`` -> scalar loss.
        out_dir: where each worker saves its final state dict (``worker-<id>.pt``); None: not saved.
    """

    model_fn: Callable[[int, bool], nn.Module]
    shard_fn: Callable[[int], Shard]
    config: SPSAConfig = field(default_factory=SPSAConfig)
    loss_fn: Callable[..., torch.Tensor] = cross_entropy
    out_dir: str | None = None


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
        self.out = WorkerReport(worker_id, parameters=self.flat.size)
        self.send = report

    # collectives, each counting what this worker contributes
    def _all_gather(self, tensor: torch.Tensor, purpose: str) -> list[torch.Tensor]:
        import torch.distributed as dist

        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor)
        self._count(purpose, tensor.numel() * tensor.element_size())
        return gathered

    def _all_gather_object(self, obj: Any, purpose: str) -> list[Any]:
        import pickle

        import torch.distributed as dist

        gathered: list[Any] = [None] * dist.get_world_size()
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


# ---------------------------------------------------------------------------------------- launcher

class WorkerFailedError(RuntimeError):
    """One or more spawned workers failed; the message holds each one's error."""


@dataclass
class SPSARun:
    """The outcome of :func:`launch`: one :class:`WorkerReport` per worker, and the wall time."""

    workers: dict[int, WorkerReport]
    wall_s: float

    def final_hashes(self) -> dict[int, str]:
        return {w: r.hashes[-1][1] for w, r in self.workers.items() if r.hashes}

    def hashes_agree(self) -> bool:
        """Whether, for every round, all the workers that ran it ended it with the same weights."""
        by_round: dict[int, set[str]] = {}
        for report in self.workers.values():
            for t, digest in report.hashes:
                by_round.setdefault(t, set()).add(digest)
        return all(len(digests) == 1 for digests in by_round.values())


def _spawned_worker(worker_id: int, plan, job: SPSAJob, rendezvous_dir: str, messages) -> None:
    torch.set_num_threads(1)  # several workers share this machine's cores
    try:
        report = run_worker(worker_id, plan, job, FileRendezvous(rendezvous_dir),
                            lambda kind, payload: messages.put((kind, payload)))
        messages.put(("done", report))
    except BaseException as exc:  # the launcher re-raises it with the worker named
        messages.put(("error", (worker_id, f"{type(exc).__name__}: {exc}", traceback.format_exc())))


def launch(plan: Sequence[Epoch], job: SPSAJob, callback: MetricsCallback | None = None,
           timeout_s: float = 600.0, grace_s: float = 5.0, start_method: str = "forkserver") -> SPSARun:
    """Run the plan for real: one process per worker id, gloo process groups per epoch.

    Every process starts at once; a newcomer blocks at its epoch's rendezvous until the veterans get
    there, then receives their weights. ``callback(worker, round, metrics)`` is called here, in the
    launcher, as each worker reports a round (so MLflow logging needs no access from the workers).

    ``start_method``: ``"forkserver"`` (default) imports torch and this module once, in a server
    process that has run no torch code (so no thread pool is forked), and forks every worker of this
    and later launches from it; ``"spawn"`` starts each worker from a fresh interpreter.

    Raises:
        WorkerFailedError: naming each failing worker and its error (e.g. a :class:`ShapeMismatchError`).
        TimeoutError: the workers did not finish within ``timeout_s``.
    """
    import torch.multiprocessing as mp

    plan = validate_plan(plan)
    workers = sorted({w for epoch in plan for w in epoch.workers})
    ctx = mp.get_context(start_method)
    if start_method == "forkserver":
        ctx.set_forkserver_preload([__name__, "components.training.models", "components.datasets"])
    messages = ctx.Queue()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="spsa-rdzv-") as rendezvous_dir:
        processes = {w: ctx.Process(target=_spawned_worker, args=(w, plan, job, rendezvous_dir, messages),
                                    daemon=True) for w in workers}
        for process in processes.values():
            process.start()
        try:
            reports, errors = _collect(processes, messages, callback, started + timeout_s, grace_s)
        finally:
            for process in processes.values():
                process.join(timeout=grace_s)
                if process.is_alive():
                    process.terminate()  # only our own children, by handle
    if errors:
        raise WorkerFailedError("; ".join(f"worker {w}: {msg}" for w, (msg, _) in sorted(errors.items())))
    return SPSARun(reports, time.perf_counter() - started)


def _collect(processes, messages, callback, deadline: float, grace_s: float):
    reports: dict[int, WorkerReport] = {}
    errors: dict[int, tuple[str, str]] = {}
    first_error_at = None
    while len(reports) + len(errors) < len(processes):
        now = time.perf_counter()
        if now > deadline:
            raise TimeoutError(f"SPSA workers still running after the launch timeout; finished: {sorted(reports)}")
        if first_error_at is not None and now > first_error_at + grace_s:
            for w in processes:  # peers of a failed worker would wait on a collective until their timeout
                if w not in reports and w not in errors:
                    errors[w] = ("stopped after another worker failed", "")
            break
        try:
            kind, payload = messages.get(timeout=0.5)
        except queue_module.Empty:
            for w, process in processes.items():
                if process.exitcode not in (None, 0) and w not in reports and w not in errors:
                    errors[w] = (f"process exited with code {process.exitcode}", "")
            first_error_at = first_error_at or (now if errors else None)
            continue
        if kind == "round" and callback is not None:
            callback(*payload)
        elif kind == "done":
            reports[payload.worker] = payload
        elif kind == "error":
            errors[payload[0]] = payload[1:]
            first_error_at = first_error_at or now
    return reports, errors


# ------------------------------------------------------------------------------------- MNIST wiring

@dataclass
class MnistModel:
    """Picklable ``model_fn`` for :class:`SPSAJob`: an architecture of :mod:`components.training.models`
    for MNIST; first-epoch workers load ``base_state`` (a state-dict file), newcomers build an untrained
    model with a worker-specific seed. ``worker_kwargs`` overrides the architecture per worker id (a
    heterogeneous, i.e. misconfigured, fleet)."""

    meta: dict
    arch: str = "mlp"
    kwargs: dict = field(default_factory=dict)
    base_state: str | None = None
    worker_kwargs: dict = field(default_factory=dict)

    def __call__(self, worker_id: int, initial: bool) -> nn.Module:
        from components.training import models

        torch.manual_seed(1000 + worker_id)
        model = models.build(self.arch, self.meta, **{**self.kwargs, **self.worker_kwargs.get(worker_id, {})})
        if initial and self.base_state:
            model.load_state_dict(torch.load(self.base_state, weights_only=True))
        return model


@dataclass
class ArrayShards:
    """Picklable ``shard_fn``: worker ``w`` gets rows ``rows[w % n_shards :: n_shards]`` of a dataset folder."""

    data_dir: str
    rows: np.ndarray
    n_shards: int

    def __call__(self, worker_id: int) -> Shard:
        x, y = load_mnist(self.data_dir)
        mine = self.rows[worker_id % self.n_shards::self.n_shards]
        return Shard(torch.as_tensor(x[mine], dtype=torch.float32), torch.as_tensor(y[mine], dtype=torch.long))


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


def load_mnist(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(N, 784)`` and labels ``(N,)`` of a dataset folder in the work tree (no DVC needed)."""
    from components.datasets import read_raw

    x, y, _ = read_raw(lambda name, mode: open(Path(data_dir) / name, mode))
    return x, y


def prepare_mnist_job(data_dir: str | Path, out_dir: str | Path, arch: str = "mlp", arch_kwargs: dict | None = None,
                      base_labels: int = 100, base_epochs: int = 15, finetune_size: int = 2000, n_shards: int = 2,
                      config: SPSAConfig | None = None, seed: int = 0,
                      train_base: bool = True) -> tuple[SPSAJob, np.ndarray]:
    """A base model briefly trained (Adam) on ``base_labels`` labelled images, and a job that fine-tunes
    it with SPSA on ``finetune_size`` other images split into ``n_shards`` worker shards.

    ``train_base=False`` skips the base (for workers that will receive it from a peer).

    Returns:
        ``(job, held_out_rows)``: rows of the dataset used neither for the base nor for fine-tuning.
    """
    import json

    from components.training.train import train_classifier

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = json.loads((data_dir / "dataset.json").read_text())
    x, y = load_mnist(data_dir)
    order = np.random.default_rng(seed).permutation(len(x))
    base_rows, tune_rows = order[:base_labels], order[base_labels:base_labels + finetune_size]
    kwargs = dict(arch_kwargs or {})
    base_state = None
    if train_base:
        base = train_classifier(x[base_rows], y[base_rows], meta, arch, kwargs, base_epochs, 1e-3, 32, seed)
        base_state = str(out_dir / "base.pt")
        torch.save(base.state_dict(), base_state)
    job = SPSAJob(MnistModel(meta, arch, kwargs, base_state), ArrayShards(str(data_dir), tune_rows, n_shards),
                  config or SPSAConfig(seed=seed), out_dir=str(out_dir))
    return job, order[base_labels + finetune_size:]


# ------------------------------------------------------------------------------------------ tracking

def mlflow_callback() -> MetricsCallback:
    """Log each worker's round metrics to the active MLflow run as ``<metric>_worker_<id>`` at step = round."""
    import mlflow

    def log(worker: int, round_index: int, metrics: dict) -> None:
        mlflow.log_metrics({f"{k}_worker_{worker}": float(v) for k, v in metrics.items()}, step=round_index)

    return log


def summarise(run: SPSARun) -> dict[str, float]:
    """Bytes per worker per step vs a full fp32 gradient exchange, hash agreement, losses."""
    reports = list(run.workers.values())
    params = reports[0].parameters
    per_step = float(np.mean([r.gradient_bytes_per_step for r in reports]))
    verify_per_step = float(np.mean([r.bytes["verification"] / max(len(r.rounds), 1) for r in reports]))
    full = 4.0 * params
    return {
        "model_parameters": params,
        "bytes_per_step_spsa": per_step,
        "bytes_per_step_spsa_with_hash": per_step + verify_per_step,
        "bytes_per_step_full_gradient": full,
        "ratio": full / per_step,
        "ratio_with_hash": full / (per_step + verify_per_step),
        "hashes_agree": float(run.hashes_agree()),
        "wall_s": run.wall_s,
    }


def log_summary(run: SPSARun) -> None:
    """Summary metrics (see :func:`summarise`), per-worker byte totals and gradient bytes per step on
    the active MLflow run."""
    import mlflow

    mlflow.log_metrics(summarise(run))
    for worker, report in run.workers.items():
        mlflow.log_metrics({f"{k}_bytes_worker_{worker}": float(v) for k, v in report.bytes.items()})
        mlflow.log_metric(f"gradient_bytes_per_step_worker_{worker}", report.gradient_bytes_per_step)


@contextmanager
def tracked_run(run_name: str, params: dict | None = None) -> Iterator[Any]:
    """An MLflow run with system metrics (CPU, memory, ...) sampled every second when psutil is installed."""
    import importlib.util

    import mlflow

    system = importlib.util.find_spec("psutil") is not None
    if system:
        mlflow.set_system_metrics_sampling_interval(1)
    with mlflow.start_run(run_name=run_name, log_system_metrics=system) as run:
        if params:
            mlflow.log_params(params)
        yield run


# ----------------------------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    """Fine-tune the MNIST MLP with SPSA: ``torchrun --nproc-per-node 2 -m components.training.spsa``
    (one membership epoch, torchrun's group), or without torchrun (spawns ``--workers`` processes)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--data", default="data/mnist")
    parser.add_argument("--out", default=".distillery/spsa")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--samples-per-worker", type=int, default=SPSAConfig.samples_per_worker)
    parser.add_argument("--lr", type=float, default=SPSAConfig.lr)
    args = parser.parse_args(argv)
    config = SPSAConfig(samples_per_worker=args.samples_per_worker, lr=args.lr)
    under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ
    world = int(os.environ.get("WORLD_SIZE", args.workers))
    rank = int(os.environ.get("RANK", 0))
    # under torchrun only rank 0 trains the base; the others receive it by broadcast when they meet
    out = Path(args.out) / (f"rank-{rank}" if under_torchrun else "")
    job, _ = prepare_mnist_job(args.data, out, n_shards=world, config=config, train_base=rank == 0)
    plan = [Epoch(args.rounds, tuple(range(world)))]
    if under_torchrun:
        torch.set_num_threads(1)
        report = run_worker(rank, plan, job, EnvRendezvous(), holders=[0])
        reports = {report.worker: report}
    else:
        reports = launch(plan, job).workers
    for r in reports.values():
        print(json.dumps({"worker": r.worker, "rounds": len(r.rounds), "shard_loss_first": r.shard_losses[0][1],
                          "shard_loss_last": r.shard_losses[-1][1], "final_hash": r.hashes[-1][1][:16],
                          "bytes": r.bytes, "full_gradient_bytes_per_step": 4 * r.parameters}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
