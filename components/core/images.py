"""The container image every component runs in (built from the top-level ``Dockerfile``).

Set ``DISTILLERY_IMAGE`` when compiling to use another build (e.g. the GPU image from
``Dockerfile.gpu``, or your registry's copy).
"""
import os

DEFAULT_IMAGE = "ghcr.io/distillery-mlops/distillery:0.1.0"
IMAGE = os.environ.get("DISTILLERY_IMAGE", DEFAULT_IMAGE)
