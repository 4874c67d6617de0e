"""MLflow logging of an ADBO run, from the master (optional: without a tracking URI nothing is logged).

One run per master: the config as parameters, per-iteration ``upper_loss``, ``h``, ``cuts``,
``alive_workers``, ``iteration_seconds`` and per-worker ``worker_<i>_staleness`` /
``worker_<i>_upper_loss``, lost workers as the tag ``adbo.dropped_workers`` (and a param at the
end), and system metrics (CPU, memory; ``log_system_metrics=True``, psutil). Metrics are sent in
batches so a slow store does not slow the master's iterations.
"""
from __future__ import annotations

import time
from typing import Any

from distillery.components.training.adbo.config import ADBOConfig

FLUSH_EVERY = 25


class NullTracker:
    """The tracker used without MLflow: every call is a no-op."""

    run_id: str | None = None

    def log(self, record: dict[str, Any]) -> None:
        pass

    def dropped(self, dropped: dict[int, str]) -> None:
        pass

    def finish(self, result: dict[str, Any] | None, status: str) -> None:
        pass


class MlflowTracker(NullTracker):
    """Logs to ``config.tracking_uri``, nested under ``config.parent_run_id`` when given."""

    def __init__(self, config: ADBOConfig):
        import mlflow

        mlflow.set_tracking_uri(config.tracking_uri)
        experiment = mlflow.get_experiment_by_name(config.experiment)
        experiment_id = experiment.experiment_id if experiment else mlflow.create_experiment(config.experiment)
        mlflow.set_system_metrics_sampling_interval(1)  # runs last seconds to minutes
        mlflow.set_system_metrics_samples_before_logging(1)
        self.run = mlflow.start_run(experiment_id=experiment_id, run_name=config.run_name or
                                    f"adbo-{config.problem}-S{config.s}of{config.workers}",
                                    parent_run_id=config.parent_run_id, log_system_metrics=True,
                                    tags={"adbo.problem": config.problem, "adbo.mode":
                                          "synchronous" if config.s == config.workers else "asynchronous"})
        self.run_id = self.run.info.run_id
        self.client = mlflow.MlflowClient(config.tracking_uri)
        flat = {k: v for k, v in _flatten(config.__dict__).items() if k not in ("tracking_uri", "parent_run_id")}
        mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
        self.pending: list[Any] = []

    def log(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step, now = int(record["iteration"]), int(time.time() * 1000)
        values = {k: record[k] for k in ("upper_loss", "h", "cuts", "alive_workers", "iteration_seconds",
                                         "val_loss", "test_accuracy") if record.get(k) is not None}
        for rank, stale in record.get("staleness", {}).items():
            values[f"worker_{rank}_staleness"] = stale
        for rank, upper in record.get("worker_upper", {}).items():
            values[f"worker_{rank}_upper_loss"] = upper
        self.pending += [Metric(k, float(v), now, step) for k, v in values.items()]
        if step % FLUSH_EVERY == 0:
            self.flush()

    def flush(self) -> None:
        for start in range(0, len(self.pending), 1000):  # the store's batch limit
            self.client.log_batch(self.run_id, metrics=self.pending[start:start + 1000])
        self.pending = []

    def dropped(self, dropped: dict[int, str]) -> None:
        self.client.set_tag(self.run_id, "adbo.dropped_workers", ",".join(str(r) for r in sorted(dropped)))

    def finish(self, result: dict[str, Any] | None, status: str) -> None:
        import mlflow

        self.flush()
        if result is not None:
            mlflow.log_param("dropped_workers", ",".join(str(r) for r in sorted(result["dropped"])) or "none")
            final = {f"final_{k}": v for k, v in result.get("final", {}).items() if isinstance(v, (int, float))}
            mlflow.log_metrics({**final, "wall_seconds": result["wall_seconds"]})
            mlflow.log_dict(result, "adbo_result.json")
        mlflow.end_run(status)


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def tracker(config: ADBOConfig) -> NullTracker:
    return MlflowTracker(config) if config.tracking_uri else NullTracker()
