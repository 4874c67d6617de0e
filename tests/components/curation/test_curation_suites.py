"""Kind-aware Great Expectations suites (``gx_suite``): image and tabular suites on real data,
a missing column named before validation, planted near-duplicates found exactly, class balance,
drift against the previous DVC data version, Data Docs logged to MLflow, unreadable versions."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT, dvc, git, task_context

from distillery.components.core.datasets import (
    DataVersionError,
    load_labelled,
    read_dataset,
    write_dataset,
)
from distillery.components.curation.curate import curate_gx_suite, previous_data_rev
from distillery.components.curation.near_duplicates import embed, near_duplicate_of
from distillery.components.curation.suites import (
    MissingColumnError,
    SuiteParams,
    validate_suite,
)
from distillery.components.curation.tasks import run_curation
from distillery.components.curation.validation import ValidationFailed

MNIST = ROOT / "data" / "mnist"


@pytest.fixture(scope="module")
def mnist():
    meta = json.loads((MNIST / "dataset.json").read_text())
    return np.load(MNIST / "features.npy"), np.load(MNIST / "labels.npy"), meta


@pytest.fixture(scope="module")
def wine():
    from sklearn.datasets import load_wine

    data = load_wine()
    meta = {"name": "wine", "kind": "tabular", "feature_shape": [13], "classes": list(data.target_names),
            "value_range": None, "feature_names": list(data.feature_names)}
    return data.data.astype(np.float32), data.target.astype(np.int64), meta


def test_image_suite_passes_on_the_shipped_mnist_version(module_clone, tmp_path):
    curated, stats = curate_gx_suite(str(module_clone), "data/mnist", report_dir=str(tmp_path))
    assert len(curated.labels) == 5000 and stats["near_duplicates"] == 0 and stats["imbalance_ratio"] == 1.0
    report = json.loads((tmp_path / "suite_report.json").read_text())
    assert report["kind"] == "image" and all(e["success"] for e in report["expectations"])
    assert stats["drift_checked"] == 0 and "no previous data version" in report["notes"][0]  # one commit only
    assert (tmp_path / "data_docs" / "index.html").exists()


def test_tabular_suite_passes_on_wine_in_a_plain_folder(tmp_path, wine):
    """read_dataset reads a dataset folder that neither git nor DVC tracks."""
    write_dataset(tmp_path / "data" / "wine", *wine)
    curated, stats = curate_gx_suite(str(tmp_path), "data/wine", report_dir=str(tmp_path / "report"))
    report = json.loads((tmp_path / "report" / "suite_report.json").read_text())
    checked = {e["description"] for e in report["expectations"]}
    assert "feature 'proline' has no missing values (nulls)" in checked and len(checked) == 1 + 3 * 13 + 7
    assert len(curated.labels) == 178 and stats["near_duplicates"] == 0 and stats["drift_checked"] == 0
    assert "no previous data version" in report["notes"][0]


def test_a_missing_column_is_named_before_validation_runs(tmp_path, wine):
    features, labels, meta = wine
    with pytest.raises(MissingColumnError, match=r"references column\(s\) \['colour'\] that dataset 'wine'"):
        validate_suite(features, labels, meta, SuiteParams(drift_columns=["proline", "colour"]),
                       report_dir=str(tmp_path))
    one_more = {**meta, "feature_names": [*meta["feature_names"], "colour"]}  # dataset.json names 14 columns
    with pytest.raises(MissingColumnError, match=r"\['colour'\]"):
        validate_suite(features, labels, one_more, report_dir=str(tmp_path))
    assert not list(tmp_path.iterdir())  # no Data Docs, no report: nothing ran


def _planted(mnist, n_clean=400, n_copies=30, seed=0):
    """``n_clean`` MNIST images, then noisy copies of some of them (some copied twice)."""
    features, labels, meta = mnist
    rng = np.random.default_rng(seed)
    clean = rng.choice(len(labels), n_clean, replace=False)
    sources = np.concatenate([rng.choice(n_clean, n_copies - 5, replace=False), rng.choice(n_clean, 5)])
    noise = rng.integers(-3, 4, size=(n_copies, features.shape[1]))
    copies = np.clip(features[clean][sources].astype(int) + noise, 0, 255).astype(np.uint8)
    return (np.concatenate([features[clean], copies]), np.concatenate([labels[clean], labels[clean][sources]]),
            meta, sources)


def test_planted_near_duplicates_are_found_exactly_and_removed(mnist):
    features, labels, meta, sources = _planted(mnist)
    planted = np.arange(400, 430)
    expected = np.full(430, -1)
    expected[planted] = sources  # each copy points at its original (always the earlier row)
    of = near_duplicate_of(embed(features, "image"), threshold=0.01)
    np.testing.assert_array_equal(of, expected)
    # through a fixed random projection (D > max_dim) the same pairs are found
    np.testing.assert_array_equal(near_duplicate_of(embed(np.tile(features, 2), "image", max_dim=256), 0.01),
                                  expected)

    with pytest.raises(ValidationFailed, match=r"near-duplicates \(cosine distance <= 0.01\) of an earlier row "
                                               r"are at most 5% \(near duplicates\): 30 of 430 rows fail"):
        validate_suite(features, labels, meta)
    outcome = validate_suite(features, labels, meta, SuiteParams(max_near_duplicate_fraction=0.1))
    np.testing.assert_array_equal(outcome.keep, np.arange(400))
    assert outcome.stats["near_duplicates"] == 30 and outcome.stats["near_duplicate_groups"] == len(set(sources))

    labels = labels.copy()
    labels[400] = (labels[400] + 1) % 10  # a copy that disagrees on the label: its whole group goes
    outcome = validate_suite(features, labels, meta, SuiteParams(max_near_duplicate_fraction=0.1))
    group = np.flatnonzero((np.arange(430) == sources[0]) | (expected == sources[0]))
    assert outcome.stats["conflicting_label_groups_removed"] == 1
    np.testing.assert_array_equal(outcome.keep, np.setdiff1d(np.arange(400), group))


def test_class_balance_failure_names_the_small_class(mnist):
    features, labels, meta = mnist
    rows = np.concatenate([np.flatnonzero(labels != 3)[::5], np.flatnonzero(labels == 3)[:5]])
    with pytest.raises(ValidationFailed) as err:
        validate_suite(features[rows], labels[rows], meta)
    assert err.value.failures == [("every class holds at least 1.0% of the rows (class balance)", 5),
                                  ("largest / smallest class count is at most 10 (class balance)", 5)]


def test_drift_against_the_previous_version_fails_with_data_docs_in_mlflow(clone, tmp_path):
    import mlflow

    features, labels, meta = read_dataset(str(clone), "data/mnist")
    for message, rows in (("1,000 images", np.arange(0, 5000, 5)),  # 100 per class
                          ("80% of the zeros gone", np.concatenate([np.arange(20), np.arange(100, 1000)]))):
        features, labels = features[rows], labels[rows]
        write_dataset(clone / "data" / "mnist", features, labels, meta)
        dvc(clone, "add", "-q", "data")
        git(clone, "commit", "-qam", message)
    first = git(clone, "rev-parse", "HEAD~1")
    assert previous_data_rev(str(clone)) == (first, "")
    assert sorted(np.bincount(labels)) == [20] + [100] * 9

    context, out = task_context(tmp_path, clone), tmp_path / "curated.npz"
    with pytest.raises(ValidationFailed, match=rf"class proportions within KL divergence 0.02 of data version "
                                               rf"{first[:10]} \(drift\): observed 0.04\d+"):
        run_curation("gx_suite", context, "run-1", "{}", str(out))
    assert not out.exists()

    run_curation("gx_suite", context, "run-2", json.dumps({"max_class_kl": 0.5}), str(out))
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    failed, passed = sorted(client.search_runs([client.get_experiment_by_name("tasks").experiment_id],
                                               filter_string="tags.`distillery.role` = 'task'"),
                            key=lambda r: r.data.tags["distillery.run_key"])
    assert (failed.info.status, passed.info.status) == ("FAILED", "FINISHED")
    for run in (failed, passed):
        docs = [a.path for a in client.list_artifacts(run.info.run_id, "data_docs")]
        assert "data_docs/index.html" in docs
    assert "validation_failures.json" in [a.path for a in client.list_artifacts(failed.info.run_id)]
    assert 0.04 < passed.data.metrics["class_kl_divergence"] < 0.05
    curated = load_labelled(out)
    assert len(curated.labels) == 920 and curated.meta["provenance"][-1]["method"] == "gx_suite"
    assert passed.data.tags["curated_data_version"] == curated.meta["provenance"][-1]["version"]


def test_an_unreadable_data_version_is_a_clear_error_and_writes_nothing(clone, tmp_path):
    with pytest.raises(DataVersionError, match="'data/mnist' .* at revision no-such-rev"):
        curate_gx_suite(str(clone), "data/mnist", rev="no-such-rev")
    with pytest.raises(DataVersionError, match="at revision no-such-rev"):
        curate_gx_suite(str(clone), "data/mnist", reference_rev="no-such-rev")

    text = (clone / "data.dvc").read_text()
    bogus = text.replace(text.split("md5: ")[1].split(".dir")[0], "0123456789abcdef0123456789abcdef")
    (clone / "data.dvc").write_text(bogus)  # a version that neither the cache nor the remote holds
    git(clone, "commit", "-qam", "version nobody has")
    with pytest.raises(DataVersionError, match="cannot read dataset 'data/mnist' .* neither the DVC cache nor"):
        curate_gx_suite(str(clone), "data/mnist", report_dir=str(tmp_path / "report"))
    assert not (tmp_path / "report").exists() and (clone / "data.dvc").read_text() == bogus
    assert git(clone, "status", "--porcelain") == ""
