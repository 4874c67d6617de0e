"""Bilevel problems ADBO solves, split across workers.

A problem is built by name from a JSON-able dict (every process builds the same problem from the
same config and seed, so no data travels over rpc). ``shard(i, N)`` is what worker ``i`` of ``N``
holds: its upper objective ``G_i(x, y)`` and lower objective ``g_i(x, y)``, both scalar functions
of the upper variable ``x`` ``(n,)`` and the lower variable ``y`` ``(m,)``. ``evaluate(v, z)`` is
the master's view (metrics of the consensus point).

* ``quadratic``: a tiny problem with a closed-form solution (tests).
* ``hyperclean``: data hyper-cleaning (Franceschi et al. 2017; ADBO's experiment, Jiao et al.
  ICLR 2023 Sec. 5): per-sample weights ``sigmoid(v_j)`` of noisy training samples for a linear
  classifier, chosen so the classifier does well on a small clean validation set.
* ``feature_reg``: per-feature L2 penalties ``exp(v_j)`` of a linear/logistic model, chosen by
  validation loss.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

Tensor = torch.Tensor
ROOT = Path(__file__).resolve().parents[3]
DEFAULT_LOGIT_SCALE = 30.0


@dataclass
class Shard:
    """Worker ``i``'s part of a problem: ``upper(x, y)`` is G_i, ``lower(x, y)`` is g_i."""

    n: int
    m: int
    x0: Tensor
    y0: Tensor
    upper: Callable[[Tensor, Tensor], Tensor]
    lower: Callable[[Tensor, Tensor], Tensor]


class Problem:
    """Base: sizes ``n`` (upper) and ``m`` (lower), the start point, shards and evaluation."""

    n: int
    m: int

    def start(self) -> tuple[Tensor, Tensor]:
        """``(v0, z0)``: where the master and every worker start."""
        return torch.zeros(self.n), torch.zeros(self.m)

    def shard(self, worker: int, num_workers: int) -> Shard:
        raise NotImplementedError

    def evaluate(self, v: Tensor, z: Tensor) -> dict[str, float]:
        """Metrics of the consensus point (the master logs them)."""
        return {}


# ------------------------------------------------------------------------------------------------
# quadratic: closed-form solution


class Quadratic(Problem):
    """``G_i = 1/2 ||y - t_i||^2 + rho/(2N) ||x||^2``, ``g_i = 1/2 ||y - x - c||^2``.

    The lower level gives ``y*(x) = x + c``, so the bilevel solution is
    ``x* = N (mean_i t_i - c) / (N + rho)``, ``y* = x* + c`` (see :meth:`solution`).
    """

    def __init__(self, dim: int = 3, rho: float = 0.5, seed: int = 0):
        self.n = self.m = int(dim)
        self.rho = float(rho)
        self.gen_seed = int(seed)
        self.c = torch.randn(self.m, generator=torch.Generator().manual_seed(seed)).double()
        self.v0 = torch.zeros(self.n, dtype=torch.float64)

    def start(self) -> tuple[Tensor, Tensor]:
        return self.v0.clone(), torch.zeros(self.m, dtype=torch.float64)

    def target(self, worker: int) -> Tensor:
        generator = torch.Generator().manual_seed(1000 + worker + self.gen_seed)
        return 2.0 * torch.randn(self.m, generator=generator).double()

    def shard(self, worker: int, num_workers: int) -> Shard:
        t, c, rho = self.target(worker), self.c, self.rho
        x0, y0 = self.start()
        return Shard(self.n, self.m, x0, y0,
                     upper=lambda x, y: 0.5 * ((y - t) ** 2).sum() + 0.5 * rho / num_workers * (x ** 2).sum(),
                     lower=lambda x, y: 0.5 * ((y - x - c) ** 2).sum())

    def solution(self, num_workers: int) -> tuple[Tensor, Tensor]:
        """``(x*, y*)`` for ``num_workers`` workers."""
        t_mean = torch.stack([self.target(i) for i in range(num_workers)]).mean(0)
        x = num_workers * (t_mean - self.c) / (num_workers + self.rho)
        return x, x + self.c


# ------------------------------------------------------------------------------------------------
# linear classifiers on a data set split across workers


def _split(n: int, parts: int, index: int) -> slice:
    """Contiguous block ``index`` of ``parts`` nearly equal blocks of ``range(n)``."""
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return slice(int(bounds[index]), int(bounds[index + 1]))


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(0), train.std(0) + 1e-6
    return [(a - mean) / std for a in (train, *others)]


class LinearData:
    """Train/validation/test arrays (float32 features, int64 labels) and a linear model ``y``.

    ``y`` packs the weight matrix ``(d, k)`` and bias ``(k,)`` row-major: ``m = (d + 1) k``.
    """

    def __init__(self, train, val, test, num_classes: int):
        (self.xtr, self.ytr), (self.xva, self.yva), (self.xte, self.yte) = [
            (torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long))
            for x, y in (train, val, test)]
        self.d, self.k = self.xtr.shape[1], num_classes
        self.m = (self.d + 1) * self.k

    def logits(self, y: Tensor, features: Tensor) -> Tensor:
        weight, bias = y[:self.d * self.k].view(self.d, self.k), y[self.d * self.k:]
        return features @ weight + bias

    def weights(self, y: Tensor) -> Tensor:
        return y[:self.d * self.k]

    def fit(self, weights: Tensor | None = None, ridge: float = 1e-3, steps: int = 200) -> Tensor:
        """The linear model minimising the (sample-weighted) mean training CE + ``ridge/2 ||W||^2``
        (L-BFGS): how the weights of :class:`HyperCleaning` are judged, same model as its lower level."""
        w = torch.ones(len(self.ytr)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)

        def loss(y: Tensor) -> Tensor:
            losses = F.cross_entropy(self.logits(y, self.xtr), self.ytr, reduction="none")
            return (w * losses).sum() / w.sum() + 0.5 * ridge * (self.weights(y) ** 2).sum()

        return _minimise(loss, torch.zeros(self.m), steps)

    def metrics(self, z: Tensor) -> dict[str, float]:
        with torch.no_grad():
            val = self.logits(z, self.xva)
            test = self.logits(z, self.xte)
            metrics = {"val_loss": float(F.cross_entropy(val, self.yva)),
                       "val_accuracy": float((val.argmax(1) == self.yva).float().mean())}
            if len(self.yte):
                metrics["test_accuracy"] = float((test.argmax(1) == self.yte).float().mean())
            return metrics


def load_features(path: str, repo: str | None = None, rev: str | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(features, labels, meta)`` of a dataset folder: read through DVC from ``repo`` (a git URL
    or path; on a cluster, where images hold no data) at ``rev``, else from this checkout."""
    if repo:
        from distillery.components.core.datasets import read_dataset

        features, labels, meta = read_dataset(repo, path, rev)
        return features.astype(np.float32), labels.astype(np.int64), meta
    folder = Path(path) if Path(path).is_absolute() else ROOT / path
    meta = json.loads((folder / "dataset.json").read_text())
    return (np.load(folder / "features.npy", allow_pickle=False).astype(np.float32),
            np.load(folder / "labels.npy", allow_pickle=False).astype(np.int64), meta)


def save_split(path: str | Path, train, val, test=None, num_classes: int | None = None) -> Path:
    """Write ``(features, labels)`` pairs as the ``.npz`` :class:`HyperCleaning` reads."""
    test = test if test is not None else (np.zeros((0, train[0].shape[1]), np.float32), np.zeros(0, np.int64))
    classes = num_classes or int(max(train[1].max(), val[1].max())) + 1
    np.savez(path, xtr=train[0], ytr=train[1], xva=val[0], yva=val[1], xte=test[0], yte=test[1],
             num_classes=np.int64(classes))
    return Path(path)


def load_split(path: str | Path):
    """``((xtr, ytr), (xva, yva), (xte, yte), num_classes)`` from :func:`save_split`'s file."""
    with np.load(path, allow_pickle=False) as f:
        pairs = [(f[f"x{k}"].astype(np.float32), f[f"y{k}"].astype(np.int64)) for k in ("tr", "va", "te")]
        return (*pairs, int(f["num_classes"]))


def flip_labels(labels: np.ndarray, fraction: float, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(noisy, flipped_mask)``: ``fraction`` of the labels moved to a different random class."""
    rng = np.random.default_rng(seed)
    flipped = rng.random(len(labels)) < fraction
    shift = rng.integers(1, num_classes, size=len(labels))
    return np.where(flipped, (labels + shift) % num_classes, labels), flipped


class HyperCleaning(Problem):
    """Data hyper-cleaning: ``v_j`` sets training sample ``j``'s weight ``sigmoid(s v_j)``.

    Lower (worker i, its block B_i of the noisy training set)::

        g_i(v, y) = 1/|B_i| sum_{j in B_i} sigmoid(s v_j) CE(y; x_j, noisy_j) + ridge/2 ||W||^2

    Upper: ``G_i(x, y) = CE(y)`` on the clean validation set, divided by N (every worker holds
    the small trusted set), so ``sum_i G_i`` is the validation loss. Shapes: ``v`` ``(n_train,)``,
    ``y`` ``((d + 1) * classes,)``.

    Args:
        data: a dataset folder (split here into ``n_train``/``n_val``/``n_test`` rows by ``seed``)
            or an ``.npz`` with ``xtr, ytr, xva, yva`` (and optionally ``xte, yte``) already split,
            plus ``num_classes`` (see :func:`save_split`).
        repo, rev: read the folder through DVC from this git repository and revision.
        noise: fraction of training labels flipped to another class (0 for real labels).
        pca: project standardised features on that many principal components (0: keep all):
            fewer dimensions, a better-conditioned lower level.
        logit_scale: ``s``. A sample's weight moves the mean lower loss by O(1/n): scaling the
            logit by ``s`` multiplies the effective step on ``v`` by ``s^2`` without
            retuning the step sizes shared with the quadratic problems.
        warm_start: L-BFGS iterations a worker spends on its ``g_i`` at ``v0`` to start its
            ``y_i`` near the lower-level solution (the cuts only hold ``y`` near it afterwards).
    """

    def __init__(self, data: str = "data/mnist", n_train: int = 2000, n_val: int = 200, n_test: int = 1000,
                 noise: float = 0.3, ridge: float = 1e-3, pca: int = 50, seed: int = 0,
                 logit_scale: float = DEFAULT_LOGIT_SCALE,
                 warm_start: int = 50, shared_val: bool = True, repo: str | None = None, rev: str | None = None):
        if str(data).endswith(".npz"):
            (ftr, ltr), (fva, lva), (fte, lte), num_classes = load_split(data)
        else:
            features, labels, meta = load_features(data, repo, rev)
            num_classes = len(meta["classes"])
            order = np.random.default_rng(seed).permutation(len(labels))
            if n_train + n_val + n_test > len(order):
                raise ValueError(f"hyperclean needs n_train + n_val + n_test <= {len(order)} samples, "
                                 f"got {n_train} + {n_val} + {n_test}")
            tr, va, te = np.split(order[:n_train + n_val + n_test], [n_train, n_train + n_val])
            (ftr, ltr), (fva, lva), (fte, lte) = (features[tr], labels[tr]), (features[va], labels[va]), \
                (features[te], labels[te])
        xtr, xva, xte = _project(*_standardise(ftr, fva, fte), pca)
        noisy, self.flipped = flip_labels(ltr, noise, num_classes, seed + 1)
        self.clean_train_labels = ltr
        self.data = LinearData((xtr, noisy), (xva, lva), (xte, lte), num_classes)
        self.n, self.m, self.ridge = len(ltr), self.data.m, float(ridge)
        self.scale, self.warm, self.shared_val = float(logit_scale), int(warm_start), bool(shared_val)

    def weights(self, v: Tensor) -> Tensor:
        """Sample weights ``sigmoid(s v)`` ``(n_train,)`` in ``(0, 1)``."""
        return torch.sigmoid(self.scale * v)

    def shard(self, worker: int, num_workers: int) -> Shard:
        data, ridge = self.data, self.ridge
        tr = _split(self.n, num_workers, worker)
        # The clean validation set is small and trusted: shared, every worker holds all of it and
        # G_i = val loss / N (so sum_i G_i is the val loss); or split like the training data.
        va = slice(None) if self.shared_val else _split(len(data.yva), num_workers, worker)
        share = 1.0 / num_workers if self.shared_val else 1.0
        xtr, ytr, xva, yva = data.xtr[tr], data.ytr[tr], data.xva[va], data.yva[va]

        def lower(x: Tensor, y: Tensor) -> Tensor:
            losses = F.cross_entropy(data.logits(y, xtr), ytr, reduction="none")
            return (torch.sigmoid(scale * x[tr]) * losses).mean() + 0.5 * ridge * (data.weights(y) ** 2).sum()

        scale = self.scale
        x0, y0 = self.start()
        y0 = _minimise(lambda y: lower(x0, y), y0, self.warm)
        return Shard(self.n, self.m, x0, y0, upper=lambda x, y: share * F.cross_entropy(data.logits(y, xva), yva),
                     lower=lower)

    def evaluate(self, v: Tensor, z: Tensor) -> dict[str, float]:
        weights, flipped = self.weights(v).numpy(), self.flipped
        metrics = {**self.data.metrics(z), "mean_weight": float(weights.mean())}
        if flipped.any():  # labels flipped on purpose: do their samples lose weight?
            metrics.update(mean_weight_clean=float(weights[~flipped].mean()),
                           mean_weight_flipped=float(weights[flipped].mean()))
        return metrics


def _minimise(loss: Callable[[Tensor], Tensor], start: Tensor, steps: int) -> Tensor:
    """``steps`` L-BFGS iterations on ``loss`` from ``start`` (0: ``start`` itself)."""
    if steps <= 0:
        return start
    y = start.clone().requires_grad_(True)
    optimiser = torch.optim.LBFGS([y], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        value = loss(y)
        value.backward()
        return value

    optimiser.step(closure)
    return y.detach()


def _project(train: np.ndarray, val: np.ndarray, test: np.ndarray, components: int) -> list[np.ndarray]:
    """Principal components of the (standardised) training features, scaled to unit variance.

    Each process computes this itself: eigenvector signs are fixed (largest entry positive) so
    every process, on any machine, gets the same basis.
    """
    if not components or components >= train.shape[1]:
        return [train, val, test]
    centred = (train - train.mean(0)).astype(np.float64)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    basis = vectors[:, ::-1][:, :components]
    basis *= np.sign(basis[np.abs(basis).argmax(0), np.arange(components)])
    scale = (train @ basis).std(0) + 1e-6
    return [(a @ basis / scale).astype(np.float32) for a in (train, val, test)]


class FeatureRegularisation(Problem):
    """Per-feature L2 penalties ``exp(v_j)`` on the weights of a linear (softmax) classifier.

    Lower (worker i, its block of the training set)::

        g_i(v, y) = mean CE(y) on the block + 1/2 sum_j exp(v_j) ||W_j||^2     (W_j: row j)

    Upper: validation CE divided by N (the validation set is shared, as in :class:`HyperCleaning`).
    Shapes: ``v`` ``(d,)``, ``y`` ``((d + 1) * classes,)``. Data: scikit-learn's ``breast_cancer``
    (binary) or ``digits`` (10 classes), standardised.
    """

    def __init__(self, dataset: str = "breast_cancer", val_fraction: float = 0.3, test_fraction: float = 0.3,
                 init_log_penalty: float = -3.0, warm_start: int = 50, seed: int = 0):
        from sklearn import datasets

        loaders = {"breast_cancer": datasets.load_breast_cancer, "digits": datasets.load_digits}
        if dataset not in loaders:
            raise ValueError(f"feature_reg dataset must be one of {sorted(loaders)}, got {dataset!r}")
        bunch = loaders[dataset]()
        features, labels = bunch.data.astype(np.float32), bunch.target.astype(np.int64)
        order = np.random.default_rng(seed).permutation(len(labels))
        n_val, n_test = int(val_fraction * len(order)), int(test_fraction * len(order))
        va, te, tr = np.split(order, [n_val, n_val + n_test])
        xtr, xva, xte = _standardise(features[tr], features[va], features[te])
        self.data = LinearData((xtr, labels[tr]), (xva, labels[va]), (xte, labels[te]), int(labels.max()) + 1)
        self.n, self.m, self.init, self.warm = self.data.d, self.data.m, float(init_log_penalty), int(warm_start)

    def start(self) -> tuple[Tensor, Tensor]:
        return torch.full((self.n,), self.init), torch.zeros(self.m)

    def shard(self, worker: int, num_workers: int) -> Shard:
        data = self.data
        tr = _split(len(data.ytr), num_workers, worker)
        xtr, ytr = data.xtr[tr], data.ytr[tr]

        def lower(x: Tensor, y: Tensor) -> Tensor:
            rows = data.weights(y).view(data.d, data.k)
            return F.cross_entropy(data.logits(y, xtr), ytr) + 0.5 * (torch.exp(x) * (rows ** 2).sum(1)).sum()

        v0, z0 = self.start()
        return Shard(self.n, self.m, v0, _minimise(lambda y: lower(v0, y), z0, self.warm),
                     upper=lambda x, y: F.cross_entropy(data.logits(y, data.xva), data.yva) / num_workers,
                     lower=lower)

    def evaluate(self, v: Tensor, z: Tensor) -> dict[str, float]:
        return {**self.data.metrics(z), "mean_log_penalty": float(v.mean())}


PROBLEMS: dict[str, type[Problem]] = {"quadratic": Quadratic, "hyperclean": HyperCleaning,
                                      "feature_reg": FeatureRegularisation}
# Hyperparameters a problem runs best with (a config's ``hyper`` overrides them key by key):
# sample weights should not move before the cuts hold the y_i near the lower-level solution.
RECOMMENDED_HYPER: dict[str, dict[str, Any]] = {"hyperclean": {"v_warmup": 50}, "feature_reg": {"v_warmup": 20}}


def build(name: str, kwargs: dict[str, Any] | None = None) -> Problem:
    """The problem registered as ``name`` with keyword arguments ``kwargs``."""
    if name not in PROBLEMS:
        raise ValueError(f"unknown ADBO problem {name!r}; known: {sorted(PROBLEMS)}")
    return PROBLEMS[name](**(kwargs or {}))
