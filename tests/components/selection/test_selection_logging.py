"""Per-round MLflow logging of the selection and labelling tasks: selected ids with their scores,
the pool's score histogram, and the labelled set's class balance (JSON, bar chart, min fraction)."""
from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import ROOT, run_cli, task_context

from distillery.components.core import plots
from distillery.components.core.datasets import LabelledData, save_arrays, save_labelled

MNIST = ROOT / "data" / "mnist"


def test_figures_draw_the_pool_and_the_balance():
    scores = np.random.default_rng(0).random(500)
    fig = plots.score_histogram_figure(scores, np.argsort(-scores)[:20], "round 1")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["pool (500 items)", "selected (20)",
                                                                   "selected items"]
    plt.close(fig)
    fig = plots.class_balance_figure(np.array([3, 0, 2]), np.array([1, 4, 0]), ["a", "b", "c"], "round 1")
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == [3, 0, 2, 1, 4, 0]
    plt.close(fig)


def test_selection_and_labelling_log_scores_histogram_and_class_balance(tmp_path):
    import mlflow
    from distillery.components.core import models
    from distillery.components.labelling.tasks import run_labelling
    from distillery.components.selection.tasks import run_selection

    meta = json.loads((MNIST / "dataset.json").read_text())
    features, labels = np.load(MNIST / "features.npy")[:400], np.load(MNIST / "labels.npy")[:400]
    save_labelled(tmp_path / "dataset", LabelledData(features.astype(np.float32), labels, np.arange(400) + 1000, meta))
    save_arrays(tmp_path / "splits", test_rows=np.arange(300, 400), train_rows=np.arange(300))
    save_arrays(tmp_path / "labelled", rows=np.arange(30), labels=labels[:30])
    models.save(models.build("mlp", meta, hidden=8), str(tmp_path / "model"), "mlp", meta, {"hidden": 8})
    context, p = task_context(tmp_path, ROOT), str
    run_selection("entropy", context, "run-1", "{}", 1, 25, p(tmp_path / "dataset"), p(tmp_path / "splits"),
                  p(tmp_path / "labelled"), p(tmp_path / "model"), p(tmp_path / "selected"))
    run_labelling("simulated", context, "run-1", "{}", 1, p(tmp_path / "dataset"), p(tmp_path / "labelled"),
                  p(tmp_path / "selected"), p(tmp_path / "labelled_out"))

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = {r.data.tags["distillery.task"]: r for r in client.search_runs(
        [client.get_experiment_by_name("tasks").experiment_id], filter_string="tags.`distillery.role` = 'task'")}
    select, label = runs["round-1-select-entropy"], runs["round-1-label-simulated"]
    assert {"selected_ids.json", "score_histogram.png"} <= {a.path for a in client.list_artifacts(select.info.run_id)}
    logged = mlflow.artifacts.load_dict(f"{select.info.artifact_uri}/selected_ids.json")
    assert len(logged["selected_ids"]) == len(logged["scores"]) == 25
    assert all(1030 <= i < 1300 for i in logged["selected_ids"])  # dataset ids of unlabelled training rows
    assert logged["scores"] == sorted(logged["scores"], reverse=True)  # entropy: most uncertain first
    assert logged["dataset"] == "data/mnist" and logged["data_version"].endswith(".dir")
    # ... enough to make Label Studio tasks of that batch afterwards
    out = tmp_path / "tasks.json"
    result = run_cli(ROOT, "labels", "export", "--run-id", select.info.run_id, "--out", str(out),
                     env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    assert result.returncode == 0, result.stderr
    tasks = json.loads(out.read_text())
    assert [t["data"]["distillery_id"] for t in tasks] == logged["selected_ids"]
    assert [t["meta"]["selection_score"] for t in tasks] == logged["scores"]
    assert (tmp_path / "tasks.label_config.xml").read_text().startswith("<View>")

    assert {"class_balance.json", "class_balance.png"} <= {a.path for a in client.list_artifacts(label.info.run_id)}
    balance = mlflow.artifacts.load_dict(f"{label.info.artifact_uri}/class_balance.json")
    assert sum(balance.values()) == 55 and label.data.metrics["labelled"] == 55
    assert label.data.metrics["min_class_fraction"] == pytest.approx(min(balance.values()) / 55)
