"""RELIANT fair distillation: the bias surrogate against the reference formula, bad input, and
lower ΔSP than plain KD at (almost) the same accuracy on tabular data with a biased attribute."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from benchmarks.synthetic import biased_tabular
from distillery.components.core import models
from distillery.components.core.train import fit
from distillery.components.distillation import hinton_kd, reliant
from distillery.components.evaluation.fairness import fairness_gaps

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = dict(seed=0, epochs=15, lr=3e-3, batch_size=128)


def reference_step(s):
    """The reference code's ``approx_func`` (yushundong/RELIANT), written out as published."""
    x = 2 * s - 1
    return 1 / 2 + 1 / 2 * x - 1 / 8 / 2 * (5 * x ** 3 - 3 * x) + 1 / 16 / 8 * (63 * x ** 5 - 70 * x ** 3 + 15 * x) \
        - 5 / 128 / 16 * (429 * x ** 7 - 693 * x ** 5 + 315 * x ** 3 - 35 * x) \
        + 7 / 256 / 128 * (12155 * x ** 9 - 25740 * x ** 7 + 18018 * x ** 5 - 4620 * x ** 3 + 315 * x)


def test_step_surrogate_is_the_reference_polynomial():
    p = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(reliant.step_surrogate(p), reference_step(p))
    assert reliant.step_surrogate(torch.tensor([0.05, 0.95])).sub(torch.tensor([0.0, 1.0])).abs().max() < 0.15


def test_bias_surrogate_is_the_squared_gap_of_group_means():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.2, 0.8]])
    groups = torch.tensor([0, 0, 1, 1, 1])
    step = reference_step(probs)
    expected = ((step[:2].mean(0) - step[2:].mean(0)) ** 2).sum()
    torch.testing.assert_close(reliant.bias_surrogate(probs, groups), expected)
    assert reliant.bias_surrogate(probs, torch.zeros(5, dtype=torch.long)) == 0  # one group in the batch
    three = torch.tensor([0, 0, 1, 1, 2])  # mean over the three pairs
    means = torch.stack([step[three == g].mean(0) for g in range(3)])
    pairs = [((means[a] - means[b]) ** 2).sum() for a, b in [(0, 1), (0, 2), (1, 2)]]
    torch.testing.assert_close(reliant.bias_surrogate(probs, three), sum(pairs) / 3)


@pytest.fixture(scope="module")
def setup():
    x, y, s, meta = biased_tabular()
    train, test = np.arange(1500), np.arange(1500, 2000)
    torch.manual_seed(0)
    teacher = models.build("mlp", meta, hidden=64)
    fit(teacher, (torch.as_tensor(x[train]), torch.as_tensor(y[train])),
        lambda m, xb, yb: F.cross_entropy(m(xb), yb), 30, 3e-3, 64, 0)
    return x, y, s, meta, train, test, teacher


def student(meta):
    torch.manual_seed(0)
    return models.build("mlp", meta, hidden=16, input_proxy=2)


def test_reliant_lowers_statistical_parity_gap_at_little_accuracy_cost(setup):
    x, y, s, meta, train, test, teacher = setup
    labelled, pool = train[:500], train[500:]

    def evaluate(model):
        with torch.no_grad():
            predicted = model(torch.as_tensor(x[test])).argmax(-1).numpy()
        return (predicted == y[test]).mean(), fairness_gaps(predicted, y[test], s[test], 2)["delta_sp"]

    kd = hinton_kd.distil(teacher, student(meta), x[labelled], y[labelled], x[pool], **TRAIN)
    fair = reliant.distil(teacher, student(meta), x[labelled], y[labelled], x[pool], sensitive=s[train],
                          bias_weight=2.0, **TRAIN)
    (acc_kd, sp_kd), (acc_fair, sp_fair) = evaluate(kd), evaluate(fair)
    assert sp_kd > 0.1  # the plain student inherits the teacher's gap
    assert sp_fair < sp_kd - 0.03, (sp_fair, sp_kd)
    assert acc_fair >= acc_kd - 0.02, (acc_fair, acc_kd)
    # the proxy's mean is stored in the student: it serves on features alone, deterministically
    assert fair[0].proxy.abs().sum() > 0
    assert fair(torch.as_tensor(x[:3])).shape == (3, 2)


def test_bad_input_fails_before_training(setup):
    x, y, s, meta, train, _, teacher = setup
    labelled, pool = train[:200], train[200:400]
    trained = []
    args = (teacher, student(meta), x[labelled], y[labelled], x[pool])
    kwargs = {**TRAIN, "on_epoch": lambda *a: trained.append(a)}
    with pytest.raises(ValueError, match=r"single group \(\[1\]\)"):
        reliant.distil(*args, sensitive=np.ones(400, dtype=int), **kwargs)
    with pytest.raises(ValueError, match="one sensitive-attribute value per item"):
        reliant.distil(*args, sensitive=s[:200], **kwargs)
    with pytest.raises(ValueError, match="input_proxy"):
        reliant.distil(teacher, models.build("mlp", meta, hidden=16), x[labelled], y[labelled], x[pool],
                       sensitive=s[:400], **kwargs)
    wrong_classes = models.build("mlp", {**meta, "classes": ["a", "b", "c"]}, input_proxy=2)
    with pytest.raises(ValueError, match="classes"):
        reliant.distil(teacher, wrong_classes, x[labelled], y[labelled], x[pool], sensitive=s[:400], **kwargs)
    assert not trained


@pytest.fixture(scope="module")
def task_files(setup, tmp_path_factory):
    """The biased data as a pipeline dataset artifact declaring its sensitive attribute (an exact
    copy of s as the last column, ``meta["sensitive"] = {"s": 9}``), a split, the labelled rows and
    the teacher, saved as the upstream tasks save them."""
    from distillery.components.core.datasets import (
        LabelledData,
        save_arrays,
        save_labelled,
    )

    x, y, s, meta, train, test, teacher = setup
    folder = tmp_path_factory.mktemp("reliant-task")
    features = np.column_stack([x, s]).astype(np.float32)
    meta = {**meta, "feature_shape": [features.shape[1]], "sensitive": {"s": features.shape[1] - 1}}
    save_labelled(folder / "dataset", LabelledData(features, y.astype(np.int64), np.arange(len(y)), meta))
    save_arrays(folder / "splits", test_rows=test, train_rows=train)
    save_arrays(folder / "labelled", rows=train[:500], labels=y[train[:500]])
    torch.manual_seed(0)
    wide_teacher = models.build("mlp", meta, hidden=32)
    fit(wide_teacher, (torch.as_tensor(features[train]), torch.as_tensor(y[train])),
        lambda m, xb, yb: F.cross_entropy(m(xb), yb), 10, 3e-3, 64, 0)
    models.save(wide_teacher, str(folder / "teacher"), "mlp", meta, {"hidden": 32})
    return folder, meta


def test_distillation_task_reads_the_sensitive_attribute_and_evaluation_logs_onnx(task_files, tmp_path):
    import json

    import onnxruntime as ort
    from conftest import ROOT, task_context

    import mlflow
    from distillery.components.core.datasets import (
        LabelledData,
        load_labelled,
        save_labelled,
    )
    from distillery.components.distillation.tasks import run_distillation
    from distillery.components.evaluation.tasks import run_evaluation

    folder, meta = task_files
    context = task_context(tmp_path, ROOT, data_path="data/biased")
    paths = [str(folder / n) for n in ("dataset", "splits", "labelled", "teacher")]
    params = {"student": "mlp", "hidden": 16, "epochs": 3, "lr": 3e-3, "batch_size": 128}
    run_distillation("reliant", context, "r1", json.dumps(params), *paths, str(tmp_path / "student"))

    trained = models.load(str(tmp_path / "student"))  # rebuilt with its proxy slot (input_proxy=2)
    assert isinstance(trained[0], models.ProxyInput) and trained[0].proxy.abs().sum() > 0
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tasks").experiment_id
    run = client.search_runs([experiment], filter_string="tags.`distillery.task` = 'distil-reliant'")[0]
    assert run.data.params["fairness"] == "sp" and run.data.params["sensitive_attribute"] == ""
    assert run.data.metrics["student_flops"] == models.count_flops(trained, (10,)) < run.data.metrics["teacher_flops"]

    run_evaluation("classification", context, "r1", json.dumps({"model_name": "biased"}), paths[0], paths[1],
                   paths[3], str(tmp_path / "student"))
    evaluation = client.search_runs([experiment], filter_string="tags.`distillery.task` = 'evaluate-classification'")[0]
    assert "student_delta_sp" in evaluation.data.metrics
    onnx_file = client.download_artifacts(evaluation.info.run_id, "student.onnx", str(tmp_path))
    session = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    data = load_labelled(paths[0])
    x = data.features[:7]
    with torch.no_grad():
        expected = trained(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"features": x})[0], expected, atol=1e-5, rtol=0)

    # a one-group attribute: refused before training, no student written, the run FAILED
    one_group = LabelledData(data.features.copy(), data.labels, data.ids, data.meta)
    one_group.features[:, -1] = 1.0
    save_labelled(tmp_path / "one-group", one_group)
    with pytest.raises(ValueError, match="single group"):
        run_distillation("reliant", context, "r2", json.dumps(params), str(tmp_path / "one-group"), *paths[1:],
                         str(tmp_path / "student-2"))
    assert not (tmp_path / "student-2").exists()
    failed = client.search_runs([experiment], filter_string="tags.`distillery.run_key` = 'r2'")
    assert {r.info.status for r in failed} == {"FAILED"}
