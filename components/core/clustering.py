"""Clustering shared by curation (PPP) and selection (AnchorAL anchors): k chosen by k-means/GMM
agreement and stability, and the items nearest to cluster centres."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np


@dataclass
class PPPResult:
    """Attributes: k; labels ``(N,)`` and centres ``(k, D')`` of the chosen k-means partition (first
    seed, in the space the clustering ran in); per-k agreement, stability and score."""

    k: int
    labels: np.ndarray
    centres: np.ndarray
    k_values: list[int]
    agreement: list[float]
    stability: list[float]
    score: list[float]


def choose_k(x: np.ndarray, k_values, seeds: int = 3, covariance: str = "diag", seed: int = 0,
             tolerance: float = 0.05) -> PPPResult:
    """Run PPP on ``x`` ``(N, D)`` for every ``k`` in ``k_values`` (each ``1 <= k <= N``)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score
    from sklearn.mixture import GaussianMixture

    k_values = [int(k) for k in k_values]
    if not k_values or min(k_values) < 1 or max(k_values) > len(x):
        raise ValueError(f"ppp: every k must be in [1, {len(x)}] (number of items), got {k_values}")
    if seeds < 1:
        raise ValueError(f"ppp: seeds must be >= 1, got {seeds}")
    agreement, stability, fits = [], [], []
    for k in k_values:
        partitions, agree = [], []
        for s in range(seeds):
            kmeans = KMeans(k, n_init=1, random_state=seed + s).fit(x)
            gmm = GaussianMixture(k, covariance_type=covariance, means_init=kmeans.cluster_centers_,
                                  random_state=seed + s, reg_covar=1e-4).fit(x)
            agree.append(adjusted_rand_score(kmeans.labels_, gmm.predict(x)) if k > 1 else 1.0)
            partitions.append(kmeans)
        pairs = [adjusted_rand_score(a.labels_, b.labels_) for a, b in combinations(partitions, 2)]
        agreement.append(float(np.mean(agree)))
        stability.append(float(np.mean(pairs)) if pairs else 1.0)
        fits.append(partitions[0])
    score = [a * s for a, s in zip(agreement, stability)]
    best = int(np.flatnonzero(np.asarray(score) >= max(score) - tolerance)[-1])
    return PPPResult(k_values[best], fits[best].labels_.astype(np.int64), fits[best].cluster_centers_,
                     k_values, agreement, stability, score)


def embed(features: np.ndarray, tabular: bool, components: int | None, seed: int = 0) -> np.ndarray:
    """The space PPP clusters in: standardised (tabular) and PCA-projected when wider than ``components``."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    if tabular:
        x = StandardScaler().fit_transform(x)
    if components and x.shape[1] > components:
        x = PCA(components, random_state=seed).fit_transform(x)
    return x


def closest_to_centres(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Distinct row positions of ``x`` ``(N, D)`` nearest to each of ``centres`` ``(k, D)``."""
    from scipy.spatial.distance import cdist

    distances = cdist(centres, x)
    chosen: list[int] = []
    for row in distances:  # greedy, so two centres never share one item
        for position in np.argsort(row):
            if position not in chosen:
                chosen.append(int(position))
                break
    return np.array(chosen, dtype=np.int64)
