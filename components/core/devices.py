"""Where a stage's torch work runs: ``device`` (``auto | cpu | cuda``) and ``precision``
(``fp32 | bf16``), chosen per stage in the config and in force for the whole task.

The rule every stage follows: a model lives on the stage's device; data stays where it was loaded
(CPU memory) and moves to the model's device one batch or chunk at a time (:func:`to_model`), so a
pool of millions of items never has to fit in GPU memory; results come back to the CPU. What is
saved (``models.save``, MLflow models, ONNX) is saved from the CPU, so any machine can load it.

``precision: bf16`` runs forward passes under ``torch.autocast`` with bfloat16 (training losses and
inference); backward passes and optimiser steps stay in float32. On CUDA it needs a GPU with bf16
support (Ampere or newer); on the CPU it works everywhere (useful to test a config, rarely faster).

:func:`resolve` turns a config value into a ``torch.device`` and refuses ``cuda`` where torch sees no
CUDA device, naming what torch was built with, before any work.
"""
from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
# Pipeline stages whose methods run torch (the config's `device` / `precision` keys apply to these).
# Dataset distillation (`distillery data distil`) runs on the CPU: DOORPING's trigger is re-pasted
# into the caller's copy of the real images every iteration, so they cannot move to a device.
TORCH_STAGES = ("selection", "training", "distillation", "evaluation")


class DeviceError(ValueError):
    """A device or precision that cannot be used here."""


@dataclass(frozen=True)
class Placement:
    """A stage's resolved device (a ``torch.device``) and precision."""

    device: Any
    precision: str = "fp32"


_current: contextvars.ContextVar[Placement | None] = contextvars.ContextVar("distillery_placement", default=None)


def check_spec(device: Any, precision: Any, where: str = "") -> None:
    """Values a config may hold (no torch import): a clear error naming ``where`` otherwise."""
    prefix = f"{where}: " if where else ""
    if not isinstance(device, str) or not (device in DEVICES or _is_indexed_cuda(device)):
        raise DeviceError(f"{prefix}device must be one of {list(DEVICES)} (or cuda:N), got {device!r}")
    if precision not in PRECISIONS:
        raise DeviceError(f"{prefix}precision must be one of {list(PRECISIONS)}, got {precision!r}")


def _is_indexed_cuda(device: str) -> bool:
    kind, _, index = device.partition(":")
    return kind == "cuda" and index.isdigit()


def resolve(device: str = "auto", precision: str = "fp32") -> Placement:
    """The placement for a config's ``device`` and ``precision``: ``auto`` is CUDA when torch sees a
    CUDA device, else the CPU; ``cuda`` without one (or bf16 on a GPU without it) is a
    :class:`DeviceError` saying why and what to do."""
    import torch

    check_spec(device, precision)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
            raise DeviceError(f"device: {device} was asked for, but torch {torch.__version__} ({build}) sees no CUDA "
                              "device here: use device: auto (CUDA when present, else the CPU) or cpu, or run on a "
                              "GPU node with the GPU image (Dockerfile.gpu)")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device: {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        placed = torch.device("cuda", index)
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise DeviceError(f"precision: bf16 needs a GPU with bfloat16 support (compute capability 8.0+); "
                              f"{torch.cuda.get_device_name(index)} has none: use precision: fp32")
        return Placement(placed, precision)
    return Placement(torch.device("cpu"), precision)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@contextmanager
def placed(placement: Placement) -> Iterator[Placement]:
    """Make ``placement`` the current one (:func:`current`, :func:`autocast`) inside the block."""
    token = _current.set(placement)
    try:
        yield placement
    finally:
        _current.reset(token)


def current() -> Placement:
    """The placement in force (set by the task for its stage); the CPU in fp32 outside any task."""
    placement = _current.get()
    if placement is None:
        import torch

        return Placement(torch.device("cpu"), "fp32")
    return placement


def autocast(device: Any):
    """A forward pass's mixed-precision context for a model on ``device``: bf16 autocast when the
    current placement asks for bf16, else nothing."""
    if current().precision != "bf16":
        return nullcontext()
    import torch

    return torch.autocast(device_type=getattr(device, "type", str(device)), dtype=torch.bfloat16)


def model_device(model: Any):
    """The device of ``model``'s first parameter or buffer (the CPU for a model without either)."""
    import torch

    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def to_model(model: Any, x: Any, dtype: Any = None):
    """``x`` (an array or a tensor) as a tensor on ``model``'s device (float32 unless ``dtype``)."""
    import torch

    return torch.as_tensor(x, dtype=dtype or torch.float32).to(model_device(model), non_blocking=True)


def describe(placement: Placement) -> dict[str, str]:
    """Tags for a run: the device, the precision and, on CUDA, the GPU's name and the GPU count."""
    tags = {"distillery.device": str(placement.device), "distillery.precision": placement.precision}
    if placement.device.type == "cuda":
        import torch

        tags.update({"distillery.gpu_name": torch.cuda.get_device_name(placement.device),
                     "distillery.gpu_count": str(torch.cuda.device_count()),
                     "distillery.cuda_version": str(torch.version.cuda)})
    return tags


def stage_spec(config: dict, stage: str) -> tuple[str, str]:
    """``(device, precision)`` a config gives ``stage`` (its own keys, else the top-level ones)."""
    section = config.get(stage) if isinstance(config.get(stage), dict) else {}
    return (section.get("device", config.get("device", "auto")),
            section.get("precision", config.get("precision", "fp32")))


def unavailable_stages(config: dict) -> list[str]:
    """Stages of ``config`` that ask for CUDA on a machine without it (checked before a local run)."""
    wanted = [s for s in TORCH_STAGES if s in config and stage_spec(config, s)[0].startswith("cuda")]
    return wanted if wanted and not cuda_available() else []
