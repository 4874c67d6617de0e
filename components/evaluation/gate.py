"""Promotion gate: conditions a candidate must meet before the ``champion`` alias may move to it.

Config shape (``evaluation.params.gate`` of a pipeline config)::

    gate:
      min: {accuracy: 0.9}                              # metric >= threshold
      max: {ece: 0.05, delta_sp: 0.1, delta_eo: 0.1}   # metric <= bound
      beat_champion: true                               # the champion comparison still applies

The default (no ``min``/``max`` conditions, ``beat_champion: true``) is the plain champion/challenger
rule. Every condition is reported, met or not, so the decision can be audited from the run alone.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_GATE: dict[str, Any] = {"min": {}, "max": {}, "beat_champion": True}


@dataclass
class GateDecision:
    """``passed``: every condition holds; ``reasons``: one sentence per condition; ``failed``: the
    reasons of the conditions that do not hold."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), "failed": list(self.failed)}


def validate_gate(gate: dict | None, available_metrics: Iterable[str] | None = None) -> dict[str, Any]:
    """The gate with defaults filled in; a ``ValueError`` naming the offending key otherwise.

    Args:
        gate: the ``gate`` mapping of a config (``None`` or ``{}``: no extra conditions).
        available_metrics: metric names the evaluation will compute; a condition on any other
            metric is an error (``None``: do not check names).
    """
    gate = {} if gate is None else gate
    if not isinstance(gate, dict):
        raise ValueError(f"gate must be a mapping with keys {sorted(DEFAULT_GATE)}, got {gate!r}")
    unknown = sorted(set(gate) - set(DEFAULT_GATE))
    if unknown:
        raise ValueError(f"gate has unknown key(s) {unknown}; allowed: {sorted(DEFAULT_GATE)}")
    resolved = {**DEFAULT_GATE, **gate}
    if not isinstance(resolved["beat_champion"], bool):
        raise ValueError(f"gate.beat_champion must be true or false, got {resolved['beat_champion']!r}")
    available = None if available_metrics is None else set(available_metrics)
    for bound in ("min", "max"):
        conditions = resolved[bound] or {}
        if not isinstance(conditions, dict):
            raise ValueError(f"gate.{bound} must map metric names to numbers, got {conditions!r}")
        for metric, value in conditions.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"gate.{bound}.{metric} must be a number, got {value!r}")
            if available is not None and metric not in available:
                raise ValueError(f"gate.{bound} names metric {metric!r}, which this evaluation does not compute; "
                                 f"available: {sorted(available)}")
        resolved[bound] = dict(conditions)
    return resolved


# What the `classification` evaluation computes for the student: these always, and the fairness gaps
# (worst over attributes, and ``delta_sp_<attr>``/``delta_eo_<attr>`` per attribute) when the dataset
# declares sensitive attributes; which attributes exist is known only once the data is read.
EVALUATION_METRICS = ("accuracy", "macro_f1", "ece", "delta_sp", "delta_eo")
PER_ATTRIBUTE = ("delta_sp_", "delta_eo_")


def validate_config_gate(gate: dict | None) -> dict[str, Any]:
    """Config-time check of a gate (before any data is read): structure, and metric names that the
    evaluation can compute at all; the evaluation task re-checks against the dataset's attributes."""
    sections = [gate.get(bound) for bound in ("min", "max")] if isinstance(gate, dict) else []
    named = [metric for section in sections if isinstance(section, dict) for metric in section]
    return validate_gate(gate, [*EVALUATION_METRICS, *(m for m in named if m.startswith(PER_ATTRIBUTE))])


def check_gate(metrics: dict[str, float], gate: dict | None) -> GateDecision:
    """Check every ``min``/``max`` condition of ``gate`` against ``metrics``.

    ``beat_champion`` is not decided here (it needs the champion scored on the same split; see
    :func:`distillery.components.evaluation.promotion.register_and_promote`).
    """
    gate = validate_gate(gate, metrics)
    reasons, failed = [], []
    for bound, (holds, met, broken) in {"min": (lambda v, t: v >= t, ">=", "<"),
                                        "max": (lambda v, t: v <= t, "<=", ">")}.items():
        for metric, threshold in gate[bound].items():
            value = float(metrics[metric])
            ok = holds(value, threshold)  # False for NaN: an undefined metric never passes
            reasons.append(f"{metric} {value:.4f} {met if ok else broken} {bound} {threshold:g}: "
                           f"{'ok' if ok else 'FAILED'}")
            if not ok:
                failed.append(reasons[-1])
    if not reasons:
        reasons.append("no gate conditions")
    return GateDecision(not failed, reasons, failed)
