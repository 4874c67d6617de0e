"""Group fairness of a classifier's predictions, per sensitive attribute (fairlearn).

As reported by RELIANT (Dong et al., "RELIANT: Fair Knowledge Distillation for Graph Neural
Networks", SDM 2023), for a binary task and a binary sensitive attribute ``s``:

- statistical parity gap  ΔSP = |P(ŷ=1 | s=0) − P(ŷ=1 | s=1)|;
- equal opportunity gap   ΔEO = |P(ŷ=1 | y=1, s=0) − P(ŷ=1 | y=1, s=1)|  (true-positive-rate gap).

Generalisation used here (reduces to the above for two classes and two groups):

- more than two groups: the largest gap over all pairs of groups (max − min of the group rates);
- more than two classes: one-vs-rest, the largest gap over classes c of the same quantity with
  "ŷ=1" read as "ŷ=c" (and, for ΔEO, "y=1" as "y=c"). A class whose positives fall in fewer than two
  groups says nothing about equal opportunity and is left out of ΔEO (NaN if no class is left).

The group rates come from fairlearn (``demographic_parity_difference``: max − min selection rate
between groups); ΔEO is that same rate on the rows of true class c, which is exactly the TPR gap.
"""
from __future__ import annotations

import numpy as np


def fairness_gaps(predicted: np.ndarray, labels: np.ndarray, groups: np.ndarray, num_classes: int,
                  attribute: str = "s") -> dict[str, float]:
    """ΔSP and ΔEO of hard predictions for one sensitive attribute.

    Args:
        predicted: ``(N,)`` predicted classes.
        labels: ``(N,)`` true classes in ``[0, num_classes)``.
        groups: ``(N,)`` the sensitive attribute's value per sample (any hashable values).
        attribute: the attribute's name, for error messages.
    Returns:
        ``{"delta_sp": ..., "delta_eo": ...}``.
    """
    from fairlearn.metrics import demographic_parity_difference

    predicted, labels, groups = np.asarray(predicted), np.asarray(labels), np.asarray(groups)
    if not len(predicted) == len(labels) == len(groups):
        raise ValueError(f"sensitive attribute {attribute!r}: {len(groups)} values for {len(predicted)} predictions "
                         f"and {len(labels)} labels")
    present = np.unique(groups)
    if len(present) < 2:
        raise ValueError(f"sensitive attribute {attribute!r} has a single group ({present.tolist()}) in the "
                         "evaluation data: group fairness gaps need at least two groups")
    classes = [1] if num_classes == 2 else range(num_classes)  # binary: the positive class only

    def gap(rows: np.ndarray, c: int) -> float:
        hit = (predicted[rows] == c).astype(int)
        return float(demographic_parity_difference(hit, hit, sensitive_features=groups[rows]))

    everyone = np.ones(len(groups), dtype=bool)
    sp = max(gap(everyone, c) for c in classes)
    eo = [gap(labels == c, c) for c in classes if len(np.unique(groups[labels == c])) >= 2]
    return {"delta_sp": sp, "delta_eo": max(eo) if eo else float("nan")}


def fairness_metrics(predicted: np.ndarray, labels: np.ndarray, sensitive: dict[str, np.ndarray],
                     num_classes: int) -> dict[str, float]:
    """``delta_sp_<attr>``/``delta_eo_<attr>`` per attribute, and ``delta_sp``/``delta_eo``: the worst
    (largest) over attributes, which is what a promotion gate bounds."""
    if not sensitive:
        return {}
    metrics: dict[str, float] = {}
    for name, groups in sensitive.items():
        for key, value in fairness_gaps(predicted, labels, groups, num_classes, name).items():
            metrics[f"{key}_{name}"] = value
    for key in ("delta_sp", "delta_eo"):
        defined = [metrics[f"{key}_{n}"] for n in sensitive if not np.isnan(metrics[f"{key}_{n}"])]
        metrics[key] = max(defined) if defined else float("nan")
    return metrics


