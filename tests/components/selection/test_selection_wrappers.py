"""Wrapping strategies (AnchorAL, stochastic acquisition), the shared ranking and bad input."""
from __future__ import annotations

import numpy as np
import pytest

from distillery.components.core import registry
from distillery.components.selection import anchoral, stochastic
from distillery.components.selection.pool import Pool
from distillery.components.selection.strategies import (
    EntropySampling,
    MarginSampling,
    Strategy,
    resolve,
    top_k,
)


def test_top_k_is_exact_and_breaks_ties_at_random():
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.3])
    rng = np.random.default_rng(0)
    assert list(top_k(scores, 3, rng)[:3].tolist()) in ([1, 3, 2], [3, 1, 2])
    first = {int(top_k(np.ones(6), 1, np.random.default_rng(s))[0]) for s in range(40)}
    assert len(first) == 6  # every tied item can win


# -- stochastic acquisition ---------------------------------------------------------------------

SCORES = np.array([3.0, 2.0, 1.0, 0.5])


@pytest.mark.parametrize("cls, target", [
    (stochastic.SoftmaxSampling, np.exp(SCORES)),
    (stochastic.PowerSampling, SCORES ** 2.0),
    (stochastic.SoftRankSampling, np.arange(1, 5) ** -2.0),
])
def test_stochastic_sampling_frequencies_match_the_target_distribution(cls, target):
    strategy = cls(beta=1.0 if cls is stochastic.SoftmaxSampling else 2.0)
    rng = np.random.default_rng(0)
    draws = 20000
    counts = np.bincount([stochastic.gumbel_top_k(strategy.logits(SCORES, rng), 1, rng)[0] for _ in range(draws)],
                         minlength=4)
    np.testing.assert_allclose(counts / draws, target / target.sum(), atol=0.015)


class _FixedScores(Strategy):
    """A scoring strategy with known scores (registered on the fly for the wrapper tests)."""

    name = "fixed"
    values = SCORES

    def score(self, pool, rng):
        return self.values[: len(pool)]


@pytest.fixture
def fixed_base(monkeypatch):
    method = registry.Method("selection", "fixed", "-", "test scores", f"{__name__}:_FixedScores")
    real_get = registry.get
    monkeypatch.setattr(registry, "get", lambda stage, name: method if name == "fixed" else real_get(stage, name))
    return "fixed"


def test_stochastic_wrapper_samples_a_distinct_seeded_batch_and_beta_zero_is_uniform(fixed_base):
    probs = np.full((4, 2), 0.5)
    a = stochastic.SoftmaxSampling(seed=5, base=fixed_base, beta=3.0).select(probs, 2)
    b = stochastic.SoftmaxSampling(seed=5, base=fixed_base, beta=3.0).select(probs, 2)
    assert list(a[0]) == list(b[0]) and len(set(a[0])) == 2
    np.testing.assert_allclose(a[1], SCORES)
    firsts = np.bincount([stochastic.SoftmaxSampling(seed=s, base=fixed_base, beta=0.0).select(probs, 1)[0][0]
                          for s in range(4000)], minlength=4)
    np.testing.assert_allclose(firsts / 4000, 0.25, atol=0.03)


def test_stochastic_wrappers_reject_what_they_cannot_sample(fixed_base):
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5]])
    with pytest.raises(ValueError, match="power_sampling needs scores > 0, but 'margin' gave 3 of 3"):
        stochastic.PowerSampling(base="margin").select(probs, 1)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        stochastic.SoftmaxSampling(base="entropy", beta=-1).select(probs, 1)
    with pytest.raises(ValueError, match="'anchoral' picks a whole batch itself"):
        stochastic.SoftRankSampling(base="anchoral").select(probs, 1)


# -- AnchorAL -----------------------------------------------------------------------------------

def _clustered_pool(seed=0, per_class=300, minority=6, dim=8):
    """Two well-separated classes plus a rare third one; raw features double as embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10, size=(3, dim))
    sizes = [per_class, per_class, minority]
    x = np.concatenate([c + rng.normal(size=(n, dim)) for c, n in zip(centres, sizes)]).astype(np.float32)
    y = np.repeat(np.arange(3), sizes)
    labelled = np.concatenate([np.flatnonzero(y == c)[:4] for c in range(3)])  # 4 labels per class
    pool = np.setdiff1d(np.arange(len(y)), labelled)
    probs = np.full((len(pool), 3), 1 / 3)
    return Pool(x[pool], None, x[labelled], y[labelled], 3, probs=probs), y[pool]


def test_anchoral_subpool_respects_m_k_and_a():
    pool, _ = _clustered_pool()
    rng = np.random.default_rng(0)
    strategy = anchoral.AnchorAL(subpool_size=50, neighbours=20, anchors_per_class=2, embedding="features")
    anchors = anchoral.select_anchors(pool.labelled_features, pool.labelled_labels, 2, rng)
    assert np.bincount(pool.labelled_labels[anchors]).tolist() == [2, 2, 2]  # A per class
    found, similarity = anchoral.retrieve(pool.features, pool.labelled_features[anchors], 20)
    assert len(found) <= 6 * 20 and np.all(similarity <= 1 + 1e-6)  # at most k per anchor
    assert len(strategy.subpool(pool, 10, rng)) == 50  # top M of what was retrieved


def test_anchoral_reaches_the_rare_class_and_matches_the_base_on_small_pools():
    pool, truth = _clustered_pool()
    anchors = anchoral.select_anchors(pool.labelled_features, pool.labelled_labels, 3, np.random.default_rng(1))
    found, _ = anchoral.retrieve(pool.features, pool.labelled_features[anchors], 10)
    # the 2 unlabelled minority items are 0.3% of the pool, yet the minority anchors retrieve them
    assert set(np.flatnonzero(truth == 2)) <= set(found)
    assert np.bincount(truth[found], minlength=3)[2] == 2
    small = anchoral.AnchorAL(base="entropy", subpool_size=len(pool))
    np.testing.assert_array_equal(small.select(pool, 5)[0], EntropySampling().select(pool, 5)[0])


def test_anchoral_cold_start_is_random_and_ignores_the_base():
    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=200)
    cold = Pool(probs=probs, labelled_features=np.empty((0, 4)), labelled_labels=np.empty(0, dtype=int))
    # "badge" would need a model; cold start never calls it
    picks, scores = anchoral.AnchorAL(base="badge", subpool_size=50, seed=3).select(cold, 20)
    again, _ = anchoral.AnchorAL(base="badge", subpool_size=50, seed=3).select(cold, 20)
    assert len(set(picks)) == 20 and list(picks) == list(again) and not scores.any()


def test_anchoral_rejects_bad_parameters():
    pool, _ = _clustered_pool()
    for params, message in [({"subpool_size": 0}, "subpool_size must be an integer >= 1"),
                            ({"subpool_sampling": "best"}, "subpool_sampling must be one of"),
                            ({"embedding": "pixels"}, "embedding must be one of")]:
        with pytest.raises(ValueError, match=message):
            anchoral.AnchorAL(**params).select(pool, 5)


# -- the shared contract, for every registered strategy -------------------------------------------

def test_unknown_strategy_name_is_a_clear_error():
    with pytest.raises(registry.UnknownMethodError, match="unknown selection method 'bald2'"):
        resolve("bald2", 0)


@pytest.mark.parametrize("probs, batch, message", [
    (np.full((4, 3), 1 / 3), 5, "batch_size must be between 1 and the pool size 4"),
    (np.empty((0, 3)), 1, "the unlabelled pool is empty"),
    (np.array([[np.inf, 0.5], [0.5, 0.5]]), 1, "probs contain 1 NaN or infinite values"),
])
def test_bad_input_is_named(probs, batch, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        MarginSampling().select(probs, batch)


def test_non_finite_scores_are_refused(fixed_base, monkeypatch):
    monkeypatch.setattr(_FixedScores, "values", np.array([1.0, np.nan, 2.0, np.inf]))
    with pytest.raises(ValueError, match="fixed produced 2 NaN or infinite scores"):
        _FixedScores().select(np.full((4, 2), 0.5), 1)


def test_feature_dimension_mismatch_is_named_before_any_work():
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(8, 3))
    x = np.zeros((10, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="the pool has 8 features per item, the labelled set 6"):
        Pool(x, model, np.zeros((2, 6), dtype=np.float32), [0, 1]).validate()
    with pytest.raises(ValueError, match="the model does not accept pool items with 5 features"):
        EntropySampling().select(Pool(np.zeros((10, 5), dtype=np.float32), model), 2)
