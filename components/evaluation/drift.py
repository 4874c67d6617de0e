"""Data drift between a reference dataset (what the model was trained on) and current data.

- Tabular data: per-feature two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``), p-values
  corrected for testing many features at once with Benjamini-Hochberg (false discovery rate
  ``alpha``; ``scipy.stats.false_discovery_control``). Drift: any feature's adjusted p < alpha.
- Images: one kernel two-sample test on embeddings, the maximum mean discrepancy with an RBF kernel
  (Gretton et al., "A Kernel Two-Sample Test", JMLR 2012), bandwidth by the median heuristic, p-value
  by a permutation test. Embeddings come from ``embed`` (e.g. a model's penultimate layer) or, without
  a model, from a fixed seeded Gaussian random projection of the scaled pixels (it keeps distances
  approximately, Johnson-Lindenstrauss, so a shift in the pixels shows in the projection). Drift:
  permutation p < alpha.

scipy and scikit-learn hold no MMD test (and torchmetrics none either); the permutation test is a few
matrix products, written here rather than pulling in alibi-detect and its dependencies.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from distillery.components.core.datasets import LabelledData

PROJECTION_DIM = 32  # random-projection embedding size for images without a model
MMD_ROWS = 1000  # rows per side for the kernel test: its cost grows with the square of the rows
PERMUTATIONS = 500


@dataclass
class DriftReport:
    """Outcome of :func:`detect_drift`.

    Attributes:
        drifted: the test(s) reject "same distribution" at level ``alpha``.
        kind: ``"tabular"`` or ``"image"``.
        statistic: tabular: ``<feature>.ks`` and ``<feature>.p_adjusted`` per feature; image:
            ``mmd2``, ``p_value``, ``bandwidth``, ``rows_reference``, ``rows_current``.
        reason: one readable sentence.
    """

    drifted: bool
    kind: str
    statistic: dict[str, float] = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def detect_drift(reference: LabelledData, current: LabelledData, *, alpha: float = 0.01,
                 embed: Callable[[np.ndarray], np.ndarray] | None = None, max_rows: int = 5000,
                 seed: int = 0) -> DriftReport:
    """Test whether ``current`` features come from the distribution of ``reference`` features.

    Labels are not used (covariate drift). Each side is subsampled to ``max_rows`` rows (seeded).

    Args:
        embed: images only: maps ``(N, D)`` raw features to ``(N, E)`` embeddings.
    Raises:
        ValueError: different kinds or feature dimensions (both named), or an empty side.
    """
    kind, other = reference.meta.get("kind", "tabular"), current.meta.get("kind", "tabular")
    if kind != other:
        raise ValueError(f"cannot compare {kind} reference data with {other} current data")
    if kind not in ("tabular", "image"):
        raise ValueError(f"unknown data kind {kind!r}; expected 'tabular' or 'image'")
    d_ref, d_cur = reference.features.shape[1:], current.features.shape[1:]
    if d_ref != d_cur:
        raise ValueError(f"reference features have shape {d_ref} per row but current features {d_cur}")
    if len(reference.features) < 2 or len(current.features) < 2:
        raise ValueError(f"drift needs at least 2 rows per side; reference has {len(reference.features)}, "
                         f"current {len(current.features)}")
    rng = np.random.default_rng(seed)
    x_ref, x_cur = (_subsample(d.features, max_rows, rng) for d in (reference, current))
    if kind == "tabular":
        names = reference.meta.get("feature_names") or [f"f{j}" for j in range(x_ref.shape[1])]
        return _tabular(x_ref, x_cur, names, alpha)
    if embed is None:
        embed = random_projection(reference.meta, x_ref.shape[1], seed)
    z_ref, z_cur = (np.asarray(embed(_subsample(x, MMD_ROWS, rng)), dtype=np.float64) for x in (x_ref, x_cur))
    return _mmd_report(z_ref, z_cur, alpha, rng)


def _subsample(x: np.ndarray, rows: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= rows else x[np.sort(rng.choice(len(x), rows, replace=False))]


def _tabular(x_ref: np.ndarray, x_cur: np.ndarray, names: list[str], alpha: float) -> DriftReport:
    from scipy.stats import false_discovery_control, ks_2samp

    result = ks_2samp(x_ref, x_cur, axis=0)  # one test per column
    adjusted = false_discovery_control(np.nan_to_num(result.pvalue, nan=1.0), method="bh")
    statistic = {}
    for name, ks, p in zip(names, np.atleast_1d(result.statistic), np.atleast_1d(adjusted)):
        statistic[f"{name}.ks"], statistic[f"{name}.p_adjusted"] = float(ks), float(p)
    drifted = [(p, n) for n, p in zip(names, adjusted) if p < alpha]
    if drifted:
        worst = ", ".join(f"{n} (p={p:.2g})" for p, n in sorted(drifted)[:5])
        reason = (f"{len(drifted)} of {len(names)} features drifted (two-sample KS, Benjamini-Hochberg adjusted "
                  f"p < {alpha}): {worst}")
    else:
        reason = (f"no feature drifted (two-sample KS over {len(names)} features, Benjamini-Hochberg adjusted "
                  f"p >= {alpha}; smallest {float(adjusted.min()):.2g})")
    return DriftReport(bool(drifted), "tabular", statistic, reason)


def random_projection(meta: dict, dim: int, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """A fixed embedding ``(N, dim) -> (N, PROJECTION_DIM)``: pixels scaled to [0, 1] by the dataset's
    ``value_range``, times a seeded Gaussian matrix (same seed, same projection)."""
    lo, hi = meta.get("value_range") or (0.0, 1.0)
    matrix = np.random.default_rng(seed).standard_normal((dim, PROJECTION_DIM)) / np.sqrt(PROJECTION_DIM)
    return lambda x: ((np.asarray(x, dtype=np.float64) - lo) / (hi - lo)) @ matrix


def mmd_permutation_test(z_ref: np.ndarray, z_cur: np.ndarray, rng: np.random.Generator,
                         permutations: int = PERMUTATIONS) -> tuple[float, float, float]:
    """Biased MMD² between ``(n, E)`` and ``(m, E)`` embeddings with an RBF kernel, and its
    permutation p-value. Returns ``(mmd2, p_value, bandwidth)``.

    MMD² = wᵀKw with w = +1/n on reference rows, −1/m on current rows and K the pooled kernel
    matrix; a permutation relabels the pooled rows, so all permutations are one matrix product.
    """
    from sklearn.metrics.pairwise import euclidean_distances

    pooled = np.concatenate([z_ref, z_cur])
    sq = euclidean_distances(pooled, squared=True)
    bandwidth = float(np.sqrt(np.median(sq[np.triu_indices(len(pooled), 1)]) / 2)) or 1.0  # median heuristic
    kernel = np.exp(-sq / (2 * bandwidth ** 2))
    n, m = len(z_ref), len(z_cur)
    is_ref = np.zeros((len(pooled), permutations + 1), dtype=bool)
    is_ref[:n, 0] = True  # column 0: the observed split
    for p in range(1, permutations + 1):
        is_ref[rng.permutation(len(pooled))[:n], p] = True
    weights = np.where(is_ref, 1.0 / n, -1.0 / m)
    mmd2 = np.einsum("ip,ip->p", weights, kernel @ weights)
    p_value = (1 + np.sum(mmd2[1:] >= mmd2[0])) / (1 + permutations)
    return float(mmd2[0]), float(p_value), bandwidth


def _mmd_report(z_ref: np.ndarray, z_cur: np.ndarray, alpha: float, rng: np.random.Generator) -> DriftReport:
    if z_ref.ndim != 2 or z_ref.shape[1:] != z_cur.shape[1:]:
        raise ValueError(f"embed must return (N, E) arrays; got {z_ref.shape} and {z_cur.shape}")
    mmd2, p_value, bandwidth = mmd_permutation_test(z_ref, z_cur, rng)
    drifted = p_value < alpha
    reason = (f"embeddings {'drifted' if drifted else 'did not drift'}: RBF-kernel MMD² {mmd2:.4g}, permutation "
              f"p = {p_value:.3g} {'<' if drifted else '>='} {alpha} ({len(z_ref)} vs {len(z_cur)} rows)")
    return DriftReport(bool(drifted), "image", {"mmd2": mmd2, "p_value": p_value, "bandwidth": bandwidth,
                                                "rows_reference": float(len(z_ref)),
                                                "rows_current": float(len(z_cur))}, reason)
