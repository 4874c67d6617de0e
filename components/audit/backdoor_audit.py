"""Backdoor audit of a (distilled) dataset: the attack success rate of a model trained on it.

Liu et al., "Backdoor Attacks Against Dataset Distillation", NDSS 2023 (NAIVEATTACK, DOORPING;
ref. code liuyugeng/baadd) A distilled set is a few hundred opaque
images: a backdoor planted in the real data before distillation (or optimised during it) survives
into them and cannot be seen. What can be measured is its effect: train a fresh model on the set,
stamp a trigger on test images of every class but the target, and count how many the model then
calls the target class.

- clean test accuracy (CTA): accuracy on the untouched test images;
- attack success rate (ASR): share of triggered non-target test images classified as the target;
- baseline: share of the *same* images, without the trigger, classified as the target: what a
  trigger with no effect would score (a model's ordinary errors into the target class, about
  ``(1 - CTA) / (K - 1)`` for evenly spread errors).

The set is flagged when ``ASR > max(floor, factor * baseline)`` (defaults 0.2 and 3). Why: a clean
set gives ASR close to its baseline (a small patch in an empty corner rarely changes a prediction),
while a planted backdoor sends most triggered images to the target (the paper reports ASR near 1.0
for DOORPING). ``factor`` keeps a weak model that already dumps many images into the target class
(baseline 0.15: threshold 0.45) from being flagged for that alone; ``floor`` keeps a good model with a
near-zero baseline (0.005) from being flagged for a handful of images that a stray patch flips:
0.2 is twice the target rate of guessing at random among 10 classes, and far below the ASR of any
backdoor worth the name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distillery.components.core.datasets import LabelledData, require_every_class

CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")


@dataclass(frozen=True)
class Trigger:
    """A patch trigger on images in ``[0, 1]`` (the dataset's ``value_range`` scaled).

    Attributes:
        mask: ``(C, H, W)`` in ``{0, 1}``: where the trigger replaces the image.
        pattern: ``(C, H, W)`` in ``[0, 1]``: what it puts there.
    """

    mask: np.ndarray
    pattern: np.ndarray

    @classmethod
    def square(cls, feature_shape: list[int], size: int = 4, corner: str = "bottom-right",
               pattern: Any = 1.0) -> Trigger:
        """A ``size`` x ``size`` square in a corner; ``pattern`` a value (1.0: white) or an array
        broadcastable to ``(C, size, size)``."""
        if len(feature_shape) != 3:
            raise ValueError(f"a patch trigger needs image data with feature_shape [C, H, W], got {feature_shape}")
        c, h, w = feature_shape
        if corner not in CORNERS:
            raise ValueError(f"trigger corner {corner!r} is not one of {list(CORNERS)}")
        if not 1 <= size <= min(h, w):
            raise ValueError(f"trigger size must be between 1 and {min(h, w)} pixels, got {size}")
        patch = np.broadcast_to(np.asarray(pattern, dtype=np.float32), (c, size, size))
        if patch.min() < 0 or patch.max() > 1:
            raise ValueError("trigger pattern values must be in [0, 1] (0: the value_range's low end, 1: its high end)")
        rows = slice(h - size, h) if corner.startswith("bottom") else slice(0, size)
        cols = slice(w - size, w) if corner.endswith("right") else slice(0, size)
        mask, full = np.zeros((c, h, w), np.float32), np.zeros((c, h, w), np.float32)
        mask[:, rows, cols], full[:, rows, cols] = 1.0, patch
        return cls(mask, full)

    def stamp(self, features: np.ndarray, meta: dict) -> np.ndarray:
        """Raw ``(N, D)`` features with the trigger pasted, in the dataset's value range (float32)."""
        shape = list(meta["feature_shape"])
        if list(self.mask.shape) != shape:
            raise ValueError(f"trigger of shape {list(self.mask.shape)} does not fit images of shape {shape}")
        lo, hi = meta.get("value_range") or (0.0, 1.0)
        mask, value = self.mask.reshape(-1), lo + self.pattern.reshape(-1) * (hi - lo)
        return (np.asarray(features, dtype=np.float32) * (1 - mask) + mask * value).astype(np.float32)

    def to_params(self) -> dict:
        return {"mask": self.mask.tolist(), "pattern": self.pattern.tolist()}


@dataclass
class AuditResult:
    """Outcome of :func:`audit_backdoor` (rates in [0, 1])."""

    attack_success_rate: float
    clean_accuracy: float
    baseline_rate: float
    threshold: float
    flagged: bool
    target_class: int
    n_triggered: int
    triggered_predictions: np.ndarray = field(repr=False)
    model: Any = field(default=None, repr=False)

    @property
    def verdict(self) -> str:
        return "backdoor-suspected" if self.flagged else "pass"

    def metrics(self) -> dict[str, float]:
        return {"attack_success_rate": self.attack_success_rate, "clean_accuracy": self.clean_accuracy,
                "baseline_target_rate": self.baseline_rate, "asr_threshold": self.threshold,
                "flagged": float(self.flagged)}


def audit_backdoor(data: LabelledData, test_features: np.ndarray, test_labels: np.ndarray, trigger: Trigger,
                   target_class: int, *, arch: str = "small_cnn", arch_kwargs: dict | None = None,
                   epochs: int = 300, lr: float = 1e-3, batch_size: int = 64, seed: int = 0,
                   floor: float = 0.2, factor: float = 3.0, on_epoch=None) -> AuditResult:
    """Train a fresh ``arch`` model on ``data`` and measure CTA and ASR on the test set.

    Args:
        data: the dataset to audit (e.g. a distilled set); every class of ``meta["classes"]`` must
            have at least one item (checked before training).
        test_features, test_labels: ``(M, D)`` raw features and ``(M,)`` labels of held-out real
            images (not the ones ``data`` was distilled from).
        trigger: the patch to test (:class:`Trigger`).
        target_class: the class index a backdoor would send triggered images to.
        floor, factor: flag when ``ASR > max(floor, factor * baseline)`` (module docstring).
    """
    from distillery.components.core import models
    from distillery.components.core.train import train_classifier

    meta, classes = data.meta, list(data.meta["classes"])
    if not 0 <= int(target_class) < len(classes):
        raise ValueError(f"target_class {target_class} is not a class index of {len(classes)} classes {classes}")
    if not 0 < floor < 1 or factor < 1:
        raise ValueError(f"need 0 < floor < 1 and factor >= 1, got floor={floor}, factor={factor}")
    test_features, test_labels = np.asarray(test_features), np.asarray(test_labels)
    if (test_features.ndim != 2 or test_features.shape[1] != data.features.shape[1]
            or len(test_features) != len(test_labels)):
        raise ValueError(f"test features {test_features.shape} / labels {test_labels.shape} do not match the "
                         f"dataset's {data.features.shape[1]} features per item")
    others = test_labels != target_class
    if not others.any():
        raise ValueError(f"the test set has no image outside the target class {target_class}: no ASR to measure")
    triggered = trigger.stamp(test_features[others], meta)  # checks the trigger's shape too
    require_every_class(data.labels, classes, f"dataset {meta.get('name', '')!r} under audit")

    model = train_classifier(data.features, data.labels, meta, arch, dict(arch_kwargs or {}), epochs, lr,
                             batch_size, seed, on_epoch)
    clean = models.predict_proba(model, test_features).argmax(-1).numpy()
    with_trigger = models.predict_proba(model, triggered).argmax(-1).numpy()
    asr = float((with_trigger == target_class).mean())
    baseline = float((clean[others] == target_class).mean())
    threshold = max(floor, factor * baseline)
    return AuditResult(asr, float((clean == test_labels).mean()), baseline, threshold, asr > threshold,
                       int(target_class), int(others.sum()), with_trigger, model)


def triggered_grid_figure(test_features: np.ndarray, test_labels: np.ndarray, result: AuditResult, trigger: Trigger,
                          meta: dict, n: int = 20):
    """The first ``n`` triggered non-target test images with true -> predicted class."""
    from distillery.components.core.plots import image_grid_figure

    others = np.flatnonzero(np.asarray(test_labels) != result.target_class)[:n]
    classes = meta["classes"]
    titles = [f"{classes[test_labels[i]]} -> {classes[p]}" for i, p in zip(others, result.triggered_predictions)]
    return image_grid_figure(trigger.stamp(test_features[others], meta), meta["feature_shape"], titles, 10,
                             f"Triggered test images (target {classes[result.target_class]!r}): "
                             f"ASR {result.attack_success_rate:.2f}, {result.verdict}", meta.get("value_range"))
