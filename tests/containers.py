"""Test helpers for the project image: find it (skip or fail), check it holds this checkout's code,
and start commands in it with podman as a pod would run them.

Tests that need the image skip when podman or the image is missing (a laptop without podman), and
fail instead under ``DISTILLERY_REQUIRE_CONTAINER=1`` (set by ``.ci/run``, which installs podman and
buildah and builds the image first).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What a pod's securityContext says (k8s/base/mlflow-server.yaml and the pipeline pods).
POD_SECURITY = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
# The installed package's files, hashed inside the image; compared with this checkout's.
_HASH_CODE = """
import hashlib, json, pathlib
import distillery.components as components, distillery.pipelines as pipelines
out = {}
for package in (components, pipelines):
    base = pathlib.Path(package.__file__).parent
    for path in sorted(base.rglob("*")):
        if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
            out[f"{base.name}/{path.relative_to(base)}"] = hashlib.sha256(path.read_bytes()).hexdigest()
print(json.dumps(out))
"""


def _unavailable(reason: str):
    if os.environ.get("DISTILLERY_REQUIRE_CONTAINER") == "1":
        pytest.fail(f"the project image is required here (DISTILLERY_REQUIRE_CONTAINER=1): {reason}")
    pytest.skip(reason)


def require_podman() -> None:
    if shutil.which("podman") is None:
        _unavailable("podman is not installed (apt-get install podman buildah)")


def project_image():
    """The built project image (:class:`distillery.pipelines.podman.ImageInfo`), checked to hold this
    checkout's code; skip (or fail, see the module docstring) when podman or the image is missing."""
    from distillery.components.core.images import IMAGE
    from distillery.pipelines.podman import ContainerError, inspect_image

    require_podman()
    try:
        info = inspect_image(IMAGE)
    except ContainerError as exc:
        _unavailable(str(exc))
    stale = stale_files(info.reference)
    if stale:
        pytest.fail(f"image {info.reference} does not hold this checkout's code ({len(stale)} files differ, e.g. "
                    f"{stale[:3]}): run `make image`")
    return info


def stale_files(image: str) -> list[str]:
    """Files of ``components``/``pipelines`` whose bytes differ between the image and this checkout."""
    done = podman("run", "--rm", image, "python", "-c", _HASH_CODE)
    inside = json.loads(done.stdout)
    here = {}
    for name in ("components", "pipelines"):
        base = ROOT / name
        for folder, _, files in os.walk(base, followlinks=True):  # templates/ links to k8s/training
            for file in files:
                path = Path(folder) / file
                if path.suffix in (".py", ".yaml") and not {"__pycache__", "compiled"} & set(path.parts):
                    here[f"{name}/{path.relative_to(base)}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return sorted(k for k in set(here) | set(inside) if here.get(k) != inside.get(k))


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    from distillery.pipelines.podman import environment

    done = subprocess.run(["podman", *args], env=environment(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"podman {' '.join(args[:4])} ... failed:\n{done.stderr[-3000:]}"
    return done


def run_args(image: str, command: list[str], env: dict[str, str], mounts: dict[str, str] | None = None,
             user: str | None = None, name: str | None = None, secure: bool = True) -> list[str]:
    """``podman run`` arguments for ``command`` in ``image`` on the host's network, with ``env``
    and ``mounts`` (host path -> container path; a ``:ro`` suffix on the container path makes it
    read-only), as the invoking user unless ``user`` says otherwise."""
    args = ["run", "--rm", "--name", name or f"distillery-test-{uuid.uuid4().hex[:8]}", "--network", "host",
            "--user", user or f"{os.getuid()}:{os.getgid()}"]
    if secure:
        args += POD_SECURITY
    for host, inside in (mounts or {}).items():
        args += ["-v", f"{host}:{inside}"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    return [*args, image, *command]


def popen(image: str, command: list[str], env: dict[str, str], log, **kw) -> tuple[subprocess.Popen, str]:
    """Start ``command`` in ``image`` (see :func:`run_args`); ``(process, container name)``."""
    from distillery.pipelines.podman import environment

    name = kw.pop("name", None) or f"distillery-test-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(["podman", *run_args(image, command, env, name=name, **kw)], env=environment(),
                            stdout=log, stderr=subprocess.STDOUT)
    return proc, name


def remove(name: str) -> None:
    podman("rm", "-f", "-t", "2", name, check=False, timeout=60)
