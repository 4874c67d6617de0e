"""Active-learning selection strategies (uncertainty sampling).

Baselines from ``../shared/methods.md`` §1, as surveyed by Settles, "Active Learning Literature
Survey", University of Wisconsin-Madison TR 1648, 2009:

- random: uniform sampling without replacement;
- entropy: ``-sum_c p_c log p_c`` (Shannon 1948), highest first;
- margin: ``p_1 - p_2`` between the two most probable classes (Scheffer et al., IDA 2001),
  smallest first.

As in baal's heuristics, :class:`Strategy` owns validation, ranking and tie-breaking; a strategy
implements only :meth:`Strategy.score`, where a higher score means more worth labelling.
"""
from __future__ import annotations

import numpy as np


class Strategy:
    """Rank pool items by ``score`` and return the top ``batch_size``, distinct and seeded.

    Args:
        seed: seeds the tie-breaking (and the random strategy's draws).
    """

    name = "base"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def score(self, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Informativeness ``(N,)`` of each pool item from its class probabilities ``(N, K)``."""
        raise NotImplementedError

    def select(self, probs: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Pick ``batch_size`` pool positions.

        Args:
            probs: ``(N, K)`` predicted class probabilities for the N pool items.
            batch_size: how many to pick, ``1 <= batch_size <= N``.
        Returns:
            ``(indices, scores)``: ``(batch_size,)`` distinct positions into the pool, most
            informative first, and the ``(N,)`` scores of every item (for logging).
        """
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2:
            raise ValueError(f"probs must be (N, K), got shape {probs.shape}")
        n = len(probs)
        if n == 0:
            raise ValueError("the unlabelled pool is empty: nothing to select")
        if not 1 <= batch_size <= n:
            raise ValueError(f"batch_size must be between 1 and the pool size {n}, got {batch_size}")
        if not np.isfinite(probs).all():
            raise ValueError(f"probs contain {int((~np.isfinite(probs)).sum())} NaN or infinite values")
        rng = np.random.default_rng(self.seed)
        scores = self.score(probs, rng)
        if not np.isfinite(scores).all():
            raise ValueError(f"{self.name} produced {int((~np.isfinite(scores)).sum())} non-finite scores")
        # Ties (e.g. several items with identical predictions) are broken at random, not by position,
        # so the pick does not depend on the pool's order.
        order = np.lexsort((rng.random(n), -scores))
        return order[:batch_size], scores


class RandomSampling(Strategy):
    name = "random"

    def score(self, probs, rng):
        return rng.random(len(probs))


class EntropySampling(Strategy):
    name = "entropy"

    def score(self, probs, rng):
        from scipy.special import entr

        return entr(probs).sum(axis=1)


class MarginSampling(Strategy):
    name = "margin"

    def score(self, probs, rng):
        top2 = np.sort(probs, axis=1)[:, -2:] if probs.shape[1] > 1 else np.hstack([np.zeros_like(probs), probs])
        return -(top2[:, 1] - top2[:, 0])
