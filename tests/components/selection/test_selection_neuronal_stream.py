"""NeurOnAl (pool and stream versions) and online stream-based selection."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from distillery.components.selection import neuronal
from distillery.components.selection.neuronal import (
    NeurOnAlPool,
    NeurOnAlStream,
    block_mean_pool,
    gap_inverse_probabilities,
    gap_inverse_sample,
    gradient_features,
    mlp,
    stream_queries,
)
from distillery.components.selection.pool import Pool
from distillery.components.selection.strategies import MarginSampling, Strategy, resolve
from distillery.components.selection.stream import OnlineSelector, StreamSelection

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits_pool() -> Pool:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    labelled, pool = order[:50], order[50:350]
    return Pool(x[pool].astype(np.float32), None, x[labelled].astype(np.float32), y[labelled], num_classes=10)


# --- gap-inverse probabilities ----------------------------------------------------------------


def test_gap_inverse_matches_the_formula_on_a_hand_case():
    p = gap_inverse_probabilities(np.array([0.3, 0.1, 0.2, 0.5]), mu=10.0, gamma=1.0)
    # w_hat = 0.1: p_i = 0.1 / (10 * 0.1 + (w_i - 0.1))
    others = {0: 0.1 / 1.2, 2: 0.1 / 1.1, 3: 0.1 / 1.4}
    for i, value in others.items():
        assert p[i] == pytest.approx(value)
    assert p[1] == pytest.approx(1.0 - sum(others.values()))
    assert p.sum() == pytest.approx(1.0)


def test_gap_inverse_renormalises_on_a_large_pool():
    w = np.concatenate([[0.1], np.linspace(0.1, 0.3, 5001)[1:]])
    p = gap_inverse_probabilities(w, mu=1000.0, gamma=1000.0)
    formula = 0.1 / (1000 * 0.1 + 1000 * (w[1:] - 0.1))
    assert formula.sum() > 1  # the paper's rest of the mass would be negative
    assert p.sum() == pytest.approx(1.0) and (p > 0).all()
    assert p[0] == p.max()
    # the others keep their relative weights; the arg-min gets its own formula value 1 / mu
    np.testing.assert_allclose(p[1:] / p[1], formula / formula[0])
    assert p[0] / p[1] == pytest.approx((1 / 1000) / formula[0])


def test_gap_inverse_zero_gap_and_ties():
    np.testing.assert_allclose(gap_inverse_probabilities(np.array([0.0, 0.2, 0.0, 0.7]), 1000.0, 1000.0),
                               [0.5, 0.0, 0.5, 0.0])
    p = gap_inverse_probabilities(np.array([0.1, 0.1, 0.3]), mu=10.0, gamma=1.0)
    assert p[2] == pytest.approx(0.1 / 1.2)
    assert p[0] == p[1] == pytest.approx((1 - 0.1 / 1.2) / 2)


@pytest.mark.parametrize("gaps", [[0.1, -0.2], [0.1, np.nan], []])
def test_gap_inverse_rejects_bad_gaps(gaps):
    with pytest.raises(ValueError, match="gaps"):
        gap_inverse_probabilities(np.array(gaps), 10.0, 1.0)


def test_gap_inverse_sample_redraws_over_the_remaining_items():
    rng = np.random.default_rng(0)
    w = np.array([0.1, 0.2, 0.4])
    draws = np.array([gap_inverse_sample(w, 2, 10.0, 1.0, rng) for _ in range(4000)])
    first = np.bincount(draws[:, 0], minlength=3) / len(draws)
    np.testing.assert_allclose(first, gap_inverse_probabilities(w, 10.0, 1.0), atol=0.02)
    # after item 0 is drawn, w_hat becomes 0.2: p(item 2) = 0.2 / (10 * 0.2 + 0.2)
    after_zero = draws[draws[:, 0] == 0, 1]
    assert np.mean(after_zero == 2) == pytest.approx(0.2 / 2.2, abs=0.02)


def test_gap_inverse_sample_is_distinct_seeded_and_fast():
    w = np.random.default_rng(1).random(5000)
    picks = gap_inverse_sample(w, 300, 1000.0, 1000.0, np.random.default_rng(7))
    assert len(np.unique(picks)) == 300
    np.testing.assert_array_equal(picks, gap_inverse_sample(w, 300, 1000.0, 1000.0, np.random.default_rng(7)))
    assert np.median(w[picks]) < np.median(w) / 2  # small gaps are drawn far more often


# --- exploration features ---------------------------------------------------------------------


def test_phi_matches_a_per_sample_autograd_loop(monkeypatch):
    torch.manual_seed(0)
    net = mlp(5, 4, 3)  # P = 20 + 4 + 12 + 3 = 39 parameters: 9 blocks of 4 and a last block of 3
    x = torch.randn(7, 5)
    monkeypatch.setattr(neuronal, "GRADIENT_FLOATS", 2 * 39)  # chunks of two rows
    phi = gradient_features(net, x, block=4)
    params = list(net.parameters())
    expected = []
    for row in x:
        grads = torch.autograd.grad(net(row[None]).sum(), params)
        flat = torch.cat([g.reshape(-1) for g in grads])
        expected.append(torch.stack([flat[i:i + 4].mean() for i in range(0, len(flat), 4)]))
    assert phi.shape == (7, 10)
    torch.testing.assert_close(phi, torch.stack(expected))


def test_block_mean_pool_keeps_the_partial_last_block_a_plain_mean():
    pooled = block_mean_pool(torch.arange(7.0)[None], 3)
    torch.testing.assert_close(pooled, torch.tensor([[1.0, 4.0, 6.0]]))


# --- the stream walk --------------------------------------------------------------------------


def test_stream_queries_grow_t_and_fill_with_the_smallest_gaps():
    # ten identical items: f1 gap 0.6, f2 lowers the top class by 0.4, so the gap at t is 0.6 - 0.4 / (t + 1)
    exploit = np.tile([0.8, 0.2], (10, 1))
    explore = np.tile([-0.4, 0.0], (10, 1))
    order = np.random.default_rng(0).permutation(10)
    positions, gaps = stream_queries(exploit, explore, 0, 0.5, 5, order, np.random.default_rng(0))
    # t = 0, 1, 2 give gaps 0.2, 0.4, 0.467 < 0.5; from t = 3 on the gap is 0.5, never queried
    np.testing.assert_array_equal(positions[:3], order[:3])
    np.testing.assert_allclose(gaps[order[:4]], [0.2, 0.4, 0.6 - 0.4 / 3, 0.5])
    assert len(np.unique(positions)) == 5  # two fill items complete the batch
    everything = stream_queries(exploit, explore, 0, 10.0, 4, order, np.random.default_rng(0))[0]
    np.testing.assert_array_equal(everything, order[:4])  # all qualify: the first four to arrive


# --- NeurOnAl strategies on digits ------------------------------------------------------------


def test_neuronal_pool_on_digits_is_distinct_reproducible_and_prefers_small_gaps(digits_pool):
    positions, scores = NeurOnAlPool(seed=3).select(digits_pool, 20)
    assert len(np.unique(positions)) == 20 and scores.shape == (300,)
    assert (scores <= 0).all()  # scores are -gap
    np.testing.assert_array_equal(positions, NeurOnAlPool(seed=3).select(digits_pool, 20)[0])
    assert not np.array_equal(positions, NeurOnAlPool(seed=4).select(digits_pool, 20)[0])
    assert np.mean(-scores[positions]) < np.mean(-scores)


def test_neuronal_stream_queries_only_gaps_below_gamma(digits_pool):
    strategy = NeurOnAlStream(seed=3, gamma=0.5)
    positions, scores = strategy.select(digits_pool, 15)
    assert len(np.unique(positions)) == 15
    assert (-scores < 0.5).sum() >= 15  # enough items qualify, so no fill was needed
    assert (-scores[positions] < 0.5).all()
    np.testing.assert_array_equal(positions, NeurOnAlStream(seed=3, gamma=0.5).select(digits_pool, 15)[0])


def test_neuronal_stream_fills_with_the_smallest_gaps_when_none_qualify(digits_pool):
    positions, scores = NeurOnAlStream(seed=3, gamma=1e-12).select(digits_pool, 10)
    assert len(np.unique(positions)) == 10
    assert -scores[positions].max() <= np.sort(-scores)[9]  # the ten smallest gaps


def test_neuronal_needs_labels_and_features(digits_pool):
    unlabelled = Pool(digits_pool.features, None, num_classes=10)
    with pytest.raises(ValueError, match="needs labelled items"):
        NeurOnAlPool().select(unlabelled, 5)
    no_features = Pool(None, None, digits_pool.labelled_features, digits_pool.labelled_labels,
                       probs=np.full((300, 10), 0.1))
    with pytest.raises(ValueError, match="raw features"):
        NeurOnAlStream().select(no_features, 5)


# --- OnlineSelector ---------------------------------------------------------------------------


@pytest.mark.parametrize("budget,length,warmup", [(50, 1000, 100), (10, 20, 1000), (0, 5, 0), (7, 7, 3),
                                                  (300, 2000, 0)])
def test_online_selector_spends_exactly_the_budget(budget, length, warmup):
    selector = OnlineSelector(budget, length, warmup)
    spent = 0
    for score in np.random.default_rng(budget).random(length):
        spent += selector.offer(score)
        assert spent <= budget
    assert spent == budget == selector.queried
    assert not any(selector.offer(1e9) for _ in range(5))  # past the announced length


def test_online_selector_forces_the_tail_when_warmup_never_ends():
    selector = OnlineSelector(10, 20, warmup=1000)
    decisions = [selector.offer(s) for s in np.linspace(1, 0, 20)]
    assert decisions == [False] * 10 + [True] * 10


def test_online_selector_prefers_high_scores():
    scores = np.random.default_rng(0).random(5000)
    selector = OnlineSelector(500, 5000, warmup=100)
    queried = np.array([selector.offer(s) for s in scores])
    assert queried.sum() == 500
    assert scores[queried].mean() > 0.8
    assert np.mean(scores[queried] < 0.5) < 0.05


def test_online_selector_threshold_is_the_empirical_quantile():
    # brute-force reference: np.quantile over all scores seen so far at level 1 - r/m
    scores = np.random.default_rng(2).normal(size=1500)  # > 2 buffer merges
    selector = OnlineSelector(120, 1500, warmup=50)
    queried = 0
    for i, score in enumerate(scores):
        r, m = 120 - queried, 1500 - i
        if r >= m:
            expected = True
        elif i < 50:
            expected = False
        else:
            expected = score >= np.quantile(scores[:i + 1], 1 - r / m, method="inverted_cdf")
        assert selector.offer(score) == expected, i
        queried += expected


@pytest.mark.parametrize("score", [float("nan"), float("inf"), "high"])
def test_online_selector_rejects_non_finite_scores(score):
    with pytest.raises(ValueError, match="score must be"):
        OnlineSelector(5, 10).offer(score)


def test_online_selector_rejects_an_unspendable_budget():
    with pytest.raises(ValueError, match="cannot be spent"):
        OnlineSelector(11, 10)


# --- StreamSelection --------------------------------------------------------------------------


def _probs_pool(n=500) -> Pool:
    return Pool(probs=np.random.default_rng(5).dirichlet(np.full(10, 0.3), size=n))


def test_stream_selection_with_margin_picks_distinct_high_scoring_items():
    pool = _probs_pool()
    positions, scores = StreamSelection(seed=1, base="margin", warmup=50).select(pool, 30)
    assert len(np.unique(positions)) == 30
    np.testing.assert_allclose(scores, MarginSampling().score(pool, np.random.default_rng(0)))
    np.testing.assert_array_equal(positions, StreamSelection(seed=1, base="margin", warmup=50).select(pool, 30)[0])
    assert np.mean(scores[positions]) > np.quantile(scores, 0.75)


class _BatchAware(Strategy):
    name = "batch_aware"

    def pick(self, pool, batch_size, rng):
        return np.arange(batch_size), np.zeros(len(pool))


def test_stream_selection_rejects_a_batch_aware_base(monkeypatch):
    import distillery.components.selection.stream as stream

    monkeypatch.setattr(stream, "resolve", lambda name, seed, params: _BatchAware(seed))
    with pytest.raises(ValueError, match="'badge' picks a whole batch"):
        StreamSelection(base="badge").select(_probs_pool(), 5)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="'neuronal_pool' picks a whole batch"):
        StreamSelection(base="neuronal_pool").select(_probs_pool(), 5)


@pytest.mark.parametrize("name", ["neuronal_pool", "neuronal_stream", "stream"])
def test_registry_defaults_build_the_strategies(name):
    strategy = resolve(name, 0)
    assert strategy.name == name and strategy.seed == 0
