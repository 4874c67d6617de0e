"""Model zoo: teachers and students by name.

Every model takes raw flattened features ``(N, D)`` (as stored in the dataset) and returns logits
``(N, K)``: a :class:`Preprocess` layer in front scales values and restores the sample shape, so a
logged model needs no separate preprocessing code to serve.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


class Preprocess(nn.Module):
    """``(x - offset) / scale`` then reshape ``(N, D) -> (N, *shape)``."""

    def __init__(self, offset: float, scale: float, shape: list[int]):
        super().__init__()
        self.register_buffer("offset", torch.tensor(float(offset)))
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.shape = list(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.offset) / self.scale).reshape(len(x), *self.shape)


def small_cnn(feature_shape: list[int], num_classes: int, channels: int = 16,
              hidden: int = 256) -> nn.Module:
    """Two conv blocks and a dense head (~409k parameters on 1x28x28 inputs, 10 classes)."""
    if len(feature_shape) != 3:
        raise ValueError(f"small_cnn needs image data with feature_shape [C, H, W], got {feature_shape}")
    c, h, w = feature_shape
    return nn.Sequential(
        nn.Conv2d(c, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * channels * (h // 4) * (w // 4), hidden), nn.ReLU(), nn.Dropout(0.25),
        nn.Linear(hidden, num_classes),
    )


def mlp(feature_shape: list[int], num_classes: int, hidden: int = 40, dropout: float = 0.0) -> nn.Module:
    """One hidden layer (784-40-10: 31,810 parameters).

    ``dropout > 0`` adds an ``nn.Dropout`` after the hidden ReLU (what MC-dropout BALD samples); the
    default adds no module, so the default model and its state-dict keys are unchanged.
    """
    n_in = 1
    for dim in feature_shape:
        n_in *= dim
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(n_in, hidden), nn.ReLU()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.Linear(hidden, num_classes))


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"small_cnn": small_cnn, "mlp": mlp}


def build(arch: str, meta: dict, **kwargs: Any) -> nn.Module:
    """A model for the dataset described by ``meta`` (its ``dataset.json``)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    lo, hi = meta.get("value_range") or (0.0, 1.0)
    shape = list(meta["feature_shape"])
    return nn.Sequential(Preprocess(lo, hi - lo, shape),
                         ARCHITECTURES[arch](shape, len(meta["classes"]), **kwargs))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save(model: nn.Module, path: str, arch: str, meta: dict, kwargs: dict) -> None:
    torch.save({"arch": arch, "meta": meta, "kwargs": kwargs, "state_dict": model.state_dict()}, path)


def load(path: str) -> nn.Module:
    blob = torch.load(path, weights_only=True)
    model = build(blob["arch"], blob["meta"], **blob["kwargs"])
    model.load_state_dict(blob["state_dict"])
    return model.eval()


@torch.no_grad()
def predict_proba(model: nn.Module, features, batch_size: int = 2048) -> torch.Tensor:
    """Class probabilities ``(N, K)`` for raw features ``(N, D)``, in eval mode."""
    model.eval()
    x = torch.as_tensor(features, dtype=torch.float32)
    return torch.cat([model(x[i:i + batch_size]).softmax(-1) for i in range(0, len(x), batch_size)])
