"""FitNets: a hint from a teacher layer guides a student layer, then knowledge distillation.

Romero, Ballas, Kahou, Chassang, Gatta & Bengio, "FitNets: Hints for Thin Deep Nets", ICLR 2015
(arXiv:1412.6550)

Stage 1 (hint training): the student up to its *guided* layer ``g``, followed by a regressor ``r``,
learns to reproduce the teacher's *hint* layer ``h``: minimise ``||h(x) - r(g(x))||²`` (mean over
elements) over the labelled set and the pool (hints need no labels). Only the student's layers up
to ``g`` and the regressor receive gradients. Stage 2: the whole student is trained with Hinton KD
(:func:`distillery.components.distillation.hinton_kd.distil`). The regressor exists for training only.

Layers are module names (``model.named_modules()``, e.g. ``"1.4"``); by default the middle feature
layer of each model (the paper takes hint and guided layers from the middle).
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

from distillery.components.core.devices import model_device
from distillery.components.core.train import fit
from distillery.components.distillation import features, hinton_kd
from distillery.components.distillation.common import (
    StageEpochs,
    check_compatible,
    training_tensors,
)


def make_regressor(guided_shape: tuple[int, ...], hint_shape: tuple[int, ...],
                   nonlinearity: nn.Module | None = None) -> nn.Module:
    """Maps a guided-layer output ``(B, *guided_shape)`` to the hint's ``(B, *hint_shape)``.

    Two feature maps ``(C, H, W)`` whose guided side is at least as large spatially: a convolution
    without padding and kernel ``(H_g - H_h + 1, W_g - W_h + 1)`` (the paper's convolutional
    regressor: far fewer weights than a dense one). A guided map smaller than the hint (a student
    that down-samples earlier, e.g. RepGhost against the small CNN): bilinear up-sampling to the
    hint's size, then a 1x1 convolution, so the regressor stays ``C_g * C_h`` weights (the paper
    does not cover this case; a dense map of the flattened layers would be ~10^7 weights here, far
    more than the student). Any other pair (a vector on either side): a linear map of the flattened
    layers, reshaped to the hint's shape. ``nonlinearity`` (the hint layer's own, e.g. ``ReLU``)
    follows, as the paper requires the regressor and the hint to share it: without it a sparse
    ReLU hint can only be matched by driving the student's guided units to zero (dead units).
    """
    if len(guided_shape) == len(hint_shape) == 3:
        if all(g >= h for g, h in zip(guided_shape[1:], hint_shape[1:])):
            kernel = (guided_shape[1] - hint_shape[1] + 1, guided_shape[2] - hint_shape[2] + 1)
            layers = [nn.Conv2d(guided_shape[0], hint_shape[0], kernel)]
        else:
            layers = [nn.Upsample(size=tuple(hint_shape[1:]), mode="bilinear", align_corners=False),
                      nn.Conv2d(guided_shape[0], hint_shape[0], 1)]
    else:
        layers = [nn.Flatten(), nn.Linear(math.prod(guided_shape), math.prod(hint_shape)),
                  nn.Unflatten(1, tuple(hint_shape))]
    return nn.Sequential(*layers, *([nonlinearity] if nonlinearity is not None else []))


def distil(teacher: nn.Module, student: nn.Module, labelled_features, labels, unlabelled_features, *,
           seed: int, on_epoch=None, epochs: int, lr: float, batch_size: int, hint_layer: str = "",
           guided_layer: str = "", hint_epochs: int = 20, temperature: float = 4.0,
           alpha: float = 0.1) -> nn.Module:
    """Hint training of ``student``'s ``guided_layer`` on ``teacher``'s ``hint_layer`` for
    ``hint_epochs``, then ``epochs`` of KD.

    Args:
        labelled_features: ``(L, D)`` raw features with ``labels`` ``(L,)``.
        unlabelled_features: ``(U, D)`` (may be empty).
        hint_layer, guided_layer: module names; ``""`` picks the middle feature layer
            (:func:`distillery.components.distillation.features.middle_layer`).
        temperature, alpha: of the KD stage (:func:`distillery.components.distillation.hinton_kd.kd_loss`).
    """
    if hint_epochs < 0:
        raise ValueError(f"hint_epochs must be >= 0, got {hint_epochs}")
    hinton_kd.check_kd_params(temperature, alpha)
    d = labelled_features.shape[1]
    check_compatible(teacher, student, d, labels=labels)
    hint_layer = features.check_layers(teacher, [hint_layer or features.middle_layer(teacher, d)], "teacher")[0]
    guided_layer = features.check_layers(student, [guided_layer or features.middle_layer(student, d)], "student")[0]
    hint_shape = features.feature_shapes(teacher, [hint_layer], d)[hint_layer]
    guided_shape = features.feature_shapes(student, [guided_layer], d)[guided_layer]
    torch.manual_seed(seed)
    hint_module = dict(teacher.named_modules())[hint_layer]
    regressor = make_regressor(guided_shape, hint_shape, copy.deepcopy(hint_module)
                               if isinstance(hint_module, features.ACTIVATIONS) else None).to(model_device(student))
    x, _ = training_tensors(labelled_features, labels, unlabelled_features)
    stages = StageEpochs(on_epoch)
    trainable = nn.ModuleDict({"student": student, "regressor": regressor})
    teacher.eval()
    with features.capture(teacher, [hint_layer]) as hint, features.capture(student, [guided_layer]) as guided:
        def hint_loss(model: nn.ModuleDict, xb: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                teacher(xb)
            model["student"](xb)  # layers past the guided one get no gradient from this loss
            return F.mse_loss(model["regressor"](guided[guided_layer]), hint[hint_layer])

        if hint_epochs:
            fit(trainable, (x,), hint_loss, hint_epochs, lr, batch_size, seed, stages.next(hint_epochs))
    return hinton_kd.distil(teacher, student, labelled_features, labels, unlabelled_features, seed=seed,
                            on_epoch=stages.next(epochs), epochs=epochs, lr=lr, batch_size=batch_size,
                            temperature=temperature, alpha=alpha)
