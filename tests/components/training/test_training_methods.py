"""Training methods `spsa_finetune`, `federated` and `fusion` on a small MNIST slice.

Each target gets 200 labelled images and must return a model of the requested architecture that
clearly beats chance (10%) on 500 held-out ones. `spsa_finetune` goes through the training task
body against a real SQLite MLflow store (real worker processes, gloo).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import ROOT, task_context

from distillery.components.core import models
from distillery.components.core.datasets import LabelledData, save_arrays, save_labelled
from distillery.components.core.train import accuracy, train_classifier
from distillery.components.training import collaborative, spsa
from distillery.components.training import federated as fl

MNIST = ROOT / "data" / "mnist"
META = json.loads((MNIST / "dataset.json").read_text())
X, Y = np.load(MNIST / "features.npy").astype(np.float32), np.load(MNIST / "labels.npy")
ORDER = np.random.default_rng(0).permutation(len(Y))  # the files are sorted by label
TRAIN, HELD_OUT = ORDER[:200], ORDER[200:700]
TINY_CNN = {"channels": 4, "hidden": 32}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A throwaway SQLite MLflow store, made once (creating its tables takes seconds)."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")
    try:
        yield mlflow
    finally:
        mlflow.set_tracking_uri("")


@pytest.fixture
def mlflow_run(store):
    """An active MLflow run in the throwaway store; yields (mlflow, run id)."""
    with store.start_run() as run:
        yield store, run.info.run_id


def held_out_accuracy(model) -> float:
    return accuracy(model, X[HELD_OUT], Y[HELD_OUT])


def assert_architecture(model, arch: str, arch_kwargs: dict) -> None:
    """Same state-dict keys and shapes as a fresh `models.build`: saved, loaded and logged like any teacher."""
    fresh = models.build(arch, META, **arch_kwargs).state_dict()
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in fresh.items()}
    assert model(torch.zeros(2, 784)).shape == (2, 10)


def test_spsa_finetune_task_workers_agree_report_bytes_and_log_test_accuracy(tmp_path):
    import mlflow
    from distillery.components.training.tasks import run_training

    save_labelled(tmp_path / "dataset", LabelledData(X, Y, np.arange(len(Y)), META))
    save_arrays(tmp_path / "splits", test_rows=HELD_OUT, train_rows=ORDER[700:])
    save_arrays(tmp_path / "labelled", rows=TRAIN, labels=Y[TRAIN])
    params = {"arch": "mlp", "arch_kwargs": {"hidden": 32}, "epochs": 10, "batch_size": 32, "workers": 2,
              "rounds": 20, "samples_per_worker": 4}
    run_training("spsa_finetune", task_context(tmp_path, ROOT), "run-1", json.dumps(params), 0,
                 *(str(tmp_path / name) for name in ("dataset", "splits", "labelled", "model")))

    model = models.load(str(tmp_path / "model"))
    assert_architecture(model, "mlp", {"hidden": 32})
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tasks").experiment_id
    run = client.search_runs([experiment], filter_string="tags.`distillery.task` = 'round-0-train-spsa_finetune'")[0]
    metrics = run.data.metrics
    assert run.info.status == "FINISHED" and metrics["test_accuracy"] > 0.5
    assert metrics["test_accuracy"] == pytest.approx(held_out_accuracy(model))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == list(range(10))
    # every worker sends one byte per projected gradient, and every copy of the weights agrees
    assert metrics["bytes_per_step_spsa"] == 4 and metrics["hashes_agree"] == 1.0
    for worker in (0, 1):
        assert metrics[f"gradient_bytes_per_step_worker_{worker}"] == 4
        agreement = client.get_metric_history(run.info.run_id, f"hash_agreement_worker_{worker}")
        assert sorted(m.step for m in agreement) == list(range(20)) and {m.value for m in agreement} == {1.0}
    assert run.data.tags["distillery.spsa_weights_hash"] == spsa.weights_hash(model).hex()  # the agreed weights
    # ... which SPSA moved away from the Adam-trained start
    start = train_classifier(X[TRAIN], Y[TRAIN], META, "mlp", {"hidden": 32}, 10, 1e-3, 32, 0)
    assert spsa.weights_hash(start) != spsa.weights_hash(model)
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.metrics["teacher_test_accuracy"] == metrics["test_accuracy"]


def test_label_sorted_shards_deal_few_classes_to_each_client():
    parts = fl.label_sorted_shards(Y[TRAIN], 5, seed=3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(200))  # a partition
    assert all(len(np.unique(Y[TRAIN][p])) <= 4 for p in parts)  # two label-sorted shards: few classes
    assert [p.tolist() for p in parts] == [p.tolist() for p in fl.label_sorted_shards(Y[TRAIN], 5, seed=3)]


@pytest.mark.parametrize("mu, arch, arch_kwargs", [(0.0, "small_cnn", TINY_CNN), (0.1, "mlp", {})],
                         ids=["fedavg", "fedprox"])
def test_federated_trains_the_architecture_across_non_iid_clients(mu, arch, arch_kwargs):
    rounds = []
    model = collaborative.federated(X[TRAIN], Y[TRAIN], META, arch, arch_kwargs, 5, 0.1, 10, 0,
                                    lambda r, loss: rounds.append(loss), clients=4, rounds=8, local_epochs=5, mu=mu)
    assert_architecture(model, arch, arch_kwargs)
    assert len(rounds) == 8 and rounds[-1] < 0.7 * rounds[0]  # on_epoch: mean client loss per round
    assert held_out_accuracy(model) > 0.5


def test_clustered_federated_returns_the_largest_cluster_and_logs_client_labels(mlflow_run):
    mlflow, run_id = mlflow_run
    model = collaborative.federated(X[TRAIN], Y[TRAIN], META, "mlp", {}, 5, 0.1, 10, 0, clients=4, rounds=4,
                                    local_epochs=5, clusters=2)
    assert_architecture(model, "mlp", {})
    clusters = mlflow.artifacts.load_dict(f"runs:/{run_id}/federated/clusters.json")
    assert len(clusters["client_cluster"]) == 4 and set(clusters["client_cluster"]) <= {0, 1}
    assert sum(clusters["cluster_items"]) == sum(clusters["client_items"]) == 200
    assert clusters["returned_cluster"] == int(np.argmax(clusters["cluster_items"]))
    assert "federated_loss_client_3" in mlflow.MlflowClient().get_run(run_id).data.metrics
    assert held_out_accuracy(model) > 0.2  # a model of the clients of its cluster (a subset of the digits)


def test_fusion_averages_finetuned_copies_of_a_base(mlflow_run):
    mlflow, run_id = mlflow_run
    model = collaborative.fusion(X[TRAIN], Y[TRAIN], META, "mlp", {}, 10, 1e-3, 16, 0, models=3,
                                 subset_fraction=0.5, finetune_epochs=3)
    assert_architecture(model, "mlp", {})
    assert held_out_accuracy(model) > 0.5
    metrics = mlflow.MlflowClient().get_run(run_id).data.metrics
    assert {"fusion_base_accuracy", "fusion_fused_accuracy", "fusion_finetuned_accuracy_2"} <= metrics.keys()


def _no_training(*args):
    pytest.fail("training started despite bad parameters")


@pytest.mark.parametrize("method, kwargs, message", [
    (collaborative.spsa_finetune, {"workers": 0}, "workers >= 1"),
    (collaborative.spsa_finetune, {"samples_per_worker": 0}, "samples_per_worker must be >= 1"),
    (collaborative.spsa_finetune, {"spsa_lr": -1.0}, "lr and eps must be > 0"),
    (collaborative.federated, {"clients": 2, "clusters": 3}, r"clients \(2\) must be >= clusters \(3\)"),
    (collaborative.federated, {"mu": -0.1}, "FedProx mu must be >= 0"),
    (collaborative.federated, {"clients": 150}, "200 items cannot fill 150 clients"),
    (collaborative.fusion, {"models": 0}, "models >= 1"),
    (collaborative.fusion, {"subset_fraction": 1.5}, r"subset_fraction must be in \(0, 1\]"),
], ids=lambda v: getattr(v, "__name__", None) or str(v))
def test_bad_parameters_are_refused_before_training(method, kwargs, message, monkeypatch):
    monkeypatch.setattr(collaborative, "train_classifier", _no_training)
    monkeypatch.setattr(spsa, "launch", _no_training)
    monkeypatch.setattr(fl, "fedavg", _no_training)
    monkeypatch.setattr(fl, "clustered_fl", _no_training)
    with pytest.raises(ValueError, match=message):
        method(X[TRAIN], Y[TRAIN], META, "mlp", {}, 1, 1e-3, 16, 0, _no_training, **kwargs)
