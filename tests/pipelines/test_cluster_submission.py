"""`distillery submit / schedule / compile` against a recording KFP endpoint on localhost.

No KFP server can run here, so a small HTTP server on 127.0.0.1 (``servers.RecordingServer``) plays
the KFP v2beta1 REST API: it records every request (method, path, query, JSON body) and answers the
calls ``kfp.Client`` makes with minimal valid JSON. Unknown paths get a 404 and stay recorded, so a
client call the fake does not know about shows up as a failure rather than passing silently. The
tests run the real CLI entry point, ``distillery.pipelines.cli.main``, in-process.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from servers import RecordingServer, Request, serving

from distillery.components.core import images
from distillery.pipelines.cli import main
from distillery.pipelines.config import (
    DEFAULT_CONFIG,
    RETRAINING_CONFIG,
    load_config,
    task_names,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
GIT_URL = "https://github.com/distillery-mlops/distillery.git"
TRACKING_URI = "http://mlflow.example:5000"
API = "/apis/v2beta1"

pytestmark = pytest.mark.filterwarnings("ignore:This client only works with Kubeflow Pipeline:FutureWarning")


# --------------------------------------------------------------------------- recording KFP server


class RecordingKFP(RecordingServer):
    """Records every request; answers the v2beta1 calls ``kfp.Client`` makes."""

    def __init__(self) -> None:
        super().__init__()
        self.experiments: dict[str, dict] = {}

    def respond(self, req: Request) -> tuple[int, dict]:
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


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def kfp_server():
    with serving(RecordingKFP()) as server:
        yield server


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
    # No Kubernetes API of the machine (kubeconfig, in-cluster) for the Secrets preflight
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def write_config(tmp_path: Path, base: Path = DEFAULT_CONFIG, **data: Any) -> Path:
    raw = yaml.safe_load(base.read_text())
    raw["data"]["repo"] = GIT_URL
    raw["data"].update(data)
    if "selection" in raw:
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


def assert_retraining_pipeline(spec: dict, config: dict) -> None:
    """The check task at the top; every other task inside the condition on its output; caching off
    everywhere (a scheduled run must re-read data and retrain)."""
    root = spec["root"]["dag"]["tasks"]
    assert sorted(root) == ["check-retraining", "condition-1"]
    condition = root["condition-1"]
    assert condition["triggerPolicy"]["condition"] == \
        "inputs.parameter_values['pipelinechannel--check-retraining-Output'] != 'skip'"
    inner = spec["components"][condition["componentRef"]["name"]]["dag"]["tasks"]
    tasks = {**inner, "check-retraining": root["check-retraining"]}
    assert sorted(t["taskInfo"]["name"] for t in tasks.values()) == sorted(task_names(config))
    cached = [name for name, t in tasks.items() if t.get("cachingOptions", {}).get("enableCache")]
    assert not cached, f"caching enabled on {cached}"
    for name, task in inner.items():  # every later task reads the context the check pinned
        context = task["inputs"]["parameters"]["context"]
        assert context == {"componentInputParameter": "pipelinechannel--check-retraining-Output"}, name


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
    cfg = write_config(tmp_path, RETRAINING_CONFIG)
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
    assert job["service_account"] == "distillery-pipeline"
    assert_retraining_pipeline(pipeline_spec_of(job), load_config(cfg))
    assert not kfp_server.calls("POST", f"{API}/runs"), "schedule must not also start a run"


def test_schedule_refuses_an_active_learning_config(kfp_server, tmp_path, capsys):
    _refused(kfp_server, capsys, ["schedule", "--host", kfp_server.url, "--config", str(write_config(tmp_path)),
                                  "--cron", "0 0 3 * * *", "--tracking-uri", TRACKING_URI],
             "active_learning pipeline", "pipeline: retraining")


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


# --------------------------------------------------------------------------- Secrets preflight


@pytest.fixture
def k8s_api(tmp_path):
    """A fake Kubernetes API (servers.FakeKubernetes) holding the Secrets the cluster needs, and a
    kubeconfig for it: (server, kubeconfig path)."""
    from servers import FakeKubernetes

    with serving(FakeKubernetes()) as server:
        server.add_secret("distillery", "mlflow-client", username="distillery-pipeline", password="pw")
        server.add_secret("distillery", "dvc-s3", **{"access-key-id": "a", "secret-access-key": "s"})
        yield server, server.kubeconfig(tmp_path / "kubeconfig")


def test_submit_checks_the_secrets_through_the_kubeconfig_first(kfp_server, k8s_api, tmp_path, capsys):
    k8s, kubeconfig = k8s_api
    code = main(["submit", "--host", kfp_server.url, "--config", str(write_config(tmp_path)),
                 "--tracking-uri", TRACKING_URI, "--kubeconfig", str(kubeconfig)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Secrets dvc-s3, mlflow-client exist in namespace 'distillery'" in out
    assert sorted(r.path for r in k8s.requests) == ["/api/v1/namespaces/distillery/secrets/dvc-s3",
                                                    "/api/v1/namespaces/distillery/secrets/mlflow-client"]
    assert len(kfp_server.calls("POST", f"{API}/runs")) == 1


def test_a_missing_secret_stops_submit_before_the_kfp_server_is_contacted(kfp_server, k8s_api, tmp_path, capsys):
    k8s, kubeconfig = k8s_api
    del k8s.secrets[("distillery", "dvc-s3")]
    _refused(kfp_server, capsys, ["submit", "--host", kfp_server.url, "--config", str(write_config(tmp_path)),
                                  "--tracking-uri", TRACKING_URI, "--kubeconfig", str(kubeconfig)],
             "Secret(s) dvc-s3 missing in namespace 'distillery'")
    assert k8s.posts() == []


def test_no_check_secrets_skips_the_preflight(kfp_server, k8s_api, tmp_path, capsys):
    k8s, kubeconfig = k8s_api
    k8s.secrets.clear()
    code = main(["submit", "--host", kfp_server.url, "--config", str(write_config(tmp_path)),
                 "--tracking-uri", TRACKING_URI, "--kubeconfig", str(kubeconfig), "--no-check-secrets"])
    assert code == 0, capsys.readouterr().err
    assert k8s.requests == []


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
    spec, platform = yaml.safe_load_all(output.read_text())  # the pipeline, then its Kubernetes settings
    assert_pipeline_matches(spec, config)
    assert (set(platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"])
            == set(spec["deploymentSpec"]["executors"]))

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
