"""MLflow bookkeeping shared by every task: one parent run per pipeline run, one nested run per task.

The pipeline passes every task the same *run context* (a JSON string: tracking URI, experiment,
a key identifying this pipeline run, git commit, data version, config and seed). The first task to
start creates the parent run, later tasks find it by its key, so the same code works under
kfp.local and on a cluster where no launcher process owns the parent run. A task that fails marks
the parent run FAILED; the evaluation task, last, marks it FINISHED.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

RUN_KEY = "distillery.run_key"
GIT_COMMIT = "distillery.git_commit"
DATA_VERSION = "distillery.data_version"
CONFIG_NAME = "distillery.config"
ROLE = "distillery.role"  # "pipeline" on the parent run, "task" on nested runs
NOTE = "mlflow.note.content"  # the run description the MLflow UI shows
# Where a task runs, from the environment its runner gives it (pipelines/cli.py, container_runner.py,
# the compiled spec): tag -> environment variable.
WHERE_TAGS = {"distillery.runner": "DISTILLERY_RUNNER", "distillery.image": "DISTILLERY_IMAGE",
              "distillery.image_id": "DISTILLERY_IMAGE_ID", "distillery.image_digest": "DISTILLERY_IMAGE_DIGEST"}


# What the retraining check hands on instead of a run context when there is nothing new to train on.
SKIP = "skip"


@dataclass
class RunContext:
    """What every task of one pipeline run shares (travels as a JSON pipeline parameter)."""

    tracking_uri: str
    experiment: str
    git_commit: str
    data_version: str
    config: dict[str, Any] = field(default_factory=dict)
    artifact_location: str | None = None  # where a new experiment keeps artifacts (None: server's)
    launch_id: str = ""  # set by `distillery run` to find its parent run afterwards
    git_dirty: bool = False
    run_key: str = ""  # KFP's pipeline job id, filled in per task
    # data/ differs from what data.dvc records (`distillery run --allow-dirty-data`): its actual hash
    data_dirty: bool = False
    data_content_hash: str = ""
    # the `distillery run` process that owns this run (host, pid, start time): a later run on the
    # same host can tell a dead run from a live one (pipelines/liveness.py); empty on a cluster
    launcher: dict[str, str] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def data(self) -> dict[str, Any]:
        return self.config["data"]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunContext:
        return cls(**json.loads(text))

    def tags(self) -> dict[str, str]:
        return {
            RUN_KEY: self.run_key,
            GIT_COMMIT: self.git_commit,
            "mlflow.source.git.commit": self.git_commit,
            DATA_VERSION: self.data_version,
            CONFIG_NAME: self.config.get("name", ""),
            "distillery.git_dirty": str(self.git_dirty).lower(),
            "distillery.launch_id": self.launch_id,
            "distillery.data_dirty": str(self.data_dirty).lower(),
            **({"distillery.data_content_hash": self.data_content_hash} if self.data_dirty else {}),
            **self.launcher,
            **where_tags(),
        }


def where_tags() -> dict[str, str]:
    """The runner and container image this process runs in, as far as its environment says."""
    import os

    return {tag: os.environ[env] for tag, env in WHERE_TAGS.items() if os.environ.get(env)}


def _client(ctx: RunContext):
    import mlflow

    mlflow.set_tracking_uri(ctx.tracking_uri)
    experiment = mlflow.get_experiment_by_name(ctx.experiment)
    if experiment is not None:
        return mlflow.MlflowClient(ctx.tracking_uri), experiment.experiment_id
    try:
        experiment_id = mlflow.create_experiment(ctx.experiment, artifact_location=ctx.artifact_location)
    except mlflow.exceptions.MlflowException as exc:
        # tasks that start together race to create it: whoever loses uses the winner's
        experiment = mlflow.get_experiment_by_name(ctx.experiment)
        if exc.error_code != "RESOURCE_ALREADY_EXISTS" or experiment is None:
            raise
        experiment_id = experiment.experiment_id
    return mlflow.MlflowClient(ctx.tracking_uri), experiment_id


def parent_run_id(ctx: RunContext) -> str:
    """The parent run of this pipeline run, created (with config, seeds and tags) on first use."""
    client, experiment_id = _client(ctx)
    found = _parent_runs(client, experiment_id, ctx.run_key)
    if found:
        return found[0].info.run_id
    note = pipeline_note(ctx, "running.")
    run = client.create_run(experiment_id, run_name=f"{ctx.config.get('name', 'pipeline')}-{ctx.run_key[:8]}",
                            tags={**ctx.tags(), ROLE: "pipeline", NOTE: note})
    client.log_dict(run.info.run_id, ctx.config, "config.yaml")
    for key, value in _flatten(ctx.config).items():
        client.log_param(run.info.run_id, key, value)
    # Tasks that start at the same time (parallel branches on a cluster) may each have created a
    # parent: the oldest one wins everywhere and the others are removed again.
    winner = _parent_runs(client, experiment_id, ctx.run_key)[0].info.run_id
    if winner != run.info.run_id:
        client.delete_run(run.info.run_id)
    return winner


def _parent_runs(client, experiment_id: str, run_key: str) -> list:
    """Parent runs of ``run_key``, oldest first (normally exactly one)."""
    return client.search_runs([experiment_id], order_by=["attributes.start_time ASC", "attributes.run_id ASC"],
                              filter_string=f"tags.`{RUN_KEY}` = '{run_key}' and tags.`{ROLE}` = 'pipeline'")


def _flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)[:6000]
    return flat


def pipeline_note(ctx: RunContext, state: str) -> str:
    """The parent run's description: which config ran on which data version, and how it ended."""
    about = ctx.config.get("description")
    return (f"Pipeline `{ctx.config.get('name')}` on `{ctx.data['path']}` (data version "
            f"`{ctx.data_version[:12]}`, git `{ctx.git_commit[:10]}`): {state}"
            + (f" Config: {about}." if about else ""))


def task_note(what: str, run, seconds: float | None = None) -> str:
    """A task run's description in one line: what it did and what came out, e.g. "Training with
    `small_cnn`: <summary>. Result: test_accuracy 0.485, labels 100; 1.9 s." Results are the run's
    metrics and the tags its body set (``promotion``, ...), so no task has to write its own."""
    metrics = {k: v for k, v in run.data.metrics.items() if "/" not in k and k != "work_seconds"}
    own_tags = {k: v for k, v in run.data.tags.items()
                if not k.startswith(("mlflow.", "distillery.")) and len(v) <= 200}
    results = [f"{k} {_number(v)}" for k, v in list(metrics.items())[:8]] + [f"{k}: {v}" for k, v in own_tags.items()]
    return (f"{what}." + (f" Result: {', '.join(results)}" if results else "")
            + (f"; {seconds:.1f} s." if seconds is not None else "."))


def _number(value: float) -> str:
    """Counts as integers (409034, not 4.09e+05), measurements to 4 significant digits."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:.4g}"


@contextmanager
def task_run(ctx: RunContext, task: str, params: dict[str, Any], what: str = "",
             system_metrics: bool | None = None) -> Iterator[Any]:
    """A nested MLflow run for one task; the body's wall time is logged as ``work_seconds``.

    ``what`` says in words what the task does; the run's description (the MLflow UI shows it)
    is that line, then the run's results once it ends. On an exception the nested run and the
    parent run are marked FAILED (both descriptions name the task and error), then the
    exception propagates so the task fails.
    """
    import mlflow

    what = what or f"Task `{task}`"
    parent = parent_run_id(ctx)
    client = mlflow.MlflowClient(ctx.tracking_uri)
    run = mlflow.start_run(run_name=task, parent_run_id=parent,
                           experiment_id=client.get_run(parent).info.experiment_id, log_system_metrics=system_metrics,
                           tags={**ctx.tags(), ROLE: "task", "distillery.task": task, NOTE: f"{what}. Running."})
    mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
    started = time.perf_counter()
    try:
        yield run
    except BaseException as exc:
        client.set_tag(run.info.run_id, NOTE, f"{what}. FAILED: {type(exc).__name__}: {exc}")
        mlflow.end_run("FAILED")
        client.set_tag(parent, "distillery.failed_task", task)
        client.set_tag(parent, NOTE, f"Pipeline `{ctx.config.get('name')}` FAILED at task `{task}`: "
                                     f"{type(exc).__name__}: {exc}")
        client.set_terminated(parent, "FAILED")
        raise
    seconds = time.perf_counter() - started
    mlflow.log_metric("work_seconds", seconds)
    client.set_tag(run.info.run_id, NOTE, task_note(what, client.get_run(run.info.run_id), seconds))
    mlflow.end_run("FINISHED")


def finish_parent(ctx: RunContext, outcome: str) -> None:
    """Mark the parent run FINISHED with a description of the outcome."""
    client, _ = _client(ctx)
    parent = parent_run_id(ctx)
    client.set_tag(parent, NOTE, pipeline_note(ctx, outcome))
    client.set_terminated(parent, "FINISHED")


def progress(message: str) -> None:
    """A progress line from inside a task (kfp.local streams task stdout; so does a cluster pod)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@contextmanager
def method_task(stage: str, method: str, context: str, run_key: str, params: str,
                round_index: int | None = None):
    """Everything a task adapter opens: the run context, the registered method with its resolved
    parameters, and the task's nested MLflow run. Yields ``(ctx, method, params)``.

    ``run_key`` identifies the pipeline run (KFP's job id): every task of one run shares it.

    A stage that runs torch (:data:`distillery.components.core.devices.TORCH_STAGES`) resolves its ``device`` and
    ``precision`` from the config first (``device: cuda`` without CUDA fails here, before the task
    reads any data), makes them current for the block (:func:`distillery.components.core.devices.current`), tags the
    run with them (GPU name and count on CUDA) and, on CUDA, logs MLflow's GPU system metrics.
    """
    from distillery.components.core import devices, registry

    ctx = RunContext.from_json(context)
    ctx.run_key = run_key
    entry = registry.get(stage, method)
    resolved = entry.resolve_params(json.loads(params or "{}"))
    placement, unusable = None, None
    if stage in devices.TORCH_STAGES:
        try:
            placement = devices.resolve(*devices.stage_spec(ctx.config, stage))
        except devices.DeviceError as exc:
            unusable = exc  # raised inside the task's run, so the run and its parent record why
    gpu = placement is not None and placement.device.type == "cuda"
    what = f"{stage.replace('_', ' ').capitalize()} with `{method}`: {entry.summary.rstrip('.')}"
    with task_run(ctx, registry.task_name(stage, method, round_index), {"method": method, **resolved}, what,
                  system_metrics=True if gpu else None):
        if unusable is not None:
            raise unusable
        if placement is not None:
            import mlflow

            mlflow.set_tags(devices.describe(placement))
        with devices.placed(placement) if placement is not None else nullcontext():
            yield ctx, entry, resolved


def log_artifacts(artifacts: dict[str, object]) -> None:
    """A dict/list is logged as JSON, a matplotlib Figure as an image (then closed)."""
    import mlflow
    from distillery.components.core.plots import log_figure

    for name, artifact in artifacts.items():
        if isinstance(artifact, (dict, list)):
            mlflow.log_dict(artifact, name)
        else:
            log_figure(artifact, name)
