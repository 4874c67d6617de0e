"""MLflow logging of SPSA runs: per-worker round metrics, the bytes summary, a tracked run.

Zelikman et al., "Just One Byte (per gradient)", arXiv:2306.10015, 2023: :func:`summarise` puts the
bytes each worker sent per step beside those of a full fp32 gradient exchange of the same model.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from distillery.components.training.spsa.launcher import MetricsCallback, SPSARun


def mlflow_callback() -> MetricsCallback:
    """Log each worker's round metrics to the active MLflow run as ``<metric>_worker_<id>`` at step = round."""
    import mlflow

    def log(worker: int, round_index: int, metrics: dict) -> None:
        mlflow.log_metrics({f"{k}_worker_{worker}": float(v) for k, v in metrics.items()}, step=round_index)

    return log


def summarise(run: SPSARun) -> dict[str, float]:
    """Bytes per worker per step vs a full fp32 gradient exchange, hash agreement, losses."""
    reports = list(run.workers.values())
    params = reports[0].parameters
    per_step = float(np.mean([r.gradient_bytes_per_step for r in reports]))
    verify_per_step = float(np.mean([r.bytes["verification"] / max(len(r.rounds), 1) for r in reports]))
    full = 4.0 * params
    return {
        "model_parameters": params,
        "bytes_per_step_spsa": per_step,
        "bytes_per_step_spsa_with_hash": per_step + verify_per_step,
        "bytes_per_step_full_gradient": full,
        "ratio": full / per_step,
        "ratio_with_hash": full / (per_step + verify_per_step),
        "hashes_agree": float(run.hashes_agree()),
        "wall_s": run.wall_s,
    }


def log_summary(run: SPSARun) -> None:
    """Summary metrics (see :func:`summarise`), per-worker byte totals and gradient bytes per step on
    the active MLflow run."""
    import mlflow

    mlflow.log_metrics(summarise(run))
    for worker, report in run.workers.items():
        mlflow.log_metrics({f"{k}_bytes_worker_{worker}": float(v) for k, v in report.bytes.items()})
        mlflow.log_metric(f"gradient_bytes_per_step_worker_{worker}", report.gradient_bytes_per_step)


@contextmanager
def tracked_run(run_name: str, params: dict | None = None) -> Iterator[Any]:
    """An MLflow run with system metrics (CPU, memory, ...) sampled every second when psutil is installed."""
    import importlib.util

    import mlflow

    system = importlib.util.find_spec("psutil") is not None
    if system:
        mlflow.set_system_metrics_sampling_interval(1)
    with mlflow.start_run(run_name=run_name, log_system_metrics=system) as run:
        if params:
            mlflow.log_params(params)
        yield run
