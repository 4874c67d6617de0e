"""``distillery``: run, compile, submit and schedule the pipeline; list methods; manage data and
human label sets; open the MLflow UI."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from distillery.pipelines.config import (
    DEFAULT_CONFIG,
    RETRAINING_CONFIG,
    ConfigError,
)
from distillery.pipelines.local_run import cmd_run
from distillery.pipelines.submit import cmd_compile, cmd_schedule, cmd_submit

DEFAULT_CLUSTER_TRACKING_URI = "http://mlflow.distillery.svc.cluster.local:5000"
RUNNERS = ("subprocess", "container")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        # RuntimeError covers distillery.pipelines.podman.ContainerError (podman missing, image not built, ...)
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
    from distillery.pipelines.stores import explain_store_error

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
    p.add_argument("--iterations", type=int, default=1000,
                   help="distribution-matching iterations (default: %(default)s)")
    p.add_argument("--batch-real", type=int, default=256,
                   help="real images per class per iteration (default: %(default)s)")
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
        k8s.add_argument("--namespace", default="distillery",
                         help="namespace the run's pods use (default: %(default)s)")
        k8s.add_argument("--kube-context", help="kubeconfig context of that cluster (default: the current one)")
        k8s.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
        k8s.add_argument("--check-secrets", action=argparse.BooleanOptionalAction, default=None,
                         help="check the Secrets the pods read exist (default: on when a kube context is available)")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_CLUSTER_TRACKING_URI),
                   help="MLflow server the cluster's tasks log to (default: $MLFLOW_TRACKING_URI or %(default)s)")


def cmd_methods(args) -> None:
    from distillery.components.core import registry

    _table(["STAGE", "METHOD", "PAPER"], [(m.stage, m.name, m.paper) for m in registry.methods(args.stage)])
    if args.stage is None:  # the model zoo every `arch`/`student` parameter chooses from
        from distillery.components.core import models

        print()
        _table(["ARCHITECTURE", "PARAMETERS (MNIST)", "PAPER"],
               [(name, f"{models.count_parameters(models.build(name, models.MNIST_META)):,}",
                 models.ARCHITECTURE_PAPERS[name]) for name in models.ARCHITECTURES])


def _table(header: list[str], rows: list[tuple[str, ...]]) -> None:
    """Aligned columns; the last one runs free."""
    width = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(f"{cell:<{w}}" for cell, w in zip(row, width)) + "  " + row[-1])


def cmd_image_build(args) -> None:
    from distillery.components.core.images import IMAGE
    from distillery.pipelines.podman import build_image
    from distillery.pipelines.runtime import project_root

    build_image(project_root(), IMAGE, base=args.base, wheels=args.wheels, no_cache=args.no_cache)


def cmd_ui(args) -> None:
    from distillery.pipelines.runtime import project_root, tracking_store

    uri, _ = tracking_store(project_root())
    print(f"MLflow UI on {uri}: http://{args.host}:{args.port}")
    os.execvp(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                               "--host", args.host, "--port", str(args.port)])


def cmd_data_materialize(args) -> None:
    from distillery.pipelines.data import ensure_consistent, materialize
    from distillery.pipelines.runtime import project_root

    root = project_root()
    ensure_consistent(root)
    materialize(root)


def cmd_data_add(args) -> None:
    from distillery.pipelines.data import add_dataset, ensure_consistent
    from distillery.pipelines.runtime import project_root

    root = project_root()
    ensure_consistent(root)
    add_dataset(root, args.source, args.name, args.label_column, args.replace, labels_file=args.labels)


def cmd_data_list(args) -> None:
    from distillery.components.core.datasets import data_version
    from distillery.pipelines.data import (
        ensure_consistent,
        is_up_to_date,
        list_datasets,
    )
    from distillery.pipelines.runtime import project_root

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
    from distillery.pipelines.data import curate_data, ensure_consistent
    from distillery.pipelines.runtime import project_root

    ensure_consistent(project_root())
    curate_data(project_root(), args.method, args.params, args.source, args.target, args.rev, args.replace, args.seed)


def cmd_data_distil(args) -> None:
    from distillery.pipelines.data import distil_data, ensure_consistent
    from distillery.pipelines.runtime import project_root

    ensure_consistent(project_root())
    distil_data(project_root(), args.source, args.target, args.ipc, args.replace, iterations=args.iterations,
                batch_real=args.batch_real, width=args.width, seed=args.seed)


def cmd_labels_import(args) -> None:
    from distillery.pipelines.data import ensure_consistent
    from distillery.pipelines.labels import import_labels
    from distillery.pipelines.runtime import project_root

    ensure_consistent(project_root())
    import_labels(project_root(), args.export, args.dataset, args.name)


def cmd_labels_export(args) -> None:
    import json

    from distillery.pipelines.labels import export_label_tasks, selected_from_run
    from distillery.pipelines.runtime import project_root, tracking_store

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
