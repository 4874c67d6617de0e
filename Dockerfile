# Distillery CPU image: the base image of every KFP component
# (components/core/images.py: DEFAULT_IMAGE = "ghcr.io/distillery-mlops/distillery:0.1.0").
#
# Upstream (a Docker engine and a registry), from the repository root:
#   docker build -t ghcr.io/distillery-mlops/distillery:0.1.0 .
#   echo "$GHCR_TOKEN" | docker login ghcr.io -u <github-user> --password-stdin
#   docker push ghcr.io/distillery-mlops/distillery:0.1.0
# Without a Docker daemon or registry access: `make image` (podman + buildah, a Debian base made with
# mmdebstrap, torch from a local wheel folder; see README.md, "Running in containers").
# Compile pipelines against another build with DISTILLERY_IMAGE=<registry>/<name>:<tag>.
# Bump the tag together with pyproject's version and DEFAULT_IMAGE; never push a moving tag.
# GPU variant: Dockerfile.gpu (ghcr.io/distillery-mlops/distillery-gpu:0.1.0).
#
# Layers, slowest and most stable first: base -> user + venv -> torch -> dependencies (invalidated
# only by pyproject.toml and constraints.txt) -> the project's code (a code change rebuilds this
# layer alone, in seconds).

# Any Debian-based image with python3 (>= 3.11) and python3-venv.
ARG BASE_IMAGE=python:3.11.7-slim-bookworm
FROM ${BASE_IMAGE}

# Where torch 2.13.0 comes from: PyTorch's CPU index upstream; `make image` passes
# "--find-links /wheels" with the machine's wheel folder mounted there.
ARG TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# A CA bundle for pip behind an intercepting proxy (`make image` mounts the host's); unset upstream.
ARG PIP_CERT

ENV PYTHONUNBUFFERED=1 GX_ANALYTICS_ENABLED=False MPLBACKEND=Agg \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH

# git: DVC resolves dataset versions through git (dvc.api / DVCFileSystem with rev=...). A base made
# by `make image` has git and CA certificates already; the python:*-slim images install them here.
RUN if ! command -v git >/dev/null || [ ! -e /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends git ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

RUN groupadd --gid 1000 distillery \
 && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash distillery \
 && python3 -m venv /opt/venv \
 && pip install --quiet "pip==25.3" "setuptools==80.9.0" "wheel==0.45.1"

# torch first, the CPU build (no CUDA libraries); the dependency install below then finds
# torch==2.13.0 satisfied (2.13.0+cpu matches the pin) and leaves it alone.
RUN pip install --quiet torch==2.13.0 ${TORCH_PIP_ARGS} \
 && python -c "import torch; assert torch.__version__ == '2.13.0+cpu', torch.__version__"

# The project's dependencies as pyproject.toml lists them, every version pinned by constraints.txt.
COPY pyproject.toml constraints.txt /opt/distillery/
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/opt/distillery/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /opt/distillery/requirements.txt \
 && pip install --quiet -r /opt/distillery/requirements.txt -c /opt/distillery/constraints.txt

# The code, not editable. components/training/templates links to k8s/training: the install copies
# the Kubernetes templates into the package, so pods read them from site-packages.
COPY README.md /opt/distillery/
COPY k8s/training/ /opt/distillery/k8s/training/
COPY components/ /opt/distillery/components/
COPY pipelines/ /opt/distillery/pipelines/
RUN pip install --quiet --no-deps --no-build-isolation /opt/distillery \
 && rm -rf /opt/distillery \
 && python -c "import distillery.components, distillery.pipelines, kfp, mlflow, dvc; from distillery.components.training.cluster import manifests; manifests.required_secrets()"

WORKDIR /home/distillery
USER 1000:1000
