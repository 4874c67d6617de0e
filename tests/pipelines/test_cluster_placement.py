"""Where compiled tasks run on a cluster: GPU placement from the config (kfp-kubernetes), Secrets,
the DVC remote and the Kueue queue on every task, and the compile-time GPU-quota check against the
overlay the config says is deployed. No cluster runs here: the compiled spec is checked field by field.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from distillery.pipelines.cli import main
from distillery.pipelines.config import (
    DEFAULT_CONFIG,
    RETRAINING_CONFIG,
    ConfigError,
    load_config,
    validate_config,
)
from distillery.pipelines.submit import compile_spec

TRACKING_URI = "http://mlflow.distillery.svc.cluster.local:5000"


def compiled(config: dict, tmp_path: Path) -> tuple[dict, dict]:
    """(pipeline spec, Kubernetes platform spec) of ``config`` compiled for a cluster."""
    spec, platform = yaml.safe_load_all(compile_spec(config, tmp_path / "spec.yaml", TRACKING_URI).read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def executors_by_task(spec: dict) -> dict[str, str]:
    """Task display name -> executor label, for every task, inside conditions too."""
    found = {}

    def walk(dag: dict) -> None:
        for task in dag.get("tasks", {}).values():
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:
                walk(component["dag"])
            else:
                found[task["taskInfo"]["name"]] = component["executorLabel"]

    walk(spec["root"]["dag"])
    return found


@pytest.mark.parametrize("config_file", [DEFAULT_CONFIG, RETRAINING_CONFIG], ids=["active_learning", "retraining"])
def test_gpu_tasks_carry_accelerator_node_selector_and_tolerations_cpu_tasks_none(config_file, tmp_path):
    config = load_config(config_file)
    gpu = config["cluster"]["gpu"]
    spec, platform = compiled(config, tmp_path)
    executors = executors_by_task(spec)
    gpu_tasks = [t for t in executors if t.split("-")[-2] in ("train", "distil")]
    assert gpu_tasks and len(gpu_tasks) < len(executors)
    for task, executor in executors.items():
        container = spec["deploymentSpec"]["executors"][executor]["container"]
        k8s = platform[executor]
        if task in gpu_tasks:
            accelerator = container["resources"]["accelerator"]
            assert (accelerator["resourceType"] == gpu["accelerator"]
                    and accelerator["resourceCount"] == str(gpu["count"]))
            assert k8s["nodeSelector"]["labels"] == gpu["node_selector"]
            assert k8s["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        else:
            assert "accelerator" not in container.get("resources", {}), task
            assert "nodeSelector" not in k8s and "tolerations" not in k8s, task
        # every task: MLflow and DVC credentials from Secrets, the cluster's DVC remote, the queue
        secrets = {s["secretName"]: {e["secretKey"]: e["envVar"] for e in s["keyToEnv"]} for s in k8s["secretAsEnv"]}
        assert secrets == {"mlflow-client": {"username": "MLFLOW_TRACKING_USERNAME",
                                             "password": "MLFLOW_TRACKING_PASSWORD"},
                           "dvc-s3": {"access-key-id": "AWS_ACCESS_KEY_ID",
                                      "secret-access-key": "AWS_SECRET_ACCESS_KEY"}}
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env == {"DISTILLERY_DVC_REMOTE": "cluster", "DVC_GLOBAL_CONFIG_DIR": "/etc/dvc",
                       # each task's MLflow run records where it ran
                       "DISTILLERY_RUNNER": "kubernetes", "DISTILLERY_IMAGE": container["image"]}
        assert k8s["configMapAsVolume"][0]["configMapName"] == "dvc-config"
        assert k8s["podMetadata"]["labels"] == {"kueue.x-k8s.io/queue-name": "distillery"}


def test_without_a_gpu_section_every_task_stays_on_the_cpu_pool(tmp_path):
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    del raw["cluster"]
    spec, platform = compiled(validate_config(raw), tmp_path)
    for executor in executors_by_task(spec).values():
        assert "accelerator" not in spec["deploymentSpec"]["executors"][executor]["container"].get("resources", {})
        assert "nodeSelector" not in platform[executor]


def test_local_runs_get_no_cluster_settings(tmp_path):
    """kfp.local would apply env vars: a local run must not be pointed at the cluster's DVC remote."""
    from kfp import compiler

    from distillery.pipelines.pipeline import build_pipeline

    compiler.Compiler().compile(build_pipeline(load_config(DEFAULT_CONFIG), "{}"), str(tmp_path / "local.yaml"))
    docs = list(yaml.safe_load_all((tmp_path / "local.yaml").read_text()))
    assert len(docs) == 1, "no Kubernetes platform spec"
    for executor in docs[0]["deploymentSpec"]["executors"].values():
        assert "env" not in executor["container"] and "resources" not in executor["container"]


def overlay(tmp_path: Path, gpu_quota: str, gpu_labels: dict | None = None) -> Path:
    """A copy of k8s/ with an overlay setting the GPU flavor's quota (and node labels)."""
    shutil.copytree(ROOT / "k8s", tmp_path / "k8s")
    folder = tmp_path / "k8s" / "overlays" / "test"
    folder.mkdir()
    patches = [{"op": "replace", "path": "/spec/resourceGroups/0/flavors/1/resources/2/nominalQuota",
                "value": gpu_quota}]
    flavor_patch = [{"op": "replace", "path": "/spec/nodeLabels", "value": gpu_labels}] if gpu_labels else []
    kustomization = {"resources": ["../../base"], "patches": [
        {"target": {"kind": "ClusterQueue", "name": "distillery"}, "patch": yaml.safe_dump(patches)}]}
    if flavor_patch:
        kustomization["patches"].append({"target": {"kind": "ResourceFlavor", "name": "distillery-gpu"},
                                         "patch": yaml.safe_dump(flavor_patch)})
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return folder


def config_on(tmp_path: Path, overlay_dir: Path, **gpu) -> Path:
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["cluster"]["overlay"] = str(overlay_dir)
    raw["cluster"]["gpu"].update(gpu)
    path = tmp_path / "placed.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("quota, gpu, labels, message", [
    ("0", {}, None, "has no flavor with that many nvidia.com/gpu"),
    ("4", {"count": 8}, None, "gpu.count 8 on queue 'distillery'"),
    ("4", {}, {"cloud.google.com/gke-accelerator": "nvidia-l4"}, None),
    ("4", {"node_selector": {"cloud.google.com/gke-accelerator": "nvidia-a100"}},
     {"cloud.google.com/gke-accelerator": "nvidia-l4"}, "contradicts the node labels"),
], ids=["no-gpu-quota", "over-quota", "fits", "selector-clash"])
def test_compile_refuses_gpu_tasks_the_overlay_cannot_admit(tmp_path, capsys, quota, gpu, labels, message):
    cfg = config_on(tmp_path, overlay(tmp_path, quota, labels), **gpu)
    output = tmp_path / "out.yaml"
    code = main(["compile", "--config", str(cfg), "--output", str(output), "--tracking-uri", TRACKING_URI])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0 and output.exists(), err
    else:
        assert code == 2 and message in err and "distillery: error:" in err
        assert not output.exists(), "nothing is written when the check fails"


@pytest.mark.parametrize("name, node_labels", [("generic", {"nvidia.com/gpu.present": "true"}),
                                               ("gke", {"cloud.google.com/gke-accelerator": "nvidia-l4"})])
def test_shipped_overlays_admit_the_shipped_configs(name, node_labels):
    from distillery.pipelines.cluster import ClusterConfigError, check_gpu_quota, render_overlay

    objects = render_overlay(f"k8s/overlays/{name}", ROOT)
    found = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    for config_file in (DEFAULT_CONFIG, RETRAINING_CONFIG):
        cluster = load_config(config_file)["cluster"]
        gpu = cluster["gpu"]
        # a config without GPU tasks passes the check without looking at the overlay at all
        assert gpu["count"] >= 1 and {"training", "distillation"} <= set(gpu["stages"])
        check_gpu_quota(cluster, objects)
        # where its GPU tasks are admitted: the queue's ClusterQueue, on its one flavor with enough
        # GPU quota, whose node labels agree with the config's node selector
        queue = found[("LocalQueue", cluster["queue"])]
        flavors = [f for group in found[("ClusterQueue", queue["spec"]["clusterQueue"])]["spec"]["resourceGroups"]
                   for f in group["flavors"]]
        gpu_quota = {f["name"]: float(next((r["nominalQuota"] for r in f["resources"]
                                            if r["name"] == gpu["accelerator"]), 0)) for f in flavors}
        assert [f for f, quota in gpu_quota.items() if quota >= gpu["count"]] == ["distillery-gpu"], gpu_quota
        labels = found[("ResourceFlavor", "distillery-gpu")]["spec"]["nodeLabels"]
        assert labels == node_labels
        assert all(labels.get(key, value) == value for key, value in gpu["node_selector"].items())
        # the check does refuse these objects once that placement is gone: not enough quota, or a
        # node selector the flavor's nodes cannot meet
        with pytest.raises(ClusterConfigError, match="has no flavor with that many"):
            check_gpu_quota({**cluster, "gpu": {**gpu, "count": int(gpu_quota["distillery-gpu"]) + 1}}, objects)
        clash = {key: f"not-{value}" for key, value in labels.items()}
        with pytest.raises(ClusterConfigError, match="contradicts the node labels"):
            check_gpu_quota({**cluster, "gpu": {**gpu, "node_selector": clash}}, objects)


@pytest.mark.parametrize("cluster, message", [
    ({"gpu": {"stages": ["selection"]}}, "gpu.stages ['selection'] are not stages of this pipeline"),
    ({"gpu": {"count": 0}}, "gpu.count must be an integer >= 1"),
    ({"gpu": {"tolerations": [{"operator": "Exists"}]}}, "gpu.tolerations[0] must be a mapping with 'key'"),
    ({"gpus": 1}, "unknown key(s) ['gpus']"),
    ({"mlflow_secret": ""}, "mlflow_secret must be a non-empty string"),
])
def test_bad_cluster_sections_fail_at_load(cluster, message):
    raw = yaml.safe_load(RETRAINING_CONFIG.read_text())
    raw["cluster"] = cluster
    with pytest.raises(ConfigError) as err:
        validate_config(raw, "c.yaml")
    assert message in str(err.value) and "c.yaml: cluster:" in str(err.value)
