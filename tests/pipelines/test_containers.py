"""The project image, built and run for real with podman (no Docker daemon here).

* The image: non-root, the pinned CPU torch, and the installed package (not a source tree) providing
  what is read at run time (the Kubernetes templates of the training launcher).
* ``distillery run --runner container``: a small but complete active-learning pipeline with every
  task in the image (kfp.local's DockerRunner over podman's Docker-compatible API).
* The MLflow server as deployed: the rendered overlay's command in the image, with the pod's
  security settings, on PostgreSQL.
* Clear errors, before any work, when podman, buildah, the image or the API socket is missing.

Tests marked ``container`` skip without podman or the image, and fail instead in CI
(``DISTILLERY_REQUIRE_CONTAINER=1``, set by ``.ci/run`` after ``make image``). The pods of the
training launcher run in the image in tests/components/training/test_k8s_launcher.py.
"""
from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import containers
import pytest
from conftest import ROOT, make_clone, run_cli
from servers import POSTGRES, free_port, require_postgres, throwaway_database

TINY = ROOT / "tests" / "configs" / "tiny.yaml"
TRACKING_HOST = "mlflow.distillery.svc.cluster.local:5000"


@pytest.fixture(scope="module")
def image():
    return containers.project_image()


# ---------------------------------------------------------------------------------------------
# The image


@pytest.mark.container
def test_image_runs_as_uid_1000_with_the_installed_package_and_cpu_torch(image):
    code = ("import os, importlib.util, torch, distillery.components, distillery.pipelines\n"
            "from distillery.components.training.cluster import manifests\n"
            "assert importlib.util.find_spec('components') is None  # one namespace, no top-level package\n"
            "print(os.getuid(), os.getgid(), torch.__version__, distillery.components.__file__, "
            "manifests.TRAINJOB_TEMPLATE, manifests.ASYNC_TEMPLATE, ','.join(manifests.required_secrets()), sep='\\n')")
    out = containers.podman("run", "--rm", *containers.POD_SECURITY, "--tmpfs", "/tmp", image.reference,
                            "python", "-c", code).stdout.split()
    uid, gid, torch_version, package, trainjob, async_job, secrets = out
    assert (uid, gid) == ("1000", "1000")  # the Dockerfile's USER, not root
    assert torch_version == "2.13.0+cpu"
    assert "/site-packages/distillery/components/" in package  # installed, not a source tree
    assert trainjob.endswith("/site-packages/distillery/components/training/templates/trainjob.yaml")
    assert async_job.endswith("/site-packages/distillery/components/training/templates/async-workers.yaml")
    assert secrets == "dvc-s3,mlflow-client"
    # the templates in the image are the repository's manifests, byte for byte
    inside = containers.podman("run", "--rm", image.reference, "cat", trainjob).stdout
    assert inside == (ROOT / "k8s" / "training" / "trainjob.yaml").read_text()


def test_an_installed_wheel_provides_the_launchers_templates(tmp_path):
    """A non-editable install of the package (what the image holds) ships the templates: imported
    from the install, away from the source tree, the launcher reads them."""
    source, wheels, target = tmp_path / "source", tmp_path / "wheels", tmp_path / "site"
    for name in ("pyproject.toml", "README.md"):  # a copy: setuptools builds in the source folder
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for name in ("components", "pipelines", "k8s/training"):
        shutil.copytree(ROOT / name, source / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "compiled"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(source)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheels.glob("distillery-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from distillery.components.training.cluster import manifests\n"
            "print(manifests.TRAINJOB_TEMPLATE.resolve()); print(','.join(manifests.required_secrets()))")
    done = subprocess.run([sys.executable, "-c", code, str(target)], cwd=tmp_path, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr
    path, secrets = done.stdout.split()
    assert Path(path).is_relative_to(target) and not Path(path).is_relative_to(ROOT)
    assert Path(path).read_text() == (ROOT / "k8s" / "training" / "trainjob.yaml").read_text()
    assert secrets == "dvc-s3,mlflow-client"
    assert not Path(path).parent.is_symlink()  # real files, not the source tree's link


# ---------------------------------------------------------------------------------------------
# A pipeline with every task in the image


@pytest.mark.container
@pytest.mark.pipeline
def test_container_runner_runs_every_task_in_the_image(image, tmp_path):
    import mlflow

    repo = make_clone(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    result = run_cli(repo, "run", "--runner", "container", "--config", str(TINY), env={"MLFLOW_TRACKING_URI": store})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert f"Every task runs in image {image.reference}" in result.stdout

    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name("distillery-tests")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`distillery.role` = 'pipeline'")
    assert parent.info.status == "FINISHED"
    tasks = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    names = sorted(r.data.tags["distillery.task"] for r in tasks)
    assert names == sorted(["curate-gx_dedup", "split-stratified", "round-0-train-small_cnn", "round-1-select-margin",
                            "round-1-label-simulated", "round-1-train-small_cnn", "distil-hinton_kd",
                            "evaluate-classification"])
    for run in [parent, *tasks]:
        tags = run.data.tags
        assert run.info.status == "FINISHED", run.info.run_name
        assert tags["distillery.runner"] == "container"
        assert (tags["distillery.image"], tags["distillery.image_id"], tags["distillery.image_digest"]) == \
            (image.reference, image.id, image.digest), run.info.run_name
    champion = client.get_model_version_by_alias("tiny-student", "champion")
    assert champion.tags["distillery.image_digest"] == image.digest
    # the tasks wrote as the invoking user into the shared folders (no root-owned leftovers elsewhere)
    assert (tmp_path / "mlflow" / "mlflow.db").stat().st_uid == os.getuid()


# ---------------------------------------------------------------------------------------------
# The MLflow server as deployed


def _mlflow_deployment_container() -> tuple[dict, str]:
    from test_k8s_manifests import _auth_ini, _mlflow_container, kustomize

    docs = kustomize(ROOT / "k8s" / "overlays" / "generic")
    return _mlflow_container(docs), _auth_ini(docs)


@pytest.mark.container
@pytest.mark.postgres
def test_deployed_mlflow_server_runs_in_the_image_with_the_pods_security_on_postgres(image, tmp_path):
    """The overlay's MLflow container -- command, args, env -- in the image as uid 1000 with a
    read-only root file system, no capabilities and no privilege escalation, on PostgreSQL. What
    only a cluster gives is played here: Secret values, the PostgreSQL host (this machine's), the
    ConfigMap and volumes as mounts, and a free port (the pod shares this machine's network)."""
    from test_k8s_manifests import _request, wait_for_health

    require_postgres()
    container, auth_ini = _mlflow_deployment_container()
    with throwaway_database() as tracking_db, throwaway_database() as auth_db:
        ini = configparser.ConfigParser()
        ini.read_string(auth_ini)
        assert ini["mlflow"]["database_uri"] == "postgresql+psycopg2:///mlflow_auth"  # libpq's PGHOST etc.
        ini["mlflow"]["database_uri"] = f"postgresql+psycopg2:///{auth_db}"
        (tmp_path / "auth").mkdir()
        with open(tmp_path / "auth" / "basic_auth.ini", "w") as handle:
            ini.write(handle)
        artifacts = tmp_path / "artifacts"
        artifacts.mkdir()
        os.chown(artifacts, 1000, 1000)  # the volume's fsGroup
        password = uuid.uuid4().hex
        secrets = {("mlflow-db", "backend-store-uri"):
                   f"postgresql+psycopg2://{POSTGRES['PGUSER']}@{POSTGRES['PGHOST']}:{POSTGRES['PGPORT']}/{tracking_db}",
                   ("mlflow-db", "username"): POSTGRES["PGUSER"], ("mlflow-db", "password"): "trust-auth-here",
                   ("mlflow-auth", "admin-password"): password, ("mlflow-auth", "flask-secret-key"): uuid.uuid4().hex}
        env = {"PGHOST": POSTGRES["PGHOST"], "PGPORT": POSTGRES["PGPORT"], "PGSSLMODE": "prefer"}  # ConfigMap mlflow-db
        for item in container["env"]:
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            env[item["name"]] = secrets[(ref["name"], ref["key"])] if ref else item["value"]
        port = free_port()
        args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["args"]]
        args = [f"--port={port}" if a.startswith("--port=") else "--workers=1" if a.startswith("--workers=") else a
                for a in args]
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
        assert security["capabilities"]["drop"] == ["ALL"]
        mounts = {str(tmp_path / "auth"): "/etc/mlflow:ro", str(artifacts): "/mlflow/artifacts"}
        log_path = tmp_path / "server.log"
        with open(log_path, "w") as log:
            proc, name = containers.popen(image.reference, [*container["command"], *args], env, log,
                                          mounts=mounts, user="1000:1000")
        try:
            wait_for_health(port, proc, log_path, timeout=120)
            who = containers.podman("exec", name, "sh", "-c", "id -u; touch /opt/x 2>&1 || echo read-only").stdout
            assert who.split("\n")[0] == "1000" and "read-only" in who
            base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
            admin = ("admin", password)
            assert _request(f"{base}/experiments/search?max_results=1", TRACKING_HOST) == 401  # anonymous read
            assert _post_status(f"{base}/experiments/create", {"name": "anon"}, None) == 401  # anonymous write
            assert _post_status(f"{base}/experiments/create", {"name": "auth"}, admin) == 200  # authorised write
            assert _request(f"{base}/experiments/get-by-name?experiment_name=auth", TRACKING_HOST, admin) == 200
            assert _request(f"{base}/experiments/get-by-name?experiment_name=anon", TRACKING_HOST, admin) == 404
            assert _request(f"{base}/experiments/search?max_results=1", "mlflow.evil.example:5000", admin) == 403
        finally:
            containers.remove(name)
            proc.wait(timeout=60)


def _post_status(url: str, payload: dict, auth: tuple[str, str] | None) -> int:
    import json
    import urllib.error
    import urllib.request
    from base64 import b64encode

    headers = {"Content-Type": "application/json", "Host": TRACKING_HOST}
    if auth:
        headers["Authorization"] = "Basic " + b64encode(":".join(auth).encode()).decode()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, json.dumps(payload).encode(), headers), timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


# ---------------------------------------------------------------------------------------------
# Clear errors before any work


def _path_without(tmp_path: Path, *tools: str) -> str:
    """A PATH with this Python, git and the usual tools, but none of ``tools``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for folder in ("/usr/local/bin", "/usr/bin", "/bin"):
        for entry in Path(folder).iterdir():
            if entry.name not in tools and not (bin_dir / entry.name).exists():
                (bin_dir / entry.name).symlink_to(entry)
    return str(bin_dir)


def test_container_run_without_podman_says_how_to_install_it(tmp_path):
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{_path_without(tmp_path, 'podman')}"}
    done = subprocess.run([sys.executable, "-m", "distillery.pipelines.cli", "run", "--runner", "container", "--config",
                           str(TINY)], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "podman not installed" in done.stderr and "apt-get install podman buildah" in done.stderr
    assert "Running pipeline" not in done.stdout  # refused before any work


def test_image_build_without_buildah_says_how_to_install_it(tmp_path):
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{_path_without(tmp_path, 'buildah')}"}
    done = subprocess.run([sys.executable, "-m", "distillery.pipelines.cli", "image", "build"], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "buildah not installed" in done.stderr and "apt-get install" in done.stderr


@pytest.mark.container
def test_container_run_with_an_image_not_built_says_make_image(tmp_path):
    containers.require_podman()
    done = run_cli(ROOT, "run", "--runner", "container", "--config", str(TINY),
                   env={"DISTILLERY_IMAGE": f"localhost/distillery-absent:{uuid.uuid4().hex[:8]}"})
    assert done.returncode == 2
    assert "is not built on this machine: run `make image`" in done.stderr
    assert "Running pipeline" not in done.stdout


@pytest.mark.container
def test_container_run_with_a_silent_api_socket_says_so(image, tmp_path):
    repo = make_clone(tmp_path)
    missing = run_cli(repo, "run", "--runner", "container", "--config", str(TINY),
                      env={"DOCKER_HOST": f"unix://{tmp_path}/absent.sock"})
    assert missing.returncode == 2 and f"no socket at {tmp_path}/absent.sock" in missing.stderr
    silent = tmp_path / "silent.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(silent))  # bound, never listening: connections are refused
        done = run_cli(repo, "run", "--runner", "container", "--config", str(TINY),
                       env={"DOCKER_HOST": f"unix://{silent}"})
    assert done.returncode == 2
    assert f"DOCKER_HOST=unix://{silent} is not answering" in done.stderr
    assert "podman system service" in done.stderr
    assert "Pipeline run" not in done.stdout  # no task started


@pytest.mark.container
@pytest.mark.pipeline
def test_overhead_benchmark_measures_both_runners_in_one_run(image, tmp_path):
    """``benchmarks/pipeline_overhead.py`` runs the config with each runner and writes both, with
    the container runner's overhead against the subprocess runner's (the README's numbers)."""
    output = tmp_path / "overhead.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.pipeline_overhead", "--quick", "--rounds", "0",
                           "--floor-runs", "1", "--output", str(output)], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(output.read_text())
    container = result["container"]
    assert container["image_digest"] == image.digest
    names = [t["name"] for t in result["tasks"]]
    assert [t["name"] for t in container["tasks"]] == names == [
        "curate-gx_dedup", "split-stratified", "round-0-train-small_cnn", "distil-hinton_kd", "evaluate-classification"]
    for task in container["tasks"]:
        assert 0 < task["work_s"] < task["wall_s"], task  # a container costs more than the work itself
    summary = container["summary"]
    assert summary["wall_vs_subprocess"] == pytest.approx(
        summary["pipeline_wall_s"] / result["summary"]["pipeline_wall_s"], rel=1e-3)
    assert "| container: wall s |" in done.stdout  # the printed table has the container runner's columns
