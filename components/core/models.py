"""Model zoo: teachers and students by name.

Every model takes raw flattened features ``(N, D)`` (as stored in the dataset) and returns logits
``(N, K)``: a :class:`Preprocess` layer in front scales values and restores the sample shape, so a
logged model needs no separate preprocessing code to serve.

Students beyond the MLP (both ~10-20x smaller than ``small_cnn`` on MNIST):

- ``starnet``: Ma et al., "Rewrite the Stars", CVPR 2024. Its block's *star operation* is the
  element-wise product of two 1x1-conv branches, ``ReLU6(W1 x) * (W2 x)``, between two depthwise 7x7
  convs, which maps into a high-dimensional implicit feature space at the cost of a narrow network.
- ``repghost``: Chen et al., "RepGhost: A Hardware-Efficient Ghost Module via Re-parameterization",
  arXiv:2211.06088 (2022). The ghost module's cheap depthwise conv gets a parallel BatchNorm
  (identity) branch *added* (not concatenated) during training; :func:`fuse` folds every BN and that
  branch into single convs for inference (same outputs in eval mode, fewer ops).

``fuse`` works on any zoo model (it folds every :class:`ConvBN` and :class:`RepGhostModule` it finds);
:func:`save` records whether the model was fused and :func:`load` rebuilds it in the same form.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from distillery.components.core import devices


class Preprocess(nn.Module):
    """``(x - offset) / scale`` then reshape ``(N, D) -> (N, *shape)``. ``offset`` and ``scale`` are
    numbers (images: the value range), or one per feature (tables: the training data's mean and
    standard deviation, set by :func:`standardise` before training; 0 and 1 until then)."""

    def __init__(self, offset: float | list[float], scale: float | list[float], shape: list[int]):
        super().__init__()
        self.register_buffer("offset", torch.tensor(offset, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))
        self.shape = list(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x.shape[0], not len(x): len() is a Python int, which the ONNX exporter would bake in as a
        # fixed batch size
        return ((x - self.offset) / self.scale).reshape(x.shape[0], *self.shape)


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


def tiny_cnn(feature_shape: list[int], num_classes: int, channels: list[int] = (8, 16, 32)) -> nn.Module:
    """One 3x3 conv (padding 1), ReLU and 2x2 max-pool per width in ``channels``, then a linear head
    on the flattened map (8,778 parameters on 1x28x28 inputs, 10 classes: the "9k CNN" student).
    Unlike :func:`small_cnn` it keeps its parameters in the convolutions, with no dense hidden layer
    or dropout to squeeze the features through."""
    if len(feature_shape) != 3:
        raise ValueError(f"tiny_cnn needs image data with feature_shape [C, H, W], got {feature_shape}")
    c, h, w = feature_shape
    layers: list[nn.Module] = []
    for width in map(int, channels):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        c, h, w = width, h // 2, w // 2
    if h < 1 or w < 1:
        raise ValueError(f"tiny_cnn: {len(channels)} 2x2 poolings leave no pixels of a {feature_shape[1:]} image")
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * h * w, num_classes))


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


class ConvBN(nn.Sequential):
    """``Conv2d`` (no bias, "same" padding) then ``BatchNorm2d``; :meth:`switch_to_deploy` folds the
    BN into the conv (torch's ``fuse_conv_bn_weights``), leaving ``Sequential(conv)``."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1):
        super().__init__(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out))

    @property
    def deployed(self) -> bool:
        return len(self) == 1

    def fused_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single conv's ``(weight, bias)`` equal to this conv + BN in eval mode."""
        conv = self[0]
        if self.deployed:
            return conv.weight.detach(), conv.bias.detach()
        return _fold_bn(conv.weight, self[1])

    def switch_to_deploy(self) -> None:
        if not self.deployed:
            weight, bias = self.fused_weights()
            self[0] = _conv_like(self[0], weight, bias)
            del self[1]


def _fold_bn(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` of a bias-free conv followed by ``bn`` in eval mode, as one conv (torch's
    ``fuse_conv_bn_weights``, in float64 so the folded conv matches the pair to float32 rounding)."""
    d = torch.float64
    w, b = fuse_conv_bn_weights(weight.detach().to(d), None, bn.running_mean.to(d), bn.running_var.to(d), bn.eps,
                                bn.weight.detach().to(d), bn.bias.detach().to(d))
    return w.detach().to(weight.dtype), b.detach().to(weight.dtype)


def _conv_like(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A ``Conv2d`` of ``conv``'s geometry with a bias, holding ``weight`` and ``bias``."""
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    groups=conv.groups, bias=True)
    with torch.no_grad():
        out.weight.copy_(weight)
        out.bias.copy_(bias)
    return out


class StarBlock(nn.Module):
    """StarNet block on ``(N, C, H, W)``: depthwise 7x7 + BN, the star operation
    ``ReLU6(f1(x)) * f2(x)`` (1x1 convs to ``mlp_ratio * C`` channels), 1x1 back to ``C`` + BN,
    depthwise 7x7, residual."""

    def __init__(self, dim: int, mlp_ratio: int = 3):
        super().__init__()
        hidden = mlp_ratio * dim
        self.dwconv = ConvBN(dim, dim, 7, groups=dim)
        self.f1, self.f2 = nn.Conv2d(dim, hidden, 1), nn.Conv2d(dim, hidden, 1)
        self.act = nn.ReLU6()
        self.g = ConvBN(hidden, dim, 1)
        self.dwconv2 = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x)
        y = self.act(self.f1(y)) * self.f2(y)  # the star operation
        return x + self.dwconv2(self.g(y))


def starnet(feature_shape: list[int], num_classes: int, channels: list[int] = (12, 16, 24),
            mlp_ratio: int = 3) -> nn.Module:
    """A small StarNet: stride-2 3x3 stem to ``channels[0]``, then per further width a stride-2 3x3
    down-sampling ConvBN and one :class:`StarBlock`; BN, global average pool, linear head
    (17,542 parameters on 1x28x28 inputs, 10 classes)."""
    if len(feature_shape) != 3:
        raise ValueError(f"starnet needs image data with feature_shape [C, H, W], got {feature_shape}")
    widths = [int(c) for c in channels]
    layers: list[nn.Module] = [ConvBN(feature_shape[0], widths[0], 3, stride=2), nn.ReLU6()]
    for c_in, c_out in zip(widths, widths[1:]):
        layers += [ConvBN(c_in, c_out, 3, stride=2), StarBlock(c_out, mlp_ratio)]
    return nn.Sequential(*layers, nn.BatchNorm2d(widths[-1]), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(widths[-1], num_classes))


class RepGhostModule(nn.Module):
    """RepGhost module ``(N, C_in, H, W) -> (N, C_out, H, W)``: a 1x1 ConvBN (+ReLU) makes the
    intrinsic features ``y``; the cheap depthwise ConvBN's output is *added* to a BatchNorm of ``y``
    (the re-parameterisable identity branch); optional ReLU. :meth:`switch_to_deploy` merges the
    BN branch into the depthwise conv: BN(y) is a depthwise conv whose kernel is the identity
    (1 at the centre) scaled by BN, and convs of one shape add."""

    def __init__(self, c_in: int, c_out: int, relu: bool = True, dw_size: int = 3):
        super().__init__()
        self.primary = nn.Sequential(ConvBN(c_in, c_out, 1), nn.ReLU() if relu else nn.Identity())
        self.cheap = ConvBN(c_out, c_out, dw_size, groups=c_out)
        self.fusion_bn: nn.BatchNorm2d | None = nn.BatchNorm2d(c_out)
        self.act = nn.ReLU() if relu else nn.Identity()

    @property
    def deployed(self) -> bool:
        return self.fusion_bn is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        out = self.cheap(y)
        if self.fusion_bn is not None:
            out = out + self.fusion_bn(y)
        return self.act(out)

    def switch_to_deploy(self) -> None:
        if self.deployed:
            return
        weight, bias = self.cheap.fused_weights()
        k = weight.shape[-1]
        identity = torch.zeros_like(weight)
        identity[:, 0, k // 2, k // 2] = 1.0
        id_weight, id_bias = _fold_bn(identity, self.fusion_bn)
        self.cheap = nn.Sequential(_conv_like(self.cheap[0], weight + id_weight, bias + id_bias))
        self.fusion_bn = None


class RepGhostBottleneck(nn.Module):
    """RepGhost bottleneck: RepGhost module (ReLU) to ``c_mid``, a stride-``stride`` depthwise ConvBN
    when down-sampling, RepGhost module (no ReLU) to ``c_out``; plus a shortcut (identity, or
    depthwise + 1x1 ConvBN when the shape changes)."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, stride: int = 1):
        super().__init__()
        self.ghost1 = RepGhostModule(c_in, c_mid, relu=True)
        self.down = ConvBN(c_mid, c_mid, 3, stride, groups=c_mid) if stride > 1 else nn.Identity()
        self.ghost2 = RepGhostModule(c_mid, c_out, relu=False)
        self.shortcut = (nn.Identity() if c_in == c_out and stride == 1 else
                         nn.Sequential(ConvBN(c_in, c_in, 3, stride, groups=c_in), ConvBN(c_in, c_out, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ghost2(self.down(self.ghost1(x))) + self.shortcut(x)


def repghost(feature_shape: list[int], num_classes: int, channels: list[int] = (8, 16, 32),
             expansion: int = 2, head: int = 64) -> nn.Module:
    """A small RepGhostNet: stride-2 3x3 stem to ``channels[0]``, one stride-2 bottleneck (mid width
    ``expansion * c_in``) per further width, 1x1 ConvBN + ReLU to ``head`` channels, global average
    pool, linear head (7,802 parameters before fusion on 1x28x28 inputs, 10 classes)."""
    if len(feature_shape) != 3:
        raise ValueError(f"repghost needs image data with feature_shape [C, H, W], got {feature_shape}")
    widths = [int(c) for c in channels]
    layers: list[nn.Module] = [ConvBN(feature_shape[0], widths[0], 3, stride=2), nn.ReLU()]
    layers += [RepGhostBottleneck(c_in, expansion * c_in, c_out, stride=2) for c_in, c_out in zip(widths, widths[1:])]
    return nn.Sequential(*layers, ConvBN(widths[-1], head, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(head, num_classes))


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"small_cnn": small_cnn, "tiny_cnn": tiny_cnn, "mlp": mlp,
                                                      "starnet": starnet, "repghost": repghost}
# The paper each architecture follows (`distillery methods` lists them with their size on MNIST).
ARCHITECTURE_PAPERS = {
    "small_cnn": "LeCun et al., Gradient-based learning applied to document recognition, Proc. IEEE 1998",
    "tiny_cnn": "LeCun et al., Gradient-based learning applied to document recognition, Proc. IEEE 1998",
    "mlp": "Rumelhart, Hinton & Williams, Learning representations by back-propagating errors, Nature 1986",
    "starnet": "Ma et al., Rewrite the Stars, CVPR 2024",
    "repghost": "Chen et al., RepGhost: A Hardware-Efficient Ghost Module via Re-parameterization, arXiv:2211.06088",
}
MNIST_META = {"feature_shape": [1, 28, 28], "classes": [str(c) for c in range(10)], "value_range": [0.0, 1.0]}


class ProxyInput(nn.Module):
    """An input slot for a per-sample proxy vector ``p`` ``(P,)``: ``x + mix(p)`` with a learnable
    linear ``mix: R^P -> R^D`` (for a linear first layer this is appending ``p`` to the input).
    Without an explicit ``proxy`` the stored ``proxy`` buffer is used (all zeros unless a fair
    distillation method such as RELIANT set it to its proxies' mean), so the model still takes
    ``(N, D)`` features only."""

    def __init__(self, num_features: int, proxy_dim: int):
        super().__init__()
        self.register_buffer("proxy", torch.zeros(proxy_dim))
        self.mix = nn.Linear(proxy_dim, num_features, bias=False)

    def forward(self, x: torch.Tensor, proxy: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.mix(self.proxy if proxy is None else proxy)


BUILD_KEYWORDS = ("input_proxy",)  # keywords of :func:`build` itself, valid for every architecture


def build(arch: str, meta: dict, *, input_proxy: int = 0, **kwargs: Any) -> nn.Module:
    """A model for the dataset described by ``meta`` (its ``dataset.json``).

    ``input_proxy > 0`` puts a :class:`ProxyInput` of that many dimensions in front (what RELIANT
    trains); every other keyword goes to the architecture.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    shape = list(meta["feature_shape"])
    if meta.get("value_range") is None and len(shape) == 1:  # a table: per-feature standardisation
        offset, scale = [0.0] * shape[0], [1.0] * shape[0]
    else:
        lo, hi = meta.get("value_range") or (0.0, 1.0)
        offset, scale = float(lo), float(hi - lo)
    layers = [ProxyInput(math.prod(shape), input_proxy)] if input_proxy > 0 else []
    return nn.Sequential(*layers, Preprocess(offset, scale, shape),
                         ARCHITECTURES[arch](shape, len(meta["classes"]), **kwargs))


def standardise(model: nn.Module, features) -> nn.Module:
    """Set a table model's per-feature ``Preprocess`` to the mean and standard deviation of
    ``features`` ``(N, D)`` (the data it trains on), so features of any scale reach the first layer
    standardised; saved and exported with the model. Models of images are left as they are."""
    for module in model.modules():
        if isinstance(module, Preprocess) and module.offset.ndim == 1:
            x = torch.as_tensor(features, dtype=torch.float64)
            module.offset.copy_(x.mean(0).float())
            module.scale.copy_(x.std(0).clamp_min(1e-6).float() if len(x) > 1 else torch.ones_like(module.scale))
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, ...] | list[int]) -> int:
    """Floating-point operations of one forward pass on one input of ``input_shape`` (without the
    batch dimension, e.g. ``(784,)`` for raw MNIST features), as torch's ``FlopCounterMode`` counts
    them (matmuls and convs, 2 per multiply-add; element-wise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_shape, device=devices.model_device(model)))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def is_fused(model: nn.Module) -> bool:
    """Whether :func:`fuse` re-parameterised ``model`` (any of its re-parameterisable layers)."""
    return any(getattr(m, "deployed", False) for m in model.modules())


def fuse(model: nn.Module) -> nn.Module:
    """Fold train-time structure into inference-time convs, in place: every BN after a conv
    (:class:`ConvBN`) and RepGhost's parallel BN branch. Puts ``model`` in eval mode (the folding
    uses the BN running statistics, so outputs match eval-mode outputs); returns it."""
    model.eval()
    for module in list(model.modules()):
        if hasattr(module, "switch_to_deploy"):
            module.switch_to_deploy()
    return model


def save(model: nn.Module, path: str, arch: str, meta: dict, kwargs: dict) -> None:
    """Architecture, dataset meta, architecture keywords and weights; a fused model is saved fused
    (``fused: True``) and :func:`load` fuses a fresh build before loading its weights."""
    # CPU tensors, whatever device the model trained on, so any machine can load the file
    torch.save({"arch": arch, "meta": meta, "kwargs": kwargs,
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "fused": is_fused(model)}, path)


def load(path: str) -> nn.Module:
    """The saved model on the CPU, in eval mode (a task moves it to its stage's device)."""
    blob = torch.load(path, weights_only=True, map_location="cpu")
    model = build(blob["arch"], blob["meta"], **blob["kwargs"])
    if blob.get("fused"):
        fuse(model)
    model.load_state_dict(blob["state_dict"])
    return model.eval()


@torch.no_grad()
def logits(model: nn.Module, features, batch_size: int = 2048) -> torch.Tensor:
    """Float32 logits ``(N, K)`` on the CPU for raw features ``(N, D)`` (an array or a tensor), in
    eval mode; each batch runs on the model's device, in the current precision
    (:mod:`distillery.components.core.devices`)."""
    model.eval()
    device = devices.model_device(model)
    out = []
    for i in range(0, len(features), batch_size):
        with devices.autocast(device):
            out.append(model(devices.to_model(model, features[i:i + batch_size])).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def predict_proba(model: nn.Module, features, batch_size: int = 2048) -> torch.Tensor:
    """Class probabilities ``(N, K)`` on the CPU for raw features ``(N, D)``, in eval mode (:func:`logits`)."""
    return logits(model, features, batch_size).softmax(-1)


def last_linear(model: Any):
    """The model's last ``nn.Linear`` module (whose input is the penultimate representation)."""
    from torch import nn

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear layer, so it has no penultimate features")
    return linears[-1]


def forward(model: Any, features: np.ndarray, chunk_size: int,
            embeddings: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities ``(N, K)`` and optionally embeddings ``(N, H)``, streamed in chunks, eval mode.
    Each chunk runs on the model's device (in the current precision); results come back as float32
    on the CPU."""
    import torch

    model.eval()
    device = devices.model_device(model)
    captured: list[torch.Tensor] = []
    hook = last_linear(model).register_forward_hook(
        lambda module, inputs, output: captured.append(inputs[0].detach())) if embeddings else None
    probs, embs = [], []
    try:
        with torch.no_grad():
            for start in range(0, len(features), chunk_size):
                x = devices.to_model(model, features[start:start + chunk_size])
                with devices.autocast(device):
                    logits = model(x)
                probs.append(logits.float().softmax(-1).cpu().numpy())
                if embeddings:
                    embs.append(captured.pop().reshape(len(x), -1).float().cpu().numpy())
    finally:
        if hook is not None:
            hook.remove()
    return np.concatenate(probs), (np.concatenate(embs) if embeddings else None)
