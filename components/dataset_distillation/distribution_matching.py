"""Dataset distillation by distribution matching (DM).

Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023

``ipc`` synthetic images per class are learnt so that a *randomly initialised* embedding network,
sampled afresh every iteration and never trained, gives the same mean embedding per class on a
real batch and on the synthetic images of that class::

    loss = sum_c || mean_i psi(A_c(x_real_c,i)) - mean_j psi(A_c(s_c,j)) ||^2

``psi`` is the paper's ConvNet (``depth`` blocks of 3x3 conv, instance norm, ReLU, 2x2 average
pooling; the flattened output is the embedding) and ``A_c`` one draw of differentiable Siamese
augmentation (DSA: colour, crop, cutout, scale, rotate) applied identically to the real and the
synthetic batch of class ``c``. The synthetic images start from random real images of their class
and are updated by SGD (momentum 0.5), as in the paper.

Images are optimised in ``[0, 1]`` (the dataset's ``value_range`` scaled) and kept there, so the
distilled set is a valid dataset of the same kind and shape as its source: features ``(K*ipc, D)``
in the source's value range (float32), labels ``[0]*ipc + [1]*ipc + ...``, and
``meta["provenance"]`` naming the method, its parameters and the parent's content version.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from distillery.components.core.datasets import LabelledData, require_every_class
from distillery.components.core.plots import image_grid_figure

METHOD = "distribution_matching"


class ConvEmbedder(nn.Module):
    """The DM paper's ConvNet: ``depth`` x [conv3x3(width) -> instance norm -> ReLU -> avgpool 2].

    ``forward`` returns the flattened embedding ``(B, width * h * w)``; ``head`` (a linear layer to
    the classes, unused by DM) is the last layer whose weights DOORPING reads to pick a neuron.
    """

    def __init__(self, feature_shape: list[int], num_classes: int, width: int = 128, depth: int = 3):
        super().__init__()
        channels, height, width_px = feature_shape
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Conv2d(channels, width, 3, padding=1),
                       nn.GroupNorm(width, width, affine=True),  # one group per channel: instance norm
                       nn.ReLU(inplace=True), nn.AvgPool2d(2)]
            channels, height, width_px = width, height // 2, width_px // 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(width * height * width_px, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def siamese_augment(x: torch.Tensor, generator: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """Draw one DSA transform and return it as a function (applied alike to real and synthetic).

    DSA (Zhao & Bilen, ICML 2021) with the ``Siamese`` setting DM uses: one parameter draw per class
    and iteration shared by both batches, so the two are compared under the same view. Colour
    (brightness, contrast), crop (a shift of up to 1/8 of the side, zero padded), scale (x1.2), rotate
    (+-15 degrees) and cutout (a zeroed square of half the side). Flip is left out: digits and most
    class-bearing images are not mirror-symmetric. ``x`` only fixes device and shape.
    """
    def u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    brightness, contrast = u(-0.5, 0.5), u(0.5, 1.5)
    sx, sy = u(1 / 1.2, 1.2), u(1 / 1.2, 1.2)
    angle = math.radians(u(-15, 15))
    tx, ty = u(-0.25, 0.25), u(-0.25, 0.25)  # 1/8 of the side in affine_grid's [-1, 1] coordinates
    height, width = x.shape[-2:]
    ch, cw = height // 2, width // 2
    cy, cx = int(u(0, height - ch + 1 - 1e-9)), int(u(0, width - cw + 1 - 1e-9))
    cos, sin = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[sx * cos, -sx * sin, tx], [sy * sin, sy * cos, ty]], dtype=x.dtype, device=x.device)
    keep = torch.ones(height, width, dtype=x.dtype, device=x.device)
    keep[cy:cy + ch, cx:cx + cw] = 0

    def apply(batch: torch.Tensor) -> torch.Tensor:
        mean = batch.mean(dim=(1, 2, 3), keepdim=True)
        batch = (batch - mean) * contrast + mean + brightness
        grid = F.affine_grid(theta.expand(len(batch), 2, 3), list(batch.shape), align_corners=False)
        batch = F.grid_sample(batch, grid, padding_mode="zeros", align_corners=False)
        return batch * keep

    return apply


def to_unit(features: np.ndarray, meta: dict) -> torch.Tensor:
    """Raw ``(N, D)`` features -> ``(N, C, H, W)`` float32 images in ``[0, 1]`` (by ``value_range``)."""
    lo, hi = meta.get("value_range") or (0.0, 1.0)
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    return ((x - lo) / (hi - lo)).reshape(len(x), *meta["feature_shape"])


def from_unit(images: torch.Tensor, meta: dict) -> np.ndarray:
    lo, hi = meta.get("value_range") or (0.0, 1.0)
    return (images.detach().reshape(len(images), -1) * (hi - lo) + lo).numpy().astype(np.float32)


def match_distributions(real: torch.Tensor, labels: torch.Tensor, num_classes: int, ipc: int, *,
                        iterations: int, lr: float, momentum: float, batch_real: int, width: int, depth: int,
                        augment: bool, seed: int,
                        on_iteration: Callable[[int, float], None] | None = None,
                        on_embedder: Callable[[ConvEmbedder, int], None] | None = None) -> torch.Tensor:
    """The DM optimisation on images in ``[0, 1]``; returns the synthetic images ``(K*ipc, C, H, W)``.

    Args:
        real: ``(N, C, H, W)`` real images; ``labels`` ``(N,)`` in ``[0, num_classes)``, every
            class with at least ``ipc`` images.
        on_iteration: called with ``(iteration, loss)`` after each update.
        on_embedder: called with each iteration's fresh embedder before the real batches are drawn;
            may modify ``real`` in place (DOORPING re-pastes its trigger into the poisoned rows).
    """
    generator = torch.Generator().manual_seed(seed)
    by_class = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    start = torch.cat([rows[torch.randperm(len(rows), generator=generator)[:ipc]] for rows in by_class])
    synthetic = real[start].clone().requires_grad_(True)  # initialised from random real images
    optimiser = torch.optim.SGD([synthetic], lr=lr, momentum=momentum)
    shape = list(real.shape[1:])
    for iteration in range(iterations):
        with torch.random.fork_rng(devices=[]):  # a fresh random network every iteration, reproducibly,
            torch.manual_seed(seed * 1_000_003 + iteration)  # without touching the caller's global RNG
            embedder = ConvEmbedder(shape, num_classes, width, depth).train()
        for p in embedder.parameters():
            p.requires_grad_(False)
        if on_embedder is not None:
            on_embedder(embedder, iteration)
        real_views, synthetic_views = [], []
        for c, rows in enumerate(by_class):
            batch = real[rows[torch.randperm(len(rows), generator=generator)[:batch_real]]]
            own = synthetic[c * ipc:(c + 1) * ipc]
            if augment:
                view = siamese_augment(batch, generator)
                batch, own = view(batch), view(own)
            real_views.append(batch)
            synthetic_views.append(own)
        # One forward pass for all classes: instance norm treats every sample on its own.
        with torch.no_grad():
            real_embedding = embedder(torch.cat(real_views))
        synthetic_embedding = embedder(torch.cat(synthetic_views))
        real_means = torch.stack([e.mean(0) for e in real_embedding.split([len(v) for v in real_views])])
        synthetic_means = synthetic_embedding.reshape(num_classes, ipc, -1).mean(1)
        loss = ((real_means - synthetic_means) ** 2).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            synthetic.clamp_(0.0, 1.0)  # stay a valid image of the source's value range
        if on_iteration is not None:
            on_iteration(iteration, loss.item())
    return synthetic.detach()


def mean_embedding_gap(real: torch.Tensor, real_labels: torch.Tensor, synthetic: torch.Tensor,
                       synthetic_labels: torch.Tensor, num_classes: int, *, width: int = 128, depth: int = 3,
                       networks: int = 5, seed: int = 12345) -> float:
    """The DM objective without augmentation, averaged over ``networks`` fresh random embedders:
    ``mean_nets sum_c ||mean psi(real_c) - mean psi(synthetic_c)||^2``. Lower: closer distributions."""
    total = 0.0
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        for n in range(networks):
            torch.manual_seed(seed + n)
            embedder = ConvEmbedder(list(real.shape[1:]), num_classes, width, depth)
            er, es = embedder(real), embedder(synthetic)
            total += sum(float(((er[real_labels == c].mean(0) - es[synthetic_labels == c].mean(0)) ** 2).sum())
                         for c in range(num_classes))
    return total / networks


def distil_dataset(data: LabelledData, ipc: int = 10, *, iterations: int = 1000, lr: float = 1.0,
                   momentum: float = 0.5, batch_real: int = 256, width: int = 128, depth: int = 3,
                   augment: bool = True, seed: int = 0, name: str | None = None,
                   parent_version: str | None = None, source: str | None = None,
                   on_iteration: Callable[[int, float], None] | None = None,
                   on_embedder: Callable[[ConvEmbedder, int], None] | None = None,
                   real_images: torch.Tensor | None = None) -> LabelledData:
    """Distil ``data`` (an image dataset) into ``ipc`` synthetic images per class by DM.

    Args:
        data: the source; ``meta`` needs ``kind: image``, ``feature_shape [C, H, W]``, ``classes``.
        ipc: images per class (the paper's 1/10/50).
        iterations, lr, momentum, batch_real: the SGD on the synthetic images and the real batch
            size per class (paper: 20,000 iterations, lr 1, momentum 0.5, 256 real images per class).
        width, depth: the random ConvNet (paper: 128, 3).
        augment: DSA on both batches (the paper's setting).
        name: the distilled set's name (default ``<source name>-dm<ipc>``).
        parent_version: recorded in the provenance (default: the content version of ``data``).
        source: how ``meta["source"]`` names the parent (default: its name), e.g. its folder and
            DVC data version.
        real_images: ``(N, C, H, W)`` in ``[0, 1]`` to use instead of ``data``'s features
            (DOORPING keeps them to re-paste its trigger); labels stay ``data.labels``.

    Returns:
        ``LabelledData`` with features ``(K*ipc, D)`` float32, labels ``(K*ipc,)``, ids ``0..K*ipc-1``.
    """
    from distillery.components.core.provenance import content_version, with_provenance

    meta = data.meta
    if meta.get("kind") != "image" or len(meta.get("feature_shape", [])) != 3:
        raise ValueError(f"distribution matching needs an image dataset with feature_shape [C, H, W]; "
                         f"{meta.get('name', 'the dataset')!r} has kind {meta.get('kind')!r}, "
                         f"feature_shape {meta.get('feature_shape')}")
    if not isinstance(ipc, (int, np.integer)) or ipc < 1:
        raise ValueError(f"ipc (images per class) must be an integer >= 1, got {ipc!r}")
    if iterations < 0 or lr <= 0 or batch_real < 1:
        raise ValueError(f"need iterations >= 0, lr > 0, batch_real >= 1; got {iterations}, {lr}, {batch_real}")
    classes = list(meta["classes"])
    require_every_class(data.labels, classes, f"source dataset {meta.get('name', '')!r}")
    counts = np.bincount(data.labels, minlength=len(classes))
    if counts.min() < ipc:
        short = [classes[c] for c in np.flatnonzero(counts < ipc)]
        raise ValueError(f"ipc={ipc} but class(es) {short} have fewer real images ({counts.min()} at least); "
                         "DM starts each synthetic image from a distinct real one")
    params = {"ipc": int(ipc), "iterations": iterations, "lr": lr, "momentum": momentum, "batch_real": batch_real,
              "width": width, "depth": depth, "augment": augment, "seed": seed}
    real = to_unit(data.features, meta) if real_images is None else real_images
    synthetic = match_distributions(real, torch.as_tensor(data.labels, dtype=torch.long), len(classes), int(ipc),
                                    iterations=iterations, lr=lr, momentum=momentum, batch_real=batch_real,
                                    width=width, depth=depth, augment=augment, seed=seed,
                                    on_iteration=on_iteration, on_embedder=on_embedder)
    n = len(classes) * int(ipc)
    source_name = meta.get("name", "dataset")
    out_meta = {"name": name or f"{source_name}-dm{ipc}", "kind": "image",
                "feature_shape": list(meta["feature_shape"]), "classes": classes,
                "value_range": meta.get("value_range"),
                "source": f"distribution matching (Zhao & Bilen, WACV 2023) of {source or repr(source_name)}, "
                          f"{ipc} images per class"}
    out = LabelledData(from_unit(synthetic, meta), np.repeat(np.arange(len(classes), dtype=np.int64), ipc),
                       np.arange(n, dtype=np.int64), out_meta)
    return with_provenance(out, METHOD, params, parent_version or content_version(data))


def synthetic_grid_figure(data: LabelledData, ipc: int):
    """One row per class, ``ipc`` columns (at most 10 shown): the distilled set at a glance."""
    shown = min(ipc, 10)
    rows = np.concatenate([np.flatnonzero(data.labels == c)[:shown] for c in range(data.num_classes)])
    return image_grid_figure(data.features[rows], data.meta["feature_shape"],
                             [data.meta["classes"][y] for y in data.labels[rows]], shown,
                             f"{data.meta.get('name', 'distilled set')}: {ipc} images per class",
                             data.meta.get("value_range"))
