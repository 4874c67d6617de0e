"""Stochastic batch acquisition: sample the batch from a base strategy's scores instead of taking
the top b.

Kirsch, Farquhar, Atighehchian, Jesson, Branchaud-Charron & Gal, "Stochastic Batch Acquisition:
A Simple Baseline for Deep Active Learning", TMLR 2023. Top-b picks many near-duplicates when
scores are computed once per batch; sampling without replacement with

- softmax: ``p_i ∝ exp(β s_i)``,
- power: ``p_i ∝ s_i^β`` (scores must be > 0),
- soft-rank: ``p_i ∝ r_i^-β`` (``r_i`` = 1-based rank, highest score first)

matches BatchBALD/BADGE at a fraction of their cost. Sampling b items without replacement from
``p ∝ exp(logit)`` is the Gumbel-top-k trick: perturb each logit with independent Gumbel(0, 1)
noise and take the top b. ``β = 0`` is uniform random sampling.
"""
from __future__ import annotations

import numpy as np

from distillery.components.selection.strategies import (
    Strategy,
    is_scoring,
    resolve,
    top_k,
)


def gumbel_top_k(logits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` distinct positions sampled without replacement with ``p ∝ exp(logits)`` ``(N,)``."""
    return top_k(logits + rng.gumbel(size=len(logits)), k, rng)


def descending_ranks(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1-based rank ``(N,)`` of each score, highest first; equal scores get distinct random ranks."""
    order = np.lexsort((rng.random(len(scores)), -scores))
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    return ranks


class StochasticAcquisition(Strategy):
    """Sample the batch from the scores of ``base`` (any scoring strategy, by registered name).

    Args:
        base: name of the wrapped strategy; it must score items (not pick a batch itself).
        base_params: the wrapped strategy's parameters.
        beta: sharpness; 0 is uniform, larger approaches top-b.
    """

    name = "stochastic"
    mode = ""

    def __init__(self, seed: int = 0, base: str = "entropy", base_params: dict | None = None, beta: float = 1.0):
        super().__init__(seed)
        self.base = base
        self.base_params = base_params
        self.beta = beta

    def pick(self, pool, batch_size, rng):
        if not np.isfinite(self.beta) or self.beta < 0:
            raise ValueError(f"{self.name}: beta must be a finite number >= 0, got {self.beta!r}")
        base = resolve(self.base, self.seed, self.base_params)
        if not is_scoring(base):
            raise ValueError(f"{self.name} samples from per-item scores; {self.base!r} picks a whole batch "
                             f"itself (choose a scoring strategy such as entropy, margin, bald, expected_gradnorm)")
        scores = base.checked_scores(pool, rng)
        return gumbel_top_k(self.logits(scores, rng), batch_size, rng), scores

    def logits(self, scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


class SoftmaxSampling(StochasticAcquisition):
    name = "softmax_sampling"

    def logits(self, scores, rng):
        return self.beta * scores


class PowerSampling(StochasticAcquisition):
    name = "power_sampling"

    def logits(self, scores, rng):
        bad = int((scores <= 0).sum())
        if bad:
            raise ValueError(f"power_sampling needs scores > 0, but {self.base!r} gave {bad} of {len(scores)} "
                             f"items a score <= 0 (use softmax_sampling or softrank_sampling for this base)")
        return self.beta * np.log(scores)


class SoftRankSampling(StochasticAcquisition):
    name = "softrank_sampling"

    def logits(self, scores, rng):
        return -self.beta * np.log(descending_ranks(scores, rng))
