"""Manifests of the cluster's training objects: the templates of ``k8s/training/`` with a run's settings.

Two kinds of object, each built from its template (the files ``kubectl create -k k8s/training``
applies), so the cluster runs exactly what those manifests describe with this run's settings put in:

* a Kubeflow Trainer ``TrainJob`` on the ``torch-distributed`` runtime (``trainjob.yaml``,
  :func:`trainjob_manifest`): DDP under torchrun, ``nodes`` x ``procs_per_node`` ranks (Li et al.,
  "PyTorch Distributed: Experiences on Accelerating Data Parallel Training", VLDB 2020);
* the asynchronous master/worker Indexed ``Job`` (``async-workers.yaml``, :func:`async_job_manifest`):
  ADBO over torch.distributed.rpc, rank 0 the master (Jiao et al., "Asynchronous Distributed Bilevel
  Optimization", ICLR 2023). Its headless Service ``distillery-async`` must exist already (apply it
  from the template once): only the Job is created, which is all the pipeline's Role allows.

Plain dicts, no API access (that is :mod:`distillery.components.training.cluster.kube`).
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

from distillery.components.training.cluster.errors import LaunchError

# The manifests of k8s/training, shipped inside the package (package data of
# distillery.components.training: ``components/training/templates`` links to k8s/training in the
# source tree, and an install copies the files), so a pod finds them too.
TEMPLATES = Path(__file__).parent.parent / "templates"
TRAINJOB_TEMPLATE = TEMPLATES / "trainjob.yaml"
ASYNC_TEMPLATE = TEMPLATES / "async-workers.yaml"

NAMESPACE = "distillery"
QUEUE = "distillery"                        # Kueue LocalQueue (k8s/base/kueue.yaml)
PRIORITY_CLASS = "distillery-adhoc"         # or distillery-scheduled-retraining (k8s/base/priorityclasses.yaml)
SERVICE_ACCOUNT = "distillery-training"     # training pods: no API access, no token (k8s/base/rbac.yaml)
DVC_REMOTE = "cluster"                      # the remote of ConfigMap dvc-config (k8s/base/dvc-config.yaml)
DVC_REMOTE_ENV = "DISTILLERY_DVC_REMOTE"    # read by distillery.components.core.datasets.dvc_filesystem
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
POOL_LABEL = "distillery/pool"
GPU = "nvidia.com/gpu"
# the DDP module's options as env (distillery.components.training.distributed)
ENV_PREFIX = "DISTILLERY_TRAIN_"
# DNS-1123 label; a Job's pods are named <job>-<index>-<5 chars> and get hostname <job>-<index>,
# both at most 63 characters, so names stay well below.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = 52


def load_template(path: Path, kind: str) -> dict:
    """The (first) document of ``kind`` in the YAML file ``path``, as a fresh dict."""
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == kind:
            return copy.deepcopy(doc)
    raise LaunchError(f"{path} holds no {kind}")


def job_name(*parts: Any) -> str:
    """A valid object name from ``parts`` (lower-cased, ``[a-z0-9-]``, at most :data:`MAX_NAME`
    characters; a long name keeps a hash of the whole so two long names stay distinct)."""
    raw = "-".join(str(p) for p in parts if str(p))
    name = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", raw.lower())).strip("-")
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
        name = f"{name[:MAX_NAME - 9].rstrip('-')}-{digest}"
    if not name:
        raise ValueError(f"no usable name in {parts!r}")
    return name


def secret_refs(manifest: dict) -> list[str]:
    """Names of the Secrets ``manifest`` references (env ``secretKeyRef``, ``envFrom``, volumes)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("secretKeyRef", "secretRef"):
                if isinstance(node.get(key), dict) and node[key].get("name"):
                    found.add(node[key]["name"])
            if isinstance(node.get("secret"), dict) and node["secret"].get("secretName"):
                found.add(node["secret"]["secretName"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(manifest)
    return sorted(found)


def required_secrets() -> list[str]:
    """Every Secret the training templates reference: what a cluster needs before a run."""
    docs = [load_template(TRAINJOB_TEMPLATE, "TrainJob"), load_template(ASYNC_TEMPLATE, "Job")]
    return sorted({name for doc in docs for name in secret_refs(doc)})


def trainjob_manifest(name: str, *, namespace: str = NAMESPACE, image: str | None = None,
                      command: list[str] | None = None, args: list[str] | None = None,
                      env: dict[str, str | None] | None = None, nodes: int = 2, gpus_per_node: int = 1,
                      procs_per_node: int | None = None, cpu: str = "4", memory: str = "16Gi",
                      queue: str | None = QUEUE, priority_class: str | None = PRIORITY_CLASS,
                      service_account: str = SERVICE_ACCOUNT, dvc_remote: str = DVC_REMOTE,
                      labels: dict[str, str] | None = None) -> dict:
    """The TrainJob of ``k8s/training/trainjob.yaml`` with this run's settings.

    Args:
        name, namespace: the object's.
        image: default: the template's GPU image with GPUs, the project image
            (:data:`distillery.components.core.images.IMAGE`) without.
        command, args: the trainer container's (default: the template's, ``torchrun`` /
            ``-m distillery.components.training.distributed``).
        env: env overrides by name: a string sets the variable (replacing a ``valueFrom``), ``None``
            removes it; the template's Secret references stay unless overridden.
        nodes: ``numNodes``; gpus_per_node: ``nvidia.com/gpu`` requested and limited per node, only
            when > 0 (0: the CPU pool: no GPU resource, no GPU toleration, ``distillery/pool=cpu``).
        procs_per_node: torchrun processes per node (default: one per GPU, 1 without GPUs).
        cpu, memory: requests = limits per node.
        queue: Kueue LocalQueue label (``None``: run unqueued); priority_class: Kueue
            WorkloadPriorityClass label (a TrainJob has no priorityClassName).
        service_account: the pods' (``podSpecOverrides``); dvc_remote: ``DISTILLERY_DVC_REMOTE``.
        labels: more labels on the object.
    """
    procs = procs_per_node if procs_per_node is not None else max(1, gpus_per_node)
    _check_count("nodes", nodes, 1)
    _check_count("gpus_per_node", gpus_per_node, 0)
    _check_count("procs_per_node", procs, 1)
    doc = load_template(TRAINJOB_TEMPLATE, "TrainJob")
    _set_meta(doc, name, namespace, labels, queue, gpus_per_node > 0)
    _set_label(doc["metadata"], PRIORITY_LABEL, priority_class)
    trainer = doc["spec"]["trainer"]
    trainer["image"] = image or (trainer["image"] if gpus_per_node else _project_image())
    if command is not None:
        trainer["command"] = list(command)
    if args is not None:
        trainer["args"] = list(args)
    trainer["numNodes"] = nodes
    trainer["numProcPerNode"] = procs
    trainer["resourcesPerNode"] = _resources(cpu, memory, gpus_per_node)
    trainer["env"] = _with_env(trainer.get("env", []), {DVC_REMOTE_ENV: dvc_remote, **(env or {})})
    for override in doc["spec"].get("podSpecOverrides", []):
        override["serviceAccountName"] = service_account
        if not gpus_per_node:
            _drop_gpu_tolerations(override)
    return doc


def async_job_manifest(name: str, *, namespace: str = NAMESPACE, image: str | None = None,
                       command: list[str] | None = None, config: dict | None = None,
                       output_dir: str | None = None, world_size: int = 4, env: dict[str, str | None] | None = None,
                       cpu: str = "2", memory: str = "4Gi", queue: str | None = QUEUE,
                       priority_class: str | None = PRIORITY_CLASS, service_account: str = SERVICE_ACCOUNT,
                       dvc_remote: str = DVC_REMOTE, labels: dict[str, str] | None = None) -> dict:
    """The Indexed Job of ``k8s/training/async-workers.yaml`` with this run's settings.

    Args:
        world_size: pods = ``completions`` = ``parallelism`` = ``WORLD_SIZE`` (master + workers, >= 2).
        config: the :class:`~distillery.components.training.adbo.config.ADBOConfig` fields (``--config-json``;
            default: the template's); output_dir: ``--output-dir`` (default: the template's).
        command: the container's (default: ``python -m distillery.components.training.adbo``); its args stay
            ``--config-json <config> --output-dir <dir>``.
        priority_class: the pods' ``priorityClassName`` (Kueue uses the pod priority of Jobs).
        Others: as :func:`trainjob_manifest` (CPU only: the template asks for no GPU).
    """
    _check_count("world_size", world_size, 2)
    doc = load_template(ASYNC_TEMPLATE, "Job")
    _set_meta(doc, name, namespace, labels, queue, None)
    spec = doc["spec"]
    spec["completions"] = spec["parallelism"] = world_size
    # The template tolerates one lost worker; never more than there are workers beyond the first.
    spec["maxFailedIndexes"] = min(spec.get("maxFailedIndexes", 0), world_size - 2)
    pod = spec["template"]["spec"]
    pod["serviceAccountName"] = service_account
    if priority_class is None:
        pod.pop("priorityClassName", None)
    else:
        pod["priorityClassName"] = priority_class
    container = pod["containers"][0]
    container["image"] = image or _project_image()
    if command is not None:
        container["command"] = list(command)
    args = container["args"]  # [--config-json, JSON, --output-dir, DIR]
    if config is not None:
        args[args.index("--config-json") + 1] = json.dumps(config, sort_keys=True)
    if output_dir is not None:
        args[args.index("--output-dir") + 1] = output_dir
    container["resources"] = _resources(cpu, memory, 0)
    container["env"] = _with_env(container.get("env", []), {"WORLD_SIZE": str(world_size),
                                                              DVC_REMOTE_ENV: dvc_remote, **(env or {})})
    return doc


def _project_image() -> str:
    from distillery.components.core.images import IMAGE

    return IMAGE


def _check_count(what: str, value: Any, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{what} must be an integer >= {least}, got {value!r}")


def _set_meta(doc: dict, name: str, namespace: str, labels: dict | None, queue: str | None,
              gpu: bool | None) -> None:
    if not isinstance(name, str) or len(name) > MAX_NAME or not _NAME.match(name):
        raise ValueError(f"name {name!r} must be a DNS-1123 label of at most {MAX_NAME} characters "
                         "(lower-case letters, digits, '-'; see job_name())")
    meta = doc["metadata"]
    meta["name"], meta["namespace"] = name, namespace
    meta["labels"] = {**meta.get("labels", {}), **(labels or {})}
    _set_label(meta, QUEUE_LABEL, queue)
    if gpu is not None:
        meta["labels"][POOL_LABEL] = "gpu" if gpu else "cpu"


def _set_label(meta: dict, key: str, value: str | None) -> None:
    labels = meta.setdefault("labels", {})
    if value is None:
        labels.pop(key, None)
    else:
        labels[key] = value


def _resources(cpu: str, memory: str, gpus: int) -> dict:
    amounts = {"cpu": str(cpu), "memory": str(memory), **({GPU: str(gpus)} if gpus else {})}
    return {"requests": dict(amounts), "limits": dict(amounts)}  # requests = limits: Guaranteed QoS


def _with_env(env: list[dict], overrides: dict[str, str | None]) -> list[dict]:
    """``env`` with ``overrides`` applied by name, in the template's order, new ones appended."""
    out, seen = [], set()
    for entry in env:
        name = entry["name"]
        seen.add(name)
        if name not in overrides:
            out.append(entry)
        elif overrides[name] is not None:
            out.append({"name": name, "value": str(overrides[name])})
    out += [{"name": k, "value": str(v)} for k, v in overrides.items() if k not in seen and v is not None]
    return out


def _drop_gpu_tolerations(override: dict) -> None:
    tolerations = [t for t in override.get("tolerations", []) if t.get("key") != GPU]
    if tolerations:
        override["tolerations"] = tolerations
    else:
        override.pop("tolerations", None)

