"""Smoke test of the active-learning benchmarks: each ``--quick`` mode runs end to end, as a user runs
it, and writes a JSON summary with the documented keys and sane numbers.

Both run at once (each is mostly single-threaded work), about 30-40 s in all on 2 cores. The peer
rows (scikit-activeml, the ``bench`` extra) are checked when it is installed.
"""
from __future__ import annotations

import importlib.util
import math

from bench_helpers import run_quick

from benchmarks._results import PINNED_CPU_KERNELS, cpu_flags

PEER = importlib.util.find_spec("skactiveml") is not None


def _registered() -> list[str]:
    from distillery.components.core import registry

    return [m.name for m in registry.methods("selection")]


def test_quick_benchmarks_write_sane_summaries(tmp_path):
    results, logs = run_quick(tmp_path, "al_label_efficiency", "al_selection_speed")
    _check_label_efficiency(results["al_label_efficiency"], logs["al_label_efficiency"])
    _check_selection_speed(results["al_selection_speed"], logs["al_selection_speed"])


def _check_label_efficiency(result: dict, log: str) -> None:
    summary = result["summary"]
    assert set(summary) == {"full_data_accuracy", "labels_to_95pct", "best_strategy", "peer", "protocol"}
    assert 0.8 < summary["full_data_accuracy"] <= 1.0, summary  # even the token --quick training fits MNIST
    assert result["errors"] == {}, result["errors"]
    schedule = result["protocol"]["schedule"]
    assert {"random", "entropy", "anchoral(entropy)"} <= set(summary["labels_to_95pct"])
    for labels in [*summary["labels_to_95pct"].values(), *summary["peer"].values()]:
        assert labels is None or schedule[0] <= labels <= schedule[-1]
    for entry in [*result["strategies"].values(), *result["peers"].values()]:
        curve = entry["curve"]
        assert curve["labels"] == schedule
        assert all(0.1 < a <= 1.0 for a in curve["accuracy_mean"]), curve  # above chance (10 classes)
        assert entry["query_seconds_total"] >= 0
    assert set(result["targets"]) >= {"best_at_most_half_of_random", "best_not_more_than_best_peer"}
    if "avx2" in cpu_flags():  # the workers ran the pinned kernels, whatever this CPU prefers
        assert result["protocol"]["cpu_kernels"] == {"pinned": PINNED_CPU_KERNELS, "workers_ran": ["AVX2"]}
    imbalanced = result["imbalanced"]
    assert imbalanced["minority_in_pool"] == 36 and set(imbalanced["results"]) == {"entropy", "anchoral(entropy)"}
    for row in imbalanced["results"].values():
        assert 0.0 <= row["minority_recall"][0] <= 1.0 and row["query_seconds_mean"] > 0
    assert set(summary["peer"]) == ({"peer:entropy"} if PEER else set())
    assert "| labels→95% |" in log and "Imbalanced pool" in log  # its README markdown, printed


def _check_selection_speed(result: dict, log: str) -> None:
    summary = result["summary"]
    assert set(summary) == {"pool_size", "seconds", "peak_mb", "floor_seconds", "peer_seconds", "protocol"}
    assert summary["pool_size"] == 20_000
    # every registered strategy has a row (wrappers under "name(base)" labels), none failed
    labels = set(summary["seconds"])
    for name in _registered():
        assert name in labels or any(label.startswith(f"{name}(") for label in labels), name
    assert {"anchoral(badge)", "anchoral(expected_gradnorm)", "anchoral(entropy_gradnorm)"} <= labels
    for label, seconds in summary["seconds"].items():
        row = result["strategies"][label]
        assert row["error"] is None, (label, row["error"])
        assert seconds is not None and 0 < seconds < 120, (label, seconds)
        # peak RSS covers the interpreter with torch and the 5 MB pool, and at least the baseline
        assert 100 < row["base_mb"] <= summary["peak_mb"][label] < 8000, (label, row)
    assert 0 < summary["floor_seconds"] < 30
    assert 0 < result["floors"]["mc_dropout"]["seconds"] < 60
    if PEER:
        assert set(summary["peer_seconds"]) == {"entropy", "margin", "badge", "bald"}
        assert all(s is not None and s > 0 for s in summary["peer_seconds"].values()), summary["peer_seconds"]
    else:
        assert summary["peer_seconds"] == {}
    assert all(v is None or isinstance(v, bool) for v in result["targets"].values())
    # the run prints its README markdown (benchmarks.report renders the same from the JSON)
    assert "forward + entropy + top-k" in log and "| ÷ floor |" in log and not math.isnan(summary["floor_seconds"])


def test_quick_curation_benchmarks_write_sane_summaries(tmp_path):
    """quality_filtering and consensus_labels ``--quick`` (about 30 s together on 2 cores)."""
    results, _ = run_quick(tmp_path, "quality_filtering", "consensus_labels")
    quality = results["quality_filtering"]
    assert [r["budget"] for r in quality["budgets"]] == [250, 1000, 8000]
    for row in quality["budgets"]:
        assert len(row["predicted"]) == len(row["measured"]) == 4
        assert all(0.0 < e < 0.9 for e in row["predicted"] + row["measured"]), row
        assert row["predicted_pick"] in {"top1", "top2", "top3", "top4"}
    assert all(law["b"] < 0 for law in quality["laws"])
    assert set(quality["summary"]["choice_changes_with_budget"]) == {"predicted", "measured", "step"}
    consensus = results["consensus_labels"]["summary"]
    assert consensus["consensus_accuracy"] > 0.9 and consensus["majority_vote_accuracy"] > 0.8
    assert consensus["reliability"]["lazy"]["agreement_with_consensus"] < 0.2
    assert set(consensus["reliability"]) == {"careful", "average", "hurried", "adversarial", "lazy"}


