"""Export a student to ONNX for deployment.

The model is re-parameterised first (:func:`distillery.components.core.models.fuse`: RepGhost's parallel
branch and every BN folded into its conv), then exported by ``torch.onnx.export`` with a dynamic
batch axis: the served model takes ``(N, D)`` raw features for any ``N`` and returns ``(N, K)``
logits, like the PyTorch model.

Which exporter: torch 2.13 has two, both working offline here and matching PyTorch to ~1e-7. The
TorchScript-based one (``dynamo=False``, deprecated since torch 2.9 but present in the pinned 2.13)
exports a zoo student in 0.3-0.9 s on one CPU thread; the ``torch.export``-based one (``dynamo=True``,
needs ``onnxscript``) takes 8 s and more per model (trace, decompositions, graph optimisation),
seconds that every evaluation task would pay. The default is therefore ``dynamo=False``;
``dynamo=True`` is kept working (and tested) for when the TorchScript exporter goes away.

Exportable models are those built only from :data:`SUPPORTED_LAYERS` (by exact type: a subclass
may override ``forward`` with anything). :func:`check_exportable` names the first layer outside
that set before any export (or, called by the distillation task, before any training) is spent:
a layer of another type may hold data-dependent Python control flow or ops without an ONNX
translation, which the exporter would otherwise report only deep inside a trace.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distillery.components.core import models

# Layers whose forward is plain tensor algebra with an ONNX translation (convs, linear maps, norms,
# pools, point-wise activations, reshapes) and the zoo's own blocks made of them; Dropout exports
# as identity in eval mode.
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Sequential, nn.Identity, nn.Flatten, nn.Dropout,
    nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d,
    nn.ReLU, nn.ReLU6, nn.GELU, nn.Sigmoid, nn.Tanh,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    models.Preprocess, models.ProxyInput, models.ConvBN, models.StarBlock,
    models.RepGhostModule, models.RepGhostBottleneck,
)
INPUT_NAME, OUTPUT_NAME = "features", "logits"


class UnsupportedLayerError(ValueError):
    """A model holds a layer outside :data:`SUPPORTED_LAYERS`."""


def check_exportable(model: nn.Module) -> None:
    """Raise :class:`UnsupportedLayerError` naming every layer (module path and type) of ``model``
    outside :data:`SUPPORTED_LAYERS`; cheap (walks the modules, runs nothing)."""
    supported = set(SUPPORTED_LAYERS)
    bad = [f"{name or '<model>'} ({type(m).__module__}.{type(m).__qualname__})"
           for name, m in model.named_modules() if type(m) not in supported]
    if bad:
        known = ", ".join(sorted(t.__name__ for t in SUPPORTED_LAYERS))
        raise UnsupportedLayerError(f"cannot export the model to ONNX: unsupported layer(s) {', '.join(bad)}. "
                                    f"Exportable layer types: {known}")


def export_onnx(model: nn.Module, example, path: str | Path, *, dynamo: bool = False) -> Path:
    """Write ``model`` (fused; the caller's model is left as it is) as an ONNX file.

    Args:
        model: a zoo model taking raw features ``(N, D)``.
        example: ``(B, D)`` example input (array or tensor); only its shape and dtype matter, the batch
            axis of the exported graph is dynamic.
        path: the ``.onnx`` file to write (a single file, weights inline).
        dynamo: use the ``torch.export``-based exporter instead of the TorchScript one (see above).
    Returns:
        ``path``.
    """
    check_exportable(model)
    deployed = models.fuse(copy.deepcopy(model))
    x = torch.as_tensor(np.asarray(example), dtype=torch.float32)
    if x.ndim != 2:
        raise ValueError(f"example must be a (B, D) batch of raw features, got shape {tuple(x.shape)}")
    path = Path(path)
    if dynamo:
        batch_axis = {"dynamic_shapes": ({0: torch.export.Dim.DYNAMIC},)}
    else:
        batch_axis = {"dynamic_axes": {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice, said above
        torch.onnx.export(deployed, (x,), str(path), dynamo=dynamo, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], external_data=False, verbose=False, **batch_axis)
    return path


def log_onnx(model: nn.Module, example, name: str = "student.onnx") -> str:
    """Export ``model`` (see :func:`export_onnx`) and log the file as an artifact ``name`` of the
    active MLflow run; returns the artifact path."""
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory() as folder:
        mlflow.log_artifact(str(export_onnx(model, example, Path(folder) / name)))
    return name
