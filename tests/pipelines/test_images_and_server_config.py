"""The project images (Dockerfile, Dockerfile.gpu, .dockerignore) and the MLflow server script.

The Dockerfiles are checked statically (no Docker engine is needed); ``mlflow/server.sh`` is started
for real on a free port with its state in a temporary folder, and used through ``MlflowClient``.
"""
from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from servers import SERVER_SH, http_status, running_server

ROOT = Path(__file__).resolve().parents[2]
CPU_DOCKERFILE = ROOT / "Dockerfile"
GPU_DOCKERFILE = ROOT / "Dockerfile.gpu"


# --------------------------------------------------------------------------------------------------
# Dockerfile parsing


def parse_dockerfile(path: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """``(header comment lines, [(INSTRUCTION, arguments), ...])``; ``\\`` continuations are joined
    and comment lines inside a continued instruction are dropped, as Docker does."""
    header: list[str] = []
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not instructions and not pending and (line.startswith("#") or not line):
            header.append(line.lstrip("#").strip())
            continue
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    assert not pending, f"{path.name}: file ends inside a line continuation"
    return header, instructions


def global_args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """Default values of the ``ARG``s declared before the first ``FROM`` (usable in ``FROM``)."""
    values: dict[str, str] = {}
    for keyword, args in instructions:
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = args.partition("=")
            values[name.strip()] = default.strip().strip('"')
    return values


def expand(text: str, values: dict[str, str]) -> str:
    def sub(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"${name} has no default value"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, text)


def base_images(instructions: list[tuple[str, str]]) -> list[str]:
    """Each ``FROM``'s image reference, variables expanded; references to earlier stages left out."""
    values, stages, images = global_args(instructions), set(), []
    for keyword, args in instructions:
        if keyword != "FROM":
            continue
        words = [w for w in args.split() if not w.startswith("--")]
        image = expand(words[0], values)
        if len(words) >= 3 and words[1].lower() == "as":
            stages.add(words[2].lower())
        if image.lower() not in stages:
            images.append(image)
    return images


def image_tag(image: str) -> str | None:
    """The tag of ``registry/name:tag[@digest]`` (None when untagged); a port is not a tag."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def final_user(instructions: list[tuple[str, str]]) -> str | None:
    """The ``USER`` in force at the end of the last stage (None: the base image's, usually root)."""
    user = None
    for keyword, args in instructions:
        if keyword == "FROM":
            user = None
        elif keyword == "USER":
            user = args.split()[0]
    return user


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def torch_pin() -> str:
    pins = [d for d in project()["dependencies"] if re.match(r"torch\s*==", d)]
    assert len(pins) == 1, f"pyproject pins torch {pins}"
    return pins[0].split("==", 1)[1].strip()


def header_image(header: list[str]) -> str:
    for line in header:
        match = re.search(r"docker build .*-t\s+(\S+)", line)
        if match:
            return match.group(1)
    raise AssertionError("no `docker build ... -t <image>` command in the header comment")


@pytest.mark.parametrize("path", [CPU_DOCKERFILE, GPU_DOCKERFILE], ids=lambda p: p.name)
def test_every_base_image_is_pinned(path):
    _, instructions = parse_dockerfile(path)
    images = base_images(instructions)
    assert images, f"{path.name} has no FROM"
    for image in images:
        tag = image_tag(image)
        assert tag or "@sha256:" in image, f"{path.name}: FROM {image} has no tag"
        assert tag != "latest", f"{path.name}: FROM {image} uses the moving tag 'latest'"
    assert not re.search(r":latest\b", path.read_text()), f"{path.name} mentions a :latest tag"


@pytest.mark.parametrize("path", [CPU_DOCKERFILE, GPU_DOCKERFILE], ids=lambda p: p.name)
def test_image_runs_as_non_root(path):
    _, instructions = parse_dockerfile(path)
    user = final_user(instructions)
    assert user is not None, f"{path.name}: the final stage sets no USER (runs as root)"
    name, _, group = user.partition(":")
    assert name not in ("root", "0"), f"{path.name}: final USER {user} is root"
    assert group not in ("root", "0"), f"{path.name}: final USER {user} has the root group"


def _runs(path: Path) -> list[str]:
    return [args for keyword, args in parse_dockerfile(path)[1] if keyword == "RUN"]


def test_cpu_image_installs_the_pinned_cpu_torch_then_the_project():
    _, instructions = parse_dockerfile(CPU_DOCKERFILE)
    runs = _runs(CPU_DOCKERFILE)
    torch_step = next(i for i, r in enumerate(runs) if f"torch=={torch_pin()}" in r)
    assert "${TORCH_PIP_ARGS}" in runs[torch_step]
    # upstream default: PyTorch's CPU index; `make image` passes a local wheel folder instead
    torch_arg = next(a for k, a in instructions if k == "ARG" and a.startswith("TORCH_PIP_ARGS="))
    assert "download.pytorch.org/whl/cpu" in torch_arg
    project_step = next(i for i, r in enumerate(runs) if re.search(r"pip install .*--no-deps.* /opt/distillery\b", r))
    assert torch_step < project_step, "torch must come from the CPU index before the project install"
    assert "-e /opt/distillery" not in CPU_DOCKERFILE.read_text() and "--editable" not in CPU_DOCKERFILE.read_text()
    assert torch_pin() == "2.13.0"


@pytest.mark.parametrize("path", [CPU_DOCKERFILE, GPU_DOCKERFILE], ids=lambda p: p.name)
def test_dependencies_are_a_layer_only_pyproject_and_the_constraints_invalidate(path):
    """Code comes after the dependency install, so a code change rebuilds only the code's layers."""
    _, instructions = parse_dockerfile(path)
    steps = [(k, a) for k, a in instructions if k in ("COPY", "RUN")]
    deps = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "-r /opt/distillery/requirements.txt" in a)
    assert "-c /opt/distillery/constraints.txt" in steps[deps][1], "dependency versions are pinned by constraints.txt"
    copied_before = [a.split()[:-1] for k, a in steps[:deps] if k == "COPY"]
    assert [sorted(c) for c in copied_before] == [["constraints.txt", "pyproject.toml"]], copied_before
    copied_after = " ".join(a for k, a in steps[deps:] if k == "COPY")
    for source in ("components/", "pipelines/", "k8s/training/", "README.md"):
        assert source in copied_after, f"{path.name} does not copy {source} after the dependencies"


def test_constraints_pin_every_package_exactly():
    lines = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert len(lines) > 50
    bad = [line for line in lines if not re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[\w,]+\])?==[\w.+!\-]+", line)]
    assert not bad, f"constraints.txt lines that are not exact pins: {bad}"
    names = {line.split("==")[0].lower() for line in lines}
    assert "torch" not in names, "torch keeps its own pin (CPU wheel here, CUDA build in the GPU image)"
    for requirement in project()["dependencies"]:
        name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()
        assert name == "torch" or name.replace("_", "-") in {n.replace("_", "-") for n in names}, \
            f"constraints.txt does not pin {name}: regenerate it with `make constraints`"


def test_gpu_image_keeps_the_base_images_torch_at_the_pinned_version():
    _, instructions = parse_dockerfile(GPU_DOCKERFILE)
    assert global_args(instructions).get("TORCH_VERSION") == torch_pin()
    (base,) = base_images(instructions)
    assert base.startswith(f"pytorch/pytorch:{torch_pin()}-cuda"), base
    installs = [r for r in _runs(GPU_DOCKERFILE) if "pip install" in r and "/opt/distillery" in r]
    assert installs and all('"torch==${TORCH_VERSION}"' in r for r in installs), \
        "every install must keep torch at the pin"
    assert not any("--index-url" in r or "download.pytorch.org" in r for r in installs)


def test_image_names_match_the_components_default_image():
    from distillery.components.core.images import DEFAULT_IMAGE

    cpu = header_image(parse_dockerfile(CPU_DOCKERFILE)[0])
    gpu = header_image(parse_dockerfile(GPU_DOCKERFILE)[0])
    assert cpu == DEFAULT_IMAGE
    repository, _, tag = DEFAULT_IMAGE.rpartition(":")
    assert tag == project()["version"], "image tag and project version drifted apart"
    assert gpu == f"{repository}-gpu:{tag}"


@pytest.mark.parametrize("path", [CPU_DOCKERFILE, GPU_DOCKERFILE], ids=lambda p: p.name)
def test_images_set_the_runtime_environment_and_copy_the_packages(path):
    _, instructions = parse_dockerfile(path)
    env = " ".join(args for keyword, args in instructions if keyword == "ENV")
    for setting in ("PYTHONUNBUFFERED=1", "GX_ANALYTICS_ENABLED=False", "MPLBACKEND=Agg"):
        assert setting in env, f"{path.name}: ENV lacks {setting}"
    copied = " ".join(args for keyword, args in instructions if keyword == "COPY")
    for source in ("pyproject.toml", "components/", "pipelines/", "k8s/training/"):
        assert source in copied, f"{path.name} does not copy {source}"
    assert any("git" in args.split() for keyword, args in instructions if keyword == "RUN"), \
        f"{path.name} does not install git (DVC needs it)"


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    patterns = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    for required in (".venv", "data", ".git", ".distillery", "local_outputs"):
        assert required in patterns, f".dockerignore does not exclude {required}"
    for needed in ("components", "pipelines", "pyproject.toml", "README.md", "constraints.txt", "k8s"):
        assert needed not in patterns, f".dockerignore excludes {needed}, which the images copy"


# --------------------------------------------------------------------------------------------------
# MLflow server


def test_server_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(SERVER_SH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "set -euo pipefail" in SERVER_SH.read_text()


@pytest.fixture
def mlflow_server(tmp_path):
    """``(url, state folder)`` of ``mlflow/server.sh`` serving a fresh store in ``tmp_path``."""
    with running_server(tmp_path) as server:
        yield server.url, tmp_path / "state"


def test_server_tracks_runs_and_stores_artifacts_in_the_state_folder(mlflow_server, monkeypatch):
    import mlflow

    url, state = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # mlflow-artifacts:/ URIs resolve against it
    client = mlflow.MlflowClient(tracking_uri=url)

    experiment_id = client.create_experiment("server-config-test")
    assert client.get_experiment(experiment_id).artifact_location.startswith("mlflow-artifacts:")
    run = client.create_run(experiment_id)
    run_id = run.info.run_id
    client.log_metric(run_id, "accuracy", 0.875, step=1)
    client.log_text(run_id, "distilled\n", "reports/note.txt")
    client.set_terminated(run_id)

    fetched = client.get_run(run_id)
    assert fetched.data.metrics["accuracy"] == pytest.approx(0.875)
    assert fetched.info.status == "FINISHED"
    assert [f.path for f in client.list_artifacts(run_id, "reports")] == ["reports/note.txt"]
    downloaded = Path(client.download_artifacts(run_id, "reports/note.txt", str(state.parent)))
    assert downloaded.read_text() == "distilled\n"

    # The defaults put the database and the proxied artifacts under DISTILLERY_STATE.
    assert (state / "mlflow.db").is_file()
    stored = list((state / "mlartifacts").rglob("note.txt"))
    assert len(stored) == 1 and run_id in stored[0].parts, stored
    assert stored[0].read_text() == "distilled\n"

    # MLflow 3 rejects Host names that --allowed-hosts does not list (DNS-rebinding protection).
    port = url.rsplit(":", 1)[1]
    assert http_status(f"{url}/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}",
                   host=f"127.0.0.1:{port}") == 200
    assert http_status(f"{url}/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}",
                   host=f"mlflow.example.com:{port}") == 403
