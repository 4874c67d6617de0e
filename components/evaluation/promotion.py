"""Champion/challenger promotion in the MLflow Model Registry.

Every candidate is registered as a new version; the ``champion`` alias moves to it only when it
beats the current champion on the chosen metric, both measured on the same test split (a score
stored from another data version would not be comparable). If the champion cannot be evaluated,
the alias stays where it is: an error never costs a team its serving model.

A promotion gate (:mod:`distillery.components.evaluation.gate`) can add conditions (minimum accuracy, maximum
ECE or fairness gaps, ...): the alias then moves only when every condition holds, and, with
``beat_champion``, the candidate also beats the champion. A candidate failing the gate is still
registered (with its reasons as tags), but the champion and earlier versions stay as they were.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distillery.components.evaluation.gate import GateDecision

CHAMPION = "champion"


@dataclass
class Decision:
    version: str
    promoted: bool
    reason: str
    candidate_score: float
    champion_score: float | None
    gate_reasons: list[str] = field(default_factory=list)


def register_and_promote(client, model_uri: str, name: str, metric: str, candidate_score: float,
                         score_model: Callable[[str], float], tags: dict[str, str],
                         gate: GateDecision | None = None, beat_champion: bool = True,
                         never_promote: str | None = None) -> Decision:
    """Register ``model_uri`` under ``name`` and move ``champion`` to it if it passes ``gate`` and
    (with ``beat_champion``) scores higher than the champion.

    Args:
        client: an ``mlflow.MlflowClient``.
        score_model: scores a model URI (e.g. ``models:/name@champion``) on the current test split.
        gate: the candidate's gate decision (``None``: no conditions).
        beat_champion: ``False`` promotes any candidate that passes the gate.
        never_promote: why this candidate may not become champion whatever it scores (e.g. it was
            trained on data that is not a recorded version); it is registered with that reason.
    """
    import mlflow

    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        champion = None
    gate_reasons = list(gate.reasons) if gate is not None else []
    version = mlflow.register_model(model_uri, name, tags={**tags, metric: str(candidate_score)}).version
    if never_promote:
        kept = f"; champion v{champion.version} kept" if champion is not None else ""
        return _record(client, name, Decision(version, False, f"not promotable: {never_promote}{kept}",
                                              candidate_score, None, gate_reasons))
    if gate is not None and not gate.passed:
        kept = f"; champion v{champion.version} kept" if champion is not None else ""
        return _record(client, name, Decision(version, False, f"gate failed: {'; '.join(gate.failed)}{kept}",
                                              candidate_score, None, gate_reasons))
    if champion is None:
        decision = Decision(version, True, f"no champion yet: version {version} becomes champion",
                            candidate_score, None, gate_reasons)
    elif not beat_champion:
        decision = Decision(version, True, f"gate passed (champion comparison off): version {version} replaces "
                            f"champion v{champion.version}", candidate_score, None, gate_reasons)
    else:
        try:
            champion_score = score_model(f"models:/{name}@{CHAMPION}")
        except Exception as exc:  # noqa: BLE001 - any failure keeps the champion, with the reason
            return _record(client, name, Decision(
                version, False, f"champion v{champion.version} could not be scored ({exc}); kept",
                candidate_score, None, gate_reasons))
        better = candidate_score > champion_score
        verdict = "beats" if better else "does not beat"
        decision = Decision(version, better, f"{metric} {candidate_score:.4f} {verdict} champion "
                            f"v{champion.version} ({champion_score:.4f})", candidate_score, champion_score,
                            gate_reasons)
    return _record(client, name, decision)


def _record(client, name: str, decision: Decision) -> Decision:
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, decision.version)
    client.set_model_version_tag(name, decision.version, "promotion", decision.reason)
    if decision.gate_reasons:
        client.set_model_version_tag(name, decision.version, "gate_reasons", "; ".join(decision.gate_reasons))
    return decision
