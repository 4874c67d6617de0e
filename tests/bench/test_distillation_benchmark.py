"""The distillation benchmarks' protocol: choices on validation (distillation_tuning.py), one test run
(distillation.py) that records the frozen config and counts every row's compute."""
import hashlib
import importlib.util
import json

import numpy as np
from bench_helpers import ROOT, run_quick

from benchmarks import dataset_distillation, distillation_tuning
from benchmarks import distillation_rows as rows


def test_validation_split_holds_no_test_image_and_keeps_the_sizes():
    train, x_val, y_val = rows.split_data("validation")
    full_train, x_test, _ = dataset_distillation.mnist_split()
    assert (len(train.labels), len(y_val)) == (3000, 1000)
    test = {row.tobytes() for row in x_test}
    assert not any(row.tobytes() in test for row in np.concatenate([train.features, x_val]))
    # validation and its training part are the test split's training part, divided
    seen = {row.tobytes() for row in np.concatenate([train.features, x_val])}
    assert seen == {row.tobytes() for row in full_train.features}
    assert np.bincount(y_val).min() >= 95  # stratified


def _summary(acc: dict) -> dict:
    """A tuning summary from ``{(setting, student, label): accuracy}``."""
    out: dict = {"full": {}, "scarce": {}}
    for (setting, student, label), a in acc.items():
        out[setting].setdefault(student, {})[label] = {"accuracy_mean": a}
    return out


def test_tuning_chooses_each_variant_by_mean_validation_accuracy_over_cells():
    acc = {}
    for setting in ("full", "scarce"):
        for student in ("a", "b"):
            for variants in distillation_tuning.CANDIDATES.values():
                for i, label in enumerate(variants):
                    acc[(setting, student, label)] = 0.5 + 0.01 * i
    # pooled LEAD wins three cells by a little and loses one by a lot: the mean decides
    acc[("full", "a", "lead[pooled]")] = 0.30
    variants = distillation_tuning.choose_variants(_summary(acc))
    assert variants["lead"]["label"] == "lead[flat]"
    assert variants["prod"]["label"] == "prod[route, unpadded, fresh Adam]"  # the highest in every cell
    pick = distillation_tuning.choose_pick(_summary(acc), variants, {"a": 1000, "b": 50_000}, 200_000)
    assert pick["full"]["student"] == "a"  # b has only 4x fewer parameters than the teacher


def test_bias_weight_is_the_fairest_within_two_points_of_kd():
    def row(kd_acc, acc, dsp):
        return {"hinton_kd": {"accuracy_mean": kd_acc}, "reliant": {"accuracy_mean": acc, "delta_sp_mean": dsp}}

    fair = {1.0: row(0.9, 0.89, 0.10), 2.0: row(0.9, 0.885, 0.05), 4.0: row(0.9, 0.85, 0.01)}
    assert distillation_tuning.choose_bias_weight(fair) == 2.0  # 4.0 is fairer but loses 5 points


def test_quick_distillation_benchmark_follows_the_protocol(tmp_path):
    """``--quick`` with one student (about a minute): the frozen config and its hash in the protocol,
    a row per method in both settings with counted compute, the audits at both strengths, and the
    peer run or reported as not run, never faked."""
    results, logs = run_quick(tmp_path, "distillation")
    result = results["distillation"]
    config_path = ROOT / "benchmarks" / "configs" / "distillation.json"
    config = json.loads(config_path.read_text())
    protocol = result["summary"]["protocol"]
    assert protocol["config_sha256"] == hashlib.sha256(config_path.read_bytes()).hexdigest()
    assert protocol["model_selection"] == "validation" and protocol["split_sizes"]["test"] == 1000
    assert result["summary"]["pick"] == config["pick"] and protocol["methods"] == config["methods"]
    assert result["provenance"]["script"] == "benchmarks.distillation" and result["provenance"]["commit"]
    kd = result["knowledge_distillation"]
    for setting in ("full", "scarce"):
        for cell in kd[setting].values():
            assert {"alone", "hinton_kd", "fitnets", "lead", "prod"} <= set(cell)
            assert all(r["steps"] > 0 and r["flops"] > 0 for r in cell.values())
            # PROD re-trains a copy of the teacher for its snapshots: the count must show it
            assert cell["prod"]["flops_vs_kd"] > 1.0
    audits = result["dataset_distillation"]["audit"]
    assert {"NAIVEATTACK 2x2, 1%", "DOORPING 2x2, 1%", "NAIVEATTACK 4x4, 5%", "DOORPING 4x4, 5%"} <= set(audits)
    if importlib.util.find_spec("torchdistill") is not None:
        assert result["peer_comparison"] and kd["peer_equivalence"][0]["loss_abs_difference"] < 1e-4
    else:
        assert result["targets"]["picked_student_beats_peer_kd_in_its_cell_by_more_than_one_std"] is None
    assert all(v is None or isinstance(v, bool) for v in result["targets"].values())
    assert "Targets met on test" in logs["distillation"]
