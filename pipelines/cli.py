"""``distillery``: run, compile, submit and schedule the pipeline; list methods; manage data and
human label sets; open the MLflow UI."""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

from pipelines.config import (DEFAULT_CONFIG, RETRAINING_CONFIG, ConfigError, check_against_data, load_config,
                              task_names)

DEFAULT_CLUSTER_TRACKING_URI = "http://mlflow.distillery.svc.cluster.local:5000"
RUNNERS = ("subprocess", "container")
_CRON_FIELD = re.compile(r"^[\d*/,\-?LW#A-Za-z]+$")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        # RuntimeError covers pipelines.podman.ContainerError (podman missing, image not built, ...)
        if args.debug:
            raise
        print(f"distillery: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distillery: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - anything else: one paragraph, the traceback with --debug
        if args.debug:
            raise
        print(f"distillery: error: {explain(exc)}\n(run with --debug for the traceback)", file=sys.stderr)
        return 1


def explain(exc: Exception) -> str:
    """One paragraph for an error no check anticipated: what failed, where, what to do."""
    from pipelines.stores import explain_store_error

    return explain_store_error(exc) or f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distillery", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, handler, help: str, config: Path | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        if config:
            p.add_argument("--config", default=str(config), help="pipeline config YAML (default: %(default)s)")
        return p

    p = command("methods", cmd_methods, "list every registered method with its stage and paper")
    p.add_argument("--stage", help="only this stage")
    p = command("run", cmd_run, "run the pipeline for real on this machine (kfp.local)", config=DEFAULT_CONFIG)
    p.add_argument("--allow-dirty-data", action="store_true",
                   help="run although data/ differs from data.dvc: the run is tagged distillery.data_dirty=true with "
                        "data/'s actual hash, and its model never becomes champion")
    p.add_argument("--runner", choices=RUNNERS, default="subprocess",
                   help="subprocess: every task a process of this Python environment (default); container: every "
                        "task in the project's image (podman; build it with `make image`)")
    image = sub.add_parser("image", help="the project's container image (podman + buildah)") \
        .add_subparsers(required=True, metavar="ACTION")
    p = image.add_parser("build", help="build the image every component runs in, with buildah (no registry pull)")
    p.set_defaults(handler=cmd_image_build)
    p.add_argument("--base", help="base image (default: a Debian base made here with mmdebstrap)")
    p.add_argument("--wheels", help="folder holding the CPU torch wheel (default: $PIP_FIND_LINKS)")
    p.add_argument("--no-cache", action="store_true", help="rebuild every layer")
    p = command("compile", cmd_compile, "write the pipeline spec YAML for a KFP cluster", config=DEFAULT_CONFIG)
    p.add_argument("--output", help="spec file (default: pipelines/compiled/<config name>.yaml)")
    _cluster_options(p, host=False)
    p = command("submit", cmd_submit, "submit one run to a KFP server", config=DEFAULT_CONFIG)
    _cluster_options(p)
    p.add_argument("--run-name", help="run name (default: the config name)")
    p = command("schedule", cmd_schedule, "create a recurring run of the retraining pipeline on a KFP server",
                config=RETRAINING_CONFIG)
    _cluster_options(p)
    p.add_argument("--cron", required=True, help='6-field cron with seconds, in UTC, e.g. "0 0 3 * * *"')
    p.add_argument("--name", help="recurring run name (default: <config name>-scheduled)")
    p = command("ui", cmd_ui, "open the MLflow UI on this project's tracking store")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--host", default="127.0.0.1")
    data = sub.add_parser("data", help="dataset versions (DVC)").add_subparsers(required=True, metavar="ACTION")
    p = data.add_parser("materialize", help="make data/ match data.dvc (pull, or rebuild the default dataset)")
    p.set_defaults(handler=cmd_data_materialize)
    p = data.add_parser("add", help="validate a dataset and version it with DVC as data/<name>")
    p.set_defaults(handler=cmd_data_add)
    p.add_argument("source", type=Path, help="a folder with one sub-folder of images per class, a .csv/.parquet "
                                             "table, a features .npy (with --labels), or a Distillery dataset folder")
    p.add_argument("--labels", type=Path, help="labels .npy (N,) of a features .npy source")
    p.add_argument("--name", required=True, help="dataset name (folder under data/)")
    p.add_argument("--label-column", default="label", help="label column of a table (default: %(default)s)")
    p.add_argument("--replace", action="store_true", help="make a new version of an existing dataset")
    p = data.add_parser("list", help="every dataset in data/: rows, classes, kind, content hash, origin")
    p.set_defaults(handler=cmd_data_list)
    p = data.add_parser("distil", help="distil a dataset into a few synthetic images per class (distribution "
                                       "matching) and version them with DVC as a new folder")
    p.set_defaults(handler=cmd_data_distil)
    p.add_argument("--source", required=True, help="dataset folder to distil, e.g. data/mnist")
    p.add_argument("--ipc", type=int, required=True, help="synthetic images per class, e.g. 10")
    p.add_argument("--target", required=True, help="new dataset folder, e.g. data/mnist-dm10")
    p.add_argument("--iterations", type=int, default=1000, help="distribution-matching iterations (default: %(default)s)")
    p.add_argument("--batch-real", type=int, default=256, help="real images per class per iteration (default: %(default)s)")
    p.add_argument("--width", type=int, default=128, help="channels of the random ConvNet (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--replace", action="store_true", help="make a new version of an existing target")
    p = data.add_parser("curate", help="run a curation step (`distillery methods --stage curation_step`) on a "
                                       "dataset version and version the result with DVC as a new folder")
    p.set_defaults(handler=cmd_data_curate)
    p.add_argument("--method", required=True, help="curation step, e.g. quality_filter, consensus, info_gain, ppp")
    p.add_argument("--params", default="{}", help='step parameters as JSON, e.g. \'{"k": 10}\' (default: the step\'s)')
    p.add_argument("--source", required=True, help="dataset folder to curate, e.g. data/mnist")
    p.add_argument("--rev", help="git revision of the source data version (default: the work tree)")
    p.add_argument("--target", required=True, help="new dataset folder, e.g. data/mnist-consensus")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--replace", action="store_true", help="make a new version of an existing target")
    labels = sub.add_parser("labels", help="human labels with Label Studio (DVC-versioned label sets)") \
        .add_subparsers(required=True, metavar="ACTION")
    p = labels.add_parser("export", help="write selected items as a Label Studio task file + labelling config")
    p.set_defaults(handler=cmd_labels_export)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-id", help="MLflow run of a selection task (round-N-select-*)")
    which.add_argument("--selected", type=Path, help="a selected_ids.json as a selection task logs it")
    p.add_argument("--out", type=Path, required=True, help="task file to write (JSON); the config goes beside it")
    p.add_argument("--dataset", help="dataset folder, e.g. data/mnist (default: the one the selection read)")
    p = labels.add_parser("import", help="validate a completed Label Studio JSON export and version it with DVC "
                                         "as data/labels/<dataset>/<name>.json")
    p.set_defaults(handler=cmd_labels_import)
    p.add_argument("export", type=Path, help="the Label Studio JSON export (Export > JSON)")
    p.add_argument("--dataset", required=True, help="dataset folder the tasks came from, e.g. data/mnist")
    p.add_argument("--name", required=True, help="label set name; importing again into it adds labels")
    return parser


def _cluster_options(p: argparse.ArgumentParser, host: bool = True) -> None:
    if host:
        p.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline")
        p.add_argument("--experiment", default="distillery", help="KFP experiment (default: %(default)s)")
        k8s = p.add_argument_group("Secrets preflight (before anything is submitted)")
        k8s.add_argument("--namespace", default="distillery", help="namespace the run's pods use (default: %(default)s)")
        k8s.add_argument("--kube-context", help="kubeconfig context of that cluster (default: the current one)")
        k8s.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
        k8s.add_argument("--check-secrets", action=argparse.BooleanOptionalAction, default=None,
                         help="check the Secrets the pods read exist (default: on when a kube context is available)")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_CLUSTER_TRACKING_URI),
                   help="MLflow server the cluster's tasks log to (default: $MLFLOW_TRACKING_URI or %(default)s)")


def cmd_methods(args) -> None:
    from components import registry

    rows = [(m.stage, m.name, m.paper) for m in registry.methods(args.stage)]
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    print(f"{'STAGE':<{width[0]}}  {'METHOD':<{width[1]}}  PAPER")
    for stage, name, paper in rows:
        print(f"{stage:<{width[0]}}  {name:<{width[1]}}  {paper}")


def cmd_run(args) -> int:
    """Everything that can be checked is checked before the first task: the config (and against its
    dataset), the devices, the image, the data's version, the tracking store. Runs that an earlier,
    dead `distillery run` left RUNNING are closed first."""
    from pipelines.data import ensure_consistent
    from pipelines.liveness import close_dead_runs
    from pipelines.runtime import project_root, run_context
    from pipelines.stores import check_tracking_store

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

    from components.datasets import LABELS, META, DataVersionError, dvc_filesystem

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
    from components.devices import stage_spec, unavailable_stages

    stages = unavailable_stages(config)
    if stages:
        asked = ", ".join(f"{s}.device: {stage_spec(config, s)[0]}" for s in stages)
        raise ConfigError(f"{source}: {asked}, but this machine has no CUDA device (torch sees none): use device: "
                          "auto (CUDA when present, else the CPU) or cpu to run here, or submit the pipeline to a "
                          "cluster with GPU nodes (`distillery submit`)")


def _container_image():
    """The local project image the container runner needs; a clear error when podman or the image is missing."""
    from components.images import IMAGE
    from pipelines.podman import inspect_image, require

    require("podman")
    return inspect_image(IMAGE)


def execute_locally(config: dict, ctx, root: Path, progress=None, image=None) -> bool:
    """Run the pipeline under kfp.local; True on success. ``progress`` receives task timings.
    Tasks are processes of this Python environment, or with ``image`` (a
    :class:`pipelines.podman.ImageInfo`) containers of that image."""
    from kfp import local

    from pipelines.pipeline import build_pipeline
    from pipelines.progress import TaskProgress

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
        from pipelines.container_runner import container_runner

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

    from pipelines.liveness import close_unfinished

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


def check_cluster_tracking_uri(tracking_uri: str) -> None:
    if tracking_uri.startswith(("sqlite:", "file:", "/", ".")):
        raise ValueError(f"tracking URI {tracking_uri!r} is a local store a cluster cannot reach; "
                         "pass --tracking-uri http(s)://<your MLflow server>")


def compile_spec(config: dict, output: Path, tracking_uri: str) -> Path:
    """Compile ``config``'s pipeline to ``output`` with a context for tasks on a cluster."""
    from kfp import compiler

    from pipelines.pipeline import build_pipeline
    from pipelines.runtime import project_root, run_context

    check_cluster_tracking_uri(tracking_uri)
    root = project_root()
    check_cluster_placement(config, root)
    ctx = run_context(config, root, resolve_repo=False)
    ctx.tracking_uri, ctx.artifact_location, ctx.launch_id = tracking_uri, None, ""
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(config, ctx.to_json(), for_cluster=True), str(output))
    return output


def check_cluster_placement(config: dict, root: Path) -> None:
    """GPU tasks must fit the quota of the overlay the config says is deployed (compile time)."""
    from pipelines.cluster import check_gpu_quota, kubectl_binary, render_overlay

    cluster = config.get("cluster") or {}
    if not cluster.get("overlay") or not cluster.get("gpu"):
        return
    if kubectl_binary() is None:
        print(f"warning: kubectl is not installed, so the GPU quota of {cluster['overlay']} was not checked",
              file=sys.stderr)
        return
    try:
        check_gpu_quota(cluster, render_overlay(cluster["overlay"], root))
    except ValueError as exc:
        raise ConfigError(f"{config['name']}: cluster: {exc}") from None


def cmd_compile(args) -> None:
    config = load_config(args.config)
    output = Path(args.output or Path("pipelines") / "compiled" / f"{config['name']}.yaml")
    compile_spec(config, output, args.tracking_uri)
    print(f"Compiled {len(task_names(config))} tasks to {output}")


def _cluster_config(args) -> dict:
    """The config of a run bound for a cluster, checked before anything contacts the cluster."""
    check_cluster_tracking_uri(args.tracking_uri)
    config = load_config(args.config)
    repo = str(config["data"]["repo"])
    if "://" not in repo and not repo.startswith("git@"):
        raise ValueError(f"data.repo {repo!r} is a local path that tasks on a cluster cannot read; set data.repo "
                         "in the config to the git URL of this repository")
    return config


@contextmanager
def kfp_api(host: str):
    """A ``kfp.Client`` whose connection and API errors become one clear error naming the host."""
    import kfp
    import kfp_server_api
    import urllib3

    try:
        yield kfp.Client(host=host)
    except (urllib3.exceptions.HTTPError, kfp_server_api.ApiException, TimeoutError, ConnectionError) as exc:
        raise RuntimeError(f"cannot reach the KFP API at {host}: {exc}") from exc


def check_cluster_secrets(args, config: dict) -> None:
    """Every Secret the run's pods read (training templates, the config's ``cluster`` section)
    exists in ``--namespace``, checked through the kubeconfig before anything is submitted."""
    from components.training import launcher

    explicit = bool(args.kube_context or args.kubeconfig)
    if args.check_secrets is False or (args.check_secrets is None and not explicit
                                       and not launcher.kube_context_available()):
        if args.check_secrets is None:
            print("note: no kube context, so the cluster's Secrets were not checked (--kube-context/--kubeconfig)",
                  file=sys.stderr)
        return
    cluster = config.get("cluster") or {}
    names = sorted({*launcher.required_secrets(), *(cluster[k] for k in ("mlflow_secret", "dvc_secret") if cluster.get(k))})
    with launcher.connect(args.kube_context, args.kubeconfig) as api:
        launcher.check_secrets(api, args.namespace, names)
    print(f"Secrets {', '.join(names)} exist in namespace {args.namespace!r}")


def cmd_submit(args) -> None:
    config = _cluster_config(args)
    check_cluster_secrets(args, config)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_spec(config, Path(tmp) / "pipeline.yaml", args.tracking_uri)
        with kfp_api(args.host) as client:
            result = client.create_run_from_pipeline_package(
                str(package), arguments={}, run_name=args.run_name or config["name"],
                experiment_name=args.experiment, enable_caching=False, service_account=_service_account(config))
    print(f"Submitted run {result.run_id} to {args.host}")


def _service_account(config: dict) -> str:
    """Pipeline pods run as this account (k8s/base/rbac.yaml grants it least privilege)."""
    from pipelines.cluster import DEFAULTS

    return (config.get("cluster") or DEFAULTS)["service_account"]


def validate_cron(cron: str) -> str:
    """KFP recurring runs take 6 fields (seconds first), evaluated in UTC."""
    fields = cron.split()
    if len(fields) != 6 or not all(_CRON_FIELD.match(f) for f in fields):
        raise ValueError(f"cron {cron!r} must have 6 fields, seconds first, in UTC, e.g. '0 0 3 * * *' "
                         f"(03:00 UTC daily); got {len(fields)} field(s)")
    return cron


def cmd_schedule(args) -> None:
    cron = validate_cron(args.cron)
    config = _cluster_config(args)
    if config["pipeline"] != "retraining":
        raise ConfigError(f"{args.config} describes a {config['pipeline']} pipeline; scheduled runs retrain: "
                          f"use a config with `pipeline: retraining` (e.g. {RETRAINING_CONFIG})")
    check_cluster_secrets(args, config)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_spec(config, Path(tmp) / "pipeline.yaml", args.tracking_uri)
        with kfp_api(args.host) as client:
            experiment = client.create_experiment(args.experiment)
            job = client.create_recurring_run(
                experiment_id=experiment.experiment_id, job_name=args.name or f"{config['name']}-scheduled",
                description=f"Scheduled retraining: {config.get('description', '')}", cron_expression=cron,
                pipeline_package_path=str(package), max_concurrency=1, no_catchup=True, enable_caching=False,
                service_account=_service_account(config))
    print(f"Scheduled {job.recurring_run_id} on {args.host}: cron {cron!r} (UTC), max concurrency 1, no catch-up")


def cmd_image_build(args) -> None:
    from components.images import IMAGE
    from pipelines.podman import build_image
    from pipelines.runtime import project_root

    build_image(project_root(), IMAGE, base=args.base, wheels=args.wheels, no_cache=args.no_cache)


def cmd_ui(args) -> None:
    from pipelines.runtime import project_root, tracking_store

    uri, _ = tracking_store(project_root())
    print(f"MLflow UI on {uri}: http://{args.host}:{args.port}")
    os.execvp(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                               "--host", args.host, "--port", str(args.port)])


def cmd_data_materialize(args) -> None:
    from pipelines.data import ensure_consistent, materialize
    from pipelines.runtime import project_root

    root = project_root()
    ensure_consistent(root)
    materialize(root)


def cmd_data_add(args) -> None:
    from pipelines.data import add_dataset, ensure_consistent
    from pipelines.runtime import project_root

    root = project_root()
    ensure_consistent(root)
    add_dataset(root, args.source, args.name, args.label_column, args.replace, labels_file=args.labels)


def cmd_data_list(args) -> None:
    from components.datasets import data_version
    from pipelines.data import ensure_consistent, is_up_to_date, list_datasets
    from pipelines.runtime import project_root

    root = project_root()
    ensure_consistent(root)
    if not (root / "data").is_dir():
        raise FileNotFoundError("data/ is not in the work tree: run `distillery data materialize`")
    rows = list_datasets(root)
    state = "matches it" if is_up_to_date(root) else "DIFFERS from it (dvc status; `dvc add data` or `dvc checkout`)"
    print(f"data.dvc records version {data_version(root)}; data/ {state}\n")
    header = ("NAME", "ROWS", "CLASSES", "KIND", "HASH", "SOURCE")
    table = [header, *[(r["name"], str(r["rows"]), str(r["classes"]), r["kind"], r["hash"][:12], r["source"])
                       for r in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)) + "  " + row[-1])


def cmd_data_curate(args) -> None:
    from pipelines.data import curate_data, ensure_consistent
    from pipelines.runtime import project_root

    ensure_consistent(project_root())
    curate_data(project_root(), args.method, args.params, args.source, args.target, args.rev, args.replace, args.seed)


def cmd_data_distil(args) -> None:
    from pipelines.data import distil_data, ensure_consistent
    from pipelines.runtime import project_root

    ensure_consistent(project_root())
    distil_data(project_root(), args.source, args.target, args.ipc, args.replace, iterations=args.iterations,
                batch_real=args.batch_real, width=args.width, seed=args.seed)


def cmd_labels_import(args) -> None:
    from pipelines.data import ensure_consistent
    from pipelines.labels import import_labels
    from pipelines.runtime import project_root

    ensure_consistent(project_root())
    import_labels(project_root(), args.export, args.dataset, args.name)


def cmd_labels_export(args) -> None:
    import json

    from pipelines.labels import export_label_tasks, selected_from_run
    from pipelines.runtime import project_root, tracking_store

    root = project_root()
    if args.run_id:
        selected = selected_from_run(args.run_id, tracking_store(root)[0])
    else:
        try:
            selected = json.loads(args.selected.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{args.selected} is not valid JSON: {exc}") from None
    export_label_tasks(root, selected, args.out, args.dataset)


if __name__ == "__main__":
    sys.exit(main())
