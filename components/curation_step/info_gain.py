"""Information-gain feature selection for tabular data.

As in MGTAB (Shi et al., "MGTAB: A Multi-Relational Graph-Based Twitter Account Detection Benchmark",
2023), which ranked its user features by information gain and kept the top 20: rank each feature
``F`` by

    IG(Y; F) = H(Y) - H(Y | F)        (nats)

and keep the ``k`` best. Numeric features are discretised first: ``bins`` quantile bins per feature
(scikit-learn ``KBinsDiscretizer(strategy="quantile", encode="ordinal")``), so every bin holds about
the same number of items whatever the feature's scale or skew; a feature with at most ``bins``
distinct values (binary, categorical codes, constant) keeps its values as they are, since binning
could only merge them.
"""
from __future__ import annotations

import warnings

import numpy as np

from distillery.components.core.datasets import LabelledData
from distillery.components.core.provenance import CurationResult


def entropy(labels: np.ndarray) -> float:
    """Shannon entropy (nats) of the empirical distribution of ``labels`` ``(N,)``."""
    p = np.bincount(labels) / len(labels)
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def information_gain(labels: np.ndarray, codes: np.ndarray) -> float:
    """``H(Y) - H(Y | F)`` for a discrete feature ``codes`` ``(N,)`` (non-negative ints)."""
    conditional = 0.0
    for value in np.unique(codes):
        members = labels[codes == value]
        conditional += len(members) / len(labels) * entropy(members)
    return entropy(labels) - conditional


def discretise(features: np.ndarray, bins: int) -> np.ndarray:
    """``(N, D)`` int codes: quantile bins for features with more than ``bins`` distinct values,
    the distinct values' ranks otherwise."""
    from sklearn.preprocessing import KBinsDiscretizer

    codes = np.empty(features.shape, np.int64)
    for j in range(features.shape[1]):
        values, ranks = np.unique(features[:, j], return_inverse=True)
        if len(values) <= bins:
            codes[:, j] = ranks.reshape(-1)
            continue
        binner = KBinsDiscretizer(n_bins=bins, encode="ordinal", strategy="quantile",
                                  quantile_method="averaged_inverted_cdf")
        with warnings.catch_warnings():  # ties that make some quantile bins empty: they are merged, as wanted
            warnings.simplefilter("ignore", UserWarning)
            codes[:, j] = binner.fit_transform(features[:, [j]]).reshape(-1).astype(np.int64)
    return codes


def info_gain(data: LabelledData, *, seed: int = 0, context=None, k: int = 20, bins: int = 10) -> CurationResult:
    """Keep the ``k`` features of highest information gain (in their original column order);
    ``meta["feature_names"]`` and ``feature_shape`` follow. Tabular data only."""
    kind = data.meta.get("kind")
    if kind != "tabular":
        raise ValueError(f"info_gain selects columns of tabular data; this dataset is {kind!r} "
                         f"({data.meta.get('name', 'unnamed')}); pixels are not features to rank")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"info_gain: k must be an integer >= 1, got {k!r}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"info_gain: bins must be an integer >= 2, got {bins!r}")
    features = np.asarray(data.features, dtype=np.float64)
    if not np.all(np.isfinite(features)):
        raise ValueError("info_gain: features contain NaN or infinite values; impute or drop them first")
    names = data.meta.get("feature_names") or [f"f{j}" for j in range(features.shape[1])]
    codes = discretise(features, bins)
    gains = np.array([information_gain(data.labels, codes[:, j]) for j in range(features.shape[1])])
    ranking = np.argsort(-gains, kind="stable")
    kept = np.sort(ranking[:min(k, len(gains))])
    meta = {**data.meta, "feature_shape": [len(kept)]}
    if "feature_names" in data.meta:
        meta["feature_names"] = [data.meta["feature_names"][j] for j in kept]
    curated = LabelledData(data.features[:, kept], data.labels, data.ids, meta)
    table = [{"feature": names[j], "column": int(j), "information_gain": float(gains[j]), "kept": bool(j in kept)}
             for j in ranking]
    stats = {"features_in": features.shape[1], "features_kept": len(kept), "label_entropy": entropy(data.labels),
             "min_kept_information_gain": float(gains[kept].min())}
    return CurationResult(curated, stats, {"information_gain.json": {"bins": bins, "ranking": table},
                                           "information_gain.png": gain_figure(table)})


def gain_figure(table: list[dict]):
    from distillery.components.core.plots import pyplot

    plt = pyplot()
    shown = table[:40]
    fig, ax = plt.subplots(figsize=(7, 0.22 * len(shown) + 1.2))
    ax.barh([r["feature"] for r in shown][::-1], [r["information_gain"] for r in shown][::-1],
            color=["tab:blue" if r["kept"] else "lightgrey" for r in shown][::-1])
    ax.set_xlabel("information gain IG(Y;F) (nats)")
    ax.set_title("Features by information gain (kept in blue)")
    fig.tight_layout()
    return fig
