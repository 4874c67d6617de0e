"""`distillery submit / schedule / compile` against a recording KFP endpoint on localhost.

No KFP server can run here, so a small HTTP server on 127.0.0.1 plays the KFP v2beta1 REST API:
it records every request (method, path, query, JSON body) and answers the calls ``kfp.Client``
makes with minimal valid JSON. Unknown paths get a 404 and stay recorded, so a client call the
fake does not know about shows up as a failure rather than passing silently. The tests run the
real CLI entry point, ``pipelines.cli.main``, in-process.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from components import images
from pipelines.cli import main
from pipelines.config import DEFAULT_CONFIG, load_config, task_names

REPO_ROOT = Path(__file__).resolve().parents[1]
GIT_URL = "https://github.com/distillery-mlops/distillery.git"
TRACKING_URI = "http://mlflow.example:5000"
API = "/apis/v2beta1"

pytestmark = pytest.mark.filterwarnings("ignore:This client only works with Kubeflow Pipeline:FutureWarning")


# --------------------------------------------------------------------------- recording KFP server


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


class RecordingKFP(ThreadingHTTPServer):
    """Records every request; answers the v2beta1 calls ``kfp.Client`` makes."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[Request] = []
        self.experiments: dict[str, dict] = {}
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def calls(self, method: str, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path == path]

    def respond(self, req: Request) -> tuple[int, dict]:
        with self._lock:
            self.requests.append(req)
            if (req.method, req.path) == ("GET", f"{API}/healthz"):
                return 200, {"multi_user": False}
            if (req.method, req.path) == ("GET", f"{API}/experiments"):
                wanted = _display_name_filter(req.query)
                found = [e for e in self.experiments.values() if wanted is None or e["display_name"] == wanted]
                return 200, {"experiments": found, "total_size": len(found)} if found else {}
            if (req.method, req.path) == ("POST", f"{API}/experiments"):
                experiment = {"experiment_id": f"exp-{len(self.experiments) + 1}",
                              "display_name": req.body["display_name"],
                              "description": req.body.get("description"), "storage_state": "AVAILABLE"}
                self.experiments[experiment["experiment_id"]] = experiment
                return 200, experiment
            if req.method == "GET" and req.path.startswith(f"{API}/experiments/"):
                experiment = self.experiments.get(req.path.rsplit("/", 1)[1])
                return (200, experiment) if experiment else (404, {"error": "no such experiment", "code": 5})
            if (req.method, req.path) == ("POST", f"{API}/runs"):
                return 200, {"run_id": "run-1", "experiment_id": req.body.get("experiment_id"),
                             "display_name": req.body.get("display_name"), "state": "PENDING"}
            if (req.method, req.path) == ("POST", f"{API}/recurringruns"):
                return 200, {"recurring_run_id": "rr-1", "experiment_id": req.body.get("experiment_id"),
                             "display_name": req.body.get("display_name"), "mode": req.body.get("mode"),
                             "status": "ENABLED"}
            return 404, {"error": f"recording KFP server: no route for {req.method} {req.path}", "code": 5}


def _display_name_filter(query: dict[str, list[str]]) -> str | None:
    for raw in query.get("filter", []):
        for predicate in json.loads(raw).get("predicates", []):
            if predicate.get("key") == "display_name":
                return predicate.get("stringValue", predicate.get("string_value"))
    return None


class _Handler(BaseHTTPRequestHandler):
    server: RecordingKFP

    def _handle(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        status, payload = self.server.respond(Request(self.command, url.path, parse_qs(url.query), body))
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def kfp_server():
    server = RecordingKFP()
    thread = threading.Thread(target=server.serve_forever, name="recording-kfp", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Run from the repository (compile reads its git state and data.dvc), with no KFP client
    context or KFP/MLflow environment of the machine leaking in."""
    import kfp.client.client as kfp_client

    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(kfp_client.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    for var in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT", "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME",
                "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME", "KF_PIPELINES_IAP_OAUTH2_CLIENT_ID",
                "KF_PIPELINES_APP_OAUTH2_CLIENT_ID", "KF_PIPELINES_APP_OAUTH2_CLIENT_SECRET"):
        monkeypatch.delenv(var, raising=False)
    # --tracking-uri is always passed: the spec must carry it, not this environment value
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env-tracking-uri-must-not-be-used:5000")


def write_config(tmp_path: Path, **data: Any) -> Path:
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["data"]["repo"] = GIT_URL
    raw["data"].update(data)
    raw["selection"]["rounds"] = 1
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def pipeline_spec_of(body: dict) -> dict:
    spec = body["pipeline_spec"]
    return spec.get("pipeline_spec", spec)  # nested only when a platform spec is present


def assert_pipeline_matches(spec: dict, config: dict) -> None:
    """One task per expected task name, caching off on all of them, the cluster tracking URI."""
    tasks = spec["root"]["dag"]["tasks"]
    expected = task_names(config)
    assert len(tasks) == len(expected) == 8  # rounds: 1 -> curate, split, train-0, 3 x round 1, distil, evaluate
    assert sorted(t["taskInfo"]["name"] for t in tasks.values()) == sorted(expected)
    cached = [name for name, t in tasks.items() if t.get("cachingOptions", {}).get("enableCache")]
    assert not cached, f"caching enabled on {cached}"
    context = json.loads(spec["root"]["inputDefinitions"]["parameters"]["context"]["defaultValue"])
    assert context["tracking_uri"] == TRACKING_URI
    assert context["config"]["data"]["repo"] == GIT_URL
    assert context["config"]["selection"]["rounds"] == 1
    assert context["launch_id"] == "" and context["artifact_location"] is None


# --------------------------------------------------------------------------- submit / schedule


def test_submit_posts_one_run_with_the_configs_pipeline(kfp_server, tmp_path, capsys):
    cfg = write_config(tmp_path)
    code = main(["submit", "--host", kfp_server.url, "--config", str(cfg), "--experiment", "distillery-ci",
                 "--tracking-uri", TRACKING_URI])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"Submitted run run-1 to {kfp_server.url}" in out

    created = kfp_server.calls("POST", f"{API}/experiments")
    assert [r.body["display_name"] for r in created] == ["distillery-ci"]
    runs = kfp_server.calls("POST", f"{API}/runs")
    assert len(runs) == 1
    run = runs[0].body
    assert run["experiment_id"] == "exp-1"  # the id the server returned for the experiment
    config = load_config(cfg)
    assert run["display_name"] == config["name"]  # --run-name defaults to the config name
    assert_pipeline_matches(pipeline_spec_of(run), config)
    assert not [r for r in kfp_server.requests if r.path.startswith(f"{API}/pipelines")], "nothing is uploaded"
    assert not [r for r in kfp_server.requests if r.path.startswith(f"{API}/recurringruns")]


def test_schedule_creates_a_recurring_run(kfp_server, tmp_path, capsys):
    cfg = write_config(tmp_path)
    code = main(["schedule", "--host", kfp_server.url, "--config", str(cfg), "--cron", "0 0 3 * * *",
                 "--name", "nightly", "--tracking-uri", TRACKING_URI])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Scheduled rr-1" in out

    recurring = kfp_server.calls("POST", f"{API}/recurringruns")
    assert len(recurring) == 1
    job = recurring[0].body
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert "periodic_schedule" not in job["trigger"]
    assert str(job["max_concurrency"]) == "1"
    assert job["no_catchup"] is True
    assert job.get("mode", "ENABLE") == "ENABLE"
    assert job["display_name"] == "nightly"
    assert job["experiment_id"] in kfp_server.experiments  # an experiment the server created
    assert_pipeline_matches(pipeline_spec_of(job), load_config(cfg))
    assert not kfp_server.calls("POST", f"{API}/runs"), "schedule must not also start a run"


# --------------------------------------------------------------------------- refused before any request


def _refused(kfp_server, capsys, argv: list[str], *message: str) -> None:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert "distillery: error:" in err
    for part in message:
        assert part in err
    assert kfp_server.requests == [], f"the server was contacted: {kfp_server.requests}"


def test_schedule_refuses_a_five_field_cron(kfp_server, tmp_path, capsys):
    _refused(kfp_server, capsys, ["schedule", "--host", kfp_server.url, "--config", str(write_config(tmp_path)),
                                  "--cron", "0 3 * * *", "--tracking-uri", TRACKING_URI],
             "'0 3 * * *'", "6 fields", "got 5 field(s)")


@pytest.mark.parametrize("command", [["submit"], ["schedule", "--cron", "0 0 3 * * *"]])
def test_cluster_commands_refuse_a_local_data_repo(kfp_server, tmp_path, capsys, command):
    cfg = write_config(tmp_path, repo=".")
    _refused(kfp_server, capsys, [*command, "--host", kfp_server.url, "--config", str(cfg),
                                  "--tracking-uri", TRACKING_URI],
             "data.repo '.'", "local path")


@pytest.mark.parametrize("command", [["submit"], ["schedule", "--cron", "0 0 3 * * *"]])
def test_cluster_commands_refuse_a_local_tracking_uri(kfp_server, tmp_path, capsys, command):
    _refused(kfp_server, capsys, [*command, "--host", kfp_server.url, "--config", str(write_config(tmp_path)),
                                  "--tracking-uri", "sqlite:///x.db"],
             "'sqlite:///x.db'", "local store")


# --------------------------------------------------------------------------- compile


def test_compile_writes_a_loadable_spec_on_the_project_image(tmp_path, capsys):
    from kfp import components

    cfg = write_config(tmp_path)
    output = tmp_path / "tmp" / "spec.yaml"
    code = main(["compile", "--config", str(cfg), "--output", str(output), "--tracking-uri", TRACKING_URI])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"Compiled 8 tasks to {output}" in out

    config = load_config(cfg)
    loaded = components.load_component_from_file(str(output))
    assert loaded.name == f"distillery-{config['name']}"
    spec = yaml.safe_load(output.read_text())
    assert_pipeline_matches(spec, config)

    executors = spec["deploymentSpec"]["executors"]
    for name, task in spec["root"]["dag"]["tasks"].items():
        component = spec["components"][task["componentRef"]["name"]]
        container = executors[component["executorLabel"]]["container"]
        assert container["image"] == images.IMAGE, name
        script = " ".join(container.get("command", []) + container.get("args", []))
        assert "pip install" not in script and "kfp==" not in script, f"{name} installs kfp at start-up"


def test_unreachable_kfp_host_is_a_clear_error(tmp_path, capsys):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["submit", "--host", f"http://127.0.0.1:{port}", "--config", str(write_config(tmp_path)),
                 "--tracking-uri", TRACKING_URI])
    assert code == 2
    assert f"cannot reach the KFP API at http://127.0.0.1:{port}" in capsys.readouterr().err
