"""Distributed training on Kubernetes: create the training object, follow it, fail clearly.

Two kinds of object, each built from its template in ``k8s/training/`` (the files
``kubectl create -k k8s/training`` applies), so the cluster runs exactly what those manifests
describe with this run's settings put in:

* a Kubeflow Trainer ``TrainJob`` on the ``torch-distributed`` runtime (``trainjob.yaml``): DDP
  under torchrun, ``nodes`` x ``procs_per_node`` ranks (Li et al., PyTorch Distributed, VLDB 2020);
* the asynchronous master/worker Indexed ``Job`` (``async-workers.yaml``): ADBO over
  torch.distributed.rpc, rank 0 the master (Jiao et al., Asynchronous Distributed Bilevel
  Optimization, ICLR 2023). Its headless Service ``distillery-async`` must exist already (apply it
  from the template once): the launcher creates the Job only, which is all its Role allows.

What the launcher does, in order (:func:`launch`):

1. :func:`check_secrets`: every Secret the object's env references (``mlflow-client``, ``dvc-s3``)
   exists in the namespace, else :class:`MissingSecretsError` naming each missing one, before
   anything is created;
2. creates the object through the Kubernetes API (official ``kubernetes`` client);
3. polls it every ``poll_s`` seconds and emits a progress line whenever its conditions or pod
   counts change;
4. returns the final object once it is ``Complete``; raises :class:`JobFailedError` (naming the
   object and the ``Failed`` condition's reason and message) when it fails, and
   :class:`JobTimeoutError` after ``timeout_s``.

On failure and on timeout the object is **left in place** by default: its pods' logs and events are
the only record of what went wrong, and a timed-out job may only be queued (Kueue) rather than
stuck. The error says so and gives the ``kubectl`` commands to inspect and delete it;
``on_timeout="delete"`` deletes a timed-out object instead (pods in the background). Finished Jobs
go away by themselves after the template's ``ttlSecondsAfterFinished``.

Pipeline methods (``ddp_trainjob``, ``adbo_job``: :func:`ddp_trainjob`, :func:`adbo_job`) ship
their training data to the pods through the task's own MLflow run (artifact ``cluster-input/``)
and get the result back the same way (``cluster-output/``): the pods' command is
``python -m components.training.launcher stage ... -- <the template's command>``, which fetches the
inputs, runs the command, logs its metrics records to the run and uploads the outputs from rank 0.
Pods thus need only the MLflow server and the ``mlflow-client`` Secret, no shared volume.

Plain Python (no kfp). In a pod the API is reached with the pod's service account
(``distillery-pipeline``: create/get/watch/delete TrainJobs and Jobs), elsewhere with the
kubeconfig (:func:`connect`).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from components import devices
# The manifests of k8s/training, shipped inside the package (package data: ``templates`` links to
# k8s/training in the source tree, and an install copies the files), so a pod finds them too.
TEMPLATES = Path(__file__).parent / "templates"
TRAINJOB_TEMPLATE = TEMPLATES / "trainjob.yaml"
ASYNC_TEMPLATE = TEMPLATES / "async-workers.yaml"

NAMESPACE = "distillery"
QUEUE = "distillery"                        # Kueue LocalQueue (k8s/base/kueue.yaml)
PRIORITY_CLASS = "distillery-adhoc"         # or distillery-scheduled-retraining (k8s/base/priorityclasses.yaml)
SERVICE_ACCOUNT = "distillery-training"     # training pods: no API access, no token (k8s/base/rbac.yaml)
DVC_REMOTE = "cluster"                      # the remote of ConfigMap dvc-config (k8s/base/dvc-config.yaml)
DVC_REMOTE_ENV = "DISTILLERY_DVC_REMOTE"    # read by components.datasets.dvc_filesystem
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
POOL_LABEL = "distillery/pool"
GPU = "nvidia.com/gpu"
ENV_PREFIX = "DISTILLERY_TRAIN_"            # the DDP module's options as env (components.training.distributed)
INPUT_DIR, OUTPUT_DIR = "cluster-input", "cluster-output"  # artifact folders of the staging run
# DNS-1123 label; a Job's pods are named <job>-<index>-<5 chars> and get hostname <job>-<index>,
# both at most 63 characters, so names stay well below.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = 52


class LaunchError(RuntimeError):
    """The training object could not be created, failed, or did not finish in time."""


class MissingSecretsError(LaunchError):
    """Secrets the training pods read are missing from the namespace."""


class JobFailedError(LaunchError):
    """The training object reached its ``Failed`` condition."""


class JobTimeoutError(LaunchError):
    """The training object did not finish within the timeout (it is left in place by default)."""


@dataclass(frozen=True)
class Kind:
    """An API resource the launcher creates and follows."""

    kind: str
    group: str
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


TRAINJOB = Kind("TrainJob", "trainer.kubeflow.org", "v1alpha1", "trainjobs")
JOB = Kind("Job", "batch", "v1", "jobs")
KINDS = {(k.api_version, k.kind): k for k in (TRAINJOB, JOB)}


# ----------------------------------------------------------------------------------------------
# Manifests from the templates

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
            (:data:`components.images.IMAGE`) without.
        command, args: the trainer container's (default: the template's, ``torchrun`` /
            ``-m components.training.distributed``).
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
        config: the :class:`~components.training.adbo.config.ADBOConfig` fields (``--config-json``;
            default: the template's); output_dir: ``--output-dir`` (default: the template's).
        command: the container's (default: ``python -m components.training.adbo``); its args stay
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
    from components.images import IMAGE

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


# ----------------------------------------------------------------------------------------------
# The API

def connect(context: str | None = None, kubeconfig: str | None = None):
    """A ``kubernetes.client.ApiClient``: the pod's service account inside a cluster (unless a
    kubeconfig or context is named), else the kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if context is None and kubeconfig is None:
        try:
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        except config.ConfigException:
            pass
    # $KUBECONFIG read now: the client reads it once, when first imported
    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG") or None
    try:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration,
                                persist_config=False)
    except (config.ConfigException, OSError) as exc:
        raise LaunchError(f"no Kubernetes API to talk to: not in a cluster, and the kubeconfig "
                          f"({kubeconfig or os.environ.get('KUBECONFIG') or '~/.kube/config'}) gave none: {exc}") from exc
    return client.ApiClient(configuration)


def kube_context_available() -> bool:
    """Whether :func:`connect` would find an API (in-cluster env, or a kubeconfig file)."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return True
    paths = os.environ.get("KUBECONFIG") or "~/.kube/config"
    return any(Path(p).expanduser().is_file() for p in paths.split(os.pathsep) if p)


def check_secrets(api, namespace: str, names: Iterable[str], *, forbidden_ok: bool = False) -> list[str]:
    """Raise :class:`MissingSecretsError` naming every Secret of ``names`` missing from ``namespace``.

    A Secret this identity may not read (HTTP 403) is an error too, unless ``forbidden_ok``: then
    the names that could not be checked are returned (the pipeline's service account may only read
    the Secrets its Role names). Nothing is created or changed; Secret values are not kept.
    """
    import urllib3
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(api)
    missing, forbidden = [], []
    for name in sorted(set(names)):
        try:
            core.read_namespaced_secret(name, namespace, _preload_content=False).release_conn()
        except urllib3.exceptions.HTTPError as exc:
            raise LaunchError(f"cannot reach the Kubernetes API at {api.configuration.host}: {exc}") from exc
        except ApiException as exc:
            if exc.status == 404:
                missing.append(name)
            elif exc.status == 403:
                forbidden.append(name)
            else:
                raise LaunchError(f"cannot check Secret {name!r} in namespace {namespace!r}: "
                                  f"HTTP {exc.status} {exc.reason}") from exc
    if missing:
        raise MissingSecretsError(
            f"Secret(s) {', '.join(missing)} missing in namespace {namespace!r}; create them first "
            f"(k8s/README.md, step 2: kubectl -n {namespace} create secret generic ...)")
    if forbidden and not forbidden_ok:
        raise MissingSecretsError(
            f"not allowed to read Secret(s) {', '.join(forbidden)} in namespace {namespace!r} (HTTP 403): "
            "cannot check they exist; use an identity that may `get` them, or skip the check")
    return forbidden


def _objects(api):
    # CustomObjectsApi speaks plain JSON dicts to any API group, built-in batch/v1 included: one
    # code path (create/get/delete) and one object shape for both kinds.
    from kubernetes import client

    return client.CustomObjectsApi(api)


def create(api, manifest: dict) -> dict:
    """Create ``manifest`` (a TrainJob or a Job); a clear error when it exists already."""
    from kubernetes.client.rest import ApiException

    kind = _kind(manifest)
    meta = manifest["metadata"]
    try:
        return _objects(api).create_namespaced_custom_object(kind.group, kind.version, meta["namespace"],
                                                             kind.plural, manifest)
    except ApiException as exc:
        what = f"{kind.kind} {meta['namespace']}/{meta['name']}"
        if exc.status == 409:
            raise LaunchError(f"{what} exists already: delete it or pick another name") from exc
        raise LaunchError(f"cannot create {what}: HTTP {exc.status} {exc.reason}: {_api_message(exc)}") from exc


def get(api, kind: Kind, namespace: str, name: str) -> dict:
    return _objects(api).get_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name)


def delete(api, kind: Kind, namespace: str, name: str) -> None:
    """Delete the object; its pods go in the background (they are its dependents)."""
    _objects(api).delete_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name,
                                                  propagation_policy="Background")


def _kind(manifest: dict) -> Kind:
    key = (manifest.get("apiVersion"), manifest.get("kind"))
    if key not in KINDS:
        raise ValueError(f"the launcher creates {sorted(k for _, k in KINDS)}, not {key[0]} {key[1]}")
    return KINDS[key]


def _api_message(exc) -> str:
    try:
        return json.loads(exc.body).get("message", "")
    except (TypeError, ValueError, AttributeError):
        return str(exc.body or "")[:500]


# ----------------------------------------------------------------------------------------------
# Following an object to the end

def condition(obj: dict, type_: str) -> dict | None:
    """The condition of ``type_`` whose status is ``"True"``, if any."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return cond
    return None


def describe(kind: Kind, obj: dict) -> str:
    """One progress line: the true conditions and the pod counts of ``obj``."""
    status = obj.get("status") or {}
    conditions = [f"{c['type']}" + (f" ({c['reason']})" if c.get("reason") else "")
                  for c in status.get("conditions") or [] if c.get("status") == "True"]
    counts = ("active", "ready", "succeeded", "failed")
    if kind is TRAINJOB:  # one entry per replicated job of the runtime (`node` for torch-distributed)
        pods = ["{}: {}".format(j.get("name", "?"), " ".join(f"{c} {j.get(c) or 0}" for c in counts))
                for j in status.get("jobsStatus") or []]
    else:
        pods = [" ".join(f"{c} {status.get(c) or 0}" for c in counts)]
        if status.get("failedIndexes"):
            pods.append(f"failed indexes {status['failedIndexes']}")
    meta = obj["metadata"]
    return (f"{kind.kind} {meta['namespace']}/{meta['name']}: "
            f"{', '.join(conditions) or 'no condition yet'}; pods {'; '.join(pods) or 'none yet'}")


def follow(api, kind: Kind, namespace: str, name: str, *, timeout_s: float, poll_s: float = 10.0,
           on_line: Callable[[str], None] | None = print, on_timeout: str = "leave") -> dict:
    """Poll the object until it is ``Complete`` (returned) or ``Failed`` (:class:`JobFailedError`),
    at most ``timeout_s`` seconds (:class:`JobTimeoutError`; the object is left in place, or deleted
    with ``on_timeout="delete"``). Every change of :func:`describe`'s line goes to ``on_line``."""
    if on_timeout not in ("leave", "delete"):
        raise ValueError(f"on_timeout must be 'leave' or 'delete', got {on_timeout!r}")
    where = f"{kind.kind} {namespace}/{name}"
    inspect = (f"kubectl -n {namespace} describe {kind.plural}/{name}; kubectl -n {namespace} get pods "
               f"-l {'jobset.sigs.k8s.io/jobset-name' if kind is TRAINJOB else 'batch.kubernetes.io/job-name'}={name}")
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        obj = get(api, kind, namespace, name)
        line = describe(kind, obj)
        if line != last and on_line:
            on_line(line)
        last = line
        if condition(obj, "Complete"):
            return obj
        failed = condition(obj, "Failed")
        if failed:
            raise JobFailedError(f"{where} failed: {failed.get('reason') or 'no reason given'}: "
                                 f"{failed.get('message') or 'no message'}. Left in place for inspection: {inspect}")
        if time.monotonic() >= deadline:
            break
        time.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))
    if on_timeout == "delete":
        delete(api, kind, namespace, name)
        raise JobTimeoutError(f"{where} did not finish within {timeout_s:g} s (last state: {last}); deleted it")
    raise JobTimeoutError(f"{where} did not finish within {timeout_s:g} s (last state: {last}); left in place "
                          f"for inspection: {inspect}; delete it with kubectl -n {namespace} delete {kind.plural}/{name}")


def launch(api, manifest: dict, *, timeout_s: float, poll_s: float = 10.0,
           on_line: Callable[[str], None] | None = print, on_timeout: str = "leave",
           check: bool = True, on_state: Callable[[str], None] | None = None) -> dict:
    """Check the Secrets ``manifest`` references, create it, and :func:`follow` it to the end.

    Returns the final object (``Complete``). A Secret this identity may not read is reported on
    ``on_line`` and not treated as missing (the pipeline's Role names only the Secrets it reads).
    ``on_state`` hears ``"Created"``, then ``"Complete"``, ``"Failed"`` or ``"TimedOut"``.
    """
    kind = _kind(manifest)
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    state = on_state or (lambda _: None)
    if check:
        unchecked = check_secrets(api, namespace, secret_refs(manifest), forbidden_ok=True)
        if unchecked and on_line:
            on_line(f"cannot check Secret(s) {', '.join(unchecked)} (not readable by this service account); "
                    "if one is missing the pods will not start")
    create(api, manifest)
    state("Created")
    if on_line:
        on_line(f"created {kind.kind} {namespace}/{name}")
    try:
        final = follow(api, kind, namespace, name, timeout_s=timeout_s, poll_s=poll_s, on_line=on_line,
                       on_timeout=on_timeout)
    except JobFailedError:
        state("Failed")
        raise
    except JobTimeoutError:
        state("TimedOut")
        raise
    state("Complete")
    return final


# ----------------------------------------------------------------------------------------------
# Pod side: fetch the inputs from the task's MLflow run, run the command, send the results back

def is_rank0() -> bool:
    """Whether this pod holds global rank 0: node 0 of a TrainJob (``PET_NODE_RANK``), index 0 of
    the async Job (``RANK``); a lone process counts as rank 0."""
    for var in ("PET_NODE_RANK", "RANK", "JOB_COMPLETION_INDEX"):
        if os.environ.get(var, "").strip():
            return int(os.environ[var]) == 0
    return True


def stage(run_id: str, workdir: Path, command: list[str], fetch: Iterable[str] = (), upload: Iterable[str] = (),
          metrics: bool = False, tracking_uri: str | None = None) -> int:
    """Download the artifacts ``fetch`` of MLflow run ``run_id`` into ``workdir`` (same relative
    paths), run ``command`` (its output passes through), and once it succeeds upload the files
    ``upload`` (relative to ``workdir``) to the run's ``cluster-output/`` from rank 0 only.
    With ``metrics``, rank 0 logs every epoch record the command prints (``DISTILLERY_METRICS``
    lines of :mod:`components.training.distributed`) to the run. Returns the exit code."""
    import mlflow

    from components.training.distributed import METRICS_PREFIX, epoch_metrics

    client = mlflow.MlflowClient(tracking_uri)
    workdir.mkdir(parents=True, exist_ok=True)
    for path in fetch:
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp,
                                                        tracking_uri=tracking_uri)
            target = workdir / path
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(local, target)  # MLflow names a single file by its base name only
    rank0 = is_rank0()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert process.stdout is not None
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        at = line.find(METRICS_PREFIX)
        if metrics and rank0 and at >= 0:
            record = json.loads(line[at + len(METRICS_PREFIX):])
            if record.get("event") == "epoch":
                timestamp = int(time.time() * 1000)
                client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, float(v), timestamp, record["epoch"])
                                                  for k, v in epoch_metrics(record).items()])
    code = process.wait()
    if code != 0 or not rank0:
        return code
    for name in upload:
        path = workdir / name
        if not path.is_file():
            print(f"ERROR: {command[0]} succeeded but wrote no {path}", file=sys.stderr, flush=True)
            return 1
        client.log_artifact(run_id, str(path), OUTPUT_DIR)
    return 0


def stage_command(run_id: str, workdir: str, fetch: Iterable[str], upload: Iterable[str], metrics: bool = False) -> list[str]:
    """The command line of :func:`stage` before the wrapped command (which follows ``--``)."""
    command = [*_python_m(), "stage", "--run-id", run_id, "--dir", workdir]
    for path in fetch:
        command += ["--fetch", path]
    for name in upload:
        command += ["--upload", name]
    return [*command, *(["--metrics"] if metrics else []), "--"]


def _python_m() -> list[str]:
    return ["python", "-m", "components.training.launcher"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.training.launcher", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("stage", help="(in a training pod) fetch inputs from an MLflow run, run a command, upload outputs")
    p.add_argument("--run-id", required=True, help="MLflow run holding the inputs and receiving the outputs")
    p.add_argument("--dir", required=True, type=Path, help="local folder for inputs and outputs")
    p.add_argument("--fetch", action="append", default=[], help="artifact path of the run to download (repeatable)")
    p.add_argument("--upload", action="append", default=[],
                   help=f"file under --dir that rank 0 uploads to {OUTPUT_DIR}/ after success (repeatable)")
    p.add_argument("--metrics", action="store_true", help="log the command's epoch metrics records to the run")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    return stage(args.run_id, args.dir, command, args.fetch, args.upload, args.metrics,
                 os.environ.get("MLFLOW_TRACKING_URI"))


# ----------------------------------------------------------------------------------------------
# Training methods (same call as components.training.train.train_classifier)

def ddp_trainjob(features, labels, meta: dict, arch: str, arch_kwargs: dict, epochs: int, lr: float,
                 batch_size: int, seed: int, on_epoch: Callable[[int, float], None] | None = None, *,
                 run_id: str, tracking_uri: str, name: str, namespace: str = NAMESPACE, nodes: int = 2,
                 gpus_per_node: int = 1, procs_per_node: int | None = None, cpu: str = "4", memory: str = "16Gi",
                 image: str | None = None, queue: str | None = QUEUE, priority_class: str | None = PRIORITY_CLASS,
                 service_account: str = SERVICE_ACCOUNT, dvc_remote: str = DVC_REMOTE, checkpoint_every: int = 5,
                 timeout_s: float = 7200.0, poll_s: float = 15.0, on_timeout: str = "leave",
                 job_labels: dict[str, str] | None = None, pod_dir: str = "/tmp/distillery", api=None,
                 on_line: Callable[[str], None] | None = print,
                 on_job: Callable[[dict, str], None] | None = None):
    """Train ``arch`` with DDP in a Kubeflow Trainer TrainJob; same result as
    :func:`components.training.distributed.train_data_parallel`, on ``nodes`` x ``procs_per_node``
    ranks of the cluster instead of local processes.

    ``(features (N, D), labels (N,), meta)`` go to the pods as ``cluster-input/train.npz`` of the
    MLflow run ``run_id`` (the task's), the model comes back as its ``cluster-output/model.pt``;
    per-epoch metrics (``train_loss``, per rank) are logged to that run by the pods (``on_epoch``
    is not called: the epochs run elsewhere). ``name``: the TrainJob's. ``on_job(manifest, state)``
    hears ``"Created"``, then ``"Complete"``, ``"Failed"`` or ``"TimedOut"``. Other keywords: as
    :func:`trainjob_manifest` and :func:`launch`.
    """
    import numpy as np

    from components.training import models
    from components.training.distributed import _check_batch

    if len(features) != len(labels):
        raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
    procs = procs_per_node if procs_per_node is not None else max(1, gpus_per_node)
    _check_count("nodes", nodes, 1)
    _check_count("procs_per_node", procs, 1)
    _check_batch(batch_size, nodes * procs)
    data = f"{INPUT_DIR}/train.npz"
    manifest = trainjob_manifest(
        name, namespace=namespace, image=image, nodes=nodes, gpus_per_node=gpus_per_node, procs_per_node=procs,
        cpu=cpu, memory=memory, queue=queue, priority_class=priority_class, service_account=service_account,
        dvc_remote=dvc_remote, labels=job_labels,
        command=[*stage_command(run_id, pod_dir, [data], ["model.pt"], metrics=True), "torchrun"],
        args=["-m", "components.training.distributed", "--data", f"{pod_dir}/{data}", "--out", f"{pod_dir}/model.pt",
              "--arch", arch, "--arch-kwargs", json.dumps(arch_kwargs, sort_keys=True), "--epochs", str(epochs),
              "--lr", repr(float(lr)), "--batch-size", str(batch_size), "--seed", str(seed),
              "--checkpoint-dir", f"{pod_dir}/checkpoints", "--checkpoint-every", str(checkpoint_every),
              # the pods' own GPUs decide (CUDA when gpus_per_node > 0); the stage's precision applies
              "--device", "cuda" if gpus_per_node > 0 else "cpu", "--precision", devices.current().precision],
        # The command line says everything; the template's DISTILLERY_TRAIN_* (a DVC dataset, its own
        # MLflow experiment) would contradict it (--dataset and --data exclude each other).
        env={**{e["name"]: None for e in load_template(TRAINJOB_TEMPLATE, "TrainJob")["spec"]["trainer"]["env"]
                if e["name"].startswith(ENV_PREFIX)}, "MLFLOW_TRACKING_URI": tracking_uri})
    api = api or connect()
    with tempfile.TemporaryDirectory(prefix="distillery-trainjob-") as tmp:
        path = Path(tmp) / "train.npz"
        np.savez(path, features=np.asarray(features, dtype=np.float32), labels=np.asarray(labels, dtype=np.int64),
                 meta=np.array(json.dumps(meta, sort_keys=True)))
        model = staged_launch(api, manifest, run_id, tracking_uri, path, "model.pt", Path(tmp), timeout_s=timeout_s,
                              poll_s=poll_s, on_line=on_line, on_timeout=on_timeout, on_job=on_job)
        return models.load(model)


def staged_launch(api, manifest: dict, run_id: str, tracking_uri: str, upload: Path, output: str, dst: Path, *,
                  timeout_s: float, poll_s: float, on_line: Callable[[str], None] | None, on_timeout: str,
                  on_job: Callable[[dict, str], None] | None) -> Path:
    """Log ``upload`` to run ``run_id``'s ``cluster-input/``, :func:`launch` ``manifest`` (whose pods
    run :func:`stage`) to completion, and return the pods' ``output`` (from ``cluster-output/``),
    downloaded into ``dst``."""
    import mlflow

    mlflow.MlflowClient(tracking_uri).log_artifact(run_id, str(upload), INPUT_DIR)
    launch(api, manifest, timeout_s=timeout_s, poll_s=poll_s, on_line=on_line, on_timeout=on_timeout,
           on_state=(lambda state: on_job(manifest, state)) if on_job else None)
    dst.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{OUTPUT_DIR}/{output}",
                                                    dst_path=str(dst), tracking_uri=tracking_uri))


def adbo_job(features, labels, meta: dict, arch: str, arch_kwargs: dict, epochs: int, lr: float, batch_size: int,
             seed: int, on_epoch: Callable[[int, float], None] | None = None, *, run_id: str, tracking_uri: str,
             name: str, namespace: str = NAMESPACE, workers: int = 3, s: int = 2, tau: int = 4, iterations: int = 300,
             min_workers: int | None = None, val_fraction: float = 0.1, hyper: dict | None = None,
             problem_kwargs: dict | None = None, rpc_timeout: float = 120.0, cpu: str = "2", memory: str = "4Gi",
             image: str | None = None, queue: str | None = QUEUE, priority_class: str | None = PRIORITY_CLASS,
             service_account: str = SERVICE_ACCOUNT, dvc_remote: str = DVC_REMOTE, timeout_s: float = 7200.0,
             poll_s: float = 15.0, on_timeout: str = "leave", job_labels: dict[str, str] | None = None,
             pod_dir: str = "/tmp/adbo", api=None, on_line: Callable[[str], None] | None = print,
             on_job: Callable[[dict, str], None] | None = None):
    """:func:`components.training.adbo.hyperclean.adbo_hyperclean` with the ADBO run (master +
    ``workers``) in the cluster as the asynchronous Indexed Job of ``k8s/training/async-workers.yaml``
    (``workers + 1`` pods, stable names through Service ``distillery-async``, which must exist).

    The hold-out split goes to the pods as ``cluster-input/split.npz`` of MLflow run ``run_id`` (the
    task's), the master's ``final.pt`` (the learnt sample weights) comes back as
    ``cluster-output/final.pt``; the master logs its own run nested under ``run_id``. The final
    model is then trained here, in the task, on the weighted samples. ``min_workers``: the workers
    the run may go on with (default: all but one, as the Job tolerates one lost index).
    Other keywords: as :func:`ddp_trainjob` and :func:`async_job_manifest`.
    """
    from components.training.adbo.hyperclean import adbo_hyperclean

    _check_count("workers", workers, 1)
    api = api or connect()
    split_artifact = f"{INPUT_DIR}/split.npz"

    def in_the_cluster(config, split: Path, output_dir: Path) -> Path:
        problem = {**config.problem_kwargs, "data": f"{pod_dir}/{split_artifact}"}
        pod_config = {**json.loads(config.to_json()), "problem_kwargs": problem, "tracking_uri": tracking_uri}
        manifest = async_job_manifest(
            name, namespace=namespace, image=image, world_size=workers + 1, cpu=cpu, memory=memory, queue=queue,
            priority_class=priority_class, service_account=service_account, dvc_remote=dvc_remote,
            labels=job_labels, config=pod_config, output_dir=f"{pod_dir}/run",
            command=[*stage_command(run_id, pod_dir, [split_artifact], ["run/final.pt"]),
                     "python", "-m", "components.training.adbo"],
            env={"MLFLOW_TRACKING_URI": tracking_uri})
        return staged_launch(api, manifest, run_id, tracking_uri, split, "final.pt", output_dir, timeout_s=timeout_s,
                             poll_s=poll_s, on_line=on_line, on_timeout=on_timeout, on_job=on_job)

    return adbo_hyperclean(features, labels, meta, arch, arch_kwargs, epochs, lr, batch_size, seed, on_epoch,
                           workers=workers, s=s, tau=tau, iterations=iterations, val_fraction=val_fraction,
                           hyper=hyper, rpc_timeout=rpc_timeout, problem_kwargs=problem_kwargs, runner=in_the_cluster,
                           min_workers=min_workers if min_workers is not None else max(1, workers - 1))


if __name__ == "__main__":
    sys.exit(main())
