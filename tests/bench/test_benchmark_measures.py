"""What the benchmarks measure, checked where it can go wrong: majority vote's random tie-breaking
(consensus_labels), the bytes SPSA and a DDP gradient all-reduce hand to torch.distributed in real
2-process runs (spsa_bytes), and the repeats summary of the async/sync comparison (async_training)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT

from benchmarks import async_training, consensus_labels, spsa_bytes
from benchmarks.spsa_mnist import prepare_mnist_job
from distillery.components.curation_step.consensus import majority_vote
from distillery.components.training import spsa

DATA = str(ROOT / "data" / "mnist")


# ---------------------------------------------------------------------------------- consensus_labels

def test_majority_vote_breaks_ties_at_random_and_deterministically_per_seed():
    tied = np.tile([[3, 7, 3, 7, 5]], (400, 1))  # every item: a 2-2-1 tie between classes 3 and 7
    clear = np.array([[2, 2, 9, 1, -1], [4, 0, 0, 0, 4]])  # plurality 2 (a missing label), 0
    table = np.concatenate([tied, clear])
    votes = consensus_labels.majority_vote_random_ties(table, 10, np.random.default_rng([0, 1]))
    assert votes[-2:].tolist() == [2, 0]  # no tie: the plurality, as the smallest-index rule gives
    assert set(votes[:400].tolist()) == {3, 7}  # only the tied classes, never another one
    assert 120 < (votes[:400] == 3).sum() < 280  # both, about half each (binomial(400, 1/2): 200 ± 10)
    assert (majority_vote(table, 10)[:400] == 3).all()  # the smallest-index rule: always the lower class
    again = consensus_labels.majority_vote_random_ties(table, 10, np.random.default_rng([0, 1]))
    other = consensus_labels.majority_vote_random_ties(table, 10, np.random.default_rng([1, 1]))
    assert np.array_equal(votes, again) and not np.array_equal(votes, other)


def test_lazy_annotators_class_0_does_not_win_the_ties():
    """The benchmark's case: a tie that includes class 0 (the lazy annotator's answer) goes to class 0
    only about as often as to the other tied class, where the smallest-index rule always picks 0."""
    rng = np.random.default_rng(0)
    truth = rng.integers(1, 9, 2000)  # (truth + 1) % 10 never 0
    table = np.stack([truth, truth, np.zeros_like(truth), np.zeros_like(truth), (truth + 1) % 10], axis=1)
    random_ties = consensus_labels.majority_vote_random_ties(table, 10, np.random.default_rng([0, 1]))
    assert (majority_vote(table, 10) == 0).all()
    assert 0.4 < (random_ties == truth).mean() < 0.6 and set(np.unique(random_ties)) == set(np.unique(truth)) | {0}


def test_consensus_summary_has_the_protocol_and_per_seed_wins():
    runs = [consensus_labels.run(300, seed) for seed in (0, 1)]
    summary = consensus_labels.summarise(runs, 300, [0, 1])
    assert summary["protocol"]["model_selection"] == "none" and summary["protocol"]["seeds"] == [0, 1]
    assert summary["accuracy"]["majority_vote"]["values"] == [r["majority_vote_accuracy"] for r in runs]
    assert summary["consensus_better_in_runs"] + summary["majority_vote_better_in_runs"] <= 2
    assert all(0 < r["tied_items"] < 300 for r in runs)
    text = consensus_labels.markdown({"summary": summary, "runs": runs, "setup": {"items": 300}, "date": "2026"})
    assert "majority vote, random ties" in text and f"{summary['accuracy']['consensus']['mean']:.4f}" in text


# -------------------------------------------------------------------------------------- spsa_bytes

@pytest.fixture(scope="module")
def small_job(tmp_path_factory):
    """A tiny MNIST MLP (hidden 8: 6,370 parameters) and 2 worker shards."""
    tmp = tmp_path_factory.mktemp("spsa-bytes")
    config = spsa.SPSAConfig(samples_per_worker=5, lr=1e-2, eval_every=2)
    job, _ = prepare_mnist_job(DATA, tmp, arch_kwargs={"hidden": 8}, base_epochs=1, finetune_size=200,
                               n_shards=2, config=config)
    return job


def test_counted_spsa_bytes_per_step_are_the_projected_gradients(small_job):
    """A real 2-process run with the collectives counted inside torch.distributed: each worker hands
    exactly one byte per projected gradient to all_gather each round, and 32 hash bytes per check."""
    rounds = 3
    run = spsa_bytes.spsa_run(small_job, rounds, seed=0)
    for worker, wire in run["collective_bytes_by_worker"].items():
        assert wire["gradients"] == rounds * 5, wire
        assert wire["verification"] == (rounds + 1) * spsa.HASH_BYTES  # each round + the opening check
        assert wire["membership"] > 8  # the shape handshake: all_gather_object's size tensor and payload
        assert run["collective_calls_by_worker"][worker]["gradients"] == rounds
        assert wire["gradients"] == run["worker_accounted_bytes_by_worker"][worker]["gradients"]
    assert run["bytes_per_step"] == 5 and run["bytes_per_step_with_hash"] == 5 + (rounds + 1) * 32 / rounds
    assert run["hashes_agree"]


def test_workers_count_nothing_unless_asked(small_job):
    run = spsa.launch([spsa.Epoch(1, (0, 1))], small_job)
    assert all(r.collective_bytes == {} and r.bytes["gradients"] == 5 for r in run.workers.values())


def test_full_gradient_baseline_all_reduces_4_bytes_per_parameter(small_job):
    run = spsa_bytes.ddp_run(small_job, steps=2, seed=0)
    assert run["parameters"] == 784 * 8 + 8 + 8 * 10 + 10
    for wire in run["collective_bytes_by_worker"].values():
        assert wire == {"gradients": 2 * 4 * run["parameters"]}
    assert run["bytes_per_step"] == 4 * run["parameters"]


# ----------------------------------------------------------------------------------- async_training

def _repeat(seed: int, sync: float, asyn: float | None) -> dict:
    return {"seed": seed, "sync_seconds_to_target": sync, "async_seconds_to_target": asyn,
            "ratio": None if asyn is None else asyn / sync, "n_train": 2000, "n_val": 200, "n_test": 1000,
            "test_accuracy": {"unweighted_noisy": 0.8 + seed / 100, "hyperclean_async": 0.85},
            "weights": {"mean_clean": 0.5, "mean_flipped": 0.3 - seed / 100}}


def test_async_summary_judges_the_mean_and_every_repeat():
    held = async_training.summarise([_repeat(0, 60, 30), _repeat(1, 60, 33), _repeat(2, 60, 27)], 4, 3.0)
    assert held["ratio"] == pytest.approx(0.5) and held["ratio_stats"]["std"] == pytest.approx(np.std([.5, .55, .45]))
    assert held["sync_seconds_to_target_stats"]["mean"] == 60 and held["async_seconds_to_target"] == 30
    assert held["target"] == {"ratio_at_most": 0.6, "met_on_mean": True, "met_in_every_repeat": True,
                              "met_in_repeats": 3}
    assert held["protocol"]["seeds"] == [0, 1, 2] and held["protocol"]["model_selection"] == "none"
    assert held["test_accuracy"]["unweighted_noisy"]["values"] == pytest.approx([0.8, 0.81, 0.82])

    one_slow = async_training.summarise([_repeat(0, 60, 24), _repeat(1, 60, 42), _repeat(2, 60, 24)], 4, 3.0)
    assert one_slow["ratio"] == pytest.approx(0.5)  # the mean holds, one repeat (0.7) does not
    assert one_slow["target"]["met_on_mean"] and not one_slow["target"]["met_in_every_repeat"]
    assert one_slow["target"]["met_in_repeats"] == 2

    missed = async_training.summarise([_repeat(0, 60, 30), _repeat(1, 60, None)], 4, 3.0)
    assert missed["async_reached_target_in"] == 1
    assert not missed["target"]["met_on_mean"] and not missed["target"]["met_in_every_repeat"]
