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

import numpy as np

from distillery.components.core.clustering import PPPResult, choose_k, embed
from distillery.components.core.datasets import LabelledData
from distillery.components.core.provenance import CurationResult


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
    from distillery.components.core.plots import pyplot

    plt = pyplot()
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
