"""Dataset distillation by distribution matching, the backdoor audit (against NAIVEATTACK and DOORPING
poisoning), and `distillery data distil` publishing a distilled set as a DVC version.

Small on purpose (2,000 MNIST training images, 10 images per class, 80 DM iterations with a narrow
random ConvNet, one torch thread); each distillation runs once per module.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from conftest import ROOT, dvc, git, run_cli

from benchmarks import backdoor_attacks
from distillery.components.audit.backdoor_audit import Trigger, audit_backdoor
from distillery.components.core.datasets import LabelledData, MissingClassError, data_version, read_dataset
from distillery.components.core.provenance import content_version
from distillery.components.dataset_distillation import (
    distribution_matching as dataset_dm,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MNIST = ROOT / "data" / "mnist"
IPC, TARGET, FRACTION = 10, 0, 0.05
DM = {"iterations": 80, "batch_real": 32, "width": 16}
AUDIT = {"arch": "small_cnn", "arch_kwargs": {"channels": 8, "hidden": 64}, "epochs": 100, "batch_size": 32}


@pytest.fixture(scope="module")
def mnist():
    """A fixed stratified split of the shipped 5,000 digits (sorted by class, so no first-N split):
    2,000 to distil from, 1,000 held out for the audit."""
    from sklearn.model_selection import train_test_split

    features, labels = np.load(MNIST / "features.npy"), np.load(MNIST / "labels.npy")
    meta = json.loads((MNIST / "dataset.json").read_text())
    train, test = train_test_split(np.arange(len(labels)), train_size=2000, test_size=1000, stratify=labels,
                                   random_state=0)
    return LabelledData(features[train], labels[train], train, meta), features[test], labels[test]


@pytest.fixture(scope="module")
def white_square(mnist):
    return Trigger.square(mnist[0].meta["feature_shape"], size=4, corner="bottom-right")


@pytest.fixture(scope="module")
def clean(mnist):
    losses = []
    distilled = dataset_dm.distil_dataset(mnist[0], IPC, seed=0, on_iteration=lambda i, loss: losses.append(loss), **DM)
    return distilled, losses


def audit(data, mnist, trigger):
    return audit_backdoor(data, mnist[1], mnist[2], trigger, TARGET, seed=0, **AUDIT)


def test_dm_loss_falls_and_synthetic_class_means_approach_the_real_ones(mnist, clean):
    train = mnist[0]
    distilled, losses = clean
    assert len(losses) == DM["iterations"]
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])
    start = dataset_dm.distil_dataset(train, IPC, seed=0, **{**DM, "iterations": 0})  # the real images DM starts from
    some = slice(0, 1000)  # half the (shuffled, stratified) training set is plenty for class means
    real, labels = dataset_dm.to_unit(train.features[some], train.meta), torch.as_tensor(train.labels[some])

    def gap(data):  # DM's objective under random networks it never trained on (other seeds, no augmentation)
        return dataset_dm.mean_embedding_gap(real, labels, dataset_dm.to_unit(data.features, data.meta),
                                             torch.as_tensor(data.labels), 10, width=DM["width"], networks=3,
                                             seed=999)

    assert gap(distilled) < 0.7 * gap(start)

    def pixel_gap(data):  # per-class mean image distance to the real class mean
        return np.mean([np.linalg.norm(train.features[train.labels == c].mean(0)
                                       - data.features[data.labels == c].mean(0)) for c in range(10)])

    assert pixel_gap(distilled) < pixel_gap(start)


def test_distilled_set_is_a_versioned_labelled_dataset(mnist, clean):
    train = mnist[0]
    distilled, _ = clean
    assert distilled.features.shape == (10 * IPC, 784) and distilled.features.dtype == np.float32
    assert 0 <= distilled.features.min() and distilled.features.max() <= 255
    assert list(distilled.labels) == [c for c in range(10) for _ in range(IPC)]
    assert list(distilled.ids) == list(range(10 * IPC))
    meta = distilled.meta
    assert {k: meta[k] for k in ("name", "kind", "feature_shape", "classes", "value_range")} == {
        "name": "mnist-dm10", "kind": "image", "feature_shape": [1, 28, 28], "classes": train.meta["classes"],
        "value_range": [0, 255]}
    (record,) = meta["provenance"]
    assert record["method"] == "distribution_matching" and record["params"]["ipc"] == IPC
    assert record["params"]["iterations"] == DM["iterations"] and record["params"]["width"] == DM["width"]
    assert record["parent_version"] == content_version(train) and record["version"] == content_version(distilled)
    # initialised from distinct real images of the right class
    start = dataset_dm.distil_dataset(train, IPC, seed=0, **{**DM, "iterations": 0})
    rows = [int(np.flatnonzero((train.features == image).all(1))[0]) for image in start.features.astype(np.uint8)]
    assert len(set(rows)) == 10 * IPC and list(train.labels[rows]) == list(start.labels)


def test_a_distilled_set_missing_a_class_is_refused_before_training(mnist, clean, white_square):
    distilled, _ = clean
    without_3 = distilled.subset(np.flatnonzero(distilled.labels != 3))
    started = time.perf_counter()
    with pytest.raises(MissingClassError, match=r"has no item of class\(es\) 3 \('3'\)"):
        audit(without_3, mnist, white_square)
    assert time.perf_counter() - started < 1.0  # refused up front, no model trained
    with pytest.raises(MissingClassError, match="source dataset"):
        dataset_dm.distil_dataset(mnist[0].subset(np.flatnonzero(mnist[0].labels != 7)), IPC, **DM)
    with pytest.raises(ValueError, match="ipc=300 but class"):
        dataset_dm.distil_dataset(mnist[0], 300, **DM)
    with pytest.raises(ValueError, match="target_class 10 is not a class index"):
        audit_backdoor(distilled, mnist[1], mnist[2], white_square, 10)


def test_audit_flags_naive_attack_and_doorping_and_passes_the_clean_set(mnist, clean, white_square):
    train = mnist[0]
    naive = dataset_dm.distil_dataset(backdoor_attacks.naive_attack(train, white_square, TARGET, FRACTION, seed=0),
                                      IPC, seed=0, **DM)
    doorping, optimised = backdoor_attacks.doorping(train, TARGET, IPC, fraction=FRACTION, seed=0, **DM)
    assert optimised.mask.sum() == 16 and not np.array_equal(optimised.pattern, white_square.pattern)

    results = {"clean": audit(clean[0], mnist, white_square),
               "clean vs DOORPING trigger": audit(clean[0], mnist, optimised),
               "NAIVEATTACK": audit(naive, mnist, white_square), "DOORPING": audit(doorping, mnist, optimised)}
    summary = {name: (round(r.attack_success_rate, 3), round(r.clean_accuracy, 3), r.verdict)
               for name, r in results.items()}
    for name in ("clean", "clean vs DOORPING trigger"):
        assert not results[name].flagged and results[name].attack_success_rate < 0.1, summary
    for name in ("NAIVEATTACK", "DOORPING"):
        assert results[name].flagged and results[name].attack_success_rate > 0.6, summary
    for result in results.values():  # the backdoor hides behind normal accuracy
        assert result.clean_accuracy > 0.7, summary


def test_cli_publishes_a_distilled_version_and_a_failed_publish_changes_nothing(module_clone):
    from dvc.api import DVCFileSystem

    repo = module_clone
    old_rev, old_version = git(repo, "rev-parse", "HEAD"), data_version(repo)
    args = ["data", "distil", "--source", "data/mnist", "--ipc", "2", "--target", "data/mnist-dm2",
            "--iterations", "3", "--batch-real", "8", "--width", "8"]
    result = run_cli(repo, *args)
    assert result.returncode == 0, result.stderr
    assert "distribution matching iteration 3/3" in result.stdout and "published 20 synthetic images" in result.stdout
    features, labels, meta = read_dataset(str(repo), "data/mnist-dm2")
    assert features.shape == (20, 784) and list(np.bincount(labels)) == [2] * 10
    assert meta["provenance"][0]["method"] == "distribution_matching" and old_version in meta["source"]
    assert data_version(repo) != old_version and "up to date" in dvc(repo, "status").lower()
    git(repo, "commit", "-qam", "mnist-dm2")
    new_rev, new_dvc = git(repo, "rev-parse", "HEAD"), (repo / "data.dvc").read_text()

    def files() -> dict[str, bytes]:
        return {str(p.relative_to(repo)): p.read_bytes() for p in sorted((repo / "data").rglob("*")) if p.is_file()}

    before = files()
    refused = run_cli(repo, *args)  # exists, no --replace
    assert refused.returncode == 2 and "already exists; pass --replace" in refused.stderr
    bad = run_cli(repo, *args[:5], "0", *args[6:], "--replace")
    assert bad.returncode == 2 and "ipc (images per class) must be an integer >= 1" in bad.stderr
    # A DVC cache that cannot take new objects (a file where each unused hash-prefix folder goes):
    # `dvc add` fails after the new folder was moved in; publish must put everything back.
    cache = repo / ".dvc" / "cache" / "files" / "md5"
    used = {p.name for p in cache.iterdir()}
    blockers = [cache / f"{i:02x}" for i in range(256) if f"{i:02x}" not in used]
    for blocker in blockers:
        blocker.write_text("")
    try:
        failed = run_cli(repo, *args[:-6], "--iterations", "4", "--batch-real", "8", "--width", "8", "--seed", "1",
                         "--replace")
    finally:
        for blocker in blockers:
            blocker.unlink()
    assert failed.returncode != 0 and "Not a directory" in failed.stderr
    assert (repo / "data.dvc").read_text() == new_dvc and files() == before
    assert "up to date" in dvc(repo, "status").lower()
    # every version reads back byte for byte
    for rev in (old_rev, new_rev):
        fs = DVCFileSystem(str(repo), rev=rev)
        for name in ("features.npy", "labels.npy", "dataset.json"):
            assert fs.read_bytes(f"data/mnist/{name}") == (MNIST / name).read_bytes()
    assert not DVCFileSystem(str(repo), rev=old_rev).exists("data/mnist-dm2")
    fs = DVCFileSystem(str(repo), rev=new_rev)
    assert all(fs.read_bytes(f"data/mnist-dm2/{n}") == before[f"data/mnist-dm2/{n}"]
               for n in ("features.npy", "labels.npy", "dataset.json"))


def test_tasks_log_the_synthetic_grid_and_the_audit_verdict(tmp_path, mnist):
    """The KFP task bodies: DM writes a LabelledData artifact and logs its image grid; the audit of it
    logs ASR, clean accuracy, threshold, the triggered-examples grid and the verdict tag."""
    from conftest import task_context

    import mlflow
    from distillery.components.audit.tasks import run_audit
    from distillery.components.core.datasets import load_labelled, save_labelled
    from distillery.components.dataset_distillation.tasks import run_dataset_distillation

    train, x_test, y_test = mnist
    context = task_context(tmp_path, ROOT)
    source, synthetic, test = (str(tmp_path / name) for name in ("source", "synthetic", "test"))
    save_labelled(source, train)
    save_labelled(test, LabelledData(x_test, y_test, np.arange(len(y_test)), train.meta))
    run_dataset_distillation("distribution_matching", context, "run-1",
                             json.dumps({"ipc": 2, "iterations": 3, "batch_real": 8, "width": 8}), source, synthetic)
    distilled = load_labelled(synthetic)
    assert distilled.features.shape == (20, 784) and distilled.meta["provenance"][0]["params"]["ipc"] == 2
    run_audit("backdoor_audit", context, "run-1",
                       json.dumps({"epochs": 3, "arch_kwargs": {"channels": 4, "hidden": 16}}), synthetic, test)

    client = mlflow.MlflowClient(json.loads(context)["tracking_uri"])
    runs = {r.data.tags["distillery.task"]: r for r in client.search_runs(
        [client.get_experiment_by_name("tasks").experiment_id], filter_string="tags.`distillery.role` = 'task'")}
    dm_run, audit_run = runs["distil-data-distribution_matching"], runs["audit-backdoor_audit"]
    assert "synthetic_images.png" in {a.path for a in client.list_artifacts(dm_run.info.run_id)}
    assert len(client.get_metric_history(dm_run.info.run_id, "dm_loss")) == 3
    assert "triggered_examples.png" in {a.path for a in client.list_artifacts(audit_run.info.run_id)}
    metrics = audit_run.data.metrics
    assert {"attack_success_rate", "clean_accuracy", "asr_threshold", "flagged"} <= set(metrics)
    assert audit_run.data.tags["backdoor_audit"] == ("backdoor-suspected" if metrics["flagged"] else "pass")
