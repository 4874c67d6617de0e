"""In-pod staging of cluster training: fetch the inputs from the task's MLflow run, run the training
command, send the results back; and its command line.

The pods of a training object run ``python -m distillery.components.training.cluster.pod stage ... --
<the template's command>`` (:func:`stage_command` builds the part before ``--``): :func:`stage` fetches
the inputs the task logged to its MLflow run (artifacts under ``cluster-input/``), runs the command,
logs its metrics records to the run and, on rank 0, uploads the outputs (``cluster-output/``). Pods
thus need only the MLflow server and the ``mlflow-client`` Secret, no shared volume. The commands are
torchrun's DDP (Li et al., "PyTorch Distributed", VLDB 2020) and the ADBO master and workers (Jiao et
al., "Asynchronous Distributed Bilevel Optimization", ICLR 2023).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

INPUT_DIR, OUTPUT_DIR = "cluster-input", "cluster-output"  # artifact folders of the staging run
MODULE = "distillery.components.training.cluster.pod"  # this file, as the pods run it


def is_rank0() -> bool:
    """Whether this pod holds global rank 0: node 0 of a TrainJob (``PET_NODE_RANK``), index 0 of
    the async Job (``RANK``); a lone process counts as rank 0."""
    for var in ("PET_NODE_RANK", "RANK", "JOB_COMPLETION_INDEX"):
        if os.environ.get(var, "").strip():
            return int(os.environ[var]) == 0
    return True


def stage(run_id: str, workdir: Path, command: list[str], fetch: Iterable[str] = (), upload: Iterable[str] = (),
          metrics: bool = False, tracking_uri: str | None = None) -> int:
    """Download the artifacts ``fetch`` of MLflow run ``run_id`` into ``workdir`` (same relative
    paths), run ``command`` (its output passes through), and once it succeeds upload the files
    ``upload`` (relative to ``workdir``) to the run's ``cluster-output/`` from rank 0 only.
    With ``metrics``, rank 0 logs every epoch record the command prints (``DISTILLERY_METRICS``
    lines of :mod:`distillery.components.training.distributed`) to the run. Returns the exit code."""
    import mlflow
    from distillery.components.training.distributed import METRICS_PREFIX, epoch_metrics

    client = mlflow.MlflowClient(tracking_uri)
    workdir.mkdir(parents=True, exist_ok=True)
    for path in fetch:
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp,
                                                        tracking_uri=tracking_uri)
            target = workdir / path
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(local, target)  # MLflow names a single file by its base name only
    rank0 = is_rank0()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert process.stdout is not None
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        at = line.find(METRICS_PREFIX)
        if metrics and rank0 and at >= 0:
            record = json.loads(line[at + len(METRICS_PREFIX):])
            if record.get("event") == "epoch":
                timestamp = int(time.time() * 1000)
                client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, float(v), timestamp, record["epoch"])
                                                  for k, v in epoch_metrics(record).items()])
    code = process.wait()
    if code != 0 or not rank0:
        return code
    for name in upload:
        path = workdir / name
        if not path.is_file():
            print(f"ERROR: {command[0]} succeeded but wrote no {path}", file=sys.stderr, flush=True)
            return 1
        client.log_artifact(run_id, str(path), OUTPUT_DIR)
    return 0


def stage_command(run_id: str, workdir: str, fetch: Iterable[str], upload: Iterable[str],
                  metrics: bool = False) -> list[str]:
    """The command line of :func:`stage` before the wrapped command (which follows ``--``)."""
    command = [*_python_m(), "stage", "--run-id", run_id, "--dir", workdir]
    for path in fetch:
        command += ["--fetch", path]
    for name in upload:
        command += ["--upload", name]
    return [*command, *(["--metrics"] if metrics else []), "--"]


def _python_m() -> list[str]:
    return ["python", "-m", MODULE]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("stage",
                       help="(in a training pod) fetch inputs from an MLflow run, run a command, upload outputs")
    p.add_argument("--run-id", required=True, help="MLflow run holding the inputs and receiving the outputs")
    p.add_argument("--dir", required=True, type=Path, help="local folder for inputs and outputs")
    p.add_argument("--fetch", action="append", default=[], help="artifact path of the run to download (repeatable)")
    p.add_argument("--upload", action="append", default=[],
                   help=f"file under --dir that rank 0 uploads to {OUTPUT_DIR}/ after success (repeatable)")
    p.add_argument("--metrics", action="store_true", help="log the command's epoch metrics records to the run")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    return stage(args.run_id, args.dir, command, args.fetch, args.upload, args.metrics,
                 os.environ.get("MLFLOW_TRACKING_URI"))


if __name__ == "__main__":
    sys.exit(main())
