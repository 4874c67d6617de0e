"""Champion/challenger promotion against a real MLflow registry (SQLite)."""
from __future__ import annotations

from distillery.components.evaluation.promotion import register_and_promote


def test_champion_moves_only_when_beaten(model_registry):
    client, candidate = model_registry
    scores = {}  # what the champion scores on "the current test split"

    def score(uri: str) -> float:
        return scores[client.get_model_version_by_alias("m", "champion").version]

    first = register_and_promote(client, candidate(), "m", "accuracy", 0.90, score, {"t": "1"})
    scores[first.version] = 0.90
    assert first.promoted and "no champion yet" in first.reason
    worse = register_and_promote(client, candidate(), "m", "accuracy", 0.85, score, {})
    assert not worse.promoted and "does not beat champion v1 (0.9000)" in worse.reason
    tie = register_and_promote(client, candidate(), "m", "accuracy", 0.90, score, {})
    assert not tie.promoted
    assert str(client.get_model_version_by_alias("m", "champion").version) == str(first.version)
    better = register_and_promote(client, candidate(), "m", "accuracy", 0.93, score, {})
    assert better.promoted and str(client.get_model_version_by_alias("m", "champion").version) == str(better.version)
    versions = client.search_model_versions("name='m'")
    assert len(versions) == 4  # every candidate is registered, promoted or not
    assert client.get_model_version("m", worse.version).tags["promotion"] == worse.reason


def test_champion_that_cannot_be_scored_is_kept(model_registry):
    client, candidate = model_registry
    first = register_and_promote(client, candidate(), "m", "accuracy", 0.5, lambda uri: 0.5, {})

    def broken(uri: str) -> float:
        raise RuntimeError("input shape mismatch")

    second = register_and_promote(client, candidate(), "m", "accuracy", 0.99, broken, {})
    assert not second.promoted and "could not be scored (input shape mismatch); kept" in second.reason
    assert str(client.get_model_version_by_alias("m", "champion").version) == str(first.version)
