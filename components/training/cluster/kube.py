"""The Kubernetes client of cluster training: create a training object, follow it, fail clearly.

What :func:`launch` does, in order:

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

In a pod the API is reached with the pod's service account (``distillery-pipeline``:
create/get/watch/delete TrainJobs and Jobs), elsewhere with the kubeconfig (:func:`connect`). The
objects are the manifests of :mod:`distillery.components.training.cluster.manifests` (TrainJob: Kubeflow
Trainer, after Li et al., "PyTorch Distributed", VLDB 2020; Job: the ADBO workers of Jiao et al.,
"Asynchronous Distributed Bilevel Optimization", ICLR 2023).
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from distillery.components.training.cluster.errors import (
    JobFailedError,
    JobTimeoutError,
    LaunchError,
    MissingSecretsError,
)
from distillery.components.training.cluster.manifests import secret_refs


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
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise LaunchError(f"no Kubernetes API to talk to: not in a cluster, and the kubeconfig "
                          f"({where}) gave none: {exc}") from exc
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
                          f"for inspection: {inspect}; delete it with "
                          f"kubectl -n {namespace} delete {kind.plural}/{name}")


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


