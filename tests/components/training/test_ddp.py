"""Data-parallel training (DDP under torchrun), checkpoints and resuming, and the `ddp` training task.

The torchrun tests start real worker processes (gloo on CPU): one run is the reference that the
single-process loop, a crashed-and-restarted run and a corrupted-checkpoint run are compared with.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time

import numpy as np
import pytest
import torch
from conftest import ROOT, task_context

from distillery.components.core import checkpoint, models
from distillery.components.core.datasets import LabelledData, save_arrays, save_labelled
from distillery.components.core.train import (
    Checkpointing,
    SimulatedCrash,
    train_classifier,
)
from distillery.components.training.distributed import (
    DistributedTrainingError,
    train_data_parallel,
)

MNIST = ROOT / "data" / "mnist"
META = json.loads((MNIST / "dataset.json").read_text())
# 265 rows in global batches of 33: shards of 17 and 16 rows, and a last batch of one row, which
# leaves rank 1 nothing to do in that step (it must still join the all-reduce).
N, BATCH, EPOCHS, MLP = 265, 33, 3, {"hidden": 16}


@pytest.fixture(scope="module")
def xy():
    return np.load(MNIST / "features.npy")[:N].astype(np.float32), np.load(MNIST / "labels.npy")[:N]


def assert_same_model(a: torch.nn.Module, b: torch.nn.Module, atol: float) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.allclose(sa[key], sb[key], rtol=0, atol=atol), (key, (sa[key] - sb[key]).abs().max())


@pytest.fixture(scope="module")
def reference(xy, tmp_path_factory):
    """Uninterrupted 2-process run with a checkpoint every epoch: (model, records, checkpoint dir)."""
    folder = tmp_path_factory.mktemp("ddp") / "checkpoints"
    records: list[dict] = []
    model = train_data_parallel(*xy, META, "mlp", MLP, EPOCHS, 1e-3, BATCH, 0, nproc_per_node=2,
                                checkpoint_dir=folder, checkpoint_every=1, on_record=records.append, on_line=None)
    return model, records, folder


# ---------------------------------------------------------------------------------------------
# checkpoint.py on its own

def test_checkpoints_are_atomic_verified_pruned_and_corruption_is_named(tmp_path, monkeypatch):
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, {"w": torch.full((3,), float(step)), "step": step}, keep=2)
    assert [p.name for p in checkpoint.complete(tmp_path)] == ["ckpt-00000002.pt", "ckpt-00000003.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # pruned, and no temporary file left
        "ckpt-00000002.pt", "ckpt-00000002.pt.sha256", "ckpt-00000003.pt", "ckpt-00000003.pt.sha256"]
    assert checkpoint.load(checkpoint.latest(tmp_path))["step"] == 3

    # A write that dies before completing leaves the good checkpoints as they were.
    def crash(*args):
        raise OSError("disk gone")
    monkeypatch.setattr(checkpoint.os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        checkpoint.save(tmp_path, 4, {"w": torch.zeros(3)}, keep=2)
    monkeypatch.undo()
    assert checkpoint.latest(tmp_path).name == "ckpt-00000003.pt"
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]

    # A checkpoint without its checksum (write never finished) is not "latest".
    shutil.copy(tmp_path / "ckpt-00000003.pt", tmp_path / "ckpt-00000009.pt")
    assert checkpoint.latest(tmp_path).name == "ckpt-00000003.pt"

    newest = tmp_path / "ckpt-00000003.pt"
    blob = bytearray(newest.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    newest.write_bytes(bytes(blob))
    with pytest.raises(checkpoint.CorruptCheckpointError) as err:
        checkpoint.load_latest(tmp_path)
    assert f"checkpoint {newest} is corrupt" in str(err.value)
    assert "previous good checkpoint is" in str(err.value) and "ckpt-00000002.pt" in str(err.value)
    with pytest.warns(UserWarning, match="falling back"):
        state, path = checkpoint.load_latest(tmp_path, fallback=True)
    assert path.name == "ckpt-00000002.pt" and state["step"] == 2
    with pytest.raises(checkpoint.CheckpointError, match="weights_only"):
        checkpoint.save(tmp_path / "other", 1, {"bad": object()})  # would not load back: refused at save


def test_single_process_resume_equals_uninterrupted_dropout_included(xy, tmp_path):
    """Model, Adam state, shuffling generator and the dropout RNG all come back from a checkpoint."""
    x, y = xy[0][:64], xy[1][:64]
    mlp = {"hidden": 16, "dropout": 0.5}  # with dropout, the RNG state must be restored too

    def run(ckpt):
        return train_classifier(x, y, META, "mlp", mlp, 4, 1e-3, 16, 7, checkpointing=ckpt)

    whole = run(None)
    fingerprint = {"lr": 1e-3}
    with pytest.raises(SimulatedCrash):
        run(Checkpointing(tmp_path, every=2, fingerprint=fingerprint, crash_after_epoch=2))
    losses = []
    resumed = train_classifier(x, y, META, "mlp", mlp, 4, 1e-3, 16, 7, lambda epoch, loss: losses.append(epoch),
                               checkpointing=Checkpointing(tmp_path, every=2, fingerprint=fingerprint))
    assert losses == [2, 3]  # only the epochs after the checkpoint ran
    assert_same_model(whole, resumed, atol=0)
    with pytest.raises(checkpoint.CheckpointError, match=r"different training \(differs in \['lr'\]\)"):
        run(Checkpointing(tmp_path, fingerprint={"lr": 1e-2}))


# ---------------------------------------------------------------------------------------------
# torchrun, 2 processes

def test_two_processes_train_the_same_model_as_one(xy, reference):
    model, records, _ = reference
    single = train_classifier(*xy, META, "mlp", MLP, EPOCHS, 1e-3, BATCH, 0)
    assert_same_model(single, model, atol=1e-5)
    epochs = [r for r in records if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == list(range(EPOCHS))
    for r in epochs:  # both workers report, and together they saw every sample once
        assert [w["rank"] for w in r["workers"]] == [0, 1]
        assert sum(w["samples"] for w in r["workers"]) == N
    assert records[0] == {"event": "start", "world_size": 2, "backend": "gloo", "samples": N}
    assert records[-1]["event"] == "done"


def test_a_crashed_run_restarts_from_its_checkpoint_and_ends_with_the_same_model(xy, reference, tmp_path):
    lines, records = [], []
    # The workers exit after epoch 2; torchrun restarts them (max_restarts) and they resume.
    model = train_data_parallel(*xy, META, "mlp", MLP, EPOCHS, 1e-3, BATCH, 0, nproc_per_node=2,
                                checkpoint_dir=tmp_path, checkpoint_every=1, max_restarts=1,
                                extra_args=["--crash-after-epoch", "2"], on_line=lines.append,
                                on_record=records.append)
    assert any("simulated crash after epoch 2" in line for line in lines)
    assert [r["epoch"] for r in records if r["event"] == "epoch"] == [0, 1, 2]  # epoch 2 ran after the restart
    assert [r["event"] for r in records].count("start") == 2
    assert_same_model(reference[0], model, atol=1e-7)
    state = checkpoint.load(checkpoint.latest(tmp_path))
    assert state["epoch"] == EPOCHS and state["world_size"] == 2
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])


def test_a_corrupted_checkpoint_stops_every_worker_with_a_clear_error(xy, reference, tmp_path):
    folder = tmp_path / "checkpoints"
    shutil.copytree(reference[2], folder)
    newest = checkpoint.latest(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    blob = bytearray(before[newest.name])
    blob[100] ^= 0xFF
    newest.write_bytes(bytes(blob))
    started = time.perf_counter()
    with pytest.raises(DistributedTrainingError) as err:
        train_data_parallel(*xy, META, "mlp", MLP, EPOCHS + 1, 1e-3, BATCH, 0, nproc_per_node=2,
                            checkpoint_dir=folder, on_line=None, timeout=60)
    message = str(err.value)
    assert "torchrun with 2 process(es) exited with code" in message
    assert f"checkpoint {newest} is corrupt" in message and "ckpt-00000002.pt" in message
    assert time.perf_counter() - started < 60  # rank 1 did not wait out its timeout
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert after.keys() == before.keys()  # nothing written over, the previous good one intact
    assert after[newest.name] == bytes(blob) and checkpoint.load(folder / "ckpt-00000002.pt")["epoch"] == 2


# ---------------------------------------------------------------------------------------------
# bad input

def test_bad_process_counts_and_batches_are_refused_before_launching(xy):
    for n in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="nproc_per_node must be an integer >= 1"):
            train_data_parallel(*xy, META, "mlp", MLP, 1, 1e-3, 32, 0, nproc_per_node=n)
    with pytest.raises(ValueError, match=r"global batch_size \(3\) must be an integer >= "
                                         r"the number of processes \(4\)"):
        train_data_parallel(*xy, META, "mlp", MLP, 1, 1e-3, 3, 0, nproc_per_node=4)
    with pytest.raises(ValueError, match="checkpoint every must be an integer >= 1"):
        Checkpointing("x", every=0)


def test_an_unreachable_master_is_an_error_after_the_timeout_not_a_hang(xy, tmp_path, monkeypatch):
    from distillery.components.training.distributed import RendezvousError, main

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path / "train.npz"
    np.savez(data, features=xy[0][:10], labels=xy[1][:10], meta=np.array(json.dumps(META)))
    # The entrypoint as rank 1 of 2 would run it (in this process: no interpreter start to wait for).
    for key, value in {"RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    started = time.perf_counter()
    with pytest.raises(RendezvousError) as err:
        main(["--data", str(data), "--out", str(tmp_path / "m.pt"), "--timeout", "2"])
    assert f"rank 1 of 2 could not join the process group at MASTER_ADDR:MASTER_PORT = 127.0.0.1:{port} " \
           "within 2 s" in str(err.value)
    assert time.perf_counter() - started < 30
    assert not (tmp_path / "m.pt").exists()


# ---------------------------------------------------------------------------------------------
# the `ddp` training task, against a real MLflow store

def test_ddp_training_task_saves_a_model_and_logs_per_worker_and_system_metrics(tmp_path, monkeypatch):
    import mlflow
    from distillery.components.training.tasks import run_training

    # this run takes a few seconds: sample more often than the task's 5 s, or no sample may land
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")

    features, labels = np.load(MNIST / "features.npy")[:300], np.load(MNIST / "labels.npy")[:300]
    save_labelled(tmp_path / "dataset", LabelledData(features.astype(np.float32), labels, np.arange(300), META))
    save_arrays(tmp_path / "splits", test_rows=np.arange(200, 300), train_rows=np.arange(200))
    save_arrays(tmp_path / "labelled", rows=np.arange(80), labels=labels[:80])
    params = {"nproc_per_node": 2, "epochs": 2, "batch_size": 16, "arch_kwargs": {"channels": 4, "hidden": 32},
              "checkpoint_every": 1}
    p = str
    run_training("ddp", task_context(tmp_path, ROOT), "run-1", json.dumps(params), 0, p(tmp_path / "dataset"),
                 p(tmp_path / "splits"), p(tmp_path / "labelled"), p(tmp_path / "model"))

    model = models.load(str(tmp_path / "model"))
    assert model(torch.zeros(2, 784)).shape == (2, 10)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tasks").experiment_id
    run = client.search_runs([experiment], filter_string="tags.`distillery.task` = 'round-0-train-ddp'")[0]
    metrics = run.data.metrics
    assert run.info.status == "FINISHED" and run.data.tags["distillery.world_size"] == "2"
    assert run.data.params["nproc_per_node"] == "2" and run.data.params["arch"] == "small_cnn"
    for rank in (0, 1):
        assert [m.step for m in client.get_metric_history(run.info.run_id, f"train_loss_rank{rank}")] == [0, 1]
        assert metrics[f"samples_per_second_rank{rank}"] > 0 and metrics[f"samples_rank{rank}"] == 40
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [0, 1]
    assert {"test_accuracy", "labels", "parameters", "samples_per_second"} <= metrics.keys()
    assert metrics["parameters"] == models.count_parameters(model)
    assert any(k.startswith("system/cpu_utilization") for k in metrics), sorted(metrics)
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.metrics["teacher_test_accuracy"] == metrics["test_accuracy"]
    assert os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING") is None  # switched back off
