"""Smoke test of the active-learning benchmarks: each ``--quick`` mode runs end to end, as a user runs
it, and writes a JSON summary with the documented keys and sane numbers.

Both run at once (each is mostly single-threaded work), about 30-40 s in all on 2 cores. The peer
rows (scikit-activeml, the ``bench`` extra) are checked when it is installed.
"""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEER = importlib.util.find_spec("skactiveml") is not None


def _registered() -> list[str]:
    from distillery.components.core import registry

    return [m.name for m in registry.methods("selection")]


def run_quick(tmp_path, *names: str, extra: tuple[str, ...] = ()) -> tuple[dict[str, dict], dict[str, str]]:
    """Run ``python -m benchmarks.<name> --quick`` from the repository root for every name side by
    side, as a user runs them; each must exit 0. Returns ``(name -> result JSON, name -> its output)``."""
    outputs = {name: tmp_path / f"{name}.json" for name in names}
    processes = {name: subprocess.Popen([sys.executable, "-m", f"benchmarks.{name}", "--quick", *extra,
                                         "--output", str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
                 for name, path in outputs.items()}
    logs = {}
    for name, process in processes.items():
        logs[name], _ = process.communicate(timeout=600)
        assert process.returncode == 0, f"{name} --quick failed:\n{logs[name][-3000:]}"
    return {name: json.loads(path.read_text()) for name, path in outputs.items()}, logs


def test_quick_benchmarks_write_sane_summaries(tmp_path):
    results, logs = run_quick(tmp_path, "al_label_efficiency", "al_selection_speed")
    _check_label_efficiency(results["al_label_efficiency"], logs["al_label_efficiency"])
    _check_selection_speed(results["al_selection_speed"], logs["al_selection_speed"])


def _check_label_efficiency(result: dict, log: str) -> None:
    summary = result["summary"]
    assert set(summary) == {"full_data_accuracy", "labels_to_95pct", "best_strategy", "peer"}
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
    imbalanced = result["imbalanced"]
    assert imbalanced["minority_in_pool"] == 36 and set(imbalanced["results"]) == {"entropy", "anchoral(entropy)"}
    for row in imbalanced["results"].values():
        assert 0.0 <= row["minority_recall"][0] <= 1.0 and row["query_seconds_mean"] > 0
    assert set(summary["peer"]) == ({"peer:entropy"} if PEER else set())
    assert "labels→95%" in log and "Imbalanced pool" in log


def _check_selection_speed(result: dict, log: str) -> None:
    summary = result["summary"]
    assert set(summary) == {"pool_size", "seconds", "peak_mb", "floor_seconds", "peer_seconds"}
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
    assert "floor: forward + entropy + top-k" in log and not math.isnan(summary["floor_seconds"])


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


def test_quick_distillation_benchmark_writes_the_issue_summary(tmp_path):
    """distillation ``--quick`` with one student (about 35 s): every registered student-distillation
    method has a row in both settings, the summary has the issue's keys, and the peer (torchdistill,
    installed ``--no-deps``) is either run or reported as not run, never faked."""
    from distillery.components.core import registry

    results, logs = run_quick(tmp_path, "distillation", extra=("--students", "cnn9k"))
    result = results["distillation"]
    summary = result["summary"]
    assert set(summary) == {"teacher_accuracy", "teacher_params", "students", "scarce", "peer_kd_accuracy",
                            "peer_status", "dm_vs_random", "asr"}
    assert 0.5 < summary["teacher_accuracy"] <= 1.0 and summary["teacher_params"] == 225_870
    methods = {m.name for m in registry.methods("distillation")} - {"reliant"}  # RELIANT: its own section
    assert set(summary["students"]) == methods | {"alone"}
    for row in summary["students"].values():
        assert 0.0 <= row["accuracy"] <= 1.0 and row["std"] >= 0 and 10 * row["params"] <= summary["teacher_params"]
    assert set(summary["scarce"]) == {"teacher_accuracy", "students"}
    assert set(summary["scarce"]["students"]) == methods | {"alone"}
    assert all(0.0 <= a <= 1.0
               for a in [summary["scarce"]["teacher_accuracy"], *summary["scarce"]["students"].values()])
    if importlib.util.find_spec("torchdistill") is not None:
        assert 0.0 <= summary["peer_kd_accuracy"] <= 1.0 and summary["peer_status"].startswith("ran: torchdistill")
    else:
        assert summary["peer_kd_accuracy"] is None and summary["peer_status"].startswith("not run")
        assert result["targets"]["best_student_beats_peer_kd_by_more_than_one_std"] is None
    assert set(summary["dm_vs_random"]) == {"10", "50"}
    assert all(len(pair) == 2 and all(0.0 <= a <= 1.0 for a in pair) for pair in summary["dm_vs_random"].values())
    assert set(summary["asr"]) == {"clean", "naive", "doorping"} and all(0 <= a <= 1 for a in summary["asr"].values())
    # one epoch budget for every row: multi-stage methods split it
    epochs, budget = result["protocol"]["epochs_per_row"], result["protocol"]["epoch_budget"]
    assert epochs["fitnets"]["hint_epochs"] + epochs["fitnets"]["epochs"] == budget == epochs["hinton_kd"]["epochs"]
    assert epochs["prod"]["epochs"] == budget  # shared among PROD's stages by prod.stage_epochs
    assert "stratified" in result["protocol"]["split"]
    assert result["fairness"]["reliant"]["delta_sp"] and result["fairness"]["hinton_kd"]["accuracy"]
    assert all(v is None or isinstance(v, bool) for v in result["targets"].values())
    assert "Label-scarce: 200 labels + 800 unlabelled" in logs["distillation"] and "ms/1,000" in logs["distillation"]
