"""Podman and buildah without a Docker daemon: their settings, the project image's build, and the
Docker-compatible API socket that kfp.local's DockerRunner talks to.

Everything here shells out to the real ``podman``/``buildah`` binaries (Debian's packages). Their
state (settings files, image storage, the API socket) lives in one folder, by default
``~/.cache/distillery/containers`` (``DISTILLERY_CONTAINERS_HOME`` moves it), so images survive
fresh clones of the repository, as a Docker engine's would. Settings a user gives podman through
``CONTAINERS_CONF`` / ``CONTAINERS_STORAGE_CONF`` win over the ones written here.

Why settings of our own: on machines like the development one, podman's default OCI runtime
(crun) cannot set its rlimits, and runc fails with podman's default ulimits when the hard limits
are below them; the written ``containers.conf`` picks runc when installed and ulimits at the
machine's hard limits.
"""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from distillery.components.core.images import IMAGE

HOME_ENV = "DISTILLERY_CONTAINERS_HOME"
BASE_IMAGE = "localhost/distillery-base:bookworm"   # Debian 12 with python3, venv, git, CA certificates
BASE_PACKAGES = ("python3", "python3-venv", "git", "ca-certificates")
UPSTREAM_BASE = "python:3.11.7-slim-bookworm"       # the Dockerfile's default, for a machine that can pull
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"     # Debian's; holds an intercepting proxy's CA where there is one
INSTALL_HINT = ("install them with `sudo apt-get install podman buildah runc mmdebstrap uidmap` "
                "(Debian/Ubuntu), or your distribution's podman and buildah packages")


class ContainerError(RuntimeError):
    """Podman or buildah is missing, the image is not built, or the engine does not answer."""


def home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "distillery" / "containers")


def require(*tools: str) -> None:
    """Each of ``tools`` is on PATH, else one error naming the missing ones and how to install them."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise ContainerError(f"{' and '.join(missing)} not installed: {INSTALL_HINT}")


def environment() -> dict[str, str]:
    """The environment every podman/buildah call here runs with (settings files written on first use)."""
    env = dict(os.environ)
    folder = home()
    folder.mkdir(parents=True, exist_ok=True)
    if not env.get("CONTAINERS_CONF"):
        conf = folder / "containers.conf"
        _write_if_changed(conf, _containers_conf())
        env["CONTAINERS_CONF"] = str(conf)
    if not env.get("CONTAINERS_STORAGE_CONF"):
        storage = folder / "storage.conf"
        _write_if_changed(storage, f'[storage]\ndriver = "overlay"\ngraphroot = "{folder / "storage"}"\n'
                                   f'runroot = "{folder / "run"}"\n')
        env["CONTAINERS_STORAGE_CONF"] = str(storage)
    return env


def _containers_conf() -> str:
    # ulimits no higher than this machine's hard limits: runc cannot raise them without CAP_SYS_RESOURCE
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1 << 20)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096)  # plenty for one task's workers
    lines = ["# written by Distillery (pipelines/podman.py)", "[containers]",
             f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]']
    if shutil.which("runc"):  # crun, podman's default, fails to set rlimits in some sandboxes
        lines += ["[engine]", 'runtime = "runc"']
    return "\n".join(lines) + "\n"


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def podman(*args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    require("podman")
    done = subprocess.run(["podman", *args], env=environment(), text=True,
                          capture_output=capture)
    if check and done.returncode:
        raise ContainerError(f"podman {' '.join(args[:3])} failed (exit {done.returncode}): "
                             f"{(done.stderr or '').strip()[-2000:]}")
    return done


# ----------------------------------------------------------------------------------------------
# Images

@dataclass(frozen=True)
class ImageInfo:
    """A local image: the reference asked for, its image id and its manifest digest."""

    reference: str
    id: str
    digest: str


def inspect_image(reference: str = IMAGE) -> ImageInfo:
    """The local image ``reference``; :class:`ContainerError` saying to run ``make image`` when absent."""
    done = podman("image", "inspect", "--format", "{{.Id}} {{.Digest}}", reference, check=False)
    if done.returncode:
        raise ContainerError(f"image {reference} is not built on this machine: run `make image` "
                             f"(or `distillery image build`)")
    image_id, _, digest = done.stdout.strip().partition(" ")
    return ImageInfo(reference, f"sha256:{image_id}" if ":" not in image_id else image_id, digest)


def build_base(reference: str = BASE_IMAGE, apt_sources: str | None = None) -> None:
    """A Debian bookworm base image made from Debian's packages with mmdebstrap (no registry pull)."""
    require("mmdebstrap", "podman")
    sources = apt_sources or _apt_sources()
    with _scratch() as tmp:
        tar = tmp / "base.tar"
        print(f"Building base image {reference} with mmdebstrap ({', '.join(BASE_PACKAGES)})", flush=True)
        subprocess.run(["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", "bookworm",
                        str(tar), *([sources] if sources else [])], check=True, stdout=subprocess.DEVNULL)
        podman("import", str(tar), reference)


def _apt_sources() -> str | None:
    """This machine's apt sources (its mirror or proxy), else mmdebstrap's default mirror."""
    for path in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if path.is_file() and path.read_text().strip():
            return str(path)
    return None


@contextmanager
def _scratch() -> Iterator[Path]:
    import tempfile

    home().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="distillery-image-", dir=home()) as tmp:
        yield Path(tmp)


def build_image(root: Path, reference: str = IMAGE, base: str | None = None, wheels: str | None = None,
                no_cache: bool = False) -> ImageInfo:
    """Build ``root``'s Dockerfile into ``reference`` with buildah (layers cached between builds).

    Args:
        base: the base image; default: :data:`BASE_IMAGE`, built first when absent.
        wheels: a folder of wheels holding the CPU torch wheel, mounted into the build
            (default: ``$PIP_FIND_LINKS`` when it is a folder); without one, torch comes from
            PyTorch's CPU index as upstream.
    """
    require("buildah", "podman")
    if base is None:
        base = BASE_IMAGE
        if podman("image", "exists", base, check=False).returncode:
            build_base(base)
    wheels = wheels or os.environ.get("PIP_FIND_LINKS")
    args = ["bud", "--layers", "--isolation", "chroot", "-f", str(root / "Dockerfile"), "-t", reference,
            "--build-arg", f"BASE_IMAGE={base}"]
    if wheels and Path(wheels).is_dir():
        args += ["-v", f"{Path(wheels).resolve()}:/wheels:ro", "--build-arg", "TORCH_PIP_ARGS=--find-links /wheels"]
    if Path(CA_BUNDLE).is_file():
        # The host's CA bundle for the build's HTTPS (an intercepting proxy's CA may be only there);
        # mounted, so it does not end up in the image.
        args += ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro", "--build-arg", f"PIP_CERT={CA_BUNDLE}"]
    if no_cache:
        args.append("--no-cache")
    started = time.perf_counter()
    print(f"Building {reference} from {root / 'Dockerfile'} (base {base})", flush=True)
    done = subprocess.run(["buildah", *args, str(root)], env=environment(), cwd=root)
    if done.returncode:
        raise ContainerError(f"buildah bud failed (exit {done.returncode}); its output is above")
    info = inspect_image(reference)
    print(f"Built {reference} ({info.id[:19]}) in {time.perf_counter() - started:.0f} s", flush=True)
    return info


# ----------------------------------------------------------------------------------------------
# The Docker-compatible API

def socket_path() -> Path:
    return home() / "podman.sock"


@contextmanager
def docker_api(timeout_s: float = 20.0) -> Iterator[str]:
    """A Docker-compatible API for the duration of the block; yields its ``DOCKER_HOST`` URL.

    ``DOCKER_HOST`` set by the user is used as given (a Docker engine, or a podman service they
    run); otherwise a ``podman system service`` is started on :func:`socket_path` and stopped after.
    Either way the API must answer within ``timeout_s``, else :class:`ContainerError`.
    """
    given = os.environ.get("DOCKER_HOST")
    if given:
        _wait_for_api(given, min(timeout_s, 5.0), None)
        yield given
        return
    require("podman")
    sock = socket_path()
    sock.unlink(missing_ok=True)
    url = f"unix://{sock}"
    log = home() / "podman-service.log"
    with open(log, "w") as out:
        service = subprocess.Popen(["podman", "system", "service", "--time=0", url], env=environment(),
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_api(url, timeout_s, service, log)
        yield url
    finally:
        service.terminate()
        try:
            service.wait(timeout=10)
        except subprocess.TimeoutExpired:
            service.kill()
        sock.unlink(missing_ok=True)


def _wait_for_api(url: str, timeout_s: float, service: subprocess.Popen | None, log: Path | None = None) -> None:
    import docker

    if service is None and url.startswith("unix://") and not Path(url.removeprefix("unix://")).exists():
        raise ContainerError(f"DOCKER_HOST={url}: no socket at {url.removeprefix('unix://')}; start one with "
                             f"`podman system service --time=0 {url}`, or unset DOCKER_HOST and Distillery starts one")
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        if service is not None and service.poll() is not None:
            break
        try:
            client = docker.DockerClient(base_url=url, timeout=5)
            try:
                client.ping()
            finally:
                client.close()
            return
        except Exception as exc:  # docker raises requests' and its own errors while the socket comes up
            last = exc
            time.sleep(0.2)
    where = f"the podman API service ({url}; log {log}: {_tail(log)})" if service is not None else \
        f"DOCKER_HOST={url}"
    raise ContainerError(f"{where} is not answering after {timeout_s:.0f} s ({last}); start one with "
                         f"`podman system service --time=0 {url}`, or unset DOCKER_HOST and Distillery starts one")


def _tail(path: Path | None, lines: int = 5) -> str:
    if path is None or not path.exists():
        return "empty"
    return " | ".join(path.read_text().strip().splitlines()[-lines:]) or "empty"
