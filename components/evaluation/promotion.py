"""Champion/challenger promotion in the MLflow Model Registry.

Every candidate is registered as a new version; the ``champion`` alias moves to it only when it
beats the current champion on the chosen metric, both measured on the same test split (a score
stored from another data version would not be comparable). If the champion cannot be evaluated,
the alias stays where it is: an error never costs a team its serving model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

CHAMPION = "champion"


@dataclass
class Decision:
    version: str
    promoted: bool
    reason: str
    candidate_score: float
    champion_score: float | None


def register_and_promote(client, model_uri: str, name: str, metric: str, candidate_score: float,
                         score_model: Callable[[str], float], tags: dict[str, str]) -> Decision:
    """Register ``model_uri`` under ``name`` and move ``champion`` to it if it scores higher.

    Args:
        client: an ``mlflow.MlflowClient``.
        score_model: scores a model URI (e.g. ``models:/name@champion``) on the current test split.
    """
    import mlflow

    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        champion = None
    version = mlflow.register_model(model_uri, name, tags={**tags, metric: str(candidate_score)}).version
    if champion is None:
        decision = Decision(version, True, f"no champion yet: version {version} becomes champion",
                            candidate_score, None)
    else:
        try:
            champion_score = score_model(f"models:/{name}@{CHAMPION}")
        except Exception as exc:  # noqa: BLE001 - any failure keeps the champion, with the reason
            return _record(client, name, Decision(
                version, False, f"champion v{champion.version} could not be scored ({exc}); kept",
                candidate_score, None))
        better = candidate_score > champion_score
        verdict = "beats" if better else "does not beat"
        decision = Decision(version, better, f"{metric} {candidate_score:.4f} {verdict} champion "
                            f"v{champion.version} ({champion_score:.4f})", candidate_score, champion_score)
    return _record(client, name, decision)


def _record(client, name: str, decision: Decision) -> Decision:
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, decision.version)
    client.set_model_version_tag(name, decision.version, "promotion", decision.reason)
    return decision
