"""Fault injection: real processes killed (SIGKILL, as an OOM kill or a power cut) at several points
of ``distillery run`` and ``distillery data add``, then the invariants checked on what is left:

* no data version lost, no half-written dataset: ``data/`` hashes to ``data.dvc`` (the old version
  or the new one, never a mix) and no staging folder is left;
* no registered model or alias changed by a run that died;
* no run RUNNING forever: the next ``distillery run`` closes the dead run's runs as KILLED, and
  never touches a run whose process still lives or that belongs to another host.

Points inside ``data add`` are reached with ``DISTILLERY_FAULT`` (pipelines/faults.py); a run is
killed from outside, its whole process group, once a given task has started.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, make_clone, run_cli
from test_reliability import snapshot

from distillery.components.core.datasets import data_version
from distillery.pipelines.data import is_up_to_date

TINY = ROOT / "tests" / "configs" / "tiny.yaml"


def short_config(tmp_path: Path) -> str:
    raw = yaml.safe_load(TINY.read_text())
    raw["selection"]["rounds"] = 0
    raw["training"]["params"]["epochs"] = 3
    raw["distillation"]["params"]["epochs"] = 3
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


# ---------------------------------------------------------------------------------------------
# data add


def _table(path: Path, seed: int) -> str:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(30, 3)), columns=["a", "b", "c"])
    frame["label"] = [0, 1, 2] * 10
    frame.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize("point, kept, replace", [
    ("publish:staged", "old", False),   # written in staging, nothing moved yet
    ("publish:moved", "old", False),    # the new folder in data/, DVC not run
    ("publish:moved", "old", True),     # ... with the previous version moved aside
    ("publish:added", "new", False),    # DVC versioned it, the journal not yet cleared
], ids=["staged", "moved", "moved-replace", "added"])
def test_a_data_add_killed_at_any_point_leaves_a_whole_version(tmp_path, point, kept, replace):
    repo = make_clone(tmp_path)
    if replace:
        assert run_cli(repo, "data", "add", _table(tmp_path / "v1.csv", 1), "--name", "t").returncode == 0
    before, version = snapshot(repo), data_version(repo)
    args = ["data", "add", _table(tmp_path / "v2.csv", 2), "--name", "t", *(["--replace"] if replace else [])]
    killed = run_cli(repo, *args, env={"DISTILLERY_FAULT": point})
    assert killed.returncode == -signal.SIGKILL

    listed = run_cli(repo, "data", "list")  # the next data command finishes or undoes the publish
    assert listed.returncode == 0, listed.stderr
    assert is_up_to_date(repo), "data/ does not hash to data.dvc after recovery"
    assert (not list((repo / ".distillery").glob("staging-*"))
            and not (repo / ".distillery" / "publish-journal.json").exists())
    if kept == "old":
        assert snapshot(repo) == before and data_version(repo) == version
        assert "undone" in listed.stdout or point == "publish:staged"
    else:
        assert data_version(repo) != version and "kept" in listed.stdout
    # and the next add works, whatever state the kill left
    assert run_cli(repo, "data", "add", _table(tmp_path / "v3.csv", 3), "--name", "other").returncode == 0
    assert is_up_to_date(repo)


# ---------------------------------------------------------------------------------------------
# distillery run


def _start_run(repo: Path, config: str, store: str) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": store,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.Popen([sys.executable, "-m", "distillery.pipelines.cli", "run", "--config", config],
                            cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _kill_when(process: subprocess.Popen, marker: str, timeout: float = 300) -> str:
    """Read the run's output until ``marker``, then SIGKILL its whole process group (tasks too)."""
    seen, deadline = [], time.monotonic() + timeout
    for line in process.stdout:
        seen.append(line)
        if marker in line:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            return "".join(seen)
        if time.monotonic() > deadline:
            break
    os.killpg(process.pid, signal.SIGKILL)
    pytest.fail(f"{marker!r} never appeared:\n{''.join(seen)[-3000:]}")


@pytest.mark.pipeline
def test_killed_runs_change_no_model_and_the_next_run_closes_their_runs(tmp_path):
    """Two runs killed, one as its first training task starts, one as its evaluation (which
    registers and promotes) starts; then a third run."""
    import mlflow

    repo = make_clone(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = short_config(tmp_path)
    first = run_cli(repo, "run", "--config", config, env={"MLFLOW_TRACKING_URI": store})
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    client = mlflow.MlflowClient(store)
    champion = client.get_model_version_by_alias("tiny-student", "champion").version
    versions = {v.version for v in client.search_model_versions("name = 'tiny-student'")}

    experiment = client.get_experiment_by_name("distillery-tests").experiment_id
    running = []
    for marker in ("train-small-cnn started", "evaluate-classification started"):
        _kill_when(_start_run(repo, config, store), marker)
        left = [r for r in client.search_runs([experiment], "attributes.status = 'RUNNING'")
                if r.info.run_id not in {k.info.run_id for k in running}]
        assert left, f"the kill at {marker!r} left nothing running: the test killed too late"
        running += left
    # nothing the dead run did reached the registry
    assert client.get_model_version_by_alias("tiny-student", "champion").version == champion
    assert {v.version for v in client.search_model_versions("name = 'tiny-student'")} == versions
    assert is_up_to_date(repo)

    again = run_cli(repo, "run", "--config", config, env={"MLFLOW_TRACKING_URI": store})
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "left RUNNING by a `distillery run` that died (marked KILLED)" in again.stdout
    assert client.search_runs([experiment], "attributes.status = 'RUNNING'") == []
    for run in running:
        closed = client.get_run(run.info.run_id)
        assert closed.info.status == "KILLED"
        assert closed.data.tags["mlflow.note.content"].startswith("KILLED: the `distillery run` process")


def test_only_runs_of_dead_processes_on_this_host_are_closed(tmp_path):
    """Runs that may still be alive are never touched: this process's own, another host's, and one
    without an identity (a cluster's); a run of a pid that exited is closed."""
    import mlflow
    from distillery.pipelines.liveness import (
        HOST,
        PID,
        STARTED,
        close_dead_runs,
        identity,
    )

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(store)
    experiment = client.create_experiment("liveness", artifact_location=str(tmp_path / "artifacts"))
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    import psutil

    dead = {HOST: socket.gethostname(), PID: str(exited.pid), STARTED: repr(time.time() - 5)}
    reused = {**identity(), STARTED: repr(psutil.Process().create_time() - 1000)}  # our pid, another process
    runs = {name: client.create_run(experiment, tags=tags).info.run_id for name, tags in {
        "alive": identity(), "other-host": {**dead, HOST: "elsewhere.example"}, "no-identity": {},
        "dead": dead, "pid-reused": reused}.items()}
    closed = close_dead_runs(store, log=lambda line: None)
    assert sorted(closed) == sorted([runs["dead"], runs["pid-reused"]])
    status = {name: client.get_run(run_id).info.status for name, run_id in runs.items()}
    assert status == {"alive": "RUNNING", "other-host": "RUNNING", "no-identity": "RUNNING", "dead": "KILLED",
                      "pid-reused": "KILLED"}
