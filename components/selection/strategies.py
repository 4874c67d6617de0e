"""Active-learning selection: the strategy base class and the uncertainty baselines.

Baselines as surveyed by Settles, "Active Learning Literature
Survey", University of Wisconsin-Madison TR 1648, 2009:

- random: uniform sampling without replacement;
- least-confidence: ``1 - p_max`` (Lewis & Gale, SIGIR 1994), highest first;
- entropy: ``-sum_c p_c log p_c`` (Shannon 1948), highest first;
- margin: ``p_1 - p_2`` between the two most probable classes (Scheffer et al., IDA 2001),
  smallest first.

As in baal's heuristics, :class:`Strategy` owns validation, ranking and tie-breaking; a scoring
strategy implements only :meth:`Strategy.score`, where a higher score means more worth labelling.
Batch-aware strategies (BADGE, core-set, NeurOnAl) override :meth:`Strategy.pick` instead; wrappers
(AnchorAL, stochastic acquisition) hold another strategy and change what it sees or how it ranks.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from distillery.components.selection.pool import Pool, as_pool


class Strategy:
    """Pick ``batch_size`` distinct pool positions, reproducibly for ``seed``.

    Args:
        seed: seeds every random draw of the strategy (tie-breaking, sampling, subsets).
    """

    name = "base"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def score(self, pool: Pool, rng: np.random.Generator) -> np.ndarray:
        """Informativeness ``(N,)`` of each pool item; higher is more worth labelling."""
        raise NotImplementedError

    def pick(self, pool: Pool, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(positions (batch_size,), scores (N,))``; the default ranks :meth:`score` top-first."""
        scores = self.checked_scores(pool, rng)
        return top_k(scores, batch_size, rng), scores

    def checked_scores(self, pool: Pool, rng: np.random.Generator) -> np.ndarray:
        scores = np.asarray(self.score(pool, rng))
        if scores.shape != (len(pool),):
            raise ValueError(f"{self.name} returned scores of shape {scores.shape}, expected ({len(pool)},)")
        bad = int((~np.isfinite(scores)).sum())
        if bad:
            raise ValueError(f"{self.name} produced {bad} NaN or infinite scores (of {len(scores)})")
        return scores

    def select(self, pool: Pool | np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Pick ``batch_size`` pool positions.

        Args:
            pool: a :class:`Pool`, or for model-free strategies an ``(N, K)`` probability array.
            batch_size: how many to pick, ``1 <= batch_size <= N``.
        Returns:
            ``(positions, scores)``: ``(batch_size,)`` distinct int64 positions into the pool, most
            informative first where the strategy ranks, and the ``(N,)`` per-item scores (for logging).
        """
        pool = as_pool(pool)
        pool.validate()
        n = len(pool)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or not 1 <= batch_size <= n:
            raise ValueError(f"batch_size must be between 1 and the pool size {n}, got {batch_size!r}")
        positions, scores = self.pick(pool, int(batch_size), np.random.default_rng(self.seed))
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) != batch_size or len(np.unique(positions)) != batch_size:
            raise RuntimeError(f"{self.name} returned {len(positions)} positions, "
                               f"{len(np.unique(positions))} distinct, for a batch of {batch_size}")
        return positions, np.asarray(scores, dtype=np.float64)


def top_k(scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of the ``k`` highest scores, highest first, ties broken at random.

    O(N) selection (``np.partition``) plus a sort of the k winners: on a 1M pool a full sort would
    cost more than scoring does. Ties are broken at random, not by position, so the pick does not
    depend on the pool's order.
    """
    n = len(scores)
    kth = np.partition(scores, n - k)[n - k]
    above = np.flatnonzero(scores > kth)
    tied = np.flatnonzero(scores == kth)
    chosen = np.concatenate([above, rng.choice(tied, k - len(above), replace=False)])
    return chosen[np.lexsort((rng.random(k), -scores[chosen]))]


def resolve(name: str, seed: int, params: dict[str, Any] | None = None) -> Strategy:
    """A registered selection strategy by name (what wrappers use to build the strategy they wrap)."""
    from distillery.components.core import registry

    method = registry.get("selection", name)
    return method.load()(seed=seed, **method.resolve_params(params))


class RandomSampling(Strategy):
    name = "random"

    def score(self, pool, rng):
        return rng.random(len(pool))


class LeastConfidence(Strategy):
    name = "least_confidence"

    def score(self, pool, rng):
        return 1.0 - pool.probs().max(axis=1)


class EntropySampling(Strategy):
    name = "entropy"

    def score(self, pool, rng):
        from scipy.special import entr

        return entr(pool.probs()).sum(axis=1)


class MarginSampling(Strategy):
    name = "margin"

    def score(self, pool, rng):
        probs = pool.probs()
        if probs.shape[1] == 1:
            return -probs[:, 0]
        top2 = np.partition(probs, probs.shape[1] - 2, axis=1)[:, -2:]
        return -(top2[:, 1] - top2[:, 0])


def is_scoring(strategy: Strategy) -> bool:
    """True when ``strategy`` ranks a per-item score (it does not override :meth:`Strategy.pick`),
    so a wrapper may sample from, or stream, its scores."""
    return type(strategy).pick is Strategy.pick
