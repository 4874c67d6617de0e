# Distillery CPU image: the base image of every KFP component
# (components/images.py: DEFAULT_IMAGE = "ghcr.io/distillery-mlops/distillery:0.1.0").
#
# Build and push, from the repository root:
#   docker build -t ghcr.io/distillery-mlops/distillery:0.1.0 .
#   echo "$GHCR_TOKEN" | docker login ghcr.io -u <github-user> --password-stdin
#   docker push ghcr.io/distillery-mlops/distillery:0.1.0
# Compile pipelines against another build with DISTILLERY_IMAGE=<registry>/<name>:<tag>.
# Bump the tag together with pyproject's version and DEFAULT_IMAGE; never push a moving tag.
# GPU variant: Dockerfile.gpu (ghcr.io/distillery-mlops/distillery-gpu:0.1.0).
FROM python:3.11.7-slim-bookworm

ENV PYTHONUNBUFFERED=1 GX_ANALYTICS_ENABLED=False MPLBACKEND=Agg
ENV PIP_DISABLE_PIP_VERSION_CHECK=1

# git: DVC resolves dataset versions through git (dvc.api / DVCFileSystem with rev=...).
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 1000 distillery \
 && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash distillery

# torch first, from the CPU index (no CUDA libraries); the project install below then finds
# torch==2.13.0 already satisfied (2.13.0+cpu matches the pin) and leaves it alone.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md /opt/distillery/
COPY components/ /opt/distillery/components/
COPY pipelines/ /opt/distillery/pipelines/
RUN pip install --no-cache-dir /opt/distillery \
 && rm -rf /opt/distillery/build /opt/distillery/*.egg-info \
 && python -c "import torch; assert torch.__version__.split('+')[0] == '2.13.0', torch.__version__" \
 && python -c "import components, pipelines, kfp, mlflow, dvc"

WORKDIR /home/distillery
USER 1000:1000
