"""PPP clustering: k-means validated by a Gaussian mixture started from it; k chosen by agreement.

Methods.md §3 "PPP (k-means + GMM)": partition with k-means, validate the partition with a GMM
initialised from it (``GaussianMixture(means_init=kmeans.cluster_centers_)``), and choose ``k``
where both agree and are stable across seeds -- no ``k`` fixed in advance. For every ``k`` in the
range and every seed:

* ``agreement(k)``: adjusted Rand index between the k-means partition and the GMM's (a GMM that
  moves away from the k-means partition says the k-means clusters are not Gaussian-like groups);
* ``stability(k)``: mean adjusted Rand index between the k-means partitions of different seeds.

``k`` is the largest one whose ``agreement * stability`` is within ``tolerance`` of the best: with
well-separated groups every coarser ``k`` is agreed and stable too (k-means merges whole groups
the same way every time), and the finest such partition is the one that tells the groups apart.
Features are
standardised for tabular data and, when wider than ``components``, projected by PCA (k-means and a
diagonal GMM on 784 raw pixels would mostly measure pixel noise).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from components.curation.provenance import CurationResult
from components.datasets import LabelledData


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


def ppp(data: LabelledData, *, seed: int = 0, context=None, k_min: int = 2, k_max: int = 12, seeds: int = 3,
        components: int | None = 20, covariance: str = "diag", tolerance: float = 0.05) -> CurationResult:
    """PPP clustering of the dataset; the data is unchanged, ``meta["ppp"]`` gets the chosen ``k``
    and every item's cluster (``clusters``, in row order)."""
    if covariance not in ("full", "tied", "diag", "spherical"):
        raise ValueError(f"ppp: covariance must be full, tied, diag or spherical, got {covariance!r}")
    if not 2 <= k_min <= k_max:  # k = 1 agrees with itself trivially and would always win
        raise ValueError(f"ppp: need 2 <= k_min <= k_max, got k_min={k_min}, k_max={k_max}")
    if k_max > len(data.labels):
        raise ValueError(f"ppp: k_max={k_max} exceeds the {len(data.labels)} items")
    x = embed(data.features, data.meta.get("kind") == "tabular", components, seed)
    result = choose_k(x, range(k_min, k_max + 1), seeds, covariance, seed, tolerance)
    sizes = np.bincount(result.labels, minlength=result.k)
    meta = {**data.meta, "ppp": {"k": result.k, "clusters": result.labels.tolist()}}
    per_k = [{"k": k, "agreement_ari": a, "stability_ari": s, "score": sc}
             for k, a, s, sc in zip(result.k_values, result.agreement, result.stability, result.score)]
    stats = {"chosen_k": result.k, "agreement_at_k": result.agreement[result.k_values.index(result.k)],
             "stability_at_k": result.stability[result.k_values.index(result.k)],
             "smallest_cluster": int(sizes.min()), "largest_cluster": int(sizes.max())}
    return CurationResult(LabelledData(data.features, data.labels, data.ids, meta), stats,
                          {"ppp.json": {"chosen_k": result.k, "per_k": per_k, "cluster_sizes": sizes.tolist()},
                           "ppp_agreement.png": agreement_figure(result)})


def agreement_figure(result: PPPResult):
    from components.evaluation.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(result.k_values, result.agreement, marker="o", label="k-means vs GMM (ARI)")
    ax.plot(result.k_values, result.stability, marker="s", label="k-means across seeds (ARI)")
    ax.plot(result.k_values, result.score, marker="^", label="score = agreement x stability")
    ax.axvline(result.k, color="black", linestyle="--", label=f"chosen k = {result.k}")
    ax.set_xlabel("k")
    ax.set_ylabel("adjusted Rand index")
    ax.set_title("PPP: choosing k")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
