"""The MLflow tracking server for real, on PostgreSQL (the backend the cluster uses).

* Two pipeline tasks log concurrently through the server while it is restarted mid-run: nothing is
  lost, and both tasks end up under one parent run.
* With basic auth on (the settings file deployed to the cluster, ``k8s/base/mlflow/basic_auth.ini``),
  an anonymous write is refused and an authorised one succeeds.

Needs PostgreSQL (127.0.0.1:5432 here and in CI): skipped where none is reachable, mandatory in CI
(``.ci/run`` sets ``DISTILLERY_REQUIRE_POSTGRES=1``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from base64 import b64encode

import pytest
from conftest import ROOT
from servers import (
    POSTGRES,
    MlflowServer,
    postgres_uri,
    require_postgres,
    running_server,
    throwaway_database,
)

pytestmark = pytest.mark.postgres

STEPS = 40
# A task: the real task bookkeeping (distillery.components.core.tracking.task_run), logging one metric per step.
TASK = f"""
import sys, time, mlflow
from distillery.components.core.tracking import RunContext, task_run
ctx = RunContext.from_json(sys.argv[1])
task, offset = sys.argv[2], int(sys.argv[3])
with task_run(ctx, task, {{"offset": offset}}):
    for step in range({STEPS}):
        mlflow.log_metric("value", offset + step, step=step)
        time.sleep(0.1)
"""


@pytest.fixture
def database():
    require_postgres()
    with throwaway_database() as name:
        yield name


def test_concurrent_tasks_lose_nothing_across_a_server_restart(tmp_path, database):
    from distillery.components.core.tracking import RUN_KEY, RunContext
    from mlflow import MlflowClient

    server = MlflowServer(tmp_path, MLFLOW_BACKEND_STORE_URI=postgres_uri(database)).start()
    try:
        run_key = uuid.uuid4().hex
        ctx = RunContext(tracking_uri=server.url, experiment="concurrency", git_commit="test", data_version="v",
                         config={"name": "pg", "data": {"path": "data/mnist"}}, run_key=run_key)
        # Clients retry while the server is away (urllib3 backoff 1, 2, 4, ... s: minutes in all).
        env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "8", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "PYTHONPATH": str(ROOT)}
        tasks = [subprocess.Popen([sys.executable, "-c", TASK, ctx.to_json(), name, str(offset)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for name, offset in (("task-a", 0), ("task-b", 1000))]
        _wait_for_metrics(server.url, tasks, at_least=5)
        server.stop()  # mid-run: both tasks are still logging
        time.sleep(1.0)
        server.start()
        for task in tasks:
            output, _ = task.communicate(timeout=300)
            assert task.returncode == 0, output[-3000:]

        client = MlflowClient(server.url)
        experiment = client.get_experiment_by_name("concurrency")
        parents = client.search_runs([experiment.experiment_id],
                                     filter_string=f"tags.`{RUN_KEY}` = '{run_key}' "
                                                   "and tags.`distillery.role` = 'pipeline'")
        assert len(parents) == 1, "concurrent tasks created more than one parent run"
        children = client.search_runs([experiment.experiment_id],
                                      filter_string=f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
        assert sorted(r.data.tags["distillery.task"] for r in children) == ["task-a", "task-b"]
        for run in children:
            assert run.info.status == "FINISHED"
            offset = int(run.data.params["offset"])
            history = client.get_metric_history(run.info.run_id, "value")
            # every step is there with its value (a request retried across the restart may repeat one)
            assert {(m.step, m.value) for m in history} == {(s, offset + s) for s in range(STEPS)}
            assert "work_seconds" in run.data.metrics
    finally:
        server.stop()


def _wait_for_metrics(url: str, tasks: list, at_least: int, timeout: float = 120) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for task in tasks:
            if task.poll() is not None:
                pytest.fail(f"a task exited early ({task.returncode}):\n{task.stdout.read()[-3000:]}")
        experiment = client.get_experiment_by_name("concurrency")
        runs = client.search_runs([experiment.experiment_id], filter_string="tags.`distillery.role` = 'task'") \
            if experiment else []
        if len(runs) == 2 and all(len(client.get_metric_history(r.info.run_id, "value")) >= at_least for r in runs):
            return
        time.sleep(0.2)
    pytest.fail(f"the two tasks did not start logging within {timeout} s")


def test_basic_auth_refuses_anonymous_writes_and_accepts_the_admin(tmp_path, database):
    with throwaway_database() as auth_database:
        # The cluster's settings file, pointed at this test's throwaway user store.
        shipped = (ROOT / "k8s" / "base" / "mlflow" / "basic_auth.ini").read_text()
        assert "database_uri = postgresql+psycopg2:///mlflow_auth" in shipped
        config = tmp_path / "basic_auth.ini"
        config.write_text(shipped.replace("///mlflow_auth", f"///{auth_database}"))
        password = uuid.uuid4().hex
        with running_server(tmp_path, MLFLOW_BACKEND_STORE_URI=postgres_uri(database), MLFLOW_APP_NAME="basic-auth",
                            MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_AUTH_ADMIN_PASSWORD=password,
                            MLFLOW_FLASK_SERVER_SECRET_KEY=uuid.uuid4().hex, **POSTGRES) as server:
            create = f"{server.url}/api/2.0/mlflow/experiments/create"
            assert _post(create, {"name": "anonymous"}) == (401, None)
            assert _post(create, {"name": "wrong"}, ("admin", "not-the-password"))[0] == 401
            status, body = _post(create, {"name": "authorised"}, ("admin", password))
            assert status == 200 and body["experiment_id"]
            status, body = _post(f"{server.url}/api/2.0/mlflow/experiments/get-by-name", None, ("admin", password),
                                 query="experiment_name=authorised")
            assert status == 200 and body["experiment"]["name"] == "authorised"
            assert _post(f"{server.url}/api/2.0/mlflow/experiments/get-by-name", None,
                         query="experiment_name=anonymous")[0] == 401


def _post(url: str, payload: dict | None, credentials: tuple[str, str] | None = None,
          query: str = "") -> tuple[int, dict | None]:
    """``(status, JSON body or None)``; a GET when ``payload`` is None."""
    headers = {"Content-Type": "application/json"}
    if credentials:
        headers["Authorization"] = "Basic " + b64encode(":".join(credentials).encode()).decode()
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(f"{url}?{query}" if query else url, data=data, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def test_a_task_that_loses_the_race_to_create_the_experiment_uses_the_winners(tmp_path, monkeypatch):
    """Two tasks starting together both miss the experiment and both create it: the loser's create
    fails with RESOURCE_ALREADY_EXISTS and it must carry on in the winner's experiment (the race the
    concurrency test above can hit; here forced by a first lookup that misses, on a real store)."""
    from conftest import task_context

    import mlflow
    from distillery.components.core import tracking

    ctx = tracking.RunContext.from_json(task_context(tmp_path, ROOT))
    mlflow.set_tracking_uri(ctx.tracking_uri)
    winner = mlflow.create_experiment(ctx.experiment, artifact_location=ctx.artifact_location)
    lookups = []
    real_lookup = mlflow.get_experiment_by_name

    def lookup_missing_first(name):
        lookups.append(name)
        return None if len(lookups) == 1 else real_lookup(name)

    monkeypatch.setattr(mlflow, "get_experiment_by_name", lookup_missing_first)
    _, experiment_id = tracking._client(ctx)
    assert experiment_id == winner and len(lookups) == 2
    mlflow.set_tracking_uri(None)
