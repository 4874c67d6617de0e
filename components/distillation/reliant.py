"""RELIANT: fair knowledge distillation given a sensitive attribute.

Dong, Zhang, Yuan, Zou, Wang & Li, "RELIANT: Fair Knowledge Distillation for Graph Neural
Networks", SDM 2023 (arXiv:2301.01150; ref. code yushundong/RELIANT) The paper's student is a
graph model; the mechanism needs no graph and runs here on any zoo student.

- The student minimises ``KD + bias_weight * bias``; KD is Hinton's loss
  (:func:`distillery.components.distillation.hinton_kd.kd_loss`: CE on labelled items, softened KL to the
  teacher on all items).
- ``bias`` is a differentiable surrogate of the group gap: the squared difference between the two
  groups' means of ``step(p)``, summed over the classes' softmax outputs ``p``, where ``step`` is the
  reference code's degree-9 odd polynomial approximation of the indicator ``1[p > 1/2]``
  (:data:`STEP_LEGENDRE`). ``fairness="sp"`` (statistical parity) takes every item;
  ``fairness="eo"`` (equal opportunity) only labelled items of the positive class. With more than
  two groups the bias is the mean over all pairs of groups (the paper's term for two).
- A learnable per-sample *proxy* vector enters the student's input (a :class:`ProxyInput`, built
  with ``models.build(..., input_proxy=P)``). The proxies *maximise* the bias (alternating steps,
  Adam), while the student is trained on the proxies' mean; at inference the proxy is that mean,
  stored in the student (``ProxyInput.proxy``), so the deployed model takes ``(N, D)`` features.

The sensitive attribute reaches the method as ``sensitive``: one group value per item, labelled
items first, then the unlabelled pool. In the pipeline the distillation task reads it from the
dataset's ``meta["sensitive"]`` (a feature column or a ``.npy`` file of the dataset folder, see
:func:`distillery.components.evaluation.fairness.sensitive_attributes`); ΔSP/ΔEO of the student are reported by
the evaluation stage (:func:`distillery.components.evaluation.fairness.fairness_gaps`).
"""
from __future__ import annotations

import numpy as np
import torch
from numpy.polynomial import legendre
from torch import nn

from distillery.components.core import models
from distillery.components.core.devices import model_device
from distillery.components.core.train import fit
from distillery.components.distillation.common import (
    check_compatible,
    logits_of,
    training_tensors,
)
from distillery.components.distillation.hinton_kd import kd_loss

# step(p) = sum_n c_n P_n(2p - 1), P_n the Legendre polynomials: the reference code's approx_func
# (its odd coefficients 1/2, -1/8, 1/16, -5/128, 7/256 are those of the binomial series of sqrt(1+t)).
STEP_LEGENDRE = (1 / 2, 1 / 2, 0, -1 / 8, 0, 1 / 16, 0, -5 / 128, 0, 7 / 256)
STEP_POWERS = tuple(float(c) for c in legendre.leg2poly(STEP_LEGENDRE))  # in x = 2p - 1, lowest first
FAIRNESS = ("sp", "eo")


def step_surrogate(p: torch.Tensor) -> torch.Tensor:
    """Smooth surrogate of ``1[p > 1/2]`` for probabilities ``p`` (any shape), element-wise."""
    x = 2 * p - 1
    out = torch.zeros_like(x)
    for c in reversed(STEP_POWERS):  # Horner
        out = out * x + c
    return out


def bias_surrogate(probs: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """RELIANT's bias term of a batch.

    Args:
        probs: ``(B, K)`` softmax outputs.
        groups: ``(B,)`` integer group per item.
    Returns:
        mean over pairs of present groups of ``sum_k (mean_g step(p_k) - mean_h step(p_k))^2``;
        zero when fewer than two groups are present.
    """
    present = torch.unique(groups)
    if len(present) < 2:
        return probs.sum() * 0.0
    values = step_surrogate(probs)
    means = torch.stack([values[groups == g].mean(0) for g in present])  # (G, K)
    gaps = ((means[:, None] - means[None]) ** 2).sum(-1)  # (G, G), each pair twice, zero diagonal
    return gaps.sum() / (len(present) * (len(present) - 1))


def encode_groups(sensitive, n_items: int) -> torch.Tensor:
    """``(n_items,)`` int64 group indices for any group values; a ``ValueError`` for a wrong length or
    fewer than two groups (no fairness to learn, and a silent no-op otherwise)."""
    values = np.asarray(sensitive)
    if values.ndim != 1 or len(values) != n_items:
        raise ValueError(f"RELIANT needs one sensitive-attribute value per item (labelled, then unlabelled): "
                         f"got shape {values.shape} for {n_items} items")
    present, codes = np.unique(values, return_inverse=True)
    if len(present) < 2:
        raise ValueError(f"the sensitive attribute has a single group ({present.tolist()}) among the "
                         f"{n_items} training items: RELIANT needs at least two groups to debias between")
    return torch.as_tensor(codes, dtype=torch.long)


def distil(teacher: nn.Module, student: nn.Module, labelled_features, labels, unlabelled_features, *,
           seed: int, on_epoch=None, epochs: int, lr: float, batch_size: int, sensitive,
           bias_weight: float = 2.0, fairness: str = "sp", positive_class: int = 1,
           temperature: float = 4.0, alpha: float = 0.1) -> nn.Module:
    """Fair distillation of ``teacher`` into ``student`` (which must start with a ``ProxyInput``).

    Args:
        labelled_features: ``(L, D)`` raw features with ``labels`` ``(L,)``.
        unlabelled_features: ``(U, D)`` raw features (may be empty).
        sensitive: ``(L + U,)`` the sensitive attribute's group per item, labelled items first.
        bias_weight: the paper's alpha, weight of the bias term. Its useful range depends on the KD
            term's scale (here the T^2-weighted KL, ~16x the reference code's) and on the batch: the
            paper's 10 to 1,000 does not carry over; 2 to 5 cut ΔSP by 20-80% at < 1 point of
            accuracy on the tabular data of tests/components/distillation/test_reliant.py.
        fairness: ``"sp"`` (statistical parity) or ``"eo"`` (equal opportunity: labelled items of
            class ``positive_class`` only).
        temperature, alpha: Hinton KD's ``T`` and CE weight.
    Returns:
        ``student``, trained, its proxy slot set to the proxies' mean, in eval mode.
    """
    num_classes = check_compatible(teacher, student, np.asarray(labelled_features).shape[1], labels=labels)
    if fairness not in FAIRNESS:
        raise ValueError(f"fairness must be one of {FAIRNESS}, got {fairness!r}")
    if fairness == "eo" and not 0 <= positive_class < num_classes:
        raise ValueError(f"positive_class {positive_class} is not one of the {num_classes} classes")
    if bias_weight < 0 or not 0 <= alpha <= 1 or temperature <= 0:
        raise ValueError(f"need bias_weight >= 0, 0 <= alpha <= 1, temperature > 0; got {bias_weight}, {alpha}, "
                         f"{temperature}")
    slot = student[0] if isinstance(student, nn.Sequential) and len(student) else None
    if not isinstance(slot, models.ProxyInput):
        raise ValueError("RELIANT's student needs an input slot for the proxy: build it with "
                         "models.build(arch, meta, input_proxy=P) (parameter input_proxy, e.g. 2)")
    x, y = training_tensors(labelled_features, labels, unlabelled_features)
    groups = encode_groups(sensitive, len(x))
    teacher_logits = logits_of(teacher, x)  # fixed: computed once, not every epoch
    body = student[1:]

    torch.manual_seed(seed)
    # as the reference: U[0, 1); drawn on the CPU (the same values on any device), kept beside the student
    proxies = torch.rand(len(x), slot.proxy.numel()).to(model_device(student)).requires_grad_(True)
    proxy_optimiser = torch.optim.Adam([proxies], lr=lr)

    def bias(logits: torch.Tensor, yb: torch.Tensor, gb: torch.Tensor) -> torch.Tensor:
        probs = logits.softmax(-1)
        if fairness == "eo":
            keep = yb == positive_class
            probs, gb = probs[keep], gb[keep]
        return bias_surrogate(probs, gb)

    def loss(model, xb, tb, yb, gb, rows):
        # The proxies' ascent step comes first, inside the loss: `fit` clears the student's gradients
        # (which this step also fills) right after, before the student's own backward and step.
        proxy_optimiser.zero_grad()
        (-bias_weight * bias(body(slot(xb, proxies[rows])), yb, gb)).backward()
        proxy_optimiser.step()
        logits = body(slot(xb, proxies.detach().mean(0)))
        return kd_loss(logits, tb, yb, temperature, alpha) + bias_weight * bias(logits, yb, gb)

    fit(student, (x, teacher_logits, y, groups, torch.arange(len(x))), loss, epochs, lr, batch_size, seed, on_epoch)
    with torch.no_grad():
        slot.proxy.copy_(proxies.mean(0))
    return student.eval()


def sensitive_groups(meta: dict, features: np.ndarray, ids: np.ndarray, attribute: str = "",
                     read_array=None) -> np.ndarray:
    """``(N,)`` groups of the sensitive attribute ``attribute`` for these rows, as the dataset declares
    it in ``meta["sensitive"]`` (:func:`distillery.components.evaluation.fairness.sensitive_attributes`); ``""``
    picks the only declared one. A ``ValueError`` when there is none to pick."""
    from distillery.components.core.datasets import sensitive_attributes

    declared = meta.get("sensitive") or {}
    if not declared:
        raise ValueError(f"RELIANT needs a sensitive attribute, but dataset {meta.get('name')!r} declares none "
                         "(dataset.json key 'sensitive': {name: feature column or .npy file})")
    if not attribute and len(declared) > 1:
        raise ValueError(f"dataset {meta.get('name')!r} declares sensitive attributes {sorted(declared)}: set "
                         "the parameter sensitive_attribute to one of them")
    attribute = attribute or next(iter(declared))
    if attribute not in declared:
        raise ValueError(f"sensitive_attribute {attribute!r} is not declared by dataset {meta.get('name')!r}; "
                         f"it declares {sorted(declared)}")
    return sensitive_attributes({**meta, "sensitive": {attribute: declared[attribute]}}, features, ids,
                                read_array)[attribute]
