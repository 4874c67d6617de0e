"""Curation steps (registry stage ``curation_step``): compute-aware quality filtering, robust consensus
labels, information-gain feature selection, PPP clustering (and PPP anchors for AnchorAL); provenance
records; the task body against a real MLflow store; `distillery data curate` into a throwaway clone."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT, dvc, git, run_cli, task_context
from sklearn import datasets as skdata

from distillery.components.core.datasets import (
    LabelledData,
    load_labelled,
    save_labelled,
)
from distillery.components.core.provenance import (
    apply_step,
    content_version,
    with_provenance,
)
from distillery.components.curation_step import consensus as cons
from distillery.components.curation_step import quality_filter as qf
from distillery.components.curation_step.info_gain import (
    discretise,
    info_gain,
    information_gain,
)
from distillery.components.curation_step.ppp import choose_k, ppp


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """A loaded 2-core machine: spinning BLAS threads slow the small matrix products down many times."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def _tabular(loader, name: str) -> LabelledData:
    bunch = loader()
    meta = {"name": name, "kind": "tabular", "feature_shape": [bunch.data.shape[1]],
            "classes": [str(c) for c in bunch.target_names], "value_range": None,
            "feature_names": [str(f) for f in bunch.feature_names]}
    return LabelledData(bunch.data.astype(np.float32), bunch.target.astype(np.int64),
                        np.arange(len(bunch.target)) + 100, meta)


def _digits() -> LabelledData:
    bunch = skdata.load_digits()
    meta = {"name": "digits", "kind": "image", "feature_shape": [1, 8, 8], "classes": [str(c) for c in range(10)],
            "value_range": [0, 16]}
    return LabelledData(bunch.data.astype(np.float32), bunch.target.astype(np.int64), np.arange(len(bunch.target)),
                        meta)


def _flip(labels: np.ndarray, rate: float, rng: np.random.Generator, k: int = 10) -> np.ndarray:
    out = labels.copy()
    flipped = rng.random(len(labels)) < rate
    out[flipped] = (labels[flipped] + rng.integers(1, k, flipped.sum())) % k
    return out


# -- provenance ----------------------------------------------------------------------------------

def test_content_version_ignores_provenance_and_sees_every_array():
    data = _tabular(skdata.load_wine, "wine")
    version = content_version(data)
    marked = with_provenance(data, "info_gain", {"k": 3}, "parent")
    assert content_version(marked) == version and "provenance" not in data.meta  # input untouched
    assert marked.meta["provenance"] == [{"method": "info_gain", "params": {"k": 3}, "parent_version": "parent",
                                          "version": version}]
    for changed in (LabelledData(data.features, data.labels, data.ids + 1, data.meta),
                    LabelledData(data.features.astype(np.float64), data.labels, data.ids, data.meta),
                    LabelledData(data.features, data.labels, data.ids, {**data.meta, "name": "other"})):
        assert content_version(changed) != version
    first = apply_step("info_gain", data, {"k": 5})
    second = apply_step("ppp", first.data, {"k_max": 3, "seeds": 2})
    chain = second.data.meta["provenance"]
    assert [r["method"] for r in chain] == ["info_gain", "ppp"]
    assert chain[0]["parent_version"] == version and chain[1]["parent_version"] == chain[0]["version"]
    assert chain[1]["version"] == content_version(second.data) and chain[1]["params"]["k_max"] == 3
    with pytest.raises(ValueError, match="has no parameter"):
        apply_step("info_gain", data, {"top": 3})


# -- quality filter: the law -----------------------------------------------------------------------

def test_scaling_law_matches_hand_computation():
    # one pass, not finished: (a n)^b + d
    assert qf.predicted_error(50, 100, 0.1, -0.5, 2.0, 0.1) == pytest.approx(5 ** -0.5 + 0.1)
    # 2.5 passes: n_k = 100, 200, 250; b_k = b 0.5^(k/tau)
    b1, b2 = -0.5 * 0.5 ** (1 / 2), -0.5 * 0.5 ** (2 / 2)
    expected = (10 ** -0.5 + 0.1) * 2 ** b1 * 1.25 ** b2
    assert qf.predicted_error(250, 100, 0.1, -0.5, 2.0, 0.1) == pytest.approx(expected)
    # exactly 2 passes: the third pass has not begun (ratio 1)
    assert qf.predicted_error(200, 100, 0.1, -0.5, 2.0, 0.1) == pytest.approx((10 ** -0.5 + 0.1) * 2 ** b1)
    # union of 2 buckets: p N per epoch, utility mean_i b_i 0.5^(k / (p tau_i))
    u0 = np.mean([-0.4, -0.2])
    u1 = np.mean([-0.4 * 0.5 ** (1 / (2 * 1.0)), -0.2 * 0.5 ** (1 / (2 * 3.0))])
    assert qf.union_error(300, [100, 100], 0.05, [-0.4, -0.2], [1.0, 3.0], 0.02) == pytest.approx(
        ((0.05 * 200) ** u0 + 0.02) * 1.5 ** u1)
    assert qf.union_error(730, [100], 0.3, [-0.3], [1.5], 0.05) == pytest.approx(
        qf.predicted_error(730, 100, 0.3, -0.3, 1.5, 0.05))
    with pytest.raises(ValueError, match="must be > 0"):
        qf.predicted_error(0, 100, 0.1, -0.5, 2.0, 0.1)


def test_grid_search_recovers_a_law_and_the_best_mix_depends_on_compute():
    truth = [qf.BucketLaw(qf.A_GRID[20], qf.B_GRID[24], qf.TAU_GRID[8], 0.05),
             qf.BucketLaw(qf.A_GRID[20], qf.B_GRID[9], qf.TAU_GRID[30], 0.05)]
    observations = [[(n, per_epoch, qf.predicted_error(n, per_epoch, law.a, law.b, law.tau, law.d))
                     for per_epoch in (200, 400) for n in (50, 100, 200, 400, 800, 1600)] for law in truth]
    fitted, loss = qf.fit_laws(observations, d_grid=[0.0, 0.05, 0.1])
    assert loss < 1e-12
    assert [(f.b, f.tau) for f in fitted] == [(t.b, t.tau) for t in truth] and fitted[0].d == 0.05
    # the steep but quickly exhausted bucket alone wins small budgets; the pool of both wins large ones
    steep_fast = qf.BucketLaw(1.0, -0.5, 0.5, 0.05)
    shallow_slow = qf.BucketLaw(1.0, -0.3, 8.0, 0.05)
    order, small = qf.mix_errors([shallow_slow, steep_fast], [1000, 1000], 500)
    assert order.tolist() == [1, 0] and np.argmin(small) == 0
    _, large = qf.mix_errors([shallow_slow, steep_fast], [1000, 1000], 50_000)
    assert np.argmin(large) == 1


def test_quality_filter_keeps_whole_buckets_of_clean_digits():
    data = _digits()
    rng = np.random.default_rng(0)
    sizes = [len(part) for part in np.array_split(np.arange(len(data.labels)), 4)]  # the step's bucket sizes
    noise = np.repeat([0.0, 0.2, 0.4, 0.7], sizes)[rng.permutation(len(data.labels))]
    labels = np.where(rng.random(len(noise)) < noise, (data.labels + rng.integers(1, 10, len(noise))) % 10, data.labels)
    noisy = LabelledData(data.features, labels, data.ids, {**data.meta, "quality": (-noise).tolist()})
    result = qf.quality_filter(noisy, score="meta:quality", budget=2000, fit_passes=[0.5, 1, 2], repeats=1)
    stats = result.stats
    kept_noise = noise[np.isin(data.ids, result.data.ids)]
    p = stats["chosen_buckets"]
    assert 1 <= p <= 4 and len(result.data.labels) == sum(sizes[:p])
    assert set(np.unique(kept_noise)) == set([0.0, 0.2, 0.4, 0.7][:p])  # the cleanest p buckets, whole
    errors = [stats[f"predicted_error_top{i}"] for i in range(1, 5)]
    assert stats[f"predicted_error_top{p}"] == min(errors)
    report = result.artifacts["quality_filter_fit.json"]
    assert [b["law"]["b"] < 0 for b in report["buckets_by_score"]] == [True] * 4
    assert report["mix_order_by_b"][0] == 0  # the clean bucket has the most negative b
    assert type(result.artifacts["predicted_error_vs_compute.png"]).__name__ == "Figure"
    with pytest.raises(ValueError, match="meta has no 'quality'"):
        qf.quality_filter(data, score="meta:quality")
    with pytest.raises(ValueError, match="score must be one of"):
        qf.quality_filter(data, score="loss")


def test_proxy_loss_scores_rank_flipped_labels_low():
    data = _digits()
    rng = np.random.default_rng(1)
    labels = _flip(data.labels, 0.2, rng)
    scores = qf.quality_scores(LabelledData(data.features, labels, data.ids, data.meta), "proxy_loss", seed=0)
    flipped = labels != data.labels
    assert np.mean(scores[flipped]) < np.mean(scores[~flipped]) - 1.0
    worst = np.argsort(scores)[:flipped.sum()]
    assert np.mean(flipped[worst]) > 0.6  # the lowest scores are mostly the flipped items (20% overall)


# -- consensus -----------------------------------------------------------------------------------

def _annotators(truth: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([_flip(truth, 0.15, rng), _flip(truth, 0.2, rng), _flip(truth, 0.25, rng),
                     _flip(truth, 0.3, rng), np.full(len(truth), 3)], axis=1)  # ... adversarial, lazy


def test_consensus_beats_majority_vote_and_flags_the_bad_annotators():
    truth = np.random.default_rng(5).permutation(_digits().labels)[:500]
    table = _annotators(truth)
    result = cons.robust_consensus(table, 10)
    vote = cons.majority_vote(table, 10)
    assert np.mean(result.labels == truth) >= np.mean(vote == truth) and np.mean(result.labels == truth) > 0.93
    assert result.agreement[4] < 0.2 and result.agreement[0] > result.agreement[3]  # lazy lowest, noisiest honest
    assert np.argmax(result.residual) == 4 and result.residual[0] < result.residual[3]
    assert result.profiles < len(truth) and result.blocks == 1
    # profiles are an exact reduction: every item duplicated gives the same labels
    twice = cons.robust_consensus(np.concatenate([table, table]), 10)
    np.testing.assert_array_equal(twice.labels, np.concatenate([result.labels, result.labels]))
    blocked = cons.robust_consensus(table, 10, block_size=100)
    assert blocked.blocks > 1 and np.mean(blocked.labels == truth) > 0.85


def test_consensus_step_reads_annotator_files_and_rejects_bad_ones(tmp_path):
    data = _digits().subset(np.arange(300))
    table = _annotators(data.labels, seed=2)
    folder = tmp_path / "annotations"
    folder.mkdir()
    for t, name in enumerate(["ann", "bob", "cy", "dee", "lazy"]):
        rows = np.arange(300) if name != "cy" else np.arange(100, 300)  # cy labelled only some items
        (folder / f"{name}.csv").write_text("id,label\n" + "".join(f"{data.ids[r]},{table[r, t]}\n" for r in rows))
    result = apply_step("consensus", data, {"annotations": str(folder)})
    assert np.mean(result.data.labels == data.labels) > 0.93
    np.testing.assert_array_equal(result.data.features, data.features)
    reliability = {r["annotator"]: r for r in result.artifacts["annotator_reliability.json"]["annotators"]}
    assert reliability["cy"]["items_labelled"] == 200 and reliability["lazy"]["agreement_with_consensus"] < 0.2
    assert result.stats["items_annotated"] == 300

    (folder / "eve.csv").write_text("id,label\n5,1\n9999,2\n12345,3\n")
    with pytest.raises(ValueError, match=r"'eve' has 2 id\(s\) not in the dataset, first: \[9999, 12345\]"):
        apply_step("consensus", data, {"annotations": str(folder)})
    (folder / "eve.csv").write_text("id,label\n5,seven\n")
    with pytest.raises(ValueError, match=r"'eve' has label\(s\) \['seven'\] that are not classes"):
        apply_step("consensus", data, {"annotations": str(folder)})
    (folder / "eve.csv").write_text("item,class\n5,1\n")
    with pytest.raises(ValueError, match="must have columns id,label"):
        apply_step("consensus", data, {"annotations": str(folder)})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        apply_step("consensus", data, {"annotations": str(tmp_path / "nowhere")})


# -- information gain ----------------------------------------------------------------------------

def test_information_gain_equals_mutual_information_of_the_binned_feature():
    from sklearn.metrics import mutual_info_score

    data = _tabular(skdata.load_breast_cancer, "breast_cancer")
    codes = discretise(data.features.astype(np.float64), 10)
    assert codes.max() == 9 and len(np.unique(codes[:, 0])) == 10  # quantile bins
    for j in range(0, 30, 7):
        assert information_gain(data.labels, codes[:, j]) == pytest.approx(mutual_info_score(data.labels, codes[:, j]))
    assert information_gain(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1])) == pytest.approx(np.log(2))
    assert information_gain(np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])) == pytest.approx(0.0)


def test_info_gain_keeps_the_top_k_columns_and_their_names():
    data = _tabular(skdata.load_wine, "wine")
    result = info_gain(data, k=4)
    ranking = result.artifacts["information_gain.json"]["ranking"]
    top = sorted(r["column"] for r in ranking[:4])
    np.testing.assert_array_equal(result.data.features, data.features[:, top])
    assert result.data.meta["feature_names"] == [data.meta["feature_names"][j] for j in top]
    assert result.data.meta["feature_shape"] == [4] and data.meta["feature_shape"] == [13]
    gains = [r["information_gain"] for r in ranking]
    assert gains == sorted(gains, reverse=True) and result.stats["min_kept_information_gain"] == gains[3]
    assert info_gain(data, k=50).stats["features_kept"] == 13
    with pytest.raises(ValueError, match="tabular data; this dataset is 'image'"):
        info_gain(_digits(), k=5)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        info_gain(data, k=0)


# -- PPP -----------------------------------------------------------------------------------------

def test_ppp_finds_the_number_of_well_separated_groups():
    x, _ = skdata.make_blobs(600, n_features=5, centers=4, cluster_std=0.6, random_state=3)
    result = choose_k(x, range(2, 8), seeds=3)
    assert result.k == 4 and result.agreement[2] > 0.95 and result.stability[2] > 0.95
    assert max(result.score[3:]) < result.score[2] - 0.05  # finer k: k-means splits a blob differently per seed
    data = _tabular(skdata.load_wine, "wine")
    out = ppp(data, k_max=6, seeds=2)
    np.testing.assert_array_equal(out.data.features, data.features)
    assert len(out.data.meta["ppp"]["clusters"]) == 178 and out.data.meta["ppp"]["k"] == out.stats["chosen_k"]
    assert [r["k"] for r in out.artifacts["ppp.json"]["per_k"]] == [2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="2 <= k_min <= k_max"):
        ppp(data, k_min=1)


def test_anchoral_ppp_anchors_respect_a_and_cover_each_class_groups():
    from distillery.components.selection import anchoral
    from distillery.components.selection.pool import Pool

    rng = np.random.default_rng(0)
    centres = rng.normal(scale=12, size=(6, 6))  # 3 classes, each made of 2 separate groups
    x = np.concatenate([c + rng.normal(size=(60, 6)) for c in centres]).astype(np.float32)
    y, group = np.repeat([0, 0, 1, 1, 2, 2], 60), np.repeat(np.arange(6), 60)
    labelled = np.concatenate([np.flatnonzero(group == g)[:10] for g in range(6)])
    anchors = anchoral.select_anchors(x[labelled], y[labelled], 4, np.random.default_rng(1), method="ppp")
    assert np.all(np.bincount(y[labelled][anchors]) <= 4)
    assert sorted(group[labelled][anchors].tolist()) == [0, 1, 2, 3, 4, 5]  # one anchor per group: k = 2 each
    pool_rows = np.setdiff1d(np.arange(len(y)), labelled)
    pool = Pool(x[pool_rows], None, x[labelled], y[labelled], 3, probs=np.full((len(pool_rows), 3), 1 / 3))
    strategy = anchoral.AnchorAL(subpool_size=40, neighbours=20, anchors_per_class=4, embedding="features",
                                 anchor_method="ppp")
    picks, _ = strategy.select(pool, 5)
    assert len(set(picks.tolist())) == 5
    with pytest.raises(ValueError, match="anchor_method must be one of"):
        anchoral.AnchorAL(subpool_size=40, anchor_method="dbscan").select(pool, 5)


# -- the task body, MLflow -----------------------------------------------------------------------

def test_run_curation_step_logs_stats_artifacts_and_provenance_tags(tmp_path):
    import mlflow
    from distillery.components.curation_step.tasks import run_curation_step

    data = _tabular(skdata.load_breast_cancer, "breast_cancer")
    save_labelled(tmp_path / "dataset", data)
    run_curation_step("info_gain", task_context(tmp_path, ROOT), "run-1", json.dumps({"k": 6}),
                      str(tmp_path / "dataset"), str(tmp_path / "curated"))
    curated = load_labelled(tmp_path / "curated")
    assert curated.features.shape == (569, 6) and curated.meta["provenance"][-1]["method"] == "info_gain"
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tasks").experiment_id],
                                filter_string="tags.`distillery.role` = 'task'")
    assert run.data.tags["distillery.task"] == "curate-info_gain"
    assert run.data.tags["parent_data_version"] == content_version(data)
    assert (run.data.tags["curated_data_version"] == content_version(curated)
            == curated.meta["provenance"][-1]["version"])
    assert run.data.metrics["features_kept"] == 6 and run.data.metrics["rows_out"] == 569
    assert run.data.params["k"] == "6"
    assert {"information_gain.json", "information_gain.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


# -- the CLI, on a throwaway git + DVC clone -----------------------------------------------------

def _snapshot(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cli_curate_publishes_a_new_version_and_a_failure_changes_nothing(clone):
    mnist = clone / "data" / "mnist"
    labels = np.load(mnist / "labels.npy")
    table = _annotators(labels[:150], seed=4)
    (mnist / "annotations").mkdir()
    for t, name in enumerate(["a", "b", "c", "d", "lazy"]):
        (mnist / "annotations" / f"{name}.csv").write_text(
            "id,label\n" + "".join(f"{i},{table[i, t]}\n" for i in range(150)))
    dvc(clone, "add", "-q", "data")
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", "annotations")
    rev = git(clone, "rev-parse", "HEAD")
    before, recorded = _snapshot(clone / "data"), (clone / "data.dvc").read_text()

    failed = run_cli(clone, "data", "curate", "--method", "info_gain", "--source", "data/mnist", "--target", "data/x")
    assert failed.returncode == 2 and "tabular data; this dataset is 'image'" in failed.stderr
    bad = run_cli(clone, "data", "curate", "--method", "ppp", "--params", '{"k": 3}', "--source", "data/mnist",
                  "--target", "data/x")
    assert bad.returncode == 2 and "has no parameter(s) ['k']" in bad.stderr
    assert _snapshot(clone / "data") == before and (clone / "data.dvc").read_text() == recorded

    ok = run_cli(clone, "data", "curate", "--method", "consensus", "--source", "data/mnist", "--rev", rev,
                 "--target", "data/mnist-consensus")
    assert ok.returncode == 0, ok.stderr
    assert _snapshot(clone / "data" / "mnist") == {k[len("mnist/"):]: v for k, v in before.items()
                                                   if k.startswith("mnist/")}
    assert (clone / "data.dvc").read_text() != recorded
    meta = json.loads((clone / "data" / "mnist-consensus" / "dataset.json").read_text())
    (record,) = meta["provenance"]
    assert record["method"] == "consensus" and meta["curated_from"]["rev"] == rev
    assert meta["name"] == "mnist-consensus" and meta["curated_from"]["data_version"].endswith(".dir")
    curated = np.load(clone / "data" / "mnist-consensus" / "labels.npy")
    assert np.mean(curated[:150] == labels[:150]) > 0.9 and np.array_equal(curated[150:], labels[150:])
