"""The scheduled-retraining pipeline, for real: kfp.local, a real SQLite MLflow store, DVC data versions
in a throwaway git + DVC clone.

A first run (no champion yet) retrains end to end and registers a champion trained on a 4,800-row
data version; a second run on the same data stops after its check with the reason. The check task is
then called directly on newer data versions (more labels, drifted pixels, a few more rows) to prove
each branch of the decision without paying for more training.
"""
from __future__ import annotations

import json

import pytest
from conftest import ROOT, dvc, git, run_cli

from distillery.components.core.datasets import (
    data_version,
    read_dataset,
    write_dataset,
)
from distillery.pipelines.config import load_config, task_names

pytestmark = pytest.mark.pipeline
CONFIG = ROOT / "tests" / "configs" / "tiny_retraining.yaml"
EXPERIMENT = "distillery-retraining-tests"


def commit_version(repo, features, labels, meta, message: str) -> str:
    write_dataset(repo / "data" / "mnist", features, labels, meta)
    dvc(repo, "add", "-q", "data")
    git(repo, "commit", "-qam", message)
    return data_version(repo)


@pytest.fixture(scope="module")
def full(module_clone):
    return read_dataset(str(module_clone), "data/mnist")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def runs(module_clone, store, full):
    """Run 1 retrains on a 4,800-row version; run 2, on the same version, must skip."""
    features, labels, meta = full
    version = commit_version(module_clone, features[:4800], labels[:4800], meta, "4,800 rows")
    results = [run_cli(module_clone, "run", "--config", str(CONFIG), env={"MLFLOW_TRACKING_URI": store})
               for _ in range(2)]
    for result in results:
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return version, results


@pytest.fixture(scope="module")
def client(store):
    import mlflow

    return mlflow.MlflowClient(store)


def pipeline_runs(client):
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if r.data.tags.get("distillery.role") == "pipeline"]
    children = {p.info.run_id: sorted(r.info.run_name for r in runs
                                      if r.data.tags.get("mlflow.parentRunId") == p.info.run_id) for p in parents}
    return parents, children


def test_first_run_retrains_and_registers_a_champion(runs, client):
    version, _ = runs
    parents, children = pipeline_runs(client)
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    assert children[parents[0].info.run_id] == sorted(task_names(load_config(CONFIG)))
    assert parents[0].data.tags["retrain_reason"] == "no champion model yet"
    champion = client.get_model_version_by_alias("tiny-retrained", "champion")
    assert champion.tags["distillery.data_version"] == version


def test_curation_steps_chain_their_provenance(runs, client):
    version, _ = runs
    parents, _ = pipeline_runs(client)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    tasks = {r.info.run_name: r.data.tags for r in client.search_runs(
        [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")}
    loader, step = tasks["curate-gx_dedup"], tasks["curate-ppp"]
    assert loader["parent_data_version"] == version  # the DVC version the loader read
    assert step["parent_data_version"] == loader["curated_data_version"]  # the step read the loader's output
    assert step["curated_data_version"] != step["parent_data_version"]  # ppp adds its clusters to meta


def test_second_run_on_the_same_data_skips_with_the_reason(runs, client):
    version, results = runs
    parents, children = pipeline_runs(client)
    skipped = parents[1]
    assert children[skipped.info.run_id] == ["check-retraining"]  # nothing after the check ran
    assert f"data version {version[:12]} is the one champion tiny-retrained v1 was trained on" in \
        skipped.data.tags["retrain_reason"]
    assert skipped.data.tags["mlflow.note.content"].count("skipped, nothing to retrain") == 1
    assert "skipping: data version" in results[1].stdout
    assert len(client.search_model_versions("name = 'tiny-retrained'")) == 1  # no new version


def check(module_clone, store, **settings) -> tuple[str, dict | None]:
    """The check task's body on the clone's newest data version, as a scheduled run would call it."""
    from distillery.components.evaluation.tasks import run_retraining_check
    from distillery.pipelines.runtime import run_context

    config = load_config(CONFIG)
    ctx = run_context(config, module_clone)
    ctx.tracking_uri, ctx.artifact_location = store, None
    resolved = run_retraining_check(ctx.to_json(), ctx.launch_id, json.dumps({**config["retraining"], **settings}))
    return ("false", None) if resolved == "skip" else ("true", json.loads(resolved))


def last_reason(client) -> str:
    parents, _ = pipeline_runs(client)
    return parents[-1].data.tags["retrain_reason"]


def test_check_decides_on_new_labels_and_drift(runs, module_clone, store, client, full):
    features, labels, meta = full
    # 50 more rows of the same distribution: below the 100-label threshold and no drift -> skip
    commit_version(module_clone, features[:4850], labels[:4850], meta, "4,850 rows")
    retrain, _ = check(module_clone, store)
    assert retrain == "false"
    assert "only 50 new labels (threshold 100) and no drift" in last_reason(client)
    # the whole 5,000 rows: 200 new labels -> retrain, on a context pinned to the new version
    version = commit_version(module_clone, features, labels, meta, "5,000 rows")
    retrain, resolved = check(module_clone, store)
    assert retrain == "true" and "200 new labels (threshold 100)" in last_reason(client)
    assert resolved["data_version"] == version
    # the same row count, pixels darkened: drift alone retrains, unless drift is switched off
    dark = (features[:4800] * 0.6).astype(features.dtype)
    commit_version(module_clone, dark, labels[:4800], meta, "darker pixels")
    retrain, _ = check(module_clone, store)
    assert retrain == "true" and "drift detected" in last_reason(client)
    retrain, _ = check(module_clone, store, retrain_on_drift=False)
    assert retrain == "false" and "drift ignored" in last_reason(client)


def test_unreadable_data_version_fails_clearly_and_keeps_the_champion(runs, module_clone, store, client):
    from distillery.components.core.datasets import DataVersionError
    from distillery.components.evaluation.tasks import run_retraining_check
    from distillery.pipelines.runtime import run_context

    config = load_config(CONFIG)
    ctx = run_context(config, module_clone)
    ctx.tracking_uri, ctx.artifact_location = store, None
    ctx.config["data"]["rev"] = "no-such-branch"
    with pytest.raises(DataVersionError, match="cannot resolve revision 'no-such-branch'"):
        run_retraining_check(ctx.to_json(), "unreadable", json.dumps(config["retraining"]))
    assert str(client.get_model_version_by_alias("tiny-retrained", "champion").version) == "1"
