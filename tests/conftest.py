"""Shared fixtures: the project root, and throwaway git + DVC clones of it for tests that write data."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def dvc(repo: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout


def make_clone(tmp: Path) -> Path:
    """A throwaway data repository: git + DVC with this project's DVC config, ``data.dvc`` and
    ``data/``, and a private DVC remote. It holds no code, so every import (here and in the
    pipeline's task subprocesses) resolves to the project under test."""
    repo = tmp / "repo"
    repo.mkdir()
    for name in (".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore", "data.dvc"):
        (repo / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "data", repo / "data")
    git(repo, "init", "-q", "-b", "main")
    dvc(repo, "remote", "modify", "--local", "local", "url", str(tmp / "dvc-remote"))
    dvc(repo, "commit", "-f", "-q", "data.dvc")  # fill the repo's own cache
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "data")
    return repo


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    return make_clone(tmp_path)


@pytest.fixture(scope="module")
def module_clone(tmp_path_factory) -> Path:
    return make_clone(tmp_path_factory.mktemp("clone"))


def run_cli(repo: Path, *args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """The real ``distillery`` command, run in ``repo``, as a user would."""
    full_env = {**os.environ, **(env or {})}
    full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}"
    return subprocess.run([sys.executable, "-m", "distillery.pipelines.cli", *args], cwd=repo, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@dataclass
class PipelineRun:
    """What one real ``distillery run`` left: its data repository, MLflow store and CLI output."""

    repo: Path
    store: str  # tracking URI (SQLite; artifacts in ``mlartifacts/`` beside the database)
    result: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> PipelineRun:
    """One real run of ``tests/configs/tiny.yaml`` (kfp.local, SQLite MLflow store, DVC data),
    shared by the test files that inspect what a pipeline run leaves (test_pipeline_run.py,
    test_mlflow_ui.py), so the slow pipeline runs once per session."""
    repo = make_clone(tmp_path_factory.mktemp("tiny-clone"))
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    db.touch()  # "an empty SQLite file", as a user would point MLFLOW_TRACKING_URI at
    store = f"sqlite:///{db}"
    result = run_cli(repo, "run", "--config", str(ROOT / "tests" / "configs" / "tiny.yaml"),
                     env={"MLFLOW_TRACKING_URI": store})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return PipelineRun(repo, store, result)


def task_context(store: Path, repo: Path, data_path: str = "data/mnist", name: str = "t") -> str:
    """The run context a pipeline passes its tasks, for calling a task body directly: a SQLite
    MLflow store in ``store`` and data at ``repo``'s work tree."""
    from distillery.components.core.datasets import data_version
    from distillery.components.core.tracking import RunContext

    return RunContext(tracking_uri=f"sqlite:///{store / 'mlflow.db'}", experiment="tasks", git_commit="test",
                      data_version=data_version(repo),
                      config={"name": name, "seed": 0, "data": {"repo": str(repo), "path": data_path, "rev": None}},
                      artifact_location=str(store / "artifacts")).to_json()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures(...)``):
    on a loaded 2-core machine, two spinning OpenMP threads per process slow small models down many
    times over, and multi-process tests already use the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model_registry(tmp_path):
    """``(client, candidate)``: an MLflow registry on SQLite in ``tmp_path``; ``candidate()`` logs a
    tiny model in a new run and returns its URI."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("registry", artifact_location=str(tmp_path / "artifacts"))
    client = mlflow.MlflowClient(uri)

    def candidate() -> str:
        import torch

        with mlflow.start_run(experiment_id=experiment):
            info = mlflow.pytorch.log_model(torch.nn.Linear(2, 2), name="model", pip_requirements=["torch"],
                                            input_example=torch.zeros(1, 2).numpy())
        return info.model_uri

    yield client, candidate
    mlflow.set_tracking_uri(None)
