"""The errors of cluster training: what goes wrong creating, following or finishing a training object.

Shared by :mod:`~distillery.components.training.cluster.manifests` (a template without the object),
:mod:`~distillery.components.training.cluster.kube` (the API, missing Secrets, failure, timeout) and the
methods of :mod:`~distillery.components.training.cluster.methods`.
"""
from __future__ import annotations


class LaunchError(RuntimeError):
    """The training object could not be created, failed, or did not finish in time."""


class MissingSecretsError(LaunchError):
    """Secrets the training pods read are missing from the namespace."""


class JobFailedError(LaunchError):
    """The training object reached its ``Failed`` condition."""


class JobTimeoutError(LaunchError):
    """The training object did not finish within the timeout (it is left in place by default)."""

