"""Bad input from any user, refused with a specific message before any work, and nothing lost.

Every case runs the real ``distillery`` command on a throwaway clone: the exit code is 2 (a clear
error, no traceback), the message names the problem and the fix, and ``data/`` and ``data.dvc``
are byte for byte what they were. Accepted inputs become versions. Crashes and fault injection:
tests/pipelines/test_faults.py.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, dvc, git, make_clone, run_cli

from distillery.components.core.datasets import read_dataset

TINY = ROOT / "tests" / "configs" / "tiny.yaml"


def snapshot(repo) -> dict[str, str]:
    """Every file under data/ and data.dvc, by content."""
    files = sorted([*(repo / "data").rglob("*"), repo / "data.dvc"])
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}


def refused(repo, *args, env=None) -> str:
    """Run ``distillery args``: it must fail cleanly (exit 2, no traceback) and change no data."""
    before = snapshot(repo)
    result = run_cli(repo, *args, env=env)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert snapshot(repo) == before, "a refused command changed data/ or data.dvc"
    return result.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_clone(tmp_path_factory.mktemp("reliability"))


# ---------------------------------------------------------------------------------------------
# data add: refused


def _csv(path, **columns) -> str:
    pd.DataFrame(columns).to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize("case, message", [
    ("huge", "beyond float32's range"),
    ("one_class", "only one class (7) occurs; a classifier needs at least two"),
    ("few_rows", "classes {'b': 1} have fewer than 2 rows"),
    ("fractional_labels", "labels must be whole numbers or class names; 1 are not, e.g. [0.5]"),
    ("text_feature", "feature columns must be numbers; ['colour'] hold text"),
    ("no_label", "1 row(s) have no label, e.g. data row(s) [3]"),
])
def test_bad_tables_are_refused_naming_the_problem(repo, tmp_path, case, message):
    x = [1.0, 2.0, 3.0, 4.0]
    tables = {
        "huge": {"x": [1.0, 1e300, 3.0, 4.0], "label": [0, 0, 1, 1]},
        "one_class": {"x": x, "label": [7, 7, 7, 7]},
        "few_rows": {"x": x, "label": ["a", "a", "a", "b"]},
        "fractional_labels": {"x": x, "label": [0.0, 0.5, 1.0, 1.0]},
        "text_feature": {"x": x, "colour": ["r", "g", "b", "r"], "label": [0, 0, 1, 1]},
        "no_label": {"x": x, "label": [0, 1, None, 1]},
    }
    source = _csv(tmp_path / f"{case}.csv", **tables[case])
    assert message in refused(repo, "data", "add", source, "--name", case)
    assert not (repo / "data" / case).exists()


def test_a_truncated_table_is_reported_as_truncated(repo, tmp_path):
    source = tmp_path / "cut.csv"
    source.write_text("a,b,label\n1,2,0\n3,4,1\n5,6,0\n7,")
    message = refused(repo, "data", "add", str(source), "--name", "cut")
    assert f"{source}: 1 row(s) have no label" in message and "(the file may be truncated)" in message


def test_a_non_utf8_table_names_the_file(repo, tmp_path):
    source = tmp_path / "latin.csv"
    source.write_bytes("caf\u00e9,label\n1,0\n2,1\n".encode("latin-1"))
    assert f"cannot read {source}: it is not UTF-8 text" in refused(repo, "data", "add", str(source), "--name", "latin")


def test_an_unreadable_image_is_named(repo, tmp_path):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / "pets" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((6, 5), 40 * i, dtype=np.uint8)).save(tmp_path / "pets" / label / f"{i}.png")
    broken = tmp_path / "pets" / "dog" / "1.png"
    broken.write_bytes(broken.read_bytes()[:30])  # truncated mid-file
    message = refused(repo, "data", "add", str(tmp_path / "pets"), "--name", "pets")
    assert f"cannot read image {broken}" in message and "fix or remove it" in message


def test_a_missing_source_is_reported_missing(repo, tmp_path):
    assert f"{tmp_path / 'nowhere'} does not exist" in refused(repo, "data", "add", str(tmp_path / "nowhere"),
                                                                "--name", "x")


# ---------------------------------------------------------------------------------------------
# data add: accepted


def test_integral_float_labels_and_class_names_are_accepted(repo, tmp_path):
    rng = np.random.default_rng(0)
    floats = _csv(tmp_path / "floats.csv", a=rng.normal(size=8), b=rng.normal(size=8),
                  label=[0.0, 1.0] * 4)
    assert run_cli(repo, "data", "add", floats, "--name", "floats").returncode == 0
    _, labels, meta = read_dataset(str(repo), "data/floats")
    assert labels.dtype == np.int64 and list(labels) == [0, 1] * 4 and meta["classes"] == ["0", "1"]


def test_npy_pairs_and_dataset_folders_are_accepted(repo, tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "x.npy", rng.normal(size=(10, 3)).astype(np.float32))
    np.save(tmp_path / "y.npy", np.array(["no", "yes"] * 5))
    done = run_cli(repo, "data", "add", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"), "--name", "pair")
    assert done.returncode == 0, done.stderr
    features, labels, meta = read_dataset(str(repo), "data/pair")
    assert features.shape == (10, 3) and meta["kind"] == "tabular" and meta["classes"] == ["no", "yes"]
    # images as (N, H, W) uint8
    np.save(tmp_path / "img.npy", rng.integers(0, 255, size=(8, 4, 4), dtype=np.uint8))
    np.save(tmp_path / "lab.npy", np.array([0, 1] * 4))
    assert run_cli(repo, "data", "add", str(tmp_path / "img.npy"), "--labels", str(tmp_path / "lab.npy"),
                   "--name", "tiles").returncode == 0
    _, _, meta = read_dataset(str(repo), "data/tiles")
    assert meta["kind"] == "image" and meta["feature_shape"] == [1, 4, 4] and meta["value_range"] == [0, 255]
    # the project's own folder format, e.g. a copy of a dataset from another checkout
    done = run_cli(repo, "data", "add", str(repo / "data" / "pair"), "--name", "pair-copy")
    assert done.returncode == 0, done.stderr
    copied, copied_labels, copied_meta = read_dataset(str(repo), "data/pair-copy")
    assert np.array_equal(copied, features) and np.array_equal(copied_labels, labels)
    assert copied_meta["classes"] == ["no", "yes"] and copied_meta["name"] == "pair-copy"


def test_data_list_shows_every_version(repo):
    done = run_cli(repo, "data", "list")
    assert done.returncode == 0, done.stderr
    assert "data/ matches it" in done.stdout
    lines = {line.split()[0]: line.split() for line in done.stdout.splitlines()[3:] if line.strip()}
    assert lines["mnist"][1:4] == ["5000", "10", "image"]
    assert len(lines["mnist"][4]) == 12  # the content hash, shortened


# ---------------------------------------------------------------------------------------------
# Config: checked when loaded and against the dataset, before any work


def _config(tmp_path, **changes) -> str:
    raw = yaml.safe_load(TINY.read_text())
    for key, value in changes.items():
        node = raw
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize("changes, message", [
    ({"evaluation.params.metric": "acuracy"}, "evaluation.params.metric 'acuracy' is not a metric the evaluation "
                                              "computes; use one of ['accuracy', 'macro_f1', 'ece']"),
    ({"training.params.epochs": -1}, "training.params.epochs must be an integer >= 1, got -1"),
    ({"distillation.params.lr": 0}, "distillation.params.lr must be a number > 0, got 0"),
    ({"selection.batch_size": 5000}, "selection asks for 1 rounds x batch_size 5000 = 5000 labels, but the split "
                                     "leaves 3950 unlabelled items"),
    ({"training": {"method": "supervised", "params": {"arch": "resnet"}}}, "unknown architecture 'resnet'"),
    ({"data.path": "data/mnsit"}, "data.path 'data/mnsit' is not a dataset in"),
])
def test_config_errors_are_caught_before_any_work(repo, tmp_path, changes, message):
    store = tmp_path / "mlflow.db"
    stderr = refused(repo, "run", "--config", _config(tmp_path, **changes),
                     env={"MLFLOW_TRACKING_URI": f"sqlite:///{store}"})
    assert message in stderr
    assert not store.exists()  # nothing ran, nothing was logged


def test_an_architecture_that_does_not_fit_the_data_kind_is_refused(repo, tmp_path):
    rng = np.random.default_rng(2)
    table = _csv(tmp_path / "t.csv", a=rng.normal(size=40), b=rng.normal(size=40), label=[0, 1] * 20)
    assert run_cli(repo, "data", "add", table, "--name", "table").returncode == 0
    config = _config(tmp_path, **{"data.path": "data/table", "split.params.seed_labels": 4,
                                  "selection.batch_size": 4})
    stderr = refused(repo, "run", "--config", config)
    assert "training.method small_cnn: small_cnn does not fit dataset 'table' (kind 'tabular'" in stderr
    assert "needs image data" in stderr


# ---------------------------------------------------------------------------------------------
# Stores


def test_a_damaged_tracking_store_is_one_paragraph_and_left_alone(repo, tmp_path):
    store = tmp_path / "mlflow.db"
    store.write_bytes(b"not a database " * 100)
    before = store.read_bytes()
    stderr = refused(repo, "run", "--config", str(TINY), env={"MLFLOW_TRACKING_URI": f"sqlite:///{store}"})
    assert f"The MLflow tracking store {store} cannot be opened" in stderr and "Move it aside" in stderr
    assert store.read_bytes() == before


def test_an_unreachable_tracking_server_is_named(repo):
    from servers import free_port

    url = f"http://127.0.0.1:{free_port()}"
    stderr = refused(repo, "run", "--config", str(TINY), env={"MLFLOW_TRACKING_URI": url})
    assert f"The MLflow tracking server {url} (MLFLOW_TRACKING_URI) cannot be used: it does not answer" in stderr


# ---------------------------------------------------------------------------------------------
# Data that is not the version it claims to be, and a table through the whole pipeline


@pytest.mark.pipeline
def test_dirty_data_is_refused_or_run_tagged_and_never_champion(tmp_path):
    import mlflow

    repo = make_clone(tmp_path)
    labels_file = repo / "data" / "mnist" / "labels.npy"
    labels = np.load(labels_file)
    labels[:50] = (labels[:50] + 1) % 10  # someone edited labels by hand
    np.save(labels_file, labels)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = _config(tmp_path, **{"selection.rounds": 0, "training.params.epochs": 2, "distillation.params.epochs": 2})
    stderr = refused(repo, "run", "--config", config, env={"MLFLOW_TRACKING_URI": store})
    assert "data/ in" in stderr and "differs from the version data.dvc records" in stderr
    assert "`dvc add data`" in stderr and "`dvc checkout data.dvc`" in stderr and "--allow-dirty-data" in stderr

    done = run_cli(repo, "run", "--config", config, "--allow-dirty-data", env={"MLFLOW_TRACKING_URI": store})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "WARNING: data/ differs from data.dvc" in done.stderr
    client = mlflow.MlflowClient(store)
    (parent,) = client.search_runs([client.get_experiment_by_name("distillery-tests").experiment_id],
                                   "tags.`distillery.role` = 'pipeline'")
    assert parent.data.tags["distillery.data_dirty"] == "true"
    assert parent.data.tags["distillery.data_content_hash"].endswith(".dir")
    assert parent.data.tags["distillery.data_content_hash"] != parent.data.tags["distillery.data_version"]
    (version,) = client.search_model_versions("name = 'tiny-student'")
    assert version.tags["promotion"].startswith("not promotable: trained on data/ as it was")
    assert not client.get_registered_model("tiny-student").aliases  # no champion from dirty data


@pytest.mark.pipeline
def test_a_table_runs_through_the_default_pipeline_shape(tmp_path):
    """The shipped tabular example: wine added with `data add`, then the whole pipeline."""
    from sklearn.datasets import load_wine

    import mlflow

    repo = make_clone(tmp_path)
    load_wine(as_frame=True).frame.to_csv(tmp_path / "wine.csv", index=False)
    added = run_cli(repo, "data", "add", str(tmp_path / "wine.csv"), "--name", "wine", "--label-column", "target")
    assert added.returncode == 0, added.stderr
    git(repo, "commit", "-qam", "data: add wine")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = run_cli(repo, "run", "--config", str(ROOT / "pipelines" / "configs" / "tabular.yaml"),
                   env={"MLFLOW_TRACKING_URI": store})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = mlflow.MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("distillery").experiment_id])
    assert all(r.info.status == "FINISHED" for r in runs) and len(runs) == 12  # the parent and 11 tasks
    evaluation = next(r for r in runs if r.data.tags.get("distillery.task") == "evaluate-classification")
    assert evaluation.data.metrics["teacher_accuracy"] > 0.85  # standardised features: wine is easy
    assert evaluation.data.metrics["student_accuracy"] > 0.75
    assert client.get_model_version_by_alias("distillery-wine-student", "champion")
    assert "up to date" in dvc(repo, "status").lower()
    features, _, meta = read_dataset(str(repo), "data/wine")
    assert meta["kind"] == "tabular" and features.shape == (178, 13) and json.dumps(meta)


def test_a_data_version_neither_the_cache_nor_the_remote_holds_is_one_paragraph(tmp_path):
    repo = make_clone(tmp_path)
    bogus = (repo / "data.dvc").read_text().replace(
        yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"], "0" * 32 + ".dir")
    (repo / "data.dvc").write_text(bogus)
    git(repo, "commit", "-qam", "a version nobody has")
    rev = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "HEAD~1", "--", "data.dvc")  # the work tree back at the real version
    git(repo, "commit", "-qam", "back")
    stderr = refused(repo, "run", "--config", _config(tmp_path, **{"data.rev": rev}))
    assert f"at revision {rev}" in stderr
    assert "its data version must be in the DVC cache or the DVC remote (`dvc pull`" in stderr
