"""Real services for tests: ``mlflow/server.sh`` on a free port, and throwaway PostgreSQL databases.

PostgreSQL tests skip where no server is reachable (a laptop without one), unless
``DISTILLERY_REQUIRE_POSTGRES=1`` (set by ``.ci/run``), where an unreachable server fails them.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER_SH = ROOT / "mlflow" / "server.sh"
VENV_BIN = Path(sys.executable).parent  # the interpreter running the tests (the project's .venv)
# libpq settings of the test server (trust auth on 127.0.0.1 here and in CI)
POSTGRES = {"PGHOST": os.environ.get("PGHOST", "127.0.0.1"), "PGPORT": os.environ.get("PGPORT", "5432"),
            "PGUSER": os.environ.get("PGUSER", "postgres")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_status(url: str, host: str | None = None) -> int | None:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(request, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


class MlflowServer:
    """``mlflow/server.sh`` as a process group that can be stopped and started again on one port."""

    def __init__(self, workdir: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        self.env.update(
            # The venv first so `python` is the project's; only system dirs after it, which keeps
            # /usr/local/bin's docker client out (MLflow probes it at startup, costing seconds here).
            PATH=os.pathsep.join([str(VENV_BIN), "/usr/bin", "/bin"]),
            MLFLOW_PORT=str(self.port), DISTILLERY_STATE=str(workdir / "state"), MLFLOW_WORKERS="1",
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",  # no background job workers in a test
            **env)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> "MlflowServer":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(["bash", str(SERVER_SH)], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while http_status(f"{self.url}/health") != 200:
            if self.proc.poll() is not None:
                pytest.fail(f"server.sh exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no /health answer in {timeout} s:\n{self.log()}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@contextmanager
def running_server(workdir: Path, **env: str) -> Iterator[MlflowServer]:
    server = MlflowServer(workdir, **env)
    try:
        yield server.start()
    finally:
        server.stop()


def postgres_reachable() -> str | None:
    """``None`` when the test PostgreSQL answers, else why not."""
    import psycopg2

    try:
        psycopg2.connect(dbname="test", connect_timeout=3, host=POSTGRES["PGHOST"], port=POSTGRES["PGPORT"],
                         user=POSTGRES["PGUSER"]).close()
        return None
    except psycopg2.OperationalError as exc:
        return str(exc).strip().splitlines()[0]


def require_postgres() -> None:
    problem = postgres_reachable()
    if problem is None:
        return
    if os.environ.get("DISTILLERY_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required here (DISTILLERY_REQUIRE_POSTGRES=1) but unreachable: {problem}")
    pytest.skip(f"no PostgreSQL at {POSTGRES['PGHOST']}:{POSTGRES['PGPORT']} ({problem})")


@contextmanager
def throwaway_database() -> Iterator[str]:
    """A fresh, uniquely named database (dropped afterwards); yields its name."""
    import psycopg2

    name = f"distillery_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(dbname="test", host=POSTGRES["PGHOST"], port=POSTGRES["PGPORT"], user=POSTGRES["PGUSER"])
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def postgres_uri(database: str) -> str:
    return f"postgresql+psycopg2://{POSTGRES['PGUSER']}@{POSTGRES['PGHOST']}:{POSTGRES['PGPORT']}/{database}"
