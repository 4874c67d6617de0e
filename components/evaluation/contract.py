"""Contract of an evaluation method: score the final teacher and student on the test split.

Evaluation methods log different kinds of result, so
:func:`distillery.components.evaluation.tasks.run_evaluation` hands each to its own task body
(:data:`CALLS`: method name -> the call that body makes), and a method follows one of two calls:

* :class:`MetricsMethod` (``classification``)::

      metrics = target(probs, labels, ece_bins)

  ``probs``: ``(N, K)`` float32 torch tensor of class probabilities on the test split; ``labels``:
  ``(N,)`` int64; ``ece_bins``: int. Returns ``{"accuracy", "macro_f1", "ece", ...}`` floats (the
  gate may name any of them). The body calls it for the teacher, the student and the champion.
* :class:`CandidateSelectionMethod` (``ood_selection``)::

      selection, stats = target(models, domains, threshold=..., tolerance=..., grid_size=...,
                                max_per_group=..., seed=seed)

  ``models``: candidate name -> ``torch.nn.Module`` (the pipeline's ``teacher`` and ``student`` and
  any configured candidates); ``domains``: domain name -> ``(features (N, D), labels (N,))``, the test
  split under each configured transform. The keywords are the parameters ``informative_threshold``,
  ``tolerance``, ``grid_size`` and ``max_per_group``. Returns the selection (``.selected``,
  ``.table``) and per-candidate feature statistics.

Neither call takes extra inputs (:data:`INPUTS`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch

INPUTS: tuple[str, ...] = ()  # keyword inputs beyond the calls above that the task can supply


class MetricsMethod(Protocol):
    def __call__(self, probs: torch.Tensor, labels: np.ndarray, ece_bins: int, /) -> dict[str, float]: ...


class CandidateSelectionMethod(Protocol):
    def __call__(self, models: dict[str, Any], domains: dict[str, tuple[np.ndarray, np.ndarray]], /, *,
                 threshold: float, tolerance: float, grid_size: int, max_per_group: int,
                 seed: int) -> tuple[Any, dict[str, Any]]: ...


CALLS: dict[str, type] = {"classification": MetricsMethod, "ood_selection": CandidateSelectionMethod}
