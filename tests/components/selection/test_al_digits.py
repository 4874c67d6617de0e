"""The active-learning protocol (``distillery.components.selection.loop``) on scikit-learn's digits: uncertainty
and diversity strategies must beat random sampling by a clear margin at 200-300 labels.

Setting: digits (1,797 x 64) split once, stratified, into a 1,297-item pool and a 500-item test set;
MLP 64-64-10 retrained from scratch each round (150 Adam steps minimum); 20 stratified initial labels,
+20 per round to 200, then 250 and 300; seeds 0, 1, 2 (averaged).

Margins, measured with 10 seeds (gain over random of the seed-averaged accuracy, mean over
200/250/300 labels): margin +0.036, entropy +0.029, BADGE +0.031; over all 120 choices of 3 seeds out
of 10 the smallest such gain was +0.020 (entropy), and at 200 and at 300 labels separately never below
+0.007. The test asks for +0.015 on the 200-300 mean and +0.005 at each of 200 and 300 labels: half
the typical gain, still far above noise (random's seed-to-seed std is about 0.01). Seeds 0-2 give
+0.036 to +0.043. About 20-40 s on 2 cores.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from distillery.components.selection.loop import (
    Round,
    labels_to_reach,
    run_active_learning,
    training_epochs,
)

SCHEDULE = [20, 40, 60, 80, 100, 120, 140, 160, 180, 200, 250, 300]
SEEDS = (0, 1, 2)
TRAIN = {"min_steps": 150, "min_epochs": 15}
MEAN_GAIN, POINT_GAIN = 0.015, 0.005


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x, y = data.data.astype(np.float32), data.target
    pool, test = train_test_split(np.arange(len(y)), test_size=500, stratify=y, random_state=0)
    meta = {"name": "digits", "classes": [str(c) for c in range(10)], "feature_shape": [64], "value_range": [0, 16]}
    return x[pool], y[pool], x[test], y[test], meta


@pytest.fixture(scope="module")
def curves(digits):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matmuls: one thread is fastest, and leaves the other core to others
    try:
        return {name: np.array([[r.accuracy for r in run_active_learning(name, None, *digits, SCHEDULE, seed,
                                                                          {"hidden": 64}, TRAIN)]
                                for seed in SEEDS]).mean(0)
                for name in ("random", "margin", "entropy", "badge")}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("strategy", ["margin", "entropy", "badge"])
def test_strategy_beats_random_at_200_to_300_labels(curves, strategy):
    at = {n: SCHEDULE.index(n) for n in (200, 250, 300)}
    gain = {n: float(curves[strategy][i] - curves["random"][i]) for n, i in at.items()}
    assert np.mean(list(gain.values())) >= MEAN_GAIN, (strategy, gain)
    assert gain[200] >= POINT_GAIN and gain[300] >= POINT_GAIN, (strategy, gain)
    assert curves[strategy][at[300]] > 0.93, curves[strategy]  # the model itself learns digits well


def test_loop_records_counts_and_respects_the_schedule(digits):
    curve = run_active_learning("margin", None, *digits, [20, 30, 45], seed=0, model_kwargs={"hidden": 16},
                                train_kwargs={"min_steps": 20, "min_epochs": 1})
    assert [r.labels for r in curve] == [20, 30, 45]
    assert [sum(r.class_counts) for r in curve] == [20, 30, 45]
    assert curve[0].class_counts == [2] * 10  # stratified initial labels
    assert curve[0].query_seconds > 0 and curve[-1].query_seconds == 0.0
    assert all(len(r.recall) == 10 and 0 <= r.accuracy <= 1 for r in curve)
    with pytest.raises(ValueError, match="increasing"):
        run_active_learning("margin", None, *digits, [20, 20], seed=0)


def test_training_budget_grows_with_the_labelled_set():
    assert training_epochs(20, 64, 250, 20) == 250         # one batch per epoch: 250 steps
    assert training_epochs(200, 64, 250, 20) == 63         # 4 batches: 252 steps
    assert training_epochs(4000, 64, 250, 20) == 20        # 63 batches x 20 epochs = 1,260 steps


def test_labels_to_reach_interpolates_between_rounds():
    curve = [(20, 0.50), (40, 0.70), (60, 0.80), (100, 0.90)]
    assert labels_to_reach(curve, 0.75) == pytest.approx(50.0)   # halfway from 40 (0.70) to 60 (0.80)
    assert labels_to_reach(curve, 0.85) == pytest.approx(80.0)
    assert labels_to_reach(curve, 0.90) == pytest.approx(100.0)  # reached exactly at a round
    assert labels_to_reach(curve, 0.40) == 20                    # already there at the start
    assert labels_to_reach(curve, 0.95) is None                  # never reached
    # Round records work too, and a dip after reaching the target does not matter
    rounds = [Round(10, 0.6, 0.0, [], []), Round(30, 0.8, 0.0, [], []), Round(50, 0.7, 0.0, [], [])]
    assert labels_to_reach(rounds, 0.7) == pytest.approx(20.0)
