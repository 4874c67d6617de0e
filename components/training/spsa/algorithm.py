"""The SPSA maths of shared-randomness fine-tuning: estimate, byte quantisation, shared randomness, update.

Zelikman, Huang, Liang, Haber, Goodman, "Just One Byte (per gradient): A Note on Low-Bandwidth
Decentralized Language Model Finetuning Using Shared Randomness", arXiv:2306.10015, 2023 (the
decentralised extension of MeZO's SPSA, Malladi et al., "Fine-Tuning Language Models with Just Forward
Passes", NeurIPS 2023).

Round ``t``: machine ``m`` draws, for each of its samples ``s``, a direction ``z ~ N(0, I_P)`` over all
``P`` parameters from an RNG seeded by ``(t, m, s)``; it computes the projected gradient
``g = (L(θ + εz) − L(θ − εz)) / 2ε`` (ε = 1e-3) on its own data and sends only ``g``, quantised to one
byte (sign + 7-bit log-magnitude code). Every machine decodes all ``N`` bytes, regenerates each ``z``
from its seed and applies ``θ ← θ − lr · Σ g·z / √N`` in the same order, so every copy of ``θ`` stays
bit-identical; a 32-byte hash of the weights (:func:`weights_hash`) checks exactly that.

Nothing here communicates: the worker processes that exchange the bytes are in
:mod:`distillery.components.training.spsa.workers`.
"""
from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

EPS = 1e-3
HASH_BYTES = 32  # sha256


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
