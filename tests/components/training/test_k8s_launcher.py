"""The Kubernetes training launcher (components/training/cluster/) against a fake Kubernetes API.

No Kubernetes API server can run here, so ``servers.FakeKubernetes`` (a real HTTP server on
127.0.0.1) plays the endpoints the launcher uses (TrainJobs, Jobs, Secrets), records every request
and advances each created object's status along a script; the launcher talks to it through a real
``kubernetes.client.ApiClient``. Built objects are checked field by field against their templates,
and against the schemas and policies of tests/deploy/test_k8s_manifests.py. Two tests run the pods for
real: a "kubelet" thread starts the created TrainJob's command (torchrun, 2 ranks on CPU) or the
Indexed Job's (the ADBO master and workers) with the env the object gives its pods, so the whole
path -- data to MLflow, the pods' staging command, the training, the result back from MLflow --
runs here; once with the pods as processes of this checkout, once in the project image (test
marker ``container``), where the code is the installed package, as in a cluster.
"""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import threading
import uuid

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT
from servers import FakeKubernetes, free_port, k8s_condition, serving
from test_k8s_manifests import all_violations, validate_object

from distillery.components.training.cluster import kube, manifests, pod
from distillery.components.training.cluster.errors import (
    JobFailedError,
    JobTimeoutError,
    LaunchError,
    MissingSecretsError,
)
from distillery.components.training.cluster.kube import JOB, TRAINJOB
from distillery.components.training.cluster.manifests import ASYNC_TEMPLATE, GPU, TRAINJOB_TEMPLATE

NS = "distillery"
PATHS = {TRAINJOB: f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainjobs",
         JOB: f"/apis/batch/v1/namespaces/{NS}/jobs"}
SECRET_KEYS = {"mlflow-client": {"username": "distillery-pipeline", "password": "pw"},
               "dvc-s3": {"access-key-id": "AKIA", "secret-access-key": "s3cret"}}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def template(path, kind: str) -> dict:
    return next(d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == kind)


def env_of(env: list[dict]) -> dict[str, dict]:
    return {e["name"]: e for e in env}


# Statuses as Kubeflow Trainer v2.0 / batch/v1 report them: suspended while Kueue queues the
# workload, then running pods, then a terminal condition.
def trainjob_status(active=0, ready=0, succeeded=0, failed=0, conditions=()) -> dict:
    return {"conditions": list(conditions),
            "jobsStatus": [{"name": "node", "active": active, "ready": ready, "succeeded": succeeded,
                            "failed": failed, "suspended": 0}]}


def job_status(active=0, ready=0, succeeded=0, failed=0, conditions=()) -> dict:
    return {"conditions": list(conditions), "active": active, "ready": ready, "succeeded": succeeded,
            "failed": failed}


STATUS = {TRAINJOB: trainjob_status, JOB: job_status}
QUEUED = k8s_condition("Suspended", "Suspended", "queued by Kueue")
FAILED = k8s_condition("Failed", "BackoffLimitExceeded", "node-0 exited with code 1: CUDA out of memory")


def script(kind, end: str) -> list[dict]:
    status = STATUS[kind]
    steps = [status(conditions=[QUEUED]), status(active=2), status(active=2, ready=2)]
    if end == "complete":
        steps.append(status(succeeded=2, conditions=[k8s_condition("Complete", "Completed", "done")]))
    elif end == "failed":
        steps.append(status(active=1, failed=1, conditions=[FAILED]))
    return steps  # "never": the last running state repeats


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """One SQLite MLflow store for the module (creating one costs seconds): (folder, uri, client, experiment id)."""
    import mlflow

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"  # the store conftest.task_context(folder, ...) names
    client = mlflow.MlflowClient(uri)
    return folder, uri, client, client.create_experiment("k8s", artifact_location=str(folder / "artifacts"))


@pytest.fixture
def k8s():
    server = FakeKubernetes()
    for name, data in SECRET_KEYS.items():
        server.add_secret(NS, name, **data)
    with serving(server):
        yield server


@pytest.fixture
def api(k8s):
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = k8s.url
    with client.ApiClient(configuration) as api_client:
        yield api_client


def manifest(kind, name="ddp-run-1", **kw) -> dict:
    if kind is TRAINJOB:
        return manifests.trainjob_manifest(name, **kw)
    return manifests.async_job_manifest(name, **kw)


# ---------------------------------------------------------------------------------------------
# What gets created


def test_trainjob_is_the_template_with_the_runs_settings():
    command = ["python", "-m", "distillery.components.training.cluster.pod", "stage", "--run-id", "r1", "--dir",
               "/tmp/d", "--", "torchrun"]
    args = ["-m", "distillery.components.training.distributed", "--data", "/tmp/d/train.npz", "--epochs", "3"]
    doc = manifests.trainjob_manifest(
        "ddp-run-1", namespace=NS, image="registry.example/distillery-gpu:1.2", command=command, args=args,
        env={"DISTILLERY_TRAIN_DATASET": None, "MLFLOW_TRACKING_URI": "http://mlflow.example:5000"},
        nodes=3, gpus_per_node=2, cpu="8", memory="32Gi", queue="team-a",
        priority_class="distillery-scheduled-retraining", labels={"distillery/run-key": "abc"})
    want = copy.deepcopy(template(TRAINJOB_TEMPLATE, "TrainJob"))
    want["metadata"].update(name="ddp-run-1", namespace=NS)
    want["metadata"]["labels"].update({"kueue.x-k8s.io/queue-name": "team-a", "distillery/run-key": "abc",
                                       "kueue.x-k8s.io/priority-class": "distillery-scheduled-retraining",
                                       "distillery/pool": "gpu"})
    trainer = want["spec"]["trainer"]
    trainer.update(image="registry.example/distillery-gpu:1.2", command=command, args=args, numNodes=3,
                   numProcPerNode=2,
                   resourcesPerNode={"requests": {"cpu": "8", "memory": "32Gi", GPU: "2"},
                                     "limits": {"cpu": "8", "memory": "32Gi", GPU: "2"}})
    env = [e for e in trainer["env"] if e["name"] != "DISTILLERY_TRAIN_DATASET"]
    env_of(env)["MLFLOW_TRACKING_URI"]["value"] = "http://mlflow.example:5000"
    trainer["env"] = env + [{"name": "DISTILLERY_DVC_REMOTE", "value": "cluster"}]
    want["spec"]["podSpecOverrides"][0]["serviceAccountName"] = "distillery-training"
    assert doc == want  # everything else is the template's, field for field

    # the Secret references stay what the template says, so pods get the MLflow and DVC credentials
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in doc["spec"]["trainer"]["env"] if "valueFrom" in e}
    assert refs == {"MLFLOW_TRACKING_USERNAME": {"name": "mlflow-client", "key": "username"},
                    "MLFLOW_TRACKING_PASSWORD": {"name": "mlflow-client", "key": "password"},
                    "AWS_ACCESS_KEY_ID": {"name": "dvc-s3", "key": "access-key-id"},
                    "AWS_SECRET_ACCESS_KEY": {"name": "dvc-s3", "key": "secret-access-key"}}
    assert manifests.secret_refs(doc) == manifests.required_secrets() == ["dvc-s3", "mlflow-client"]
    validate_object(doc)


@pytest.mark.parametrize("gpus", [0, 1])
def test_trainjob_asks_for_gpus_only_when_it_uses_them_and_passes_the_manifest_policies(gpus):
    doc = manifests.trainjob_manifest("ddp-run-1", nodes=2, gpus_per_node=gpus)
    resources = doc["spec"]["trainer"]["resourcesPerNode"]
    tolerations = [t for o in doc["spec"]["podSpecOverrides"] for t in o.get("tolerations", [])]
    if gpus:
        assert resources["requests"][GPU] == resources["limits"][GPU] == "1"
        assert [t["key"] for t in tolerations] == [GPU]
        assert doc["metadata"]["labels"]["distillery/pool"] == "gpu"
        assert doc["spec"]["trainer"]["image"] == template(TRAINJOB_TEMPLATE, "TrainJob")["spec"]["trainer"]["image"]
    else:
        assert GPU not in resources["requests"] and GPU not in resources["limits"]
        assert tolerations == []
        assert doc["metadata"]["labels"]["distillery/pool"] == "cpu"
        assert doc["spec"]["trainer"]["image"] == manifests._project_image()
    assert doc["spec"]["trainer"]["numProcPerNode"] == max(1, gpus)
    validate_object(doc)
    assert all_violations([doc]) == []  # the policies every shipped manifest meets (test_k8s_manifests)


def test_async_job_is_the_template_with_the_runs_settings():
    config = {"problem": "hyperclean", "problem_kwargs": {"data": "/tmp/adbo/in/split.npz"}, "s": 1, "tau": 2}
    doc = manifests.async_job_manifest("adbo-run-1", config=config, output_dir="/tmp/adbo/out", world_size=3,
                                      cpu="1", memory="2Gi", priority_class="distillery-scheduled-retraining",
                                      env={"MLFLOW_TRACKING_URI": "http://mlflow.example:5000"})
    want = copy.deepcopy(template(ASYNC_TEMPLATE, "Job"))
    want["metadata"].update(name="adbo-run-1", namespace=NS)
    want["spec"].update(completions=3, parallelism=3, maxFailedIndexes=1)
    pod = want["spec"]["template"]["spec"]
    pod["priorityClassName"] = "distillery-scheduled-retraining"
    container = pod["containers"][0]
    container["args"] = ["--config-json", json.dumps(config, sort_keys=True), "--output-dir", "/tmp/adbo/out"]
    container["resources"] = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}}
    env = env_of(container["env"])
    env["WORLD_SIZE"]["value"] = "3"
    env["MLFLOW_TRACKING_URI"]["value"] = "http://mlflow.example:5000"
    container["env"].append({"name": "DISTILLERY_DVC_REMOTE", "value": "cluster"})
    assert doc == want
    validate_object(doc)
    assert all_violations([doc]) == []
    # two pods: master + one worker, so no worker may be lost
    assert manifests.async_job_manifest("adbo-run-1", world_size=2)["spec"]["maxFailedIndexes"] == 0


@pytest.mark.parametrize("build, message", [
    (lambda: manifests.trainjob_manifest("Bad_Name"), "name 'Bad_Name' must be a DNS-1123 label"),
    (lambda: manifests.trainjob_manifest("x", nodes=0), "nodes must be an integer >= 1, got 0"),
    (lambda: manifests.trainjob_manifest("x", gpus_per_node=-1), "gpus_per_node must be an integer >= 0"),
    (lambda: manifests.async_job_manifest("x", world_size=1), "world_size must be an integer >= 2, got 1"),
])
def test_bad_settings_are_refused_by_name(build, message):
    with pytest.raises(ValueError, match=None) as err:
        build()
    assert message in str(err.value)


def test_job_names_are_valid_and_distinct():
    long = manifests.job_name("ddp", "Round_2", "x" * 80)
    assert len(long) <= manifests.MAX_NAME and manifests._NAME.match(long)
    assert long != manifests.job_name("ddp", "Round_2", "x" * 79 + "y")
    assert manifests.job_name("ddp", "Round_2", "4f1C") == "ddp-round-2-4f1c"


# ---------------------------------------------------------------------------------------------
# Creating and following


@pytest.mark.parametrize("kind", [TRAINJOB, JOB], ids=["trainjob", "job"])
def test_launch_checks_secrets_creates_and_follows_to_completion(k8s, api, kind):
    k8s.script = script(kind, "complete")
    doc = manifest(kind)
    lines: list[str] = []
    states: list[str] = []
    final = kube.launch(api, doc, timeout_s=30, poll_s=0.01, on_line=lines.append, on_state=states.append)

    assert kube.condition(final, "Complete")
    posts = k8s.posts()
    assert [(r.path, r.body) for r in posts] == [(PATHS[kind], doc)]  # exactly the manifest, once
    secret_gets = [i for i, r in enumerate(k8s.requests) if "/secrets/" in r.path]
    assert sorted(k8s.requests[i].path.rsplit("/", 1)[1] for i in secret_gets) == ["dvc-s3", "mlflow-client"]
    assert max(secret_gets) < k8s.requests.index(posts[0])  # checked before creating
    assert states == ["Created", "Complete"]
    where = f"{kind.kind} {NS}/ddp-run-1"
    assert lines[0] == f"created {where}"
    # one line per change: queued, pods active, pods ready, done
    assert len(lines) == 5 and all(line.startswith(where) for line in lines[1:])
    assert "Suspended (Suspended)" in lines[1]
    assert "active 2 ready 0" in lines[2] and "active 2 ready 2" in lines[3]
    assert "Complete (Completed)" in lines[4] and "succeeded 2" in lines[4]
    assert not [r for r in k8s.requests if r.method == "DELETE"]


@pytest.mark.parametrize("kind", [TRAINJOB, JOB], ids=["trainjob", "job"])
def test_a_failed_job_raises_with_its_condition_and_is_left_for_inspection(k8s, api, kind):
    k8s.script = script(kind, "failed")
    states: list[str] = []
    with pytest.raises(JobFailedError) as err:
        kube.launch(api, manifest(kind), timeout_s=30, poll_s=0.01, on_line=None, on_state=states.append)
    message = str(err.value)
    assert f"{kind.kind} {NS}/ddp-run-1 failed: BackoffLimitExceeded: node-0 exited with code 1: CUDA out of memory" \
        in message
    assert f"kubectl -n {NS} describe {kind.plural}/ddp-run-1" in message
    assert states == ["Created", "Failed"]
    assert (kind.plural, NS, "ddp-run-1") in k8s.objects  # not deleted


def test_a_job_that_never_finishes_times_out_naming_it_and_is_left_in_place(k8s, api):
    k8s.script = script(TRAINJOB, "never")
    lines: list[str] = []
    with pytest.raises(JobTimeoutError) as err:
        kube.launch(api, manifest(TRAINJOB), timeout_s=0.3, poll_s=0.02, on_line=lines.append)
    message = str(err.value)
    assert f"TrainJob {NS}/ddp-run-1 did not finish within 0.3 s" in message
    assert "left in place" in message and f"kubectl -n {NS} delete trainjobs/ddp-run-1" in message
    assert "active 2 ready 2" in message  # the last state seen
    assert len(lines) == 4  # created + 3 distinct states, no repeats of the last one while polling
    assert (TRAINJOB.plural, NS, "ddp-run-1") in k8s.objects
    assert not [r for r in k8s.requests if r.method == "DELETE"]


def test_on_timeout_delete_removes_the_job(k8s, api):
    k8s.script = script(JOB, "never")
    with pytest.raises(JobTimeoutError, match="deleted it"):
        kube.launch(api, manifest(JOB), timeout_s=0.2, poll_s=0.02, on_line=None, on_timeout="delete")
    assert [r.path for r in k8s.requests if r.method == "DELETE"] == [f"{PATHS[JOB]}/ddp-run-1"]
    assert not k8s.objects


@pytest.mark.parametrize("missing", [["dvc-s3"], ["dvc-s3", "mlflow-client"]])
def test_missing_secrets_are_named_before_anything_is_created(k8s, api, missing):
    for name in missing:
        del k8s.secrets[(NS, name)]
    with pytest.raises(MissingSecretsError) as err:
        kube.launch(api, manifest(TRAINJOB), timeout_s=5, poll_s=0.01, on_line=None)
    assert f"Secret(s) {', '.join(missing)} missing in namespace '{NS}'" in str(err.value)
    assert k8s.posts() == []


def test_an_unreadable_secret_is_reported_not_fatal_in_the_launcher(k8s, api):
    k8s.forbidden_secrets = {"dvc-s3"}
    k8s.script = script(JOB, "complete")
    lines: list[str] = []
    kube.launch(api, manifest(JOB), timeout_s=30, poll_s=0.01, on_line=lines.append)
    assert lines[0].startswith("cannot check Secret(s) dvc-s3 (not readable")
    with pytest.raises(MissingSecretsError, match=r"not allowed to read Secret\(s\) dvc-s3"):
        kube.check_secrets(api, NS, ["dvc-s3", "mlflow-client"])


def test_an_existing_name_is_a_clear_error(k8s, api):
    k8s.script = script(JOB, "complete")
    kube.launch(api, manifest(JOB), timeout_s=30, poll_s=0.01, on_line=None)
    with pytest.raises(LaunchError, match=f"Job {NS}/ddp-run-1 exists already"):
        kube.launch(api, manifest(JOB), timeout_s=30, poll_s=0.01, on_line=None)


# ---------------------------------------------------------------------------------------------
# The whole path with pods run for real


class Pods:
    """Where the test's kubelets start a pod's container: a process on this machine (``image``
    None), or the project image under podman (pipelines' own image, the code as installed there).

    A pod's ``/tmp`` (an emptyDir) is the host folder ``tmp``: mounted at /tmp in the image; for a
    process, paths under /tmp in its command and env are rewritten to ``tmp`` (paths of this machine
    that lie under /tmp, such as the MLflow store, are left alone). ``shared`` folders (the MLflow
    store) are mounted at their own paths.
    """

    def __init__(self, image: str | None = None, shared: tuple = ()):
        self.image, self.shared = image, [str(p) for p in shared]
        self.procs: list[subprocess.Popen] = []
        self.names: list[str] = []

    def _local(self, text: str, tmp) -> str:
        if text.startswith("{"):  # a JSON argument holding pod paths
            return text.replace('"/tmp/', f'"{tmp}/')
        ours = any(text.startswith(s) for s in (*self.shared, str(tmp)))
        return f"{tmp}{text[4:]}" if (text == "/tmp" or text.startswith("/tmp/")) and not ours else text

    def start(self, command: list[str], env: dict[str, str], tmp, log) -> subprocess.Popen:
        tmp.mkdir(parents=True, exist_ok=True)
        env = {**env, "OMP_NUM_THREADS": "1"}
        if self.image is None:
            env = {k: self._local(v, tmp) for k, v in env.items()}
            env.update(PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(ROOT))
            proc = subprocess.Popen([self._local(a, tmp) for a in command], env=env, cwd=tmp, stdout=log,
                                    stderr=subprocess.STDOUT)
        else:
            import containers

            proc, name = containers.popen(self.image, command, env, log,
                                          mounts={str(tmp): "/tmp", **{s: s for s in self.shared}})
            self.names.append(name)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        if self.names:
            import containers

            for name in self.names:
                containers.remove(name)


@pytest.fixture(params=["process", pytest.param("image", marks=pytest.mark.container)])
def pods(request, tracking):
    """Pods as processes here, and (marked ``container``) in the project image."""
    image = None
    if request.param == "image":
        import containers

        image = containers.project_image().reference
    runner = Pods(image, shared=(tracking[0],))
    yield runner
    runner.stop()


def kubelet(pods: Pods, root, env_overrides: dict[str, str]):
    """An ``on_create`` hook that runs a created TrainJob's single node as a pod (:class:`Pods`):
    the trainer's command + args with the env the TrainJob gives its pods (Secret values resolved)
    and the ``PET_*`` variables the torch-distributed runtime sets; status follows the pod."""

    def on_create(server: FakeKubernetes, plural: str, obj: dict) -> None:
        assert plural == "trainjobs"
        trainer, meta = obj["spec"]["trainer"], obj["metadata"]
        assert trainer["numNodes"] == 1, "the local kubelet runs one node"
        env = {"PET_NNODES": "1", "PET_NPROC_PER_NODE": str(trainer["numProcPerNode"]), "PET_NODE_RANK": "0",
               "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(free_port())}
        for entry in trainer["env"]:
            ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
            env[entry["name"]] = server.secrets[(meta["namespace"], ref["name"])][ref["key"]] if ref else entry["value"]
        env.update(env_overrides)
        key = (plural, meta["namespace"], meta["name"])
        server.live_status[key] = trainjob_status(active=1)

        def run() -> None:
            root.mkdir(parents=True, exist_ok=True)
            with open(root / "pod.log", "w") as log:
                code = pods.start(trainer["command"] + trainer["args"], env, root / "tmp", log).wait()
            server.live_status[key] = (
                trainjob_status(succeeded=1, conditions=[k8s_condition("Complete", "Completed", "done")]) if code == 0
                else trainjob_status(failed=1, conditions=[k8s_condition("Failed", "Error", f"exit code {code}")]))

        threading.Thread(target=run, daemon=True).start()

    return on_create


def test_ddp_trainjob_task_trains_in_the_pods_what_one_process_trains_here(k8s, tracking, pods, tmp_path,
                                                                          monkeypatch):
    """The training task of method ``ddp_trainjob`` end to end: the TrainJob it creates runs here
    (2 DDP ranks on CPU, as processes or in the project image) and yields the model one process
    trains on the same labelled rows."""
    from conftest import task_context

    from distillery.components.core import models
    from distillery.components.core.datasets import (
        LabelledData,
        save_arrays,
        save_labelled,
    )
    from distillery.components.core.train import train_classifier
    from distillery.components.training.tasks import run_training

    folder, uri, client, _ = tracking
    mnist = ROOT / "data" / "mnist"
    meta = json.loads((mnist / "dataset.json").read_text())
    x, y = np.load(mnist / "features.npy")[:300].astype(np.float32), np.load(mnist / "labels.npy")[:300]
    rows = np.arange(0, 300, 3)[:80]  # the labelled set: 80 rows of every class
    save_labelled(tmp_path / "dataset", LabelledData(x, y, np.arange(300), meta))
    save_arrays(tmp_path / "splits", test_rows=np.arange(1, 300, 3), train_rows=np.arange(0, 300, 3))
    save_arrays(tmp_path / "labelled", rows=rows, labels=y[rows])
    # connect() finds no in-cluster service account here and uses this kubeconfig: the fake API
    monkeypatch.setenv("KUBECONFIG", str(k8s.kubeconfig(tmp_path / "kubeconfig")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    pod = tmp_path / "pod"
    k8s.on_create = kubelet(pods, pod, {})
    run_key = f"4f1c9a0e-{uuid.uuid4().hex[:6]}"  # one store serves both pod kinds: runs are found by key
    params = {"arch": "mlp", "arch_kwargs": {"hidden": 16}, "epochs": 2, "batch_size": 24, "nodes": 1,
              "gpus_per_node": 0, "procs_per_node": 2, "cpu": "1", "memory": "1Gi", "timeout_s": 240, "poll_s": 0.2}
    try:
        run_training("ddp_trainjob", task_context(folder, ROOT), run_key, json.dumps(params), 0,
                     *(str(tmp_path / n) for n in ("dataset", "splits", "labelled", "model")))
    except LaunchError:
        pytest.fail((pod / "pod.log").read_text()[-3000:])

    model = models.load(str(tmp_path / "model"))
    single = train_classifier(x[rows], y[rows], meta, "mlp", {"hidden": 16}, 2, 1e-3, 24, 0)
    for key, value in single.state_dict().items():  # 2 DDP ranks = 1 process with the same global batch
        assert torch.allclose(value, model.state_dict()[key], rtol=0, atol=1e-5), key

    (post,) = k8s.posts()
    body = post.body
    trainer = body["spec"]["trainer"]
    assert trainer["command"][-2:] == ["--", "torchrun"]
    assert trainer["args"][:2] == ["-m", "distillery.components.training.distributed"]  # the template's patch point
    assert not [e for e in trainer["env"] if e["name"].startswith("DISTILLERY_TRAIN_")]
    assert env_of(trainer["env"])["MLFLOW_TRACKING_URI"]["value"] == uri
    assert body["metadata"]["labels"]["distillery/run-key"] == run_key
    assert body["metadata"]["name"].startswith("ddp-trainjob-4f1c9a0e-r0-")
    validate_object(body)
    assert all_violations([body]) == []

    experiment = client.get_experiment_by_name("tasks").experiment_id
    (run,) = client.search_runs([experiment], filter_string=f"tags.`distillery.task` = 'round-0-train-ddp_trainjob' "
                                                            f"and tags.`distillery.run_key` = '{run_key}'")
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["distillery.k8s.kind"], tags["distillery.k8s.namespace"], tags["distillery.k8s.name"],
            tags["distillery.k8s.state"]) == ("TrainJob", NS, body["metadata"]["name"], "Complete")
    run_id = run.info.run_id
    artifacts = {f.path for d in ("cluster-input", "cluster-output") for f in client.list_artifacts(run_id, d)}
    assert artifacts == {"cluster-input/train.npz", "cluster-input/trainjob.json", "cluster-output/model.pt"}
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [0, 1]  # logged by the pods
    assert "train_loss_rank1" in run.data.metrics and "test_accuracy" in run.data.metrics


def indexed_kubelet(pods: Pods, root, env_overrides: dict[str, str]):
    """An ``on_create`` hook that runs every index of a created Indexed Job as a pod (:class:`Pods`):
    the container's command + args, with the env the Job gives its pods (Secrets and the pod's own
    fields resolved, ``$(VAR)`` expanded), its own ``/tmp`` (``root/pod-<index>/tmp``) and the
    master's address on 127.0.0.1. Status follows the pods: Complete when every index exits 0,
    Failed when one does not."""

    def on_create(server: FakeKubernetes, plural: str, obj: dict) -> None:
        assert plural == "jobs"
        meta, spec = obj["metadata"], obj["spec"]
        container = spec["template"]["spec"]["containers"][0]
        key, count, port = (plural, meta["namespace"], meta["name"]), spec["completions"], str(free_port())
        server.live_status[key] = job_status(active=count)
        codes: dict[int, int] = {}

        def pod_env(index: int) -> dict[str, str]:
            fields = {"metadata.labels['batch.kubernetes.io/job-name']": meta["name"],
                      "metadata.annotations['batch.kubernetes.io/job-completion-index']": str(index)}
            env: dict[str, str] = {}
            for entry in container["env"]:
                source = entry.get("valueFrom") or {}
                if "secretKeyRef" in source:
                    ref = source["secretKeyRef"]
                    env[entry["name"]] = server.secrets[(meta["namespace"], ref["name"])][ref["key"]]
                elif "fieldRef" in source:
                    env[entry["name"]] = fields[source["fieldRef"]["fieldPath"]]
                else:
                    env[entry["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], entry["value"])
            return {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, **env_overrides}

        def run(index: int) -> None:
            with open(root / f"pod-{index}.log", "w") as log:
                codes[index] = pods.start(container["command"] + container["args"], pod_env(index),
                                          root / f"pod-{index}" / "tmp", log).wait()
            if len(codes) == count:
                bad = {i: c for i, c in codes.items() if c}
                server.live_status[key] = (
                    job_status(succeeded=count, conditions=[k8s_condition("Complete", "Completed", "done")]) if not bad
                    else job_status(failed=len(bad),
                                    conditions=[k8s_condition("Failed", "Error", f"exit codes {bad}")]))

        root.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            threading.Thread(target=run, args=(index,), daemon=True).start()

    return on_create


def test_adbo_job_task_runs_master_and_workers_in_the_job_and_trains_on_their_weights(k8s, tracking, pods, tmp_path,
                                                                                      monkeypatch):
    """The training task of method ``adbo_job`` end to end: the Indexed Job it creates runs here
    (master + 2 workers over torch rpc, one process per index), the learnt weights come back
    through the task's MLflow run, and the task trains and saves the model."""
    from conftest import task_context

    from distillery.components.core import models
    from distillery.components.core.datasets import (
        LabelledData,
        save_arrays,
        save_labelled,
    )
    from distillery.components.training.tasks import run_training

    folder, uri, client, _ = tracking
    mnist = ROOT / "data" / "mnist"
    meta = json.loads((mnist / "dataset.json").read_text())
    # the file is sorted by class
    picked = np.random.default_rng(0).permutation(len(np.load(mnist / "labels.npy")))[:400]
    x, y = np.load(mnist / "features.npy")[picked].astype(np.float32), np.load(mnist / "labels.npy")[picked]
    rows = np.arange(0, 400, 2)
    save_labelled(tmp_path / "dataset", LabelledData(x, y, np.arange(400), meta))
    save_arrays(tmp_path / "splits", test_rows=np.arange(1, 400, 2), train_rows=rows)
    save_arrays(tmp_path / "labelled", rows=rows, labels=y[rows])
    monkeypatch.setenv("KUBECONFIG", str(k8s.kubeconfig(tmp_path / "kubeconfig")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    k8s.on_create = indexed_kubelet(pods, tmp_path / "pods", {})
    run_key = f"7d2e5b1c-{uuid.uuid4().hex[:6]}"  # one store serves both pod kinds: runs are found by key
    params = {"arch": "mlp", "arch_kwargs": {"hidden": 16}, "epochs": 20, "workers": 2, "s": 1, "tau": 2,
              "iterations": 6, "problem_kwargs": {"pca": 10, "warm_start": 5}, "rpc_timeout": 60, "cpu": "1",
              "memory": "1Gi", "timeout_s": 240, "poll_s": 0.2}
    try:
        run_training("adbo_job", task_context(folder, ROOT), run_key, json.dumps(params), 0,
                     *(str(tmp_path / n) for n in ("dataset", "splits", "labelled", "model")))
    except LaunchError:
        pytest.fail("\n".join(p.read_text()[-2000:] for p in sorted((tmp_path / "pods").glob("pod-*.log"))))

    model = models.load(str(tmp_path / "model"))
    assert models.predict_proba(model, x[:5]).shape == (5, 10)
    (post,) = k8s.posts()
    body = post.body
    spec, container = body["spec"], body["spec"]["template"]["spec"]["containers"][0]
    assert spec["completions"] == spec["parallelism"] == 3 and spec["completionMode"] == "Indexed"
    assert container["command"][-4:] == ["--", "python", "-m", "distillery.components.training.adbo"]
    config = json.loads(container["args"][container["args"].index("--config-json") + 1])
    assert (config["workers"], config["min_workers"], config["problem_kwargs"]["data"]) == \
        (2, 1, "/tmp/adbo/cluster-input/split.npz")
    assert env_of(container["env"])["WORLD_SIZE"]["value"] == "3"
    assert body["metadata"]["name"].startswith("adbo-job-7d2e5b1c-r0-")
    validate_object(body)
    assert all_violations([body]) == []

    experiment = client.get_experiment_by_name("tasks").experiment_id
    (run,) = client.search_runs([experiment], filter_string=f"tags.`distillery.task` = 'round-0-train-adbo_job' "
                                                            f"and tags.`distillery.run_key` = '{run_key}'")
    assert run.info.status == "FINISHED" and run.data.tags["distillery.k8s.state"] == "Complete"
    artifacts = {f.path for d in ("cluster-input", "cluster-output") for f in client.list_artifacts(run.info.run_id, d)}
    assert artifacts == {"cluster-input/split.npz", "cluster-input/job.json", "cluster-output/final.pt"}
    assert run.data.metrics["test_accuracy"] > 0.6  # 10 classes, 200 labels, 20 epochs
    # the master, in pod 0, logged its own run nested under the task's
    masters = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                 f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert masters and all(m.info.status == "FINISHED" for m in masters)


def test_the_staging_command_uploads_nothing_when_the_command_fails(tracking, tmp_path):
    _, uri, client, experiment = tracking
    run_id = client.create_run(experiment).info.run_id
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "model.pt").write_text("stale")
    code = pod.stage(run_id, tmp_path / "work", [sys.executable, "-c", "raise SystemExit(7)"],
                          upload=["model.pt"], tracking_uri=uri)
    assert code == 7
    assert client.list_artifacts(run_id) == []
    code = pod.stage(run_id, tmp_path / "work", [sys.executable, "-c", "pass"], upload=["missing.pt"],
                          tracking_uri=uri)
    assert code == 1  # succeeded, but the promised output is not there
