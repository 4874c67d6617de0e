"""Real services for tests: ``mlflow/server.sh`` on a free port, throwaway PostgreSQL databases, and
recording HTTP servers that play the KFP and Kubernetes APIs on localhost.

PostgreSQL tests skip where no server is reachable (a laptop without one), unless
``DISTILLERY_REQUIRE_POSTGRES=1`` (set by ``.ci/run``), where an unreachable server fails them.
"""
from __future__ import annotations

import base64
import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

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

    def start(self, timeout: float = 90) -> MlflowServer:
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


# --------------------------------------------------------------------------- recording HTTP servers
# A real HTTP server on 127.0.0.1 in a thread that plays an API no test can run here (KFP, the
# Kubernetes API): every request is recorded (method, path, query, JSON body) and answered by the
# subclass's `respond`; an unknown path gets a 404 and stays recorded, so a client call the fake
# does not know about shows up as a failure rather than passing silently.


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


class RecordingServer(ThreadingHTTPServer):
    """Records every request; subclasses answer them in :meth:`respond` (called under a lock)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RecordingHandler)
        self.requests: list[Request] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def calls(self, method: str, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path == path]

    def handle_request_record(self, req: Request) -> tuple[int, Any]:
        with self._lock:
            self.requests.append(req)
            return self.respond(req)

    def respond(self, req: Request) -> tuple[int, Any]:
        raise NotImplementedError


class _RecordingHandler(BaseHTTPRequestHandler):
    server: RecordingServer

    def _handle(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        status, payload = self.server.handle_request_record(Request(self.command, url.path, parse_qs(url.query), body))
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass


@contextmanager
def serving(server: RecordingServer) -> Iterator[RecordingServer]:
    """``server`` answering in a background thread for the duration of the block."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name=type(server).__name__, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --------------------------------------------------------------------------- a fake Kubernetes API

K8S_OBJECTS = re.compile(r"^/apis/(?P<group>trainer\.kubeflow\.org/v1alpha1|batch/v1)/namespaces/(?P<ns>[^/]+)/"
                         r"(?P<plural>trainjobs|jobs)(?:/(?P<name>[^/]+))?$")
K8S_SECRET = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/secrets/(?P<name>[^/]+)$")


def k8s_status(code: int, reason: str, message: str) -> tuple[int, dict]:
    """A Kubernetes ``Status`` error answer."""
    return code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                  "reason": reason, "code": code}


def k8s_condition(type_: str, reason: str = "", message: str = "", status: str = "True") -> dict:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2025-01-01T00:00:00Z"}


class FakeKubernetes(RecordingServer):
    """The few Kubernetes REST endpoints the training launcher uses: create/get/delete TrainJobs
    (``trainer.kubeflow.org/v1alpha1``) and Jobs (``batch/v1``), get Secrets.

    Created objects are stored as posted (plus ``uid`` and ``creationTimestamp``). Their status
    follows ``script``, a list of status objects: the n-th GET of an object answers with the
    n-th entry (the last one repeats, so a script ending in a running state never finishes).
    ``live_status[(plural, ns, name)]``, when set (e.g. by a thread that runs the pods for real),
    wins over the script. ``on_create(server, plural, obj)`` is called after each creation.
    Secrets in ``forbidden_secrets`` answer 403, as for a Role that does not name them.
    """

    def __init__(self, script: list[dict] | None = None) -> None:
        super().__init__()
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.forbidden_secrets: set[str] = set()
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.script = script or [{}]
        self.steps: dict[tuple[str, str, str], int] = {}
        self.live_status: dict[tuple[str, str, str], dict] = {}
        self.on_create = None

    def add_secret(self, namespace: str, name: str, **data: str) -> None:
        self.secrets[(namespace, name)] = data

    def kubeconfig(self, path: Path, namespace: str = "distillery") -> Path:
        """A kubeconfig file whose current context is this server (no auth, plain HTTP)."""
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}]}))
        return path

    def posts(self) -> list[Request]:
        return [r for r in self.requests if r.method == "POST"]

    def respond(self, req: Request) -> tuple[int, Any]:
        secret = K8S_SECRET.match(req.path)
        if secret and req.method == "GET":
            ns, name = secret["ns"], secret["name"]
            if name in self.forbidden_secrets:
                return k8s_status(403, "Forbidden", f'secrets "{name}" is forbidden: cannot get resource "secrets"')
            if (ns, name) not in self.secrets:
                return k8s_status(404, "NotFound", f'secrets "{name}" not found')
            data = {k: base64.b64encode(v.encode()).decode() for k, v in self.secrets[(ns, name)].items()}
            return 200, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
                         "type": "Opaque", "data": data}
        found = K8S_OBJECTS.match(req.path)
        if not found:
            return k8s_status(404, "NotFound", f"fake Kubernetes API: no route for {req.method} {req.path}")
        plural, ns, name = found["plural"], found["ns"], found["name"]
        if req.method == "POST" and name is None:
            name = req.body["metadata"]["name"]
            key = (plural, ns, name)
            if key in self.objects:
                return k8s_status(409, "AlreadyExists", f'{plural} "{name}" already exists')
            obj = copy.deepcopy(req.body)
            obj["metadata"].update(uid=f"uid-{len(self.objects) + 1}", creationTimestamp="2025-01-01T00:00:00Z")
            self.objects[key] = obj
            if self.on_create:
                self.on_create(self, plural, obj)
            return 201, obj
        key = (plural, ns, name)
        if key not in self.objects:
            return k8s_status(404, "NotFound", f'{plural} "{name}" not found')
        if req.method == "GET":
            step = self.steps.get(key, 0)
            self.steps[key] = step + 1
            status = self.live_status.get(key, self.script[min(step, len(self.script) - 1)])
            return 200, {**self.objects[key], "status": copy.deepcopy(status)}
        if req.method == "DELETE":
            del self.objects[key]
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}
        return k8s_status(405, "MethodNotAllowed", f"fake Kubernetes API: {req.method} {req.path}")
