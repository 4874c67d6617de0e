"""Per-task orchestration overhead of a local pipeline run (kfp.local + MLflow).

Runs a config once, for real, with ``execute_locally`` (the code path of ``distillery run``) and
compares, for every task, the wall time kfp.local reports with the work the task itself measured
(the ``work_seconds`` metric of its nested MLflow run). The difference is what orchestration costs
per task: a fresh interpreter, the kfp executor, importing the task's modules (mlflow, torch, ...),
opening and closing the nested MLflow run, and writing outputs.

Beside it, in the same run, the floors a user would compare with:

* ``python -c pass``: the cost of any subprocess-per-task runner;
* ``python -c "import kfp.dsl.executor_main"``: what kfp.local's executor imports before any task code;
* ``python -c "import mlflow, torch"``: the heavy libraries a task imports;
* ``python -c "import distillery.components.core.tracking, distillery.components.core.datasets"``:
  our task modules' import cost before their lazy imports (should stay near the interpreter start);
* connecting to the (already initialised) MLflow store from a fresh interpreter, as each task does;
* the sum of ``work_s``: the same method work run in one process, i.e. no orchestration at all.

Then, in the same run, the same config with every task in the project's image (``--runner
container``: kfp.local's DockerRunner over podman, see pipelines/container_runner.py): its per-task
overhead, and its wall time against the subprocess runner's. ``--runners subprocess`` skips it (a
machine without podman or the image); the result then says so.

The MLflow store is a fresh SQLite file in a temporary folder (never the user's store); its schema
is created before the timed run, as it is for every run after a user's first.

    python -m benchmarks.pipeline_overhead            # default config (~3 min on 2 cores)
    python -m benchmarks.pipeline_overhead --quick    # tests/configs/tiny.yaml
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
QUICK_CONFIG = ROOT / "tests" / "configs" / "tiny.yaml"
FLOOR_RUNS = 3
LIBRARIES = ("torch", "mlflow", "kfp")  # whose import and start-up costs the overhead is made of
FLOORS = {  # summary key -> code run by a fresh interpreter
    "floor_python_start_s": "pass",
    "floor_import_kfp_executor_s": "import kfp.dsl.executor_main",
    "floor_import_mlflow_torch_s": "import mlflow, torch",
    "floor_import_mlflow_s": "import mlflow",
    "floor_import_task_modules_s": "import distillery.components.core.tracking, distillery.components.core.datasets",
    # what every task does first in MLflow: connect to the store, find the experiment (no run opened)
    "floor_mlflow_store_connect_s": "import mlflow, os; mlflow.MlflowClient(os.environ['MLFLOW_TRACKING_URI'])"
                                    ".search_experiments(max_results=1)",
}


def main(argv: list[str] | None = None) -> int:
    from distillery.pipelines.config import DEFAULT_CONFIG

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="pipeline config (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help=f"use {QUICK_CONFIG.relative_to(ROOT)}")
    parser.add_argument("--rounds", type=int, help="override selection.rounds (default: the config's)")
    parser.add_argument("--floor-runs", type=int, default=FLOOR_RUNS,
                        help="fresh interpreters per floor, median taken (default: %(default)s)")
    parser.add_argument("--runners", default="subprocess,container",
                        help="runners to measure, comma-separated (default: %(default)s)")
    parser.add_argument("--output", type=Path, help="result JSON (default: benchmarks/results/"
                                                    "pipeline_overhead.json, "
                                                    "quick/pipeline_overhead.json with --quick)")
    args = parser.parse_args(argv)
    config_path = QUICK_CONFIG if args.quick else Path(args.config)
    # quick runs go where benchmarks.report never looks (results/quick/, ignored by git)
    output = args.output or (RESULTS / "quick" if args.quick else RESULTS) / "pipeline_overhead.json"

    with tempfile.TemporaryDirectory(prefix="distillery-bench-") as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        result = benchmark(config_path, args.rounds, args.runners.split(","), args.floor_runs)
    from benchmarks import _results

    return _results.write_result(result, output, print_result, script="benchmarks.pipeline_overhead")


def benchmark(config_path: Path, rounds: int | None, runners: list[str] = ("subprocess",),
              floor_runs: int = FLOOR_RUNS) -> dict:
    from benchmarks import _results
    from distillery.pipelines.cli import RUNNERS
    from distillery.pipelines.config import load_config
    from distillery.pipelines.runtime import project_root, run_context

    if "subprocess" not in runners or set(runners) - set(RUNNERS):
        raise SystemExit(f"--runners must include subprocess and name only {list(RUNNERS)}, got {runners}")
    image = None
    if "container" in runners:
        from distillery.components.core.images import IMAGE
        from distillery.pipelines.podman import ContainerError, inspect_image

        try:
            image = inspect_image(IMAGE)
        except ContainerError as exc:
            raise SystemExit(f"{exc} (or measure the subprocess runner alone: --runners subprocess)") from None
    config, ref = load_config(config_path), _results.config_ref(config_path)
    if rounds is not None:
        if rounds < 0:
            raise SystemExit("--rounds must be >= 0")
        config["selection"]["rounds"] = rounds
    root = project_root(ROOT)
    ctx = run_context(config, root)  # after MLFLOW_TRACKING_URI points at the temporary store
    data = ctx.data
    if not data.get("rev") and not (Path(data["repo"]) / data["path"]).is_dir():
        raise SystemExit(f"{data['path']} is missing: run `distillery data materialize` (or `make data`)")

    store_init = time.perf_counter()
    client = _init_store(ctx)
    store_init = time.perf_counter() - store_init

    print(f"Benchmarking {config['name']!r} ({config['selection']['rounds']} rounds) on {os.cpu_count()} cores; "
          f"MLflow store {ctx.tracking_uri}", flush=True)
    load_before = os.getloadavg()[0]
    tasks, summary = _measure(config, ctx, root, client, None)
    load_after = os.getloadavg()[0]
    print(f"\nMeasuring floors (median of {floor_runs} fresh interpreters each) ...", flush=True)
    summary.update(store_init_s=store_init, floor_runs=floor_runs,  # store_init_s: not part of pipeline_wall_s
                   **{key: _median_subprocess(code, root, floor_runs) for key, code in FLOORS.items()})
    container = None
    if image is not None:
        print(f"\nThe same pipeline with every task in {image.reference} ({image.id[:19]}) ...", flush=True)
        container_tasks, container_summary = _measure(config, run_context(config, root), root, client, image)
        container_summary["wall_vs_subprocess"] = container_summary["pipeline_wall_s"] / summary["pipeline_wall_s"]
        container_summary["median_overhead_vs_subprocess_s"] = (container_summary["median_overhead_s"]
                                                                - summary["median_overhead_s"])
        container = {"image": image.reference, "image_id": image.id, "image_digest": image.digest,
                     "tasks": container_tasks, "summary": _rounded(container_summary)}
    result = {
        "benchmark": "pipeline_overhead",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    **{name: metadata.version(name) for name in LIBRARIES},
                    # 1-minute load average before and after the run: other work on the machine skews timings
                    "load_avg_1min": {"before": load_before, "after": load_after}},
        "config": config["name"],
        "config_path": str(config_path.resolve().relative_to(root) if config_path.resolve().is_relative_to(root)
                           else config_path),
        "rounds": config["selection"]["rounds"],
        "tasks": tasks,
        "summary": _rounded(summary),
        # the same config with every task in the project image; None when not measured
        "container": container,
    }
    result["summary"]["protocol"] = protocol(result, ref, config["seed"])
    return result


def protocol(result: dict, config: dict, seed: int | None) -> dict:
    """``summary.protocol`` of a timing, from the result: nothing chosen from results; the pipeline runs
    once per runner (``seeds``: 1), each floor is the median of ``floor_runs`` fresh interpreters; the
    config run (with its sha256) and its seed."""
    from benchmarks import _results

    return _results.protocol(split_sizes={"tasks": len(result["tasks"]), "rounds": result["rounds"]},
                             model_selection="none", seeds=1, config=config,
                             repeats="one pipeline run per runner; each floor the median of floor_runs interpreters",
                             floor_runs=result["summary"].get("floor_runs", FLOOR_RUNS), pipeline_seed=seed)


def _rounded(summary: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}


def _measure(config: dict, ctx, root: Path, client, image) -> tuple[list[dict], dict]:
    """One real run of ``config`` (in ``image`` when given, else as subprocesses): per-task wall,
    work and overhead, and the run's summary."""
    from distillery.pipelines.config import task_names
    from distillery.pipelines.local_run import execute_locally
    from distillery.pipelines.progress import TaskProgress

    progress = TaskProgress(len(task_names(config)))
    started = time.perf_counter()
    ok = execute_locally(config, ctx, root, progress=progress, image=image)
    pipeline_wall = time.perf_counter() - started
    if not ok or any(s != "SUCCESS" for s in progress.status.values()):
        raise SystemExit(f"the pipeline failed ({progress.status}); no overhead to report")
    tasks = _match_tasks(client, ctx, progress)
    overheads = [t["overhead_s"] for t in tasks]
    sum_wall = sum(t["wall_s"] for t in tasks)
    sum_work = sum(t["work_s"] for t in tasks)
    return tasks, {
        "pipeline_wall_s": pipeline_wall,
        "sum_task_wall_s": sum_wall,
        "sum_work_s": sum_work,  # the same work in one process: "no orchestration"
        "sum_overhead_s": sum(overheads),
        "between_tasks_s": pipeline_wall - sum_wall,  # compile, kfp.local bookkeeping outside tasks
        "median_overhead_s": statistics.median(overheads),
        "max_overhead_s": max(overheads),
        "overhead_share": sum(overheads) / pipeline_wall,
        "slowdown_vs_in_process": pipeline_wall / sum_work if sum_work else None,
    }


def _init_store(ctx):
    """Create the temporary store's schema and experiment now, so no task pays for the migration."""
    import mlflow

    client = mlflow.MlflowClient(ctx.tracking_uri)
    if client.get_experiment_by_name(ctx.experiment) is None:
        client.create_experiment(ctx.experiment, artifact_location=ctx.artifact_location)
    return client


def _match_tasks(client, ctx, progress) -> list[dict]:
    """Pair each nested MLflow run with its kfp.local task. Their names differ (``curate-gx_dedup`` vs
    ``curate-gx-dedup``); tasks run one at a time, so both are paired by start order."""
    experiment = client.get_experiment_by_name(ctx.experiment)
    runs = client.search_runs([experiment.experiment_id], max_results=1000, order_by=["attributes.start_time ASC"],
                              filter_string=(f"tags.`distillery.launch_id` = '{ctx.launch_id}' "
                                             "and tags.`distillery.role` = 'task'"))
    runs = sorted(runs, key=lambda r: r.info.start_time)
    kfp_tasks = list(progress.started)  # insertion order = start order
    if len(runs) != len(kfp_tasks):
        raise SystemExit(f"{len(runs)} MLflow task runs but {len(kfp_tasks)} kfp.local tasks: cannot pair them")
    tasks = []
    for run, kfp_name in zip(runs, kfp_tasks):
        name = run.data.tags.get("distillery.task", run.info.run_name)
        if "work_seconds" not in run.data.metrics:
            raise SystemExit(f"MLflow run of task {name!r} has no work_seconds metric")
        wall, work = progress.wall_seconds[kfp_name], run.data.metrics["work_seconds"]
        tasks.append({"name": name, "kfp_task": kfp_name, "wall_s": round(wall, 4), "work_s": round(work, 4),
                      "overhead_s": round(wall - work, 4)})
    return tasks


def _median_subprocess(code: str, cwd: Path, runs: int = FLOOR_RUNS) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=cwd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 4)


def print_result(result: dict) -> None:
    print(markdown(result))


FLOOR_LABELS = {key: f"`python -c {code}`" if code == "pass" else f"`{code}`" for key, code in FLOORS.items()}
FLOOR_LABELS["floor_mlflow_store_connect_s"] = "`import mlflow` + connect to the SQLite store"


def markdown(result: dict, view: str | None = None) -> str:
    """The README's tables (``view`` ``"container"``: one sentence, the container runner against processes)."""
    if view not in (None, "container"):
        raise ValueError(f"unknown view {view!r}: none or 'container'")
    if view == "container":
        return _container_sentence(result)
    from benchmarks.report import source

    m, container = result["machine"], result.get("container")
    load = m.get("load_avg_1min", {})
    head = (f"Config `{result['config']}` ({result['rounds']} active-learning rounds, {len(result['tasks'])} tasks), "
            f"{m['cores']} CPU cores, Python {m['python']}"
            + "".join(f", {name} {m[name]}" for name in LIBRARIES if name in m)
            + f"; load average {load.get('before', float('nan')):.2f} "
            f"before / {load.get('after', float('nan')):.2f} after"
            + (f"; the image `{container['image']}`" if container else "; container runner not measured")
            + f" ({source(result, 'pipeline_overhead.json')}):")
    return "\n\n".join([head, _task_table(result), _summary_table(result), _by_kind(result)])


def _task_table(result: dict) -> str:
    from benchmarks.report import table

    sides = [result["tasks"]] + ([result["container"]["tasks"]] if result.get("container") else [])
    head = ["task", "subprocess: wall s", "work s", "overhead s"]
    head += ["container: wall s", "work s", "overhead s"] if len(sides) == 2 else []
    rows = [[t[0]["name"], *(f"{x[k]:.2f}" for x in t for k in ("wall_s", "work_s", "overhead_s"))]
            for t in zip(*sides)]
    summaries = [result["summary"]] + ([result["container"]["summary"]] if len(sides) == 2 else [])
    rows.append(["**total**", *(f"**{s[k]:.2f}**" for s in summaries
                                for k in ("sum_task_wall_s", "sum_work_s", "sum_overhead_s"))])
    return table(head, rows)


def _summary_table(result: dict) -> str:
    from benchmarks.report import table

    s, c = result["summary"], (result.get("container") or {}).get("summary")

    def both(fmt):  # the subprocess cell and the container cell (empty without a container run)
        return [fmt(s), fmt(c) if c else ""]

    rows = [
        ["pipeline wall time", f"{s['pipeline_wall_s']:.2f} s",
         f"{c['pipeline_wall_s']:.2f} s ({c['wall_vs_subprocess']:.2f}x)" if c else ""],
        ["method work, summed (in-process: no orchestration)", *both(lambda x: f"{x['sum_work_s']:.2f} s")],
        ["per-task overhead, summed", *both(lambda x: f"{x['sum_overhead_s']:.2f} s "
                                                      f"({100 * x['overhead_share']:.1f}% of wall)")],
        ["outside any task (compile, kfp.local)", *both(lambda x: f"{x['between_tasks_s']:.2f} s")],
        ["per-task overhead, median / max", f"{s['median_overhead_s']:.2f} / {s['max_overhead_s']:.2f} s",
         f"{c['median_overhead_s']:.2f} / {c['max_overhead_s']:.2f} s "
         f"({c['median_overhead_vs_subprocess_s']:+.2f} s median)" if c else ""],
        ["orchestrated ÷ in-process", *both(lambda x: f"{x['slowdown_vs_in_process']:.2f}×")],
        *[[f"floor: {label}", f"{s[key]:.2f} s", ""] for key, label in FLOOR_LABELS.items()],
    ]
    return table(["summary", "subprocess", "container"], rows)


def _by_kind(result: dict) -> str:
    """The numbers behind the README's reading: overhead by kind of task, and what torch adds."""
    import statistics

    def torchless(task):  # split and the simulated labeller import no torch
        return task["name"].startswith("split") or "-label-" in task["name"]

    no_torch = [t["overhead_s"] for t in result["tasks"] if torchless(t)]
    rest = [t["overhead_s"] for t in result["tasks"] if not torchless(t)]
    s = result["summary"]
    parts = [f"Per-task overhead, median: {statistics.median(no_torch):.2f} s for the tasks that import no torch "
             f"(split, labelling), {statistics.median(rest):.2f} s for the others"] if no_torch and rest else []
    parts.append(f"`import mlflow, torch` takes {s['floor_import_mlflow_torch_s'] - s['floor_import_mlflow_s']:.2f} s "
                 f"more than `import mlflow`; the summed overhead is {s['sum_overhead_s'] / s['sum_work_s']:.2f}x "
                 "the summed method work.")
    return "; ".join(parts)


def _container_sentence(result: dict) -> str:
    s, c = result["summary"], result["container"]["summary"]
    return (f"The `{result['config']}` pipeline takes {c['pipeline_wall_s']:.0f} s with every task in the image "
            f"against {s['pipeline_wall_s']:.0f} s as processes ({c['wall_vs_subprocess']:.2f}x): a task costs "
            f"{c['median_overhead_vs_subprocess_s']:.1f} s more in a container (median per-task overhead "
            f"{c['median_overhead_s']:.1f} s against {s['median_overhead_s']:.1f} s; {result['machine']['cores']} "
            f"cores, `benchmarks/results/pipeline_overhead.json`, {result['date'][:10]}).")


if __name__ == "__main__":
    sys.exit(main())
