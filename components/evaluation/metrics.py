"""Classification metrics on the held-out test split (torchmetrics).

- accuracy and macro-F1;
- expected calibration error, ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)| over equal-width
  confidence bins (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017).
"""
from __future__ import annotations

import numpy as np
import torch


def classification_metrics(probs: torch.Tensor, labels: np.ndarray, ece_bins: int = 15) -> dict[str, float]:
    """Metrics from predicted probabilities ``(N, K)`` and true labels ``(N,)``."""
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_calibration_error,
        multiclass_f1_score,
    )

    target = torch.as_tensor(labels, dtype=torch.long)
    k = probs.shape[1]
    return {
        "accuracy": float(multiclass_accuracy(probs, target, num_classes=k, average="micro")),
        "macro_f1": float(multiclass_f1_score(probs, target, num_classes=k, average="macro")),
        "ece": float(multiclass_calibration_error(probs, target, num_classes=k, n_bins=ece_bins, norm="l1")),
    }


CLASSIFICATION_METRICS = ("accuracy", "macro_f1", "ece")  # the keys of classification_metrics
