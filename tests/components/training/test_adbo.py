"""ADBO (Jiao et al., ICLR 2023): update rules on a quadratic bilevel problem with a known solution,
the S-of-N / tau gate, cuts, and real multi-process runs over torch.distributed.rpc (asynchrony,
a SIGKILLed worker, resuming from a checkpoint, bad inputs, MLflow)."""
from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch

from distillery.components.core import checkpoint
from distillery.components.training.adbo import core, loop, persist, problems
from distillery.components.training.adbo.config import ADBOConfig, ADBOConfigError
from distillery.components.training.adbo.launcher import launch, start
from distillery.components.training.adbo.runtime import ADBOError

HP = core.Hyper()


# --------------------------------------------------------------------------------------------------
# the gate: S reports, nobody more than tau stale


@pytest.mark.parametrize("reported, staleness, alive, s, tau, proceed, overdue", [
    ({1}, {1: 0, 2: 0, 3: 0}, {1, 2, 3}, 2, 3, False, set()),          # 1 of the 2 reports needed
    ({1, 2}, {1: 0, 2: 0, 3: 0}, {1, 2, 3}, 2, 3, True, set()),        # S reached, 3 may lag
    ({1, 2}, {1: 0, 2: 0, 3: 3}, {1, 2, 3}, 2, 3, False, {3}),         # 3 is tau stale: wait for it
    ({1, 2, 3}, {1: 0, 2: 0, 3: 3}, {1, 2, 3}, 2, 3, True, set()),     # ... until it reports
    ({1, 2}, {1: 0, 2: 0, 3: 0}, {1, 2, 3}, 2, 0, False, {3}),         # tau = 0: synchronous
    ({1}, {1: 0, 2: 5}, {1}, 3, 2, True, set()),                       # 2 was dropped: S = min(S, alive)
    ({2}, {1: 0, 2: 0}, {1}, 1, 2, False, set()),                      # a dropped worker's report does not count
    ({1, 2, 3}, {1: 0, 2: 0, 3: 0}, {1, 2, 3}, 3, 0, True, set()),     # S = N: everybody
])
def test_gate_hand_cases(reported, staleness, alive, s, tau, proceed, overdue):
    assert core.gate(reported, staleness, alive, s, tau) == (proceed, overdue)


# --------------------------------------------------------------------------------------------------
# the update rules, exactly as written


def _t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_master_step_applies_the_update_rules_to_the_reporting_workers_only():
    hp = core.Hyper(eta_v=0.5, eta_z=0.25, eta_lam=0.2, eta_theta=0.4, c1=0.1, c2=0.3)
    cut = core.Cut(a=_t(1.0, 0.0), b={1: _t(0.5), 2: _t(-1.0)}, c=_t(2.0), kappa=0.1, lam=0.5)
    state = core.MasterState(v=_t(1.0, 2.0), z=_t(0.5), theta={1: _t(0.1, 0.2), 2: _t(-0.3, 0.0)},
                             x={1: _t(0.0, 0.0), 2: _t(1.0, 1.0)}, y={1: _t(1.0), 2: _t(2.0)}, cuts=[cut],
                             staleness={1: 2, 2: 0}, iteration=7)
    new = core.master_step(state, {1: (_t(3.0, 4.0), _t(1.5))}, active={1, 2}, hp=hp)
    v = _t(1.0, 2.0) - 0.5 * (-(_t(0.1, 0.2) + _t(-0.3, 0.0)) + 0.5 * _t(1.0, 0.0))
    z = _t(0.5) - 0.25 * 0.5 * _t(2.0)
    lhs = float(_t(1.0, 0.0) @ v + 2.0 * z + 0.1 + 0.5 * 1.5 - 1.0 * 2.0)  # the new y_1, the stored y_2
    lam = max(0.0, 0.5 + 0.2 * (lhs - 0.1 * 0.5))
    theta1 = _t(0.1, 0.2) + 0.4 * (_t(3.0, 4.0) - v - 0.3 * _t(0.1, 0.2))
    torch.testing.assert_close(new.v, v)
    torch.testing.assert_close(new.z, z)
    assert new.cuts[0].lam == pytest.approx(lam)
    torch.testing.assert_close(new.theta[1], theta1)
    torch.testing.assert_close(new.theta[2], state.theta[2])  # did not report: its dual stays
    assert new.staleness == {1: 0, 2: 1} and new.iteration == 8
    torch.testing.assert_close(new.x[1], _t(3.0, 4.0))


def test_worker_step_applies_the_update_rule():
    x, y = core.worker_step(_t(1.0), _t(2.0, 3.0), grad_x=_t(0.5), grad_y=_t(1.0, -1.0), theta=_t(0.25),
                            pull_y=_t(2.0, 0.0), hp=core.Hyper(eta_x=0.1, eta_y=0.2))
    torch.testing.assert_close(x, _t(1.0 - 0.1 * 0.75))
    torch.testing.assert_close(y, _t(2.0 - 0.2 * 3.0, 3.0 + 0.2))


def test_lambda_is_projected_to_stay_nonnegative():
    cut = core.Cut(a=_t(0.0), b={}, c=_t(0.0), kappa=-5.0, lam=0.1)  # far from violated
    state = core.init_master(_t(0.0), _t(0.0), {1: _t(0.0)}, {1: _t(0.0)})
    state.cuts = [cut]
    assert core.master_step(state, {}, {1}, HP).cuts[0].lam == 0.0


# --------------------------------------------------------------------------------------------------
# cuts: a valid outer approximation, added when violated, pruned when inactive


def _h(problem, shards, v, y, z):
    terms = [core.lower_residual(shards[i].lower, v, y[i], z, HP.k, HP.beta, HP.mu) for i in y]
    return sum(t.value for t in terms) + core.consensus_residual(y, z, HP.k, HP.beta).value


def test_cut_is_a_tangent_outer_approximation_of_h_le_eps():
    problem = problems.Quadratic(dim=2)
    shards = {i: problem.shard(i - 1, 2) for i in (1, 2)}
    gen = torch.Generator().manual_seed(0)
    v0, z0 = torch.randn(2, generator=gen).double(), torch.randn(2, generator=gen).double()
    y0 = {i: torch.randn(2, generator=gen).double() for i in (1, 2)}
    terms = [core.worker_term(core.lower_residual(shards[i].lower, v0, y0[i], z0, HP.k, HP.beta, HP.mu), i)
             for i in (1, 2)]
    terms.append(core.consensus_residual(y0, z0, HP.k, HP.beta))
    cut = core.make_cut(terms, HP.eps, v0, z0)
    norm = float(torch.sqrt(cut.a @ cut.a + cut.c @ cut.c + sum(b @ b for b in cut.b.values())))
    assert norm == pytest.approx(1.0)  # stored with a unit normal
    gradient_norm = (_h(problem, shards, v0, y0, z0) - HP.eps) / cut.value(v0, y0, z0)
    for _ in range(20):  # h is a convex quadratic here: the linearisation lies below it everywhere
        v, z = v0 + torch.randn(2, generator=gen).double(), z0 + torch.randn(2, generator=gen).double()
        y = {i: t + torch.randn(2, generator=gen).double() for i, t in y0.items()}
        assert cut.value(v, y, z) * gradient_norm <= _h(problem, shards, v, y, z) - HP.eps + 1e-9
    assert cut.value(v0, y0, z0) > 0  # the point it was made at violates it


def test_refresh_prunes_inactive_cuts_and_adds_a_violated_one():
    problem = problems.Quadratic(dim=2)
    shard = problem.shard(0, 1)
    v, z = problem.start()
    first = loop.first_report(shard, shard.x0, shard.y0, v, z, HP)
    state = core.init_master(v, z, {1: first.x}, {1: first.y})
    old = core.Cut(a=torch.zeros_like(v), b={}, c=torch.zeros_like(z), kappa=-1.0, lam=0.0)
    kept = core.Cut(a=torch.zeros_like(v), b={}, c=torch.zeros_like(z), kappa=-1.0, lam=0.3)
    state.cuts = [old, kept]
    state, h = loop.refresh_cuts(state, {1: first.part}, {1}, HP)
    assert h > HP.eps  # y = 0 is not the lower-level solution c
    assert state.cuts[0] is kept and len(state.cuts) == 2 and state.cuts[1].lam == 0.0


def test_prune_keeps_the_largest_multipliers_in_order():
    cuts = [core.Cut(a=_t(0.0), b={}, c=_t(0.0), kappa=0.0, lam=lam) for lam in (0.5, 0.0, 0.1, 0.9, 0.3)]
    kept = core.prune_cuts(cuts, core.Hyper(max_cuts=3))
    assert [c.lam for c in kept] == [0.5, 0.9]  # room for a new cut: max_cuts - 1


# --------------------------------------------------------------------------------------------------
# convergence on the quadratic problem (in-process simulation, same functions as the processes)


def _relative_error(state, problem, workers):
    x_star, y_star = problem.solution(workers)
    return (float((state.v - x_star).norm() / x_star.norm()), float((state.z - y_star).norm() / y_star.norm()))


def test_synchronous_adbo_converges_to_the_known_solution():
    problem = problems.Quadratic(dim=2, seed=0)
    state, history = loop.simulate(problem, 3, s=3, tau=0, iterations=400, hp=HP)
    assert max(_relative_error(state, problem, 3)) < 0.1
    sizes = [h["cuts"] for h in history]
    assert max(sizes) == HP.max_cuts and min(sizes[50:]) < HP.max_cuts  # cuts were added and pruned


def test_asynchronous_adbo_with_a_straggler_converges_too():
    problem = problems.Quadratic(dim=2, seed=1)
    state, history = loop.simulate(problem, 3, s=2, tau=3, iterations=600, hp=HP, durations={3: 3.0})
    assert max(_relative_error(state, problem, 3)) < 0.1
    assert any(3 not in h["reporters"] for h in history)  # iterations went on without the straggler
    staleness = {}
    for h in history:  # bounded staleness: worker 3 never misses more than tau iterations in a row
        staleness = {i: 0 if i in h["reporters"] else staleness.get(i, 0) + 1 for i in (1, 2, 3)}
        assert max(staleness.values()) <= 3


# --------------------------------------------------------------------------------------------------
# configuration errors, caught before any process starts


@pytest.mark.parametrize("kwargs, message", [
    ({"workers": 3, "s": 4}, "S=4 but there are 3 workers"),
    ({"workers": 2, "s": 1, "min_workers": 3}, "min_workers=3"),
    ({"workers": 2, "s": 1, "slowdown": {5: 3.0}}, "unknown worker rank"),
    ({"hyper": {"eta": 0.1}}, "unknown ADBO hyperparameter"),
    ({"resume": True}, "resume needs checkpoint_dir"),
])
def test_bad_configs_fail_before_starting(kwargs, message):
    with pytest.raises(ADBOConfigError, match=message):
        ADBOConfig(**kwargs)


def test_hold_out_keeps_every_class_in_both_parts():
    from distillery.components.training.adbo.hyperclean import hold_out

    labels = np.repeat(np.arange(5), 20)
    train, val = hold_out(labels, 0.1, seed=0)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 100
    assert sorted(set(labels[val])) == list(range(5)) and len(val) == 10


def test_registry_entry_has_train_classifiers_signature():
    from distillery.components.core import registry
    from distillery.components.core.train import train_classifier

    entry = registry.get("training", "adbo_hyperclean")
    positional = lambda f: list(inspect.signature(f).parameters)[:10]  # noqa: E731
    assert positional(entry.load()) == positional(train_classifier)
    assert {"workers", "s", "tau", "iterations"} <= set(entry.defaults)
    assert entry.resolve_params({"workers": 3, "s": 2})["s"] == 2


# --------------------------------------------------------------------------------------------------
# real processes over torch.distributed.rpc (quadratic problem: no data to load, fast start)


def _config(**kwargs) -> ADBOConfig:
    base = dict(problem="quadratic", problem_kwargs={"dim": 2}, workers=3, s=2, tau=2, iterations=30,
                delay_base=0.002, delay_median=0.002, slowdown={1: 3.0}, rpc_timeout=20, init_timeout=60,
                idle_timeout=60)
    return ADBOConfig(**{**base, **kwargs})


def test_async_run_completes_then_resumes_from_its_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    first = launch(_config(iterations=8, checkpoint_dir=str(ckpt), checkpoint_every=4), tmp_path / "a", timeout=120)
    assert first["iterations"] == 8 and not first["dropped"]
    assert json.loads((tmp_path / "a" / "result.json").read_text())["iterations"] == 8
    history = first["history"]
    assert all(len(h["reporters"]) >= 2 for h in history)
    assert any(1 not in h["reporters"] for h in history)  # the master did not wait for the straggler
    assert max(max(h["staleness"].values()) for h in history) <= 2
    assert [checkpoint.step_of(p) for p in checkpoint.complete(ckpt)] == [4, 8]
    saved = checkpoint.load(ckpt / "ckpt-00000008.pt")
    final = torch.load(tmp_path / "a" / "final.pt", weights_only=True)
    torch.testing.assert_close(saved["v"], final["v"])

    second = launch(_config(iterations=12, checkpoint_dir=str(ckpt), checkpoint_every=4, resume=True),
                    tmp_path / "b", timeout=120)
    assert second["resumed_from"].endswith("ckpt-00000008.pt") and second["start_iteration"] == 8
    assert [h["iteration"] for h in second["history"]] == [9, 10, 11, 12]

    newest = checkpoint.latest(ckpt)  # ckpt-12: flip one byte; the master's loader must refuse it
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    fingerprint = {"problem": "quadratic", "n": 2, "m": 2, "workers": 3}
    with pytest.raises(checkpoint.CorruptCheckpointError,
                       match=r"ckpt-00000012.pt is corrupt.*previous good checkpoint is .*ckpt-00000008.pt"):
        persist.load(ckpt, fingerprint)
    checkpoint.load(ckpt / "ckpt-00000008.pt")  # the last good one is intact
    newest.unlink()
    with pytest.raises(checkpoint.CheckpointError, match="was written for"):  # another run's checkpoints
        persist.load(ckpt, {**fingerprint, "workers": 4})


def test_sigkilled_worker_is_dropped_and_the_run_finishes_with_mlflow(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = _config(iterations=60, delay_base=0.03, min_workers=2, tracking_uri=uri, experiment="adbo-test")
    cluster = start(config, tmp_path / "run")
    try:
        cluster.wait_for_iteration(5, timeout=120)
        cluster.kill_worker(2)
        result = cluster.wait(timeout=120)
    finally:
        cluster.terminate()
    assert result["iterations"] == 60 and set(result["dropped"]) == {"2"} and result["alive"] == [1, 3]
    after = [h for h in result["history"] if h["alive_workers"] == 2]
    assert after and all(2 not in h["reporters"] for h in after)

    run = mlflow.MlflowClient(uri).get_run(result["mlflow_run_id"])
    assert run.data.tags["adbo.dropped_workers"] == "2" and run.data.params["dropped_workers"] == "2"
    assert {"upper_loss", "cuts", "worker_1_staleness", "worker_3_upper_loss", "alive_workers"} <= set(run.data.metrics)
    assert any(key.startswith("system/") for key in run.data.metrics)  # log_system_metrics=True
    upper = mlflow.MlflowClient(uri).get_metric_history(run.info.run_id, "upper_loss")
    assert len(upper) == 60


def test_losing_workers_below_the_minimum_stops_with_a_clear_error(tmp_path):
    cluster = start(_config(workers=2, s=1, iterations=10_000, delay_base=0.01, slowdown={}, min_workers=2),
                    tmp_path)
    try:
        cluster.wait_for_iteration(3, timeout=120)
        cluster.kill_worker(1)
        lost = r"WorkersLostError: only 1 worker\(s\) alive \(\[2\]\), below min_workers=2"
        with pytest.raises(ADBOError, match=lost):
            cluster.wait(timeout=60)
    finally:
        cluster.terminate()


def test_mismatched_shapes_name_the_worker(tmp_path):
    config = _config(workers=2, s=2, tau=0, worker_overrides={2: {"dim": 3}}, slowdown={})
    named = r"ShapeMismatchError: worker 2 reported x of shape \(3,\).*master's v is \(2,\)"
    with pytest.raises(ADBOError, match=named):
        launch(config, tmp_path, timeout=120)


def test_unreachable_master_is_a_clear_error_not_a_hang(tmp_path):
    config = _config(workers=1, s=1, slowdown={}, init_timeout=1.0)
    cluster = start(config, tmp_path, port=9, ranks=[1])  # nothing listens on port 9; no master started
    try:
        assert cluster.processes[1].wait(timeout=60) == 3
    finally:
        cluster.terminate()
    log = (tmp_path / "rank-1.log").read_text()
    assert "cannot reach the ADBO master at 127.0.0.1:9 within 1 s" in log


def test_pipeline_entry_learns_weights_then_trains_the_requested_arch(tmp_path):
    from distillery.components.core import models
    from distillery.components.training.adbo.hyperclean import adbo_hyperclean

    features, labels, meta = problems.load_features("data/mnist")
    rows = np.random.default_rng(0).permutation(len(labels))[:300]
    epochs = []
    model = adbo_hyperclean(features[rows], labels[rows], meta, "mlp", {"hidden": 16}, 2, 1e-3, 32, 0,
                            lambda epoch, loss: epochs.append(loss), workers=2, s=1, tau=2, iterations=6,
                            problem_kwargs={"pca": 10, "warm_start": 5}, timeout=120)
    assert len(epochs) == 2 and models.predict_proba(model, features[:5]).shape == (5, 10)
    models.save(model, tmp_path / "m.pt", "mlp", meta, {"hidden": 16})  # what run_training saves
    assert models.count_parameters(models.load(tmp_path / "m.pt")) == models.count_parameters(model)


def test_hyperclean_gives_flipped_labels_lower_weight(tmp_path):
    """The point of hyper-cleaning: learnt through the pipeline's path (:func:`learn_weights`, real
    master and worker processes), the samples whose label was flipped end up with clearly less weight
    than the clean ones. Synchronous (S = N) so the run is the same every time; all weights start at
    sigmoid(0) = 0.5."""
    from distillery.components.training.adbo.hyperclean import learn_weights

    features, labels, _ = problems.load_features("data/mnist")
    rows = np.random.default_rng(0).permutation(len(labels))[:500]
    train, val = rows[:400], rows[400:]  # a clean, trusted validation set of 100
    noisy, flipped = problems.flip_labels(labels[train], 0.3, 10, seed=1)
    assert 0.2 < flipped.mean() < 0.4
    config = {"workers": 3, "s": 3, "tau": 0, "iterations": 120, "hyper": {"v_warmup": 30},
              "problem_kwargs": {"pca": 20, "warm_start": 20}, "rpc_timeout": 30}
    weights = learn_weights(features[train], noisy, features[val], labels[val], 10, config, tmp_path, timeout=120)
    assert weights.shape == (400,) and ((weights > 0) & (weights < 1)).all()
    clean, dirty = weights[~flipped], weights[flipped]
    assert clean.mean() - dirty.mean() > 0.1, (clean.mean(), dirty.mean())  # 0.45 vs 0.20 when written
    # not a few outliers: a clean sample outweighs a flipped one in most pairs (0.81 when written)
    assert (clean[:, None] > dirty[None, :]).mean() > 0.7


def test_cluster_manifest_runs_this_entrypoint_with_a_valid_config():
    import yaml
    from conftest import ROOT

    docs = list(yaml.safe_load_all((ROOT / "k8s" / "training" / "async-workers.yaml").read_text()))
    job = next(d for d in docs if d["kind"] == "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "distillery.components.training.adbo"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"} <= set(env)
    flag, text = container["args"][:2]
    data = {**json.loads(text), "workers": int(env["WORLD_SIZE"]) - 1}
    config = ADBOConfig.from_json(json.dumps(data))  # validates: S, tau, min_workers, ...
    assert config.problem == "hyperclean" and flag == "--config-json"
    assert job["spec"]["maxFailedIndexes"] <= config.workers - config.min_workers
