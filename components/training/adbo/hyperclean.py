"""Training-stage method ``adbo_hyperclean``: learn per-sample weights with ADBO, then train.

Same call signature as :func:`distillery.components.core.train.train_classifier`, plus ADBO's own
keyword parameters: a small, stratified part of the labelled set is held out as the trusted
validation set, ADBO (Jiao et al., ICLR 2023; data hyper-cleaning as in its Sec. 5) learns a weight
in (0, 1) for every other sample with a linear classifier as the lower level, split across
``workers`` processes, and the requested architecture is then trained by the normal
:func:`distillery.components.core.train.fit` on the weighted samples plus the held-out ones (weight 1).
"""
from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from distillery.components.core import devices, models
from distillery.components.training.adbo import problems
from distillery.components.training.adbo.config import ADBOConfig
from distillery.components.training.adbo.launcher import launch


def hold_out(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_rows, val_rows)``: ``fraction`` of every class (at least one sample of each class
    that has two or more) held out as the trusted validation set."""
    rng = np.random.default_rng(seed)
    val = []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        if len(rows) > 1:
            val.extend(rows[:max(1, int(round(fraction * len(rows))))])
    val = np.sort(np.asarray(val, dtype=np.int64))
    return np.setdiff1d(np.arange(len(labels)), val), val


# Runs an ADBO config whose problem reads the split file given, and returns the path of the master's
# final.pt (here, or fetched back from wherever the run happened).
Runner = Callable[[ADBOConfig, Path, Path], Path]


def local_runner(timeout: float | None = None) -> Runner:
    """Master and workers as processes on this machine (:func:`distillery.components.training.adbo.launcher.launch`)."""
    def run(config: ADBOConfig, split: Path, output_dir: Path) -> Path:
        launch(config, output_dir, timeout=timeout)
        return output_dir / "final.pt"

    return run


def learn_weights(features: np.ndarray, labels: np.ndarray, val_features: np.ndarray, val_labels: np.ndarray,
                  num_classes: int, config: dict[str, Any], output_dir: str | Path, timeout: float | None = None,
                  runner: Runner | None = None) -> np.ndarray:
    """ADBO hyper-cleaning on ``(features, labels)`` against the clean ``(val_features, val_labels)``.

    Args:
        features: ``(n, D)`` raw training features; ``labels``: ``(n,)`` (possibly noisy).
        config: :class:`ADBOConfig` fields; ``problem_kwargs`` may set ``pca``, ``ridge``,
            ``logit_scale``, ``warm_start`` (the data comes from here).
        runner: where the ADBO run happens (default :func:`local_runner` with ``timeout``; the
            cluster's: :func:`distillery.components.training.cluster.methods.adbo_job`).
    Returns:
        weights ``(n,)`` in (0, 1).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    split = problems.save_split(output_dir / "split.npz", (features.astype(np.float32), labels),
                                (val_features.astype(np.float32), val_labels), num_classes=num_classes)
    problem_kwargs = {**config.get("problem_kwargs", {}), "data": str(split), "noise": 0.0}
    run = ADBOConfig(**{**config, "problem": "hyperclean", "problem_kwargs": problem_kwargs})
    final = (runner or local_runner(timeout))(run, split, output_dir / "run")
    v = torch.load(final, weights_only=True)["v"]
    scale = float(problem_kwargs.get("logit_scale", problems.DEFAULT_LOGIT_SCALE))
    return torch.sigmoid(scale * v).numpy()


def weighted_cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mean of ``w_j * CE_j`` over the batch (the weights are normalised to mean 1 over the data
    set, so this stays a per-sample mean, as :func:`fit` expects)."""
    return (w * F.cross_entropy(model(x), y, reduction="none")).mean()


def _mlflow_parent() -> dict[str, Any]:
    """Where the ADBO master logs: nested under the caller's open MLflow run (a pipeline task's), in
    its experiment; nowhere if there is none."""
    mlflow = sys.modules.get("mlflow")  # only if the caller already uses MLflow
    run = mlflow.active_run() if mlflow else None
    if run is None:
        return {}
    return {"tracking_uri": mlflow.get_tracking_uri(), "parent_run_id": run.info.run_id,
            "experiment": mlflow.get_experiment(run.info.experiment_id).name}


def adbo_hyperclean(features, labels, meta: dict, arch: str, arch_kwargs: dict, epochs: int, lr: float,
                    batch_size: int, seed: int, on_epoch=None, *, workers: int = 2, s: int = 1, tau: int = 4,
                    iterations: int = 150, val_fraction: float = 0.1, hyper: dict | None = None,
                    problem_kwargs: dict | None = None, rpc_timeout: float = 60.0, min_workers: int = 1,
                    timeout: float | None = 1800.0, runner: Runner | None = None) -> nn.Module:
    """A fresh ``arch`` model trained on ADBO-weighted samples (see the module docstring).

    Args:
        features, labels, meta, arch, arch_kwargs, epochs, lr, batch_size, seed, on_epoch: as
            :func:`distillery.components.core.train.train_classifier`.
        workers, s, tau, iterations, hyper, problem_kwargs, rpc_timeout, min_workers: the ADBO run
            (:class:`ADBOConfig`); ``val_fraction``: share of each class held out as clean.
        runner: where ADBO runs (:func:`learn_weights`); ``timeout`` applies to the local one.
    """
    from distillery.components.core.train import fit

    features, labels = np.asarray(features), np.asarray(labels)
    train_rows, val_rows = hold_out(labels, val_fraction, seed)
    config = {"workers": workers, "s": s, "tau": tau, "iterations": iterations, "hyper": hyper or {},
              "problem_kwargs": problem_kwargs or {}, "rpc_timeout": rpc_timeout, "min_workers": min_workers,
              "seed": seed, "run_name": "adbo-hyperclean", **_mlflow_parent()}
    with tempfile.TemporaryDirectory(prefix="adbo-") as tmp:
        weights = learn_weights(features[train_rows], labels[train_rows], features[val_rows], labels[val_rows],
                                len(meta["classes"]), config, tmp, timeout, runner)
    sample_weights = np.ones(len(labels), dtype=np.float32)
    sample_weights[train_rows] = weights
    sample_weights /= sample_weights.mean()
    torch.manual_seed(seed)
    # ADBO's master and workers solve small linear problems on the CPU; the model trains on the stage's device
    model = models.build(arch, meta, **arch_kwargs).to(devices.current().device)
    tensors = (torch.as_tensor(features, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.long),
               torch.as_tensor(sample_weights))
    return fit(model, tensors, weighted_cross_entropy, epochs, lr, batch_size, seed, on_epoch)
