"""Out-of-distribution model selection by feature variation and informativeness.

Ye, Xie, Cai, Li, Li, Wang, "Towards a Theoretical Framework of Out-of-Distribution Generalization",
NeurIPS 2021 (ref. code YWolfeee/DomainBed). For each feature j of a candidate's penultimate layer,
with p_{j,c,e} the density of feature j over the samples of class c in training domain e (Gaussian
KDE as ``scipy.stats.gaussian_kde`` computes it, evaluated on one fixed grid per feature and
renormalised on it):

- variation        V_j = max_c max_{e, e'} TV(p_{j,c,e}, p_{j,c,e'});
- informativeness  I_j = mean_{c < c'} min_e TV(p_{j,c,e}, p_{j,c',e}),

with TV(p, q) = ½∫|p − q|. The model's variation V is the mean V_j over its informative features
(I_j ≥ 0.3). Among the candidates whose mean validation accuracy over the training domains is within
0.1 of the best, the pick maximises ``Acc − r·V`` with ``r = std(Acc) / std(V)`` over those candidates:
a model whose informative features move less across the training domains is expected to move less
on an unseen domain too.

Domains here are made from one dataset by transforms (rotation, additive noise: :func:`make_domain`),
the usual way to build a domain-generalisation benchmark from MNIST (Rotated MNIST).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

INFORMATIVE = 0.3
TOLERANCE = 0.1


@dataclass
class FeatureStats:
    """Per-feature statistics of one candidate: ``variation`` and ``informativeness`` ``(D,)``,
    and the model variation (NaN when no feature is informative)."""

    variation: np.ndarray
    informativeness: np.ndarray
    threshold: float = INFORMATIVE

    @property
    def informative(self) -> np.ndarray:
        return self.informativeness >= self.threshold

    @property
    def model_variation(self) -> float:
        mask = self.informative
        return float(self.variation[mask].mean()) if mask.any() else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"variation": self.variation.tolist(), "informativeness": self.informativeness.tolist(),
                "threshold": self.threshold, "informative_features": int(self.informative.sum()),
                "model_variation": self.model_variation}


@dataclass
class Selection:
    """Outcome of :func:`select_model`: the pick, the factor ``r`` and one row per candidate."""

    selected: str
    r: float
    table: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_domains(labels_by_domain: dict[str, np.ndarray]) -> np.ndarray:
    """The classes every training domain holds; a ``ValueError`` naming the domain otherwise.

    Needs two or more domains (variation compares domains) and two or more classes in each domain
    (informativeness compares classes).
    """
    if len(labels_by_domain) < 2:
        raise ValueError(f"OOD selection needs at least 2 training domains, got {sorted(labels_by_domain)}")
    for name, labels in labels_by_domain.items():
        present = np.unique(labels)
        if len(present) < 2:
            raise ValueError(f"training domain {name!r} holds a single class ({present.tolist()}): "
                             "feature informativeness compares classes within a domain")
    common = np.array(sorted(set.intersection(*(set(np.unique(y).tolist()) for y in labels_by_domain.values()))))
    if len(common) < 2:
        raise ValueError(f"the training domains share fewer than 2 classes ({common.tolist()})")
    return common


def class_conditional_densities(features_by_domain: Sequence[np.ndarray], labels_by_domain: Sequence[np.ndarray],
                                classes: np.ndarray, grid_size: int = 128, max_per_group: int = 200,
                                seed: int = 0) -> np.ndarray:
    """Densities ``(D, K, E, G)`` of every feature per class and domain on a per-feature grid, each
    normalised to sum to 1 over its grid (so TV = ½·Σ|p − q|).

    Args:
        features_by_domain: E arrays ``(N_e, D)``.
        labels_by_domain: E arrays ``(N_e,)``.
        classes: ``(K,)`` the classes to use.
        max_per_group: at most this many samples per (class, domain) enter a KDE (seeded), which
            bounds the cost; the grid spans all samples used.
    """
    rng = np.random.default_rng(seed)
    groups = []  # [e][k] -> (n, D) samples of class k in domain e
    for x, y in zip(features_by_domain, labels_by_domain):
        row = []
        for c in classes:
            rows = np.flatnonzero(y == c)
            if len(rows) > max_per_group:
                rows = np.sort(rng.choice(rows, max_per_group, replace=False))
            row.append(np.asarray(x[rows], dtype=np.float64))
        groups.append(row)
    pooled = np.concatenate([g for row in groups for g in row])
    lo, hi = pooled.min(axis=0), pooled.max(axis=0)
    pad = 0.1 * np.maximum(hi - lo, 1e-6)  # leave room for the kernels' tails
    grids = np.linspace(lo - pad, hi + pad, grid_size, axis=1)  # (D, G)
    n_features = pooled.shape[1]
    density = np.zeros((n_features, len(classes), len(groups), grid_size))
    for e, row in enumerate(groups):
        for k, samples in enumerate(row):
            density[:, k, e] = gaussian_kde_1d(samples, grids)
    return density / np.maximum(density.sum(axis=-1, keepdims=True), 1e-300)


def gaussian_kde_1d(samples: np.ndarray, grids: np.ndarray) -> np.ndarray:
    """``scipy.stats.gaussian_kde(samples[:, j])(grids[j])`` for every column j at once: ``(D, G)``.

    Same estimator (Gaussian kernel, Scott's rule: bandwidth = std(ddof=1) · n^(-1/5)); one
    broadcast instead of one scipy object per (feature, class, domain), which is thousands per model
    and dominated the run time. A constant column (e.g. a dead ReLU unit), for which the KDE is
    undefined (scipy raises), is a point mass on the nearest grid cell.

    Args:
        samples: ``(n, D)``; grids: ``(D, G)``.
    """
    n, d = samples.shape
    out = np.zeros(grids.shape)
    if n == 0:
        return out
    std = samples.std(axis=0, ddof=1) if n > 1 else np.zeros(d)
    spread = std > 0
    bandwidth = std[spread] * n ** (-1 / 5)
    z = (grids[spread][None] - samples[:, spread, None]) / bandwidth[None, :, None]  # (n, D', G)
    out[spread] = np.exp(-0.5 * z ** 2).mean(axis=0) / (bandwidth[:, None] * np.sqrt(2 * np.pi))
    constant = np.flatnonzero(~spread)
    out[constant, np.abs(grids[constant] - samples[0, constant, None]).argmin(axis=1)] = 1.0
    return out


def feature_stats(density: np.ndarray, threshold: float = INFORMATIVE) -> FeatureStats:
    """``V_j`` and ``I_j`` from densities ``(D, K, E, G)`` (see module docstring)."""
    d, k, e, _ = density.shape
    ea, eb = np.triu_indices(e, 1)
    variation = 0.5 * np.abs(density[:, :, ea] - density[:, :, eb]).sum(-1)  # (D, K, E-pairs)
    informativeness = np.empty(d)
    ca, cb = np.triu_indices(k, 1)
    for j in range(d):  # one feature at a time keeps the (pairs, E, G) difference small
        between = 0.5 * np.abs(density[j, ca] - density[j, cb]).sum(-1)  # (K-pairs, E)
        informativeness[j] = between.min(axis=1).mean()
    return FeatureStats(variation.max(axis=(1, 2)), informativeness, threshold)


def variation_and_informativeness(features_by_domain: dict[str, np.ndarray], labels_by_domain: dict[str, np.ndarray],
                                  *, threshold: float = INFORMATIVE, grid_size: int = 128, max_per_group: int = 200,
                                  seed: int = 0) -> FeatureStats:
    """Per-feature variation and informativeness of one model's features on the training domains.

    Args:
        features_by_domain: domain name -> ``(N_e, D)`` penultimate features.
        labels_by_domain: domain name -> ``(N_e,)`` labels.
    """
    if set(features_by_domain) != set(labels_by_domain):
        raise ValueError(f"features are given for domains {sorted(features_by_domain)} but labels for "
                         f"{sorted(labels_by_domain)}")
    classes = check_domains(labels_by_domain)
    names = list(features_by_domain)
    density = class_conditional_densities([features_by_domain[n] for n in names], [labels_by_domain[n] for n in names],
                                          classes, grid_size, max_per_group, seed)
    return feature_stats(density, threshold)


def select_model(accuracy: dict[str, float], variation: dict[str, float], tolerance: float = TOLERANCE) -> Selection:
    """Pick among candidates by ``Acc − r·V`` (Ye et al. 2021).

    Args:
        accuracy: candidate -> mean validation accuracy over the training domains.
        variation: candidate -> model variation V (NaN: no informative feature; not eligible).
        tolerance: candidates more than this below the best accuracy are not eligible.
    """
    if not accuracy or set(accuracy) != set(variation):
        raise ValueError(f"need accuracy and variation for the same candidates, got {sorted(accuracy)} and "
                         f"{sorted(variation)}")
    best = max(accuracy.values())
    eligible = [n for n in accuracy if accuracy[n] >= best - tolerance and not np.isnan(variation[n])]
    if not eligible:
        raise ValueError("no candidate is eligible: those within the accuracy tolerance have no informative feature")
    acc = np.array([accuracy[n] for n in eligible])
    var = np.array([variation[n] for n in eligible])
    r = float(acc.std() / var.std()) if var.std() > 0 else 0.0  # equal variations: accuracy decides
    score = dict(zip(eligible, (acc - r * var).tolist()))
    selected = max(eligible, key=lambda n: (score[n], accuracy[n]))
    table = [{"candidate": n, "accuracy": float(accuracy[n]), "variation": float(variation[n]),
              "eligible": n in score, "score": score.get(n), "selected": n == selected} for n in accuracy]
    return Selection(selected, r, table)


def make_domain(features: np.ndarray, meta: dict, rotate: float = 0.0, noise: float = 0.0,
                seed: int = 0) -> np.ndarray:
    """Raw features ``(N, D)`` of an image dataset, rotated by ``rotate`` degrees
    (``scipy.ndimage.rotate``, same size, bilinear) and with Gaussian noise of standard deviation
    ``noise`` × the value range added (seeded), clipped to the value range."""
    from scipy.ndimage import rotate as rotate_images

    if (rotate or noise) and meta.get("kind") != "image":
        raise ValueError(f"domain transforms (rotate, noise) apply to image data; dataset {meta.get('name')!r} "
                         f"is {meta.get('kind')!r}")
    lo, hi = meta.get("value_range") or (0.0, 1.0)
    images = np.asarray(features, dtype=np.float32).reshape(len(features), *meta["feature_shape"])
    if rotate:
        images = rotate_images(images, rotate, axes=(-2, -1), reshape=False, order=1, mode="constant", cval=lo)
    if noise:
        images = images + np.random.default_rng(seed).normal(0.0, noise * (hi - lo), images.shape)
    return np.clip(images, lo, hi).reshape(len(features), -1).astype(np.float32)


def candidate_outputs(model: Any, features: np.ndarray, chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``(N, K)`` and penultimate features ``(N, H)`` (input of the last linear layer)."""
    from distillery.components.core.models import forward

    return forward(model, features, chunk_size, embeddings=True)


def evaluate_candidates(models: dict[str, Any], domains: dict[str, tuple[np.ndarray, np.ndarray]], *,
                        validation: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                        threshold: float = INFORMATIVE, tolerance: float = TOLERANCE, grid_size: int = 128,
                        max_per_group: int = 200, seed: int = 0) -> tuple[Selection, dict[str, FeatureStats]]:
    """The whole criterion for torch models on labelled training-domain data.

    Args:
        models: candidate name -> model taking raw features ``(N, D)``.
        domains: training-domain name -> ``(features (N_e, D), labels (N_e,))``: the data whose
            penultimate features give V_j and I_j (more samples per class: less KDE noise).
        validation: the same domains' held-out data for the accuracy (default: ``domains``).
    Returns:
        the selection and each candidate's per-feature statistics.
    """
    validation = domains if validation is None else validation
    if set(validation) != set(domains):
        raise ValueError(f"validation data covers domains {sorted(validation)}, features {sorted(domains)}")
    check_domains({name: y for name, (_, y) in domains.items()})  # before any forward pass
    stats, accuracy = {}, {}
    for name, model in models.items():
        outputs = {d: candidate_outputs(model, x) for d, (x, _) in domains.items()}
        predicted = {d: outputs[d][0] if validation is domains else candidate_outputs(model, validation[d][0])[0]
                     for d in domains}
        accuracy[name] = float(np.mean([(predicted[d].argmax(1) == y).mean() for d, (_, y) in validation.items()]))
        stats[name] = variation_and_informativeness({d: o[1] for d, o in outputs.items()},
                                                    {d: y for d, (_, y) in domains.items()}, threshold=threshold,
                                                    grid_size=grid_size, max_per_group=max_per_group, seed=seed)
    return select_model(accuracy, {n: s.model_variation for n, s in stats.items()}, tolerance), stats
