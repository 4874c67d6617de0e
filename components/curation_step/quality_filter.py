"""Compute-aware quality filtering: which quality buckets to train on for a given compute budget.

Goyal, Maini, Lipton, Raghunathan & Kolter, "Scaling Laws for Data Filtering -- Data Curation cannot
be Compute Agnostic", CVPR 2024 (ref. code locuslab/scaling_laws_data_filtering, ``objective.py``
``func_effective_utility[_aggregation]`` and ``estimate_best_pool.py``).

The data is split into quality buckets by a per-item score. Bucket ``i`` has a scaling law with
parameters ``(a, b_i < 0, tau_i, d)``: a sample seen for the ``k``-th time (``k = 0`` on the first
pass) has utility ``b_k = b_i * 0.5 ** (k / tau_i)`` (``tau`` = half-life in passes), and after
``n`` samples seen with ``N`` samples per epoch (``n_k = min((k+1) N, n)`` seen by the end of pass
``k``) the error is

    y(n) = [(a * n_0) ** b_0 + d] * prod_{k >= 1} (n_k / n_{k-1}) ** b_k .

The union of the top ``p`` buckets (sorted by ``b``, most negative first) has ``sum_i N_i`` (``p N``
for equal buckets) samples per epoch and per-pass utility ``mean_i b_i * 0.5 ** (k / (p tau_i))``.
For a compute budget (samples seen) the step keeps the top-``p`` mix of lowest predicted error:
small budgets favour aggressive filtering (the best bucket alone), large budgets -- where the best
bucket would be repeated until its utility has decayed -- favour larger pools.

Fitting: every bucket's law is fitted by grid search (least squares, as the reference code) to the
validation error of *small runs* -- a proxy model trained on that bucket alone for a few passes.
``a`` (the scale of samples seen) and ``d`` (the irreducible error of the task) are shared by all
buckets, because the union law above has one ``a`` and one ``d`` (the reference code asserts equal
``a`` and passes one ``d``); ``b_i`` and ``tau_i`` are per bucket. With ``(a, d)`` shared the
least-squares loss separates over buckets, so the joint grid search is cheap: for every ``(a, d)``
each bucket takes its best ``(b, tau)``.

The small runs train a linear softmax model (scikit-learn ``SGDClassifier``, log loss) by plain
constant-step SGD and read the error at each samples-seen checkpoint of one run: with a constant
step, the model after ``n`` samples of a longer run *is* the model of a run with budget ``n``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distillery.components.core.datasets import LabelledData
from distillery.components.core.provenance import CurationResult

HALF_LIFE_BASE = 0.5
SCORE_SOURCES = ("proxy_loss", "meta:<key>")
A_GRID = np.logspace(-4, 4, 33)
B_GRID = -np.linspace(0.01, 1.0, 50)
TAU_GRID = np.geomspace(0.1, 64.0, 36)
D_STEPS = 25


# -- the law ---------------------------------------------------------------------------------------

def pass_utilities(b, tau, passes: int) -> np.ndarray:
    """Per-pass utility ``(passes,)`` of a union of ``p = len(b)`` buckets:
    ``mean_i b_i * 0.5 ** (k / (p * tau_i))`` for ``k = 0..passes-1`` (one bucket: ``b 0.5^(k/tau)``)."""
    b, tau = np.atleast_1d(np.asarray(b, float)), np.atleast_1d(np.asarray(tau, float))
    k = np.arange(passes)
    return np.mean(b[:, None] * HALF_LIFE_BASE ** (k[None, :] / (len(b) * tau[:, None])), axis=0)


def _seen_per_pass(samples_seen: float, samples_per_epoch: float) -> np.ndarray:
    """``n_k = min((k+1) N, n)`` for every pass that has begun: ``(floor(n / N) + 1,)``."""
    if samples_seen <= 0 or samples_per_epoch <= 0:
        raise ValueError(f"samples seen ({samples_seen}) and samples per epoch ({samples_per_epoch}) must be > 0")
    passes = int(samples_seen // samples_per_epoch) + 1
    return np.minimum(samples_per_epoch * np.arange(1, passes + 1), samples_seen)


def error_from_utilities(samples_seen: float, samples_per_epoch: float, a: float, utilities: np.ndarray,
                         d: float) -> float:
    """``[(a n_0)^{b_0} + d] * prod_{k>=1} (n_k / n_{k-1})^{b_k}`` with ``b_k = utilities[k]``."""
    seen = _seen_per_pass(samples_seen, samples_per_epoch)
    b = utilities[:len(seen)]
    log_ratio = np.log(seen[1:] / seen[:-1])  # 0 for an exactly finished last pass
    return float(((a * seen[0]) ** b[0] + d) * np.exp(np.sum(b[1:] * log_ratio)))


def predicted_error(samples_seen: float, samples_per_epoch: float, a: float, b: float, tau: float,
                    d: float) -> float:
    """Error of one bucket of ``samples_per_epoch`` items after ``samples_seen`` samples."""
    passes = int(samples_seen // samples_per_epoch) + 1
    return error_from_utilities(samples_seen, samples_per_epoch, a, pass_utilities(b, tau, passes), d)


def union_error(samples_seen: float, bucket_sizes, a: float, b, tau, d: float) -> float:
    """Error of training on the union of buckets of ``bucket_sizes`` items (``(p,)``) with laws
    ``b``, ``tau`` (``(p,)``) and shared ``a``, ``d``: ``sum(bucket_sizes)`` samples per epoch and
    per-pass utility :func:`pass_utilities` (repetition half-lives scaled by ``p``)."""
    per_epoch = float(np.sum(bucket_sizes))
    passes = int(samples_seen // per_epoch) + 1
    return error_from_utilities(samples_seen, per_epoch, a, pass_utilities(b, tau, passes), d)


# -- fitting ---------------------------------------------------------------------------------------

@dataclass
class BucketLaw:
    a: float
    b: float
    tau: float
    d: float

    def as_dict(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "tau": self.tau, "d": self.d}


def fit_laws(observations: list[list[tuple[float, float, float]]], a_grid=A_GRID, b_grid=B_GRID,
             tau_grid=TAU_GRID, d_grid=None) -> tuple[list[BucketLaw], float]:
    """Least-squares grid search of every bucket's law, ``a`` and ``d`` shared.

    Args:
        observations: per bucket, ``(samples_seen, samples_per_epoch, error)`` of its small runs.
        d_grid: candidate ``d`` (default: 0 up to the smallest observed error).
    Returns:
        the fitted law of every bucket and the total squared error of the fit.
    """
    if d_grid is None:
        d_grid = np.linspace(0.0, min(y for obs in observations for _, _, y in obs), D_STEPS)
    a, b = np.asarray(a_grid, float)[:, None, None, None], np.asarray(b_grid, float)[None, :, None, None]
    tau, d = np.asarray(tau_grid, float), np.asarray(d_grid, float)[None, None, None, :]
    per_bucket = []  # (A, B, T, D) squared error of each bucket
    for bucket in observations:
        loss = np.zeros((a.shape[0], b.shape[1], len(tau), d.shape[3]))
        for n, per_epoch, y in bucket:
            seen = _seen_per_pass(n, per_epoch)
            k = np.arange(1, len(seen))
            # sum_k 0.5^(k/tau) log(n_k/n_{k-1}): the repeated passes' exponent per unit b, (T,)
            repeats = (HALF_LIFE_BASE ** (k[None, :] / tau[:, None])) @ np.log(seen[1:] / seen[:-1])
            pred = ((a * seen[0]) ** b + d) * np.exp(b * repeats[None, None, :, None])
            loss += (pred - y) ** 2
        per_bucket.append(loss)
    best_bt = [loss.reshape(loss.shape[0], -1, loss.shape[3]).min(axis=1) for loss in per_bucket]  # (A, D)
    total = np.sum(best_bt, axis=0)
    ia, id_ = np.unravel_index(np.argmin(total), total.shape)
    laws = []
    for loss in per_bucket:
        ib, it = np.unravel_index(np.argmin(loss[ia, :, :, id_]), loss.shape[1:3])
        laws.append(BucketLaw(float(a_grid[ia]), float(b_grid[ib]), float(tau_grid[it]), float(d_grid[id_])))
    return laws, float(total[ia, id_])


def mix_errors(laws: list[BucketLaw], bucket_sizes, samples_seen: float) -> tuple[np.ndarray, np.ndarray]:
    """Predicted error of every top-``p`` mix, ``p = 1..P``: ``(order, errors)`` where ``order`` ranks
    the buckets by ``b`` (most negative first) and ``errors[p-1]`` is the mix of ``order[:p]``."""
    order = np.argsort([law.b for law in laws], kind="stable")
    sizes = np.asarray(bucket_sizes, float)[order]
    b, tau = np.array([laws[i].b for i in order]), np.array([laws[i].tau for i in order])
    a, d = laws[0].a, laws[0].d
    errors = np.array([union_error(samples_seen, sizes[:p], a, b[:p], tau[:p], d) for p in range(1, len(laws) + 1)])
    return order, errors


# -- small runs ------------------------------------------------------------------------------------

def learning_curve(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, checkpoints,
                   classes: np.ndarray, seed: int = 0, eta0: float = 0.001, alpha: float = 1e-3) -> np.ndarray:
    """Validation error ``(len(checkpoints),)`` of a linear softmax model trained by constant-step SGD
    on ``x`` ``(N, D)`` (standardised) after each number of samples seen in ``checkpoints``
    (ascending); each pass visits the items in a new random order."""
    from sklearn.linear_model import SGDClassifier

    rng = np.random.default_rng(seed)
    checkpoints = np.asarray(checkpoints, int)
    passes = int(np.ceil(checkpoints[-1] / len(y)))
    stream = np.concatenate([rng.permutation(len(y)) for _ in range(passes)])
    model = SGDClassifier(loss="log_loss", learning_rate="constant", eta0=eta0, alpha=alpha, shuffle=False,
                          random_state=seed)
    errors, start = [], 0
    for stop in checkpoints:
        if stop > start:
            chunk = stream[start:stop]
            model.partial_fit(x[chunk], y[chunk], classes=classes)
            start = stop
        errors.append(float(np.mean(model.predict(x_val) != y_val)))
    return np.array(errors)


def quality_scores(data: LabelledData, score: str, seed: int, folds: int = 5) -> np.ndarray:
    """Per-item quality ``(N,)``, higher is better.

    ``"meta:<key>"``: the list ``data.meta[key]`` (one number per item, in row order).
    ``"proxy_loss"``: minus the cross-validated log loss of the item's own label under a small proxy
    model (``folds``-fold ``cross_val_predict`` of a linear softmax model): items the rest of the
    data cannot explain (mislabelled, atypical) score low.
    """
    if score.startswith("meta:"):
        key = score[len("meta:"):]
        if key not in data.meta:
            raise ValueError(f"quality_filter: score {score!r} but the dataset meta has no {key!r}; "
                             f"meta keys: {sorted(data.meta)}")
        values = np.asarray(data.meta[key], dtype=float)
        if values.shape != data.labels.shape or not np.all(np.isfinite(values)):
            raise ValueError(f"quality_filter: meta[{key!r}] must hold one finite number per item "
                             f"({len(data.labels)}), got shape {values.shape}")
        return values
    if score != "proxy_loss":
        raise ValueError(f"quality_filter: score must be one of {SCORE_SOURCES}, got {score!r}")
    from sklearn.linear_model import SGDClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    proxy = SGDClassifier(loss="log_loss", max_iter=20, tol=None, random_state=seed)
    probs = cross_val_predict(proxy, _standardise(data.features), data.labels, method="predict_proba",
                              cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return np.log(np.clip(probs[np.arange(len(data.labels)), data.labels], 1e-12, None))


def _standardise(features: np.ndarray) -> np.ndarray:
    from sklearn.preprocessing import StandardScaler

    return StandardScaler().fit_transform(np.asarray(features, dtype=np.float64))


def split_buckets(scores: np.ndarray, buckets: int) -> list[np.ndarray]:
    """Rows per bucket, best first: equal-size groups of the items sorted by score (descending)."""
    order = np.argsort(-scores, kind="stable")
    return [np.sort(part) for part in np.array_split(order, buckets)]


# -- the curation step -----------------------------------------------------------------------------

def quality_filter(data: LabelledData, *, seed: int = 0, context=None, score: str = "proxy_loss", buckets: int = 4,
                   budget: int | None = None, fit_passes=(0.25, 0.5, 1, 2, 4), val_fraction: float = 0.2,
                   repeats: int = 2, eta0: float = 0.001, alpha: float = 1e-3) -> CurationResult:
    """Keep the top-``p`` quality buckets whose union has the lowest predicted error at ``budget``.

    Args:
        data: ``N`` items.
        score: where the per-item quality comes from (:func:`quality_scores`).
        buckets: number of equal-size quality buckets.
        budget: the compute budget in samples seen (default ``10 N``: ten passes over all data).
        fit_passes: budgets of the small runs, in passes over one bucket's training items.
        val_fraction: share of items held out (stratified) to measure the small runs' error.
        repeats: seeds per small run (errors averaged).
        eta0, alpha: constant SGD step and L2 penalty of the small runs' linear model.
    Returns:
        the kept items; stats (chosen ``p``, predicted errors per mix); the fitted laws and a plot of
        predicted error against compute per mix.
    """
    from sklearn.model_selection import train_test_split

    n = len(data.labels)
    if buckets < 2 or buckets > n // 10:
        raise ValueError(f"quality_filter: buckets must be in [2, N/10 = {n // 10}], got {buckets}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"quality_filter: val_fraction must be in (0, 1), got {val_fraction}")
    if not fit_passes or min(fit_passes) <= 0:
        raise ValueError(f"quality_filter: fit_passes must be positive, got {fit_passes}")
    budget = int(budget or 10 * n)
    if budget < 1:
        raise ValueError(f"quality_filter: budget must be >= 1 samples seen, got {budget}")
    scores = quality_scores(data, score, seed)
    groups = split_buckets(scores, buckets)
    x = _standardise(data.features)
    train_rows, val_rows = train_test_split(np.arange(n), test_size=val_fraction, random_state=seed,
                                            stratify=data.labels if np.bincount(data.labels).min() >= 2 else None)
    is_val = np.zeros(n, bool)
    is_val[val_rows] = True
    classes = np.arange(data.num_classes)
    observations = []
    for group in groups:
        rows = group[~is_val[group]]
        checkpoints = np.unique(np.maximum(np.round(np.asarray(fit_passes) * len(rows)).astype(int), 1))
        curve = np.mean([learning_curve(x[rows], data.labels[rows], x[val_rows], data.labels[val_rows], checkpoints,
                                        classes, seed + r, eta0, alpha) for r in range(repeats)], axis=0)
        observations.append([(float(c), float(len(rows)), float(e)) for c, e in zip(checkpoints, curve)])
    laws, fit_loss = fit_laws(observations)
    sizes = [len(g) for g in groups]
    order, errors = mix_errors(laws, sizes, budget)
    best = int(np.argmin(errors)) + 1
    kept = np.sort(np.concatenate([groups[i] for i in order[:best]]))
    stats = {"chosen_buckets": best, "budget_samples_seen": budget, "kept_fraction": len(kept) / n,
             "fit_squared_error": fit_loss, **{f"predicted_error_top{p + 1}": float(e) for p, e in enumerate(errors)}}
    report = {
        "score": score, "budget_samples_seen": budget, "buckets_by_score": [
            {"bucket": i, "items": sizes[i], "score_range": [float(scores[g].min()), float(scores[g].max())],
             "law": laws[i].as_dict(), "small_runs": [{"samples_seen": s, "samples_per_epoch": N, "error": e}
                                                      for s, N, e in observations[i]]}
            for i, g in enumerate(groups)],
        "mix_order_by_b": [int(i) for i in order],
        "predicted_error_per_mix": {f"top{p + 1}": float(e) for p, e in enumerate(errors)},
        "chosen": f"top{best}", "fit_squared_error": fit_loss,
    }
    figure = compute_figure(laws, sizes, budget, observations)
    return CurationResult(data.subset(kept), stats, {"quality_filter_fit.json": report,
                                                     "predicted_error_vs_compute.png": figure})


def compute_figure(laws: list[BucketLaw], bucket_sizes, budget: float, observations=None):
    """Predicted error against samples seen (log x) for every top-``p`` mix, the budget marked."""
    from distillery.components.core.plots import pyplot

    plt = pyplot()
    grid = np.geomspace(max(min(bucket_sizes) / 10, 1), max(budget * 10, 10 * sum(bucket_sizes)), 60)
    curves = np.array([mix_errors(laws, bucket_sizes, n)[1] for n in grid])  # (G, P)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for p in range(curves.shape[1]):
        ax.plot(grid, curves[:, p], label=f"top-{p + 1} bucket(s)")
    for i, obs in enumerate(observations or []):
        ax.scatter([s for s, _, _ in obs], [e for _, _, e in obs], s=12, marker="x", color="grey",
                   label="small runs (one bucket each)" if i == 0 else None)
    ax.axvline(budget, color="black", linestyle="--", label=f"budget {budget:,.0f}")
    ax.set_xscale("log")
    ax.set_xlabel("samples seen (compute)")
    ax.set_ylabel("predicted error")
    ax.set_title("Quality filtering: predicted error per bucket mix")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
