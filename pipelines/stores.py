"""The stores a run depends on, checked before any work and explained in one paragraph when they fail.

* the MLflow tracking store: a SQLite file that is damaged or not an MLflow database, a server
  that does not answer, a database that refuses the connection;
* DVC: a remote that is missing or unreadable.
"""
from __future__ import annotations

from pathlib import Path


class StoreError(RuntimeError):
    """A store a command needs cannot be used; the message says which, why and what to do."""


def check_tracking_store(uri: str) -> None:
    """The tracking store at ``uri`` answers and holds (or can hold) MLflow's tables."""
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
        return
    import mlflow

    try:
        mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy, MLflow and driver errors: all explained below
        raise StoreError(explain_store_error(exc, uri) or _tracking_paragraph(uri, exc)) from exc


def _check_server(uri: str) -> None:
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{uri.rstrip('/')}/health", timeout=10) as response:
            if response.status == 200:
                return
            problem = f"it answered /health with HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        problem = f"it answered /health with HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        problem = f"it does not answer ({getattr(exc, 'reason', exc)})"
    raise StoreError(f"The MLflow tracking server {uri} (MLFLOW_TRACKING_URI) cannot be used: {problem}. Start it "
                     "(mlflow/server.sh, or `distillery ui` for a local store), or point MLFLOW_TRACKING_URI at a "
                     "server that runs; unset it to use the local SQLite store under .distillery/.")


def _tracking_paragraph(uri: str, exc: Exception) -> str:
    reason = _first_line(exc)
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        return (f"The MLflow tracking store {path} cannot be opened: {reason}. The file is damaged or is not an "
                f"MLflow database. Nothing was run. Move it aside (it holds your earlier runs: keep the copy) and "
                f"run again to start a fresh store, or point MLFLOW_TRACKING_URI at another store.")
    return (f"The MLflow tracking store {uri} cannot be used: {reason}. Check that the database is running and "
            f"reachable with these credentials, or point MLFLOW_TRACKING_URI at another store.")


def explain_store_error(exc: BaseException, uri: str | None = None) -> str | None:
    """One paragraph for an error that comes from a store, or None if ``exc`` is not one of those."""
    names = {cls.__module__.split(".")[0] for cls in type(exc).__mro__}
    if "sqlalchemy" in names or "psycopg2" in names or "sqlite3" in names:
        return _tracking_paragraph(uri or "(MLFLOW_TRACKING_URI)", exc)
    if "dvc" in names or "dvc_data" in names or "dvc_objects" in names:
        return (f"DVC failed: {_first_line(exc)}. Check the DVC remote (`dvc remote list`; `dvc remote modify` to "
                "fix its URL or credentials) and that data.dvc names a version the cache or the remote holds "
                "(`dvc status -c`).")
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # SQLAlchemy appends the statement and a link to its docs: the first line says what happened
    return text.splitlines()[0] if text else type(exc).__name__
