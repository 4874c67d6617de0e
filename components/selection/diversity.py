"""Batch-diverse selection on the model's representations: BADGE and core-set.

- BADGE (Ash, Zhang, Krishnamurthy, Langford & Agarwal, "Deep Batch Active Learning by Diverse,
  Uncertain Gradient Lower Bounds", ICLR 2020): k-means++ seeding on the gradient embeddings
  ``g_i = (onehot(y_hat_i) - p_i) ⊗ h_i``, the gradient of the cross-entropy at the predicted label
  with respect to the last linear layer's weights (up to sign). Their norm measures uncertainty, their
  spread diversity.
- Core-set (Sener & Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set
  Approach", ICLR 2018): greedy k-center on the penultimate features, i.e. repeatedly label the pool
  item farthest from everything labelled or chosen so far (the paper's 2-approximation).

Shapes: ``p = pool.probs()`` ``(N, K)``, ``h = pool.embeddings()`` ``(N, H)``, labelled embeddings
``(L, H)``; both strategies return ``(b,)`` positions in pick order and ``(N,)`` scores.
"""
from __future__ import annotations

import numpy as np

from distillery.components.selection.strategies import Strategy, top_k

# pool x labelled distances are computed in (BLOCK, BLOCK) tiles: 4M float32, 16 MB per tile
BLOCK = 2048


class BADGE(Strategy):
    """k-means++ seeding on implicit gradient embeddings; scores = gradient-embedding norms ``(N,)``.

    The ``(N, K*H)`` embedding matrix is never built (5 GB for a 1M pool with K=10, H=128): for outer
    products ``||a ⊗ h||² = ||a||² ||h||²`` and ``<a_i ⊗ h_i, a_j ⊗ h_j> = (a_i·a_j)(h_i·h_j)``, so the
    squared distance of every item to a new centre costs two matrix-vector products, O(N(K+H)).

    Seeding: the first centre is the item with the largest gradient-embedding norm (ties at random);
    each next centre is drawn with probability proportional to its squared distance to the nearest
    chosen centre. Chosen items have distance 0, so picks are distinct; when every unchosen item is
    at distance 0 (duplicates of centres) the next one is drawn uniformly among the unchosen.
    """

    name = "badge"

    def pick(self, pool, batch_size, rng):
        emb = np.asarray(pool.embeddings(), dtype=np.float32)  # first: one forward fills probs too
        residual = gradient_residual(pool.probs())
        sq_norms = (residual.astype(np.float64) ** 2).sum(1) * (emb.astype(np.float64) ** 2).sum(1)
        centres = kmeanspp_seeding(residual, emb, sq_norms, batch_size, rng)
        return centres, np.sqrt(sq_norms)


def gradient_residual(probs: np.ndarray) -> np.ndarray:
    """``onehot(argmax p) - p``, ``(N, K)`` float32: the class factor of the gradient embedding."""
    residual = -np.asarray(probs, dtype=np.float32)
    residual[np.arange(len(residual)), residual.argmin(1)] += 1.0  # argmin of -p = predicted class
    return residual


def outer_sq_distances(a: np.ndarray, h: np.ndarray, sq_norms: np.ndarray, centre: int) -> np.ndarray:
    """``(N,)`` squared distances ``||a_i ⊗ h_i - a_c ⊗ h_c||²`` without forming any ``a ⊗ h``.

    Args:
        a: ``(N, K)`` class factors; h: ``(N, H)`` embedding factors;
        sq_norms: ``(N,)`` ``||a_i||² ||h_i||²``; centre: the position c.
    """
    inner = (a @ a[centre]).astype(np.float64) * (h @ h[centre])
    return np.maximum(sq_norms + sq_norms[centre] - 2.0 * inner, 0.0)  # rounding can dip below 0


def kmeanspp_seeding(a: np.ndarray, h: np.ndarray, sq_norms: np.ndarray, k: int,
                     rng: np.random.Generator) -> np.ndarray:
    """``(k,)`` distinct centres by k-means++ seeding on the implicit embeddings ``a_i ⊗ h_i``."""
    chosen = np.zeros(len(a), dtype=bool)
    centres = [int(top_k(sq_norms, 1, rng)[0])]
    nearest = outer_sq_distances(a, h, sq_norms, centres[0])
    for _ in range(k - 1):
        nearest[centres[-1]] = 0.0  # exact zero for the chosen (the formula only rounds to ~0)
        chosen[centres[-1]] = True
        centres.append(draw_proportional(nearest, chosen, rng))
        np.minimum(nearest, outer_sq_distances(a, h, sq_norms, centres[-1]), out=nearest)
    return np.asarray(centres, dtype=np.int64)


def draw_proportional(weights: np.ndarray, chosen: np.ndarray, rng: np.random.Generator) -> int:
    """One position drawn with probability ∝ ``weights`` (>= 0, 0 on ``chosen``); uniform among the
    unchosen when all weights are 0. Inverse-CDF sampling: one uniform draw, O(N)."""
    cumulative = np.cumsum(weights)
    total = cumulative[-1]
    if not total > 0:
        return int(rng.choice(np.flatnonzero(~chosen)))
    # side="right" skips zero-weight items: their cumulative value equals their predecessor's
    position = int(np.searchsorted(cumulative, rng.random() * total, side="right"))
    if position == len(weights):  # u * total rounded up to total: take the last weighted item
        position = int(np.flatnonzero(weights)[-1])
    return position


class CoreSet(Strategy):
    """Greedy k-center on penultimate features; scores = distance to the nearest labelled item ``(N,)``.

    Each step takes the item farthest from its nearest centre (labelled items and earlier picks;
    ties at random) and lowers every item's distance by its distance to the new centre, O(NH) per
    pick. Cold start (no labelled items): the first centre is a seeded random pool item -- the
    largest-norm item would usually be an outlier -- and the scores are distances to that item.
    """

    name = "coreset"

    def pick(self, pool, batch_size, rng):
        emb = np.asarray(pool.embeddings(), dtype=np.float32)
        sq_norms = (emb.astype(np.float64) ** 2).sum(1)
        if pool.labelled_features is None or len(pool.labelled_features) == 0:
            first = int(rng.integers(len(emb)))
            nearest = sq_distances_to(emb, sq_norms, first)
            centres = [first]
        else:
            nearest = min_sq_distances(emb, np.asarray(pool.labelled_embeddings(), dtype=np.float32))
            centres = []
        scores = np.sqrt(nearest)
        nearest[centres] = -1.0  # below every real distance: never picked again
        while len(centres) < batch_size:
            centres.append(argmax_random_ties(nearest, rng))
            np.minimum(nearest, sq_distances_to(emb, sq_norms, centres[-1]), out=nearest)
            nearest[centres[-1]] = -1.0
        return np.asarray(centres, dtype=np.int64), scores


def sq_distances_to(x: np.ndarray, sq_norms: np.ndarray, centre: int) -> np.ndarray:
    """``(N,)`` squared Euclidean distances of ``x`` ``(N, H)`` to ``x[centre]``, as one matvec."""
    return np.maximum(sq_norms + sq_norms[centre] - 2.0 * (x @ x[centre]), 0.0)


def min_sq_distances(x: np.ndarray, y: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """``(N,)`` squared distance of each row of ``x`` ``(N, H)`` to its nearest row of ``y`` ``(L, H)``.

    Tiled ``(block, block)`` so memory stays bounded for any N and L; each tile is one GEMM in the
    ``|x|² + |y|² - 2 x·y`` form.
    """
    y_sq = (y.astype(np.float64) ** 2).sum(1)
    out = np.empty(len(x), dtype=np.float64)
    for i in range(0, len(x), block):
        xb = x[i:i + block]
        xb_sq = (xb.astype(np.float64) ** 2).sum(1)
        best = np.full(len(xb), np.inf)
        for j in range(0, len(y), block):
            tile = y_sq[j:j + block] - 2.0 * (xb @ y[j:j + block].T)
            np.minimum(best, tile.min(1), out=best)
        out[i:i + block] = np.maximum(best + xb_sq, 0.0)
    return out


def argmax_random_ties(values: np.ndarray, rng: np.random.Generator) -> int:
    """Position of the maximum, ties broken at random (so the pick does not follow pool order)."""
    ties = np.flatnonzero(values == values.max())
    return int(ties[0] if len(ties) == 1 else rng.choice(ties))
