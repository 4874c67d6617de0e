"""Task body of the training stage: train the teacher on the labelled set of this round.

Every training method's code is called as ``target(features, labels, meta, arch, arch_kwargs,
epochs, lr, batch_size, seed, on_epoch, **method_kwargs)`` and the task logs the same things for
all of them (``train_loss`` per epoch, ``test_accuracy``, ``labels``, ``parameters``, the parent
run's ``teacher_test_accuracy``). Parameters map onto that call in one of two ways:

* no ``arch_kwargs`` parameter (``small_cnn``): the architecture is the method's name and every
  parameter but ``epochs``/``lr``/``batch_size`` is an architecture argument;
* an ``arch_kwargs`` parameter (``ddp``, ``adbo_hyperclean``, ``spsa_finetune``, ``federated``,
  ``fusion``, ``ddp_trainjob``, ``adbo_job``): ``arch`` names the architecture, ``arch_kwargs`` holds its
  arguments, and every other parameter is a keyword of the method.

Methods registered with ``execution="cluster"`` (``ddp_trainjob``, ``adbo_job``, see
:mod:`distillery.components.training.cluster`) also get this task's MLflow run to stage data and model
through, a fresh object name, and hooks that stream the job's progress and tag the run with
``distillery.k8s.kind/namespace/name/state``.

Methods registered with ``execution="torchrun"`` (``ddp``: workers in other processes) also
log per-worker metrics (``train_loss_rank{r}``, ``samples_per_second_rank{r}``, ...) and MLflow
system metrics (CPU, memory, GPU of the machine the task runs on) on the training run.
The method's call and its result: the stage contract, :mod:`distillery.components.training.contract`.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

from distillery.components.core.datasets import load_arrays, load_labelled, unlabelled_rows
from distillery.components.core.tracking import method_task, parent_run_id, progress

SYSTEM_METRICS_INTERVAL_S = 5.0
CHECKPOINT_ROOT_ENV = "DISTILLERY_CHECKPOINT_DIR"  # a persistent volume: resume across task retries


def run_training(method: str, context: str, run_key: str, params: str, round_index: int, dataset: str,
                 splits: str, labelled: str, model_out: str) -> None:
    from distillery.components.core import registry

    launched = registry.get("training", method).execution == "torchrun"
    with _system_metrics(launched):
        _run_training(method, context, run_key, params, round_index, dataset, splits, labelled, model_out, launched)


def _run_training(method: str, context: str, run_key: str, params: str, round_index: int, dataset: str,
                  splits: str, labelled: str, model_out: str, launched: bool) -> None:
    import mlflow
    from distillery.components.core import models, registry
    from distillery.components.core.train import accuracy, method_call

    with method_task("training", method, context, run_key, params, round_index) as (ctx, entry, p):
        data, split, labels = load_labelled(dataset), load_arrays(splits), load_arrays(labelled)
        arch, arch_kwargs, method_kwargs = method_call(method, p)
        epochs = p["epochs"]
        seed = ctx.seed + round_index

        def on_epoch(epoch: int, loss: float) -> None:
            mlflow.log_metric("train_loss", loss, step=epoch)
            if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
                progress(f"round {round_index}: epoch {epoch + 1}/{epochs} loss {loss:.4f}")

        args = (data.features[labels["rows"]], labels["labels"], data.meta, arch, arch_kwargs,
                epochs, p["lr"], p["batch_size"], seed, on_epoch)
        done: dict = {}  # the workers' final record, for launched methods
        if launched:
            method_kwargs.update(_worker_hooks(p, arch, run_key, registry.task_name("training", method, round_index),
                                               done))
        elif entry.execution == "cluster":  # a TrainJob/Job (distillery.components.training.cluster)
            method_kwargs.update(_cluster_hooks(method, run_key, round_index))
        if "unlabelled" in entry.inputs:  # pool-aware methods also learn from the unlabelled pool
            method_kwargs["unlabelled"] = data.features[unlabelled_rows(split, labels)]
        model = entry.load()(*args, **method_kwargs)
        if done:
            mlflow.log_metrics({"train_seconds": done["seconds"], "samples_per_second": done["samples_per_second"]})
        test = split["test_rows"]
        test_accuracy = accuracy(model, data.features[test], data.labels[test])
        n_labels = len(labels["rows"])
        mlflow.log_metrics({"test_accuracy": test_accuracy, "labels": n_labels,
                            "parameters": models.count_parameters(model),
                            "flops": models.count_flops(model, data.features.shape[1:])})
        # The learning curve: one point per round on the parent run, x = number of labels.
        mlflow.MlflowClient().log_metric(parent_run_id(ctx), "teacher_test_accuracy", test_accuracy, step=n_labels)
        models.save(model, model_out, arch, data.meta, arch_kwargs)
        progress(f"round {round_index}: teacher trained on {n_labels} labels, test accuracy {test_accuracy:.4f}")


def _worker_hooks(p: dict, arch: str, run_key: str, task: str, done: dict) -> dict:
    """Keywords for an out-of-process method (torchrun workers): log what its workers report,
    stream their output, and where to keep checkpoints; the final record goes into ``done``."""
    import mlflow

    mlflow.set_tags({"distillery.world_size": str(p["nproc_per_node"]), "distillery.arch": arch})

    def on_workers(epoch: int, workers: list[dict]) -> None:
        from distillery.components.training.distributed import epoch_metrics

        metrics = epoch_metrics({"train_loss": 0.0, "workers": workers})
        metrics.pop("train_loss")  # logged by on_epoch, with the task's progress lines
        mlflow.log_metrics(metrics, step=epoch)

    def on_record(record: dict) -> None:
        if record.get("event") == "done":
            done.update(record)

    root = os.environ.get(CHECKPOINT_ROOT_ENV)
    # With a persistent root, a retried task (same pipeline run, same task) resumes its checkpoints;
    # without one they live in a temporary folder, still enough for torchrun's own restarts.
    return {"checkpoint_dir": os.path.join(root, run_key, task) if root else None, "on_workers": on_workers,
            "on_record": on_record, "on_line": lambda line: print(line, flush=True)}


def _cluster_hooks(method: str, run_key: str, round_index: int) -> dict:
    """Keywords for a method that trains in a TrainJob/Job: this task's MLflow run (the pods fetch
    the data from it and upload the model to it), a fresh object name, labels to find it by, and
    hooks that stream its progress and log its name and state as tags (``distillery.k8s.*``)."""
    import secrets

    import mlflow
    from distillery.components.training.cluster.manifests import job_name

    def on_job(manifest: dict, state: str) -> None:
        meta = manifest["metadata"]
        if state == "Created":
            mlflow.log_dict(manifest, f"cluster-input/{manifest['kind'].lower()}.json")
        mlflow.set_tags({"distillery.k8s.kind": manifest["kind"], "distillery.k8s.namespace": meta["namespace"],
                         "distillery.k8s.name": meta["name"], "distillery.k8s.state": state})

    # A random suffix: a retried task creates a new object and leaves the failed one for inspection.
    name = job_name(method.replace("_", "-"), run_key[:8], f"r{round_index}", secrets.token_hex(3))
    return {"run_id": mlflow.active_run().info.run_id, "tracking_uri": mlflow.get_tracking_uri(), "name": name,
            "job_labels": {"distillery/run-key": job_name(run_key), "distillery/round": str(round_index)},
            "on_line": progress, "on_job": on_job}


@contextmanager
def _system_metrics(enabled: bool):
    """MLflow system metrics (psutil: CPU, memory, disk, network; GPU when present) for the runs
    opened inside; the process-wide switch is restored afterwards."""
    if not enabled:
        yield
        return
    import mlflow

    keys = ("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL")
    before = {k: os.environ.get(k) for k in keys}
    mlflow.enable_system_metrics_logging()
    if before["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] is None:  # an explicit setting wins
        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
