"""AnchorAL: restrict any strategy to a small subpool retrieved around labelled anchors.

Lesci & Vlachos, "AnchorAL: Computationally Efficient Active Learning for Large and Imbalanced
Datasets", NAACL 2024 (ref. code pietrolesci/anchoral). Per query:

1. if the pool has at most ``subpool_size`` (M) items, run the base strategy on all of it;
2. cold start (no labels yet): random;
3. per class, pick ``anchors_per_class`` (A) anchors among its labelled items by k-means++ seeding
   on their embeddings (all of them when the class has fewer); with ``anchor_method="ppp"`` instead
   the labelled items closest to the centres of a PPP clustering of the class (k-means validated by
   a GMM, ``distillery.components.curation_step.ppp``: its own k <= A, so a class that forms 3 groups gets 3 anchors);
4. for each anchor retrieve its ``neighbours`` (k) nearest unlabelled items by cosine similarity;
5. every retrieved item scores ``1 - mean cosine distance`` over the anchors that found it; the
   subpool is the top M by that score (``subpool_sampling="softmax"``: M sampled with
   ``p ∝ exp(score)`` instead);
6. run the base strategy on the subpool.

Anchors come from every class, so minority classes get a share of the subpool however rare they
are in the pool: the paper's answer to imbalanced pools. Retrieval uses faiss (exact
inner-product search on L2-normalised embeddings, i.e. cosine): scanning a 1M-item pool for a few
hundred anchors is one matrix product, and needs no index build per round.
"""
from __future__ import annotations

import numpy as np

from distillery.components.selection.pool import Pool
from distillery.components.selection.stochastic import gumbel_top_k
from distillery.components.selection.strategies import Strategy, resolve, top_k

EMBEDDINGS = ("model", "features")
ANCHOR_METHODS = ("kmeans++", "ppp")
SUBPOOL_SAMPLING = ("top", "softmax")


class AnchorAL(Strategy):
    """Run ``base`` on the subpool retrieved around per-class anchors.

    Args:
        base: registered name of the wrapped strategy (any strategy, batch-aware ones included).
        base_params: the wrapped strategy's parameters.
        subpool_size: M, the largest pool the base strategy ever sees.
        neighbours: k, unlabelled items retrieved per anchor.
        anchors_per_class: A.
        subpool_sampling: ``"top"`` (top M by similarity) or ``"softmax"``.
        embedding: ``"model"`` (the model's penultimate features) or ``"features"`` (raw features).
        anchor_method: ``"kmeans++"`` (the paper) or ``"ppp"`` (see :func:`select_anchors`).
    """

    name = "anchoral"

    def __init__(self, seed: int = 0, base: str = "entropy", base_params: dict | None = None,
                 subpool_size: int = 10000, neighbours: int = 50, anchors_per_class: int = 10,
                 subpool_sampling: str = "top", embedding: str = "model", anchor_method: str = "kmeans++"):
        super().__init__(seed)
        self.base = base
        self.base_params = base_params
        self.subpool_size = subpool_size
        self.neighbours = neighbours
        self.anchors_per_class = anchors_per_class
        self.subpool_sampling = subpool_sampling
        self.embedding = embedding
        self.anchor_method = anchor_method

    def pick(self, pool, batch_size, rng):
        self._check_params()
        base = resolve(self.base, self.seed, self.base_params)
        if len(pool) <= self.subpool_size:
            return base.pick(pool, batch_size, rng)
        if pool.num_labelled == 0:
            # cold start: no anchors exist yet
            return rng.choice(len(pool), batch_size, replace=False), np.zeros(len(pool))
        positions = self.subpool(pool, batch_size, rng)
        picked, sub_scores = base.pick(pool.subset(positions), batch_size, rng)
        # Items outside the subpool were never scored by the base strategy; they get the lowest
        # score seen so that any ranking of the logged scores puts them last.
        scores = np.full(len(pool), float(np.min(sub_scores)))
        scores[positions] = sub_scores
        return positions[picked], scores

    def _check_params(self) -> None:
        for key in ("subpool_size", "neighbours", "anchors_per_class"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"anchoral: {key} must be an integer >= 1, got {value!r}")
        if self.subpool_sampling not in SUBPOOL_SAMPLING:
            raise ValueError(f"anchoral: subpool_sampling must be one of {SUBPOOL_SAMPLING}, "
                             f"got {self.subpool_sampling!r}")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"anchoral: embedding must be one of {EMBEDDINGS}, got {self.embedding!r}")
        if self.anchor_method not in ANCHOR_METHODS:
            raise ValueError(f"anchoral: anchor_method must be one of {ANCHOR_METHODS}, got {self.anchor_method!r}")

    def subpool(self, pool: Pool, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """Positions ``(m,)`` into ``pool`` of the subpool, ``batch_size <= m <= subpool_size``."""
        pool_emb, labelled_emb = self._embeddings(pool)
        anchors = select_anchors(labelled_emb, pool.labelled_labels, self.anchors_per_class, rng, self.anchor_method)
        found, similarity = retrieve(pool_emb, labelled_emb[anchors], self.neighbours)
        m = min(self.subpool_size, len(found))
        if self.subpool_sampling == "top":
            chosen = top_k(similarity, m, rng)
        else:
            chosen = gumbel_top_k(similarity, m, rng)
        positions = found[chosen]
        if len(positions) < batch_size:
            # Fewer items retrieved than the batch needs (few anchors, small k): top up at random
            # from the rest of the pool so the contract of exactly batch_size picks holds.
            rest = np.setdiff1d(np.arange(len(pool)), positions)
            positions = np.concatenate([positions, rng.choice(rest, batch_size - len(positions), replace=False)])
        return positions

    def _embeddings(self, pool: Pool) -> tuple[np.ndarray, np.ndarray]:
        if self.embedding == "model":
            return pool.embeddings(), pool.labelled_embeddings()
        if pool.features is None or pool.labelled_features is None:
            raise ValueError("anchoral with embedding='features' needs the pool and labelled features")
        return pool.features, pool.labelled_features


def select_anchors(embeddings: np.ndarray, labels: np.ndarray, per_class: int,
                   rng: np.random.Generator, method: str = "kmeans++") -> np.ndarray:
    """Positions of the anchors among the labelled items: per class, k-means++ seeds on
    ``embeddings`` ``(L, H)`` (every item of a class with at most ``per_class`` items); with
    ``method="ppp"`` the items closest to the centres of the class's PPP clustering, whose k
    (``2..per_class``) PPP chooses -- at most ``per_class`` anchors either way."""
    from sklearn.cluster import kmeans_plusplus

    from distillery.components.core.clustering import choose_k, closest_to_centres

    anchors = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) <= per_class:
            anchors.append(members)
            continue
        x = np.asarray(embeddings[members], dtype=np.float64)
        state = int(rng.integers(2**31 - 1))
        if method == "ppp":
            centres = (x.mean(axis=0, keepdims=True) if per_class == 1
                       else choose_k(x, range(2, per_class + 1), seeds=2, seed=state).centres)
            anchors.append(members[closest_to_centres(x, centres)])
            continue
        _, seeds = kmeans_plusplus(x, per_class, random_state=state)
        anchors.append(members[seeds])
    return np.concatenate(anchors)


def retrieve(pool_emb: np.ndarray, anchor_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine k-NN of every anchor in the pool.

    Args:
        pool_emb: ``(N, H)`` pool embeddings.
        anchor_emb: ``(A, H)`` anchor embeddings.
    Returns:
        ``(found, similarity)``: the distinct retrieved pool positions ``(m,)`` and each one's
        ``1 - mean cosine distance`` over the anchors that retrieved it ``(m,)``.
    """
    import faiss

    index = faiss.IndexFlatIP(pool_emb.shape[1])
    index.add(_unit_rows(pool_emb))
    cosine, ids = index.search(_unit_rows(anchor_emb), min(k, len(pool_emb)))
    ids, cosine = ids.ravel(), cosine.ravel().astype(np.float64)
    found, inverse = np.unique(ids, return_inverse=True)
    mean_distance = np.bincount(inverse, weights=1.0 - cosine) / np.bincount(inverse)
    return found, 1.0 - mean_distance


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
