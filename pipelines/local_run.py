"""`distillery run`: the pipeline under kfp.local on this machine (task processes or containers of
the image), after every check that can fail before the first task; then where to see the results."""
from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

from distillery.pipelines.config import ConfigError, check_against_data, load_config, task_names


def cmd_run(args) -> int:
    """Everything that can be checked is checked before the first task: the config (and against its
    dataset), the devices, the image, the data's version, the tracking store. Runs that an earlier,
    dead `distillery run` left RUNNING are closed first."""
    from distillery.pipelines.data import ensure_consistent
    from distillery.pipelines.liveness import close_dead_runs
    from distillery.pipelines.runtime import project_root, run_context
    from distillery.pipelines.stores import check_tracking_store

    config = load_config(args.config)
    _check_devices(config, args.config)
    root = project_root()
    ensure_consistent(root)  # a `data` command that died mid-publish is finished or undone first
    image = _container_image() if args.runner == "container" else None
    ctx = run_context(config, root, allow_dirty_data=args.allow_dirty_data)
    data = ctx.data
    if not data.get("rev") and not (Path(data["repo"]) / data["path"]).is_dir():
        data_dir = Path(data["repo"]) / "data"
        if not data_dir.is_dir():
            raise FileNotFoundError(f"data/ is not in the work tree of {data['repo']}: run `distillery data "
                                    "materialize` (or `make run`, which does)")
        there = sorted(p.name for p in data_dir.iterdir() if (p / "dataset.json").is_file())
        raise ConfigError(f"{args.config}: data.path {data['path']!r} is not a dataset in {data['repo']}; the "
                          f"datasets there are {[f'data/{name}' for name in there]} (`distillery data list`)")
    labels, meta = _dataset_summary(data)
    check_against_data(config, labels, meta, args.config)
    check_tracking_store(ctx.tracking_uri)
    print(f"Running pipeline {config['name']!r}: {len(task_names(config))} tasks, data {data['path']} "
          f"(version {ctx.data_version[:12]}), git {ctx.git_commit[:10]}{' (dirty)' if ctx.git_dirty else ''}")
    if image:
        print(f"Every task runs in image {image.reference} ({image.id[:19]})")
    if ctx.data_dirty:
        print(f"WARNING: data/ differs from data.dvc (it hashes to {ctx.data_content_hash[:12]}): the run is tagged "
              "distillery.data_dirty=true and its model will not become champion", file=sys.stderr)
    print(f"MLflow tracking: {ctx.tracking_uri}")
    close_dead_runs(ctx.tracking_uri)
    ok = execute_locally(config, ctx, root, image=image)
    return report(ctx, ok)


def _dataset_summary(data: dict):
    """``(labels, dataset.json)`` of the run's dataset (work tree, or through DVC at ``data.rev``),
    without its features: what the config checks need."""
    import io
    import json

    import numpy as np

    from distillery.components.core.datasets import (
        LABELS,
        META,
        DataVersionError,
        dvc_filesystem,
    )

    folder = Path(data["repo"]) / data["path"]
    try:
        if not data.get("rev"):
            return np.load(folder / LABELS, allow_pickle=False), json.loads((folder / META).read_text())
        fs = dvc_filesystem(data["repo"], data["rev"])
        with fs.open(f"{data['path']}/{LABELS}", "rb") as fh:
            labels = np.load(io.BytesIO(fh.read()), allow_pickle=False)
        with fs.open(f"{data['path']}/{META}", "r") as fh:
            return labels, json.load(fh)
    except Exception as exc:  # noqa: BLE001 - a missing file, or DVC's many errors for a version it cannot fetch
        raise DataVersionError(f"cannot read {data['path']} (its {LABELS} and {META}) at revision "
                               f"{data.get('rev') or 'working tree'}: {type(exc).__name__}: {exc}. If data.rev names a "
                               "commit, its data version must be in the DVC cache or the DVC remote (`dvc pull`, "
                               "`dvc remote list`)") from exc


def _check_devices(config: dict, source: str) -> None:
    """``device: cuda`` needs CUDA where the tasks run: here (host processes, or containers that
    podman starts without GPUs). Refused before any work, naming the stages."""
    from distillery.components.core.devices import stage_spec, unavailable_stages

    stages = unavailable_stages(config)
    if stages:
        asked = ", ".join(f"{s}.device: {stage_spec(config, s)[0]}" for s in stages)
        raise ConfigError(f"{source}: {asked}, but this machine has no CUDA device (torch sees none): use device: "
                          "auto (CUDA when present, else the CPU) or cpu to run here, or submit the pipeline to a "
                          "cluster with GPU nodes (`distillery submit`)")


def _container_image():
    """The local project image the container runner needs; a clear error when podman or the image is missing."""
    from distillery.components.core.images import IMAGE
    from distillery.pipelines.podman import inspect_image, require

    require("podman")
    return inspect_image(IMAGE)


def execute_locally(config: dict, ctx, root: Path, progress=None, image=None) -> bool:
    """Run the pipeline under kfp.local; True on success. ``progress`` receives task timings.
    Tasks are processes of this Python environment, or with ``image`` (a
    :class:`distillery.pipelines.podman.ImageInfo`) containers of that image."""
    from kfp import local

    from distillery.pipelines.pipeline import build_pipeline
    from distillery.pipelines.progress import TaskProgress

    pipeline_root = root / ".distillery" / "kfp-local"
    warnings.filterwarnings("ignore", message=".*non-Python base image.*")  # the project image is Python
    with _runner(ctx, pipeline_root, image) as runner:
        local.init(runner=runner, raise_on_error=True, pipeline_root=str(pipeline_root))
        pipeline = build_pipeline(config, ctx.to_json())
        with progress or TaskProgress(len(task_names(config))):
            try:
                pipeline()
            except RuntimeError as exc:
                print(f"\nPipeline failed: {exc}", file=sys.stderr)
                return False
    return True


@contextmanager
def _runner(ctx, pipeline_root: Path, image):
    if image is not None:
        from distillery.pipelines.container_runner import container_runner

        with container_runner(ctx, pipeline_root, image) as runner:
            yield runner
        return
    from kfp import local

    # kfp.local starts each task with `python3` from PATH: make it this interpreter's environment.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ["DISTILLERY_RUNNER"] = "subprocess"
    yield local.SubprocessRunner(use_venv=False)


def report(ctx, ok: bool) -> int:
    """Print where the results are; the exit code of the run."""
    import mlflow
    from distillery.pipelines.liveness import close_unfinished

    client = mlflow.MlflowClient(ctx.tracking_uri)
    closed = close_unfinished(ctx.tracking_uri, ctx.launch_id)
    if closed:
        print(f"{len(closed)} run(s) of this pipeline were left open by a task that died; marked FAILED",
              file=sys.stderr)
    experiment = client.get_experiment_by_name(ctx.experiment)
    runs = client.search_runs([experiment.experiment_id], max_results=1, filter_string=(
        f"tags.`distillery.launch_id` = '{ctx.launch_id}' and tags.`distillery.role` = 'pipeline'"
    )) if experiment else []
    if not runs:
        print("No MLflow run was recorded.", file=sys.stderr)
        return 1
    run = runs[0]
    print(f"\nPipeline run {run.info.run_id}: {run.info.status}")
    print(f"  {run.data.tags.get('mlflow.note.content', '')}")
    print(f"See the results: `distillery ui` (or `make ui`), then open "
          f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}")
    return 0 if ok and run.info.status == "FINISHED" else 1
