"""``distillery run --runner container``: every task in the project's image, under kfp.local's
DockerRunner talking to podman's Docker-compatible API (:mod:`distillery.pipelines.podman`).

A containerized task sees what a host task sees, at the same paths: the data repository (git,
``data.dvc``, the DVC cache), the kfp.local pipeline root (its artifacts) and, for a SQLite
tracking store, the store's folder; it shares the host's network, so an MLflow server or
PostgreSQL on localhost is reachable too. It runs as the invoking user, so files it writes in those
folders stay the user's. Each task's MLflow run is tagged with the image it ran in
(``distillery.image``, ``distillery.image_id``, ``distillery.image_digest``: see
:mod:`distillery.components.core.tracking`).

One incompatibility is worked around here: kfp (``kfp/local/docker_task_handler.py``) starts
containers with ``auto_remove`` and then asks for the removed container, which podman 4 answers
with HTTP 500 instead of 404, so the task fails. :func:`run_container` is kfp's function without
``auto_remove``: start detached, stream the logs, wait, then remove.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from distillery.pipelines.podman import ImageInfo

# Environment a task container gets from the host when set there.
PASSED_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
              "MLFLOW_HTTP_REQUEST_TIMEOUT", "DISTILLERY_CHECKPOINT_DIR", "DISTILLERY_DVC_REMOTE",
              "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")


def shared_folders(ctx, pipeline_root: Path) -> list[Path]:
    """Host folders a task reads or writes, mounted at the same paths (the pipeline root is
    mounted by kfp itself)."""
    folders = []
    repo = str(ctx.data["repo"])
    if "://" not in repo and not repo.startswith("git@"):
        folders.append(Path(repo).resolve())
    if ctx.tracking_uri.startswith("sqlite:///"):
        folders.append(Path(ctx.tracking_uri.removeprefix("sqlite:///")).resolve().parent)
    if ctx.tracking_uri.startswith("file:"):
        folders.append(Path(ctx.tracking_uri.removeprefix("file://").removeprefix("file:")).resolve())
    if ctx.artifact_location and "://" not in ctx.artifact_location:
        folders.append(Path(ctx.artifact_location).resolve())
    if os.environ.get("DISTILLERY_CHECKPOINT_DIR"):
        folders.append(Path(os.environ["DISTILLERY_CHECKPOINT_DIR"]).resolve())
    return _outermost(f for f in folders if f != pipeline_root)


def _outermost(folders) -> list[Path]:
    """Drop folders inside another one of the list (one mount covers them)."""
    unique = sorted(set(folders), key=lambda p: len(p.parts))
    kept: list[Path] = []
    for folder in unique:
        if not any(folder == k or k in folder.parents for k in kept):
            kept.append(folder)
    return kept


def container_run_args(ctx, pipeline_root: Path, image: ImageInfo) -> dict[str, Any]:
    """``docker run`` settings of every task container (kfp's DockerRunner passes them on)."""
    from docker.types import Mount

    shared = shared_folders(ctx, pipeline_root)
    for folder in (*shared, pipeline_root):
        folder.mkdir(parents=True, exist_ok=True)
    environment = {name: os.environ[name] for name in PASSED_ENV if os.environ.get(name)}
    environment.update({
        "HOME": "/tmp",  # the user may have no home in the image; caches (DVC, MLflow, matplotlib) go here
        "DISTILLERY_RUNNER": "container",
        "DISTILLERY_IMAGE": image.reference, "DISTILLERY_IMAGE_ID": image.id,
        "DISTILLERY_IMAGE_DIGEST": image.digest,
    })
    return {
        "mounts": [Mount(str(f), str(f), type="bind") for f in shared],
        "environment": environment,
        "network_mode": "host",
        "user": f"{os.getuid()}:{os.getgid()}",
        "working_dir": "/tmp",
    }


def run_container(client, image: str, command: list[str], volumes: dict[str, Any], **run_args) -> int:
    """kfp's ``run_docker_container`` for podman: no ``auto_remove``; the container is removed
    after its exit code has been read. The image must exist locally (no pull)."""
    container = client.containers.run(image=image, command=command, detach=True, stdout=True, stderr=True,
                                      volumes=volumes, **run_args)
    try:
        for chunk in container.logs(stream=True, follow=True):
            print(chunk.decode(errors="replace"), end="", flush=True)
        return int(container.wait()["StatusCode"])
    finally:
        container.remove(force=True)


@contextmanager
def container_runner(ctx, pipeline_root: Path, image: ImageInfo) -> Iterator[Any]:
    """A ``kfp.local.DockerRunner`` for the duration of the block, on a podman API it starts."""
    from kfp import local
    from kfp.local import docker_task_handler

    from distillery.pipelines.podman import docker_api

    with docker_api() as url:
        before = os.environ.get("DOCKER_HOST")
        os.environ["DOCKER_HOST"] = url  # docker.from_env() in kfp's handler
        original = docker_task_handler.run_docker_container
        docker_task_handler.run_docker_container = run_container
        try:
            yield local.DockerRunner(**container_run_args(ctx, pipeline_root, image))
        finally:
            docker_task_handler.run_docker_container = original
            if before is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = before
