"""What a run needs to know about where it runs: project root, git commit, tracking store, and the
run context every task receives."""
from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

from distillery.components.core.datasets import data_version
from distillery.components.core.tracking import RunContext

STATE_DIR = ".distillery"  # git-ignored: local MLflow store, kfp.local outputs


def project_root(start: Path | None = None) -> Path:
    """The git work tree containing ``start`` (default: the current directory)."""
    start = start or Path.cwd()
    try:
        out = subprocess.run(["git", "-C", str(start), "rev-parse", "--show-toplevel"],
                             check=True, capture_output=True, text=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        raise RuntimeError(f"{start} is not inside a git repository: Distillery versions data with "
                           "git + DVC, run it from a clone") from exc
    return Path(out)


def git_state(root: Path) -> tuple[str, bool]:
    """``(commit, dirty)`` of the work tree; commit is "uncommitted" before the first commit."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)

    head = git("rev-parse", "HEAD")
    commit = head.stdout.strip() if head.returncode == 0 else "uncommitted"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
    return commit, dirty


def tracking_store(root: Path) -> tuple[str, str | None]:
    """``(tracking_uri, artifact_location)``: ``MLFLOW_TRACKING_URI`` when set, else SQLite under
    ``.distillery/``. With a SQLite store, artifacts go in a folder beside the database file."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        state = root / STATE_DIR
        state.mkdir(exist_ok=True)
        uri = f"sqlite:///{state / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return uri, str((db.parent / "mlartifacts").resolve())
    return uri, None


class DirtyDataError(RuntimeError):
    """data/ differs from the version data.dvc records, and the run would be tagged with that version."""


def run_context(config: dict[str, Any], root: Path, resolve_repo: bool = True,
                allow_dirty_data: bool = False) -> RunContext:
    """The context for one run of ``config``: with ``resolve_repo`` a relative ``data.repo`` is made
    absolute against ``root`` (local runs), the run is owned by this process
    (:func:`distillery.pipelines.liveness.identity`), and a work tree's ``data/`` must hash to what ``data.dvc``
    records (:class:`DirtyDataError`), unless ``allow_dirty_data``: then the run carries
    ``data_dirty`` and the actual hash. Compiled specs keep the config's values."""
    from distillery.pipelines.liveness import identity

    config = {**config, "data": dict(config["data"])}
    data = config["data"]
    local = "://" not in str(data["repo"]) and not str(data["repo"]).startswith("git@")
    if resolve_repo and local:
        data["repo"] = str((root / data["repo"]).resolve())
    commit, dirty = git_state(root)
    uri, artifacts = tracking_store(root)
    version = data_version(data["repo"] if resolve_repo else root, data.get("rev"))
    ctx = RunContext(tracking_uri=uri, experiment=config["experiment"], git_commit=commit,
                     data_version=version, config=config, artifact_location=artifacts,
                     launch_id=uuid.uuid4().hex, git_dirty=dirty, launcher=identity() if resolve_repo else {})
    reads_work_tree = resolve_repo and local and not data.get("rev") and (Path(data["repo"]) / "data").is_dir()
    if reads_work_tree:  # is the work tree the version the run will be tagged with?
        actual = work_tree_data_hash(Path(data["repo"]))
        if actual != version:
            if not allow_dirty_data:
                raise DirtyDataError(
                    f"data/ in {data['repo']} differs from the version data.dvc records ({version[:12]}; data/ "
                    f"now hashes to {actual[:12]}): a run would be tagged with a version it did not read. Version "
                    "the change with `dvc add data` (then commit data.dvc), or drop it with `dvc checkout "
                    "data.dvc`; or run anyway with --allow-dirty-data (the run is tagged "
                    "distillery.data_dirty=true and its model never becomes champion)")
            ctx.data_dirty, ctx.data_content_hash = True, actual
    return ctx


def work_tree_data_hash(repo: Path) -> str:
    """The hash DVC would record for ``repo/data`` as it is now (``<md5>.dir``), with the
    repository's ``.dvcignore`` applied as ``dvc add`` applies it."""
    from dvc.repo import Repo

    from distillery.pipelines.data import folder_hash

    with Repo(str(repo)) as dvc_repo:
        return folder_hash(repo / "data", ignore=dvc_repo.dvcignore)
