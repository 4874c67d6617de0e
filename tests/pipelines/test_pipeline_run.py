"""The whole pipeline, for real: kfp.local SubprocessRunner, a real SQLite MLflow store, DVC data.

One run of ``tests/configs/tiny.yaml`` (conftest's session-wide ``tiny_pipeline``) is shared by the
assertions below; a second, corrupted dataset then has to fail at curation without touching what
the first run left.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT, dvc, git, run_cli

from distillery.components.core.datasets import (
    data_version,
    mnist_meta,
    read_dataset,
    write_dataset,
)
from distillery.pipelines.config import load_config, task_names

pytestmark = pytest.mark.pipeline
TINY = ROOT / "tests" / "configs" / "tiny.yaml"


# The run itself is conftest's session-wide `tiny_pipeline` (test_mlflow_ui.py browses the same one).
@pytest.fixture(scope="module")
def module_clone(tiny_pipeline):
    return tiny_pipeline.repo


@pytest.fixture(scope="module")
def store(tiny_pipeline):
    return tiny_pipeline.store


@pytest.fixture(scope="module")
def first_run(tiny_pipeline):
    return tiny_pipeline.result


@pytest.fixture(scope="module")
def client(store):
    import mlflow

    mlflow.set_tracking_uri(store)  # for the fluent API calls below (model loading, logged models)
    return mlflow.MlflowClient(store)


def runs_of(client, experiment_name: str):
    experiment = client.get_experiment_by_name(experiment_name)
    return client.search_runs([experiment.experiment_id], max_results=1000)


def test_run_prints_progress_and_where_to_look(first_run):
    out = first_run.stdout
    n = len(task_names(load_config(TINY)))
    assert f"[{n}/{n}]" in out and "done in" in out
    assert "See the results: `distillery ui`" in out and "Pipeline run" in out


def test_parent_and_nested_runs_finished_with_tags(first_run, client, module_clone):
    runs = runs_of(client, "distillery-tests")
    parents = [r for r in runs if r.data.tags.get("distillery.role") == "pipeline"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == sorted(task_names(load_config(TINY)))
    assert all(r.info.status == "FINISHED" for r in children)
    head = git(module_clone, "rev-parse", "HEAD")
    for run in [parent, *children]:
        assert run.data.tags["distillery.git_commit"] == head
        assert run.data.tags["distillery.data_version"] == data_version(module_clone)
    assert parent.data.params["seed"] == "1" and parent.data.params["selection.method"] == "margin"
    assert "teacher accuracy" in parent.data.tags["mlflow.note.content"]


def test_per_round_accuracy_images_models_and_champion(first_run, client):
    import mlflow

    parent = next(r for r in runs_of(client, "distillery-tests") if r.data.tags.get("distillery.role") == "pipeline")
    history = client.get_metric_history(parent.info.run_id, "teacher_test_accuracy")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [50, 100]  # labels per round
    assert all(0.3 < m.value <= 1 for m in history)
    evaluation = next(r for r in runs_of(client, "distillery-tests")
                      if r.data.tags.get("distillery.task", "").startswith("evaluate"))
    artifacts = {a.path for a in client.list_artifacts(evaluation.info.run_id)}
    assert {"learning_curve.png", "student_confusion_matrix.png", "teacher_confusion_matrix.png"} <= artifacts
    models = mlflow.search_logged_models(experiment_ids=[parent.info.experiment_id], output_format="list")
    assert {m.name for m in models} == {"teacher", "student"}
    for model in models:
        info = mlflow.models.get_model_info(model.model_uri)
        assert info.signature is not None and info.saved_input_example_info is not None
    champion = client.get_model_version_by_alias("tiny-student", "champion")
    assert str(champion.version) == "1"
    student = mlflow.pytorch.load_model("models:/tiny-student@champion")
    x = np.zeros((2, 784), dtype=np.float32)  # any batch size, not only the input example's 5
    import torch

    assert student(torch.as_tensor(x)).shape == (2, 10)


def test_dvc_status_clean_after_run(first_run, module_clone):
    assert "up to date" in dvc(module_clone, "status").lower()


def corrupt_dataset(repo):
    """MNIST rows with NaNs, labels out of range and the wrong number of values per sample."""
    features, labels, _ = read_dataset(str(repo), "data/mnist")
    features = features[:300, :783].astype(np.float32)  # wrong shape: 783 values, 784 declared
    labels = labels[:300].copy()
    features[:7, 10] = np.nan
    labels[:12] = 11
    write_dataset(repo / "data" / "corrupt", features, labels, {**mnist_meta("test"), "name": "corrupt"})


def test_corrupted_dataset_fails_at_curation_and_loses_nothing(first_run, module_clone, store, client, tmp_path):
    import mlflow

    before_version = data_version(module_clone)
    before_commit = git(module_clone, "rev-parse", "HEAD")
    runs_before = {r.info.run_id: r.info.status for r in runs_of(client, "distillery-tests")}
    versions_before = [v.version for v in client.search_model_versions("name='tiny-student'")]

    corrupt_dataset(module_clone)
    dvc(module_clone, "add", "-q", "data")
    git(module_clone, "commit", "-qam", "corrupt data")
    config = tmp_path / "corrupt.yaml"
    config.write_text(TINY.read_text().replace("path: data/mnist", "path: data/corrupt"))
    result = run_cli(module_clone, "run", "--config", str(config), env={"MLFLOW_TRACKING_URI": store})

    assert result.returncode != 0
    log = result.stdout + result.stderr
    assert "dataset 'corrupt' failed 3 expectation(s)" in log
    assert "labels are in the label set 0..9: 12 of 300 rows fail" in log
    assert "features contain no NaN or missing values (nulls): 7 of 300 rows fail" in log
    assert "each sample has 784 values, shape [1, 28, 28] (shape): 300 of 300 rows fail" in log

    runs_after = {r.info.run_id: r for r in runs_of(client, "distillery-tests")}
    assert all(runs_after[i].info.status == s for i, s in runs_before.items())  # earlier runs untouched
    new = [r for i, r in runs_after.items() if i not in runs_before]
    failed_parent = next(r for r in new if r.data.tags.get("distillery.role") == "pipeline")
    assert failed_parent.info.status == "FAILED"
    assert failed_parent.data.tags["distillery.failed_task"] == "curate-gx_dedup"
    assert [r.data.tags["distillery.task"] for r in new if r is not failed_parent] == ["curate-gx_dedup"]
    assert [v.version for v in client.search_model_versions("name='tiny-student'")] == versions_before
    assert str(client.get_model_version_by_alias("tiny-student", "champion").version) == "1"
    # the previous data version is still there, byte for byte
    assert data_version(module_clone, before_commit) == before_version
    features, labels, _ = read_dataset(str(module_clone), "data/mnist", rev=before_commit)
    assert features.shape == (5000, 784) and labels.max() == 9
    assert mlflow.MlflowClient(store).get_run(failed_parent.info.run_id).data.tags["mlflow.note.content"].startswith(
        "Pipeline `tiny` FAILED at task `curate-gx_dedup`")
