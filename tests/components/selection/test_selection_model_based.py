"""Model-based selection strategies: BALD (MC dropout), BADGE, core-set, Expected/Entropy-GradNorm.

Each strategy is checked against an independent reference (a per-sample autograd loop, a numpy
formula over recorded passes, materialised gradient embeddings, a hand-solved k-center case), then
all of them run end to end on a small MLP over sklearn's digits.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from distillery.components.core.models import build
from distillery.components.selection.diversity import (
    BADGE,
    CoreSet,
    gradient_residual,
    outer_sq_distances,
)
from distillery.components.selection.gradnorm import EntropyGradNorm, ExpectedGradNorm
from distillery.components.selection.mc_dropout import BALD
from distillery.components.selection.pool import Pool
from distillery.components.selection.strategies import resolve

GRADNORMS = [ExpectedGradNorm, EntropyGradNorm]


def tiny_model(dropout: float | None = None, dtype=torch.float64) -> nn.Module:
    """Linear(5, 7) - ReLU [- Dropout] - Linear(7, 3), no Preprocess."""
    torch.manual_seed(0)
    layers = [nn.Linear(5, 7), nn.ReLU()]
    if dropout is not None:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.Linear(7, 3)).to(dtype).eval()


def features(n: int, d: int = 5, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


# --- GradNorm -----------------------------------------------------------------------------------

def loop_gradnorm(model: nn.Module, x: np.ndarray, loss_name: str) -> np.ndarray:
    """Reference: one plain autograd backward pass per item, sum of per-tensor gradient norms."""
    out = []
    for row in torch.as_tensor(x, dtype=torch.float64):
        model.zero_grad()
        logits = model(row[None])
        probs = logits.softmax(-1)[0]
        if loss_name == "expected":
            loss = sum(probs[c] * nn.functional.cross_entropy(logits, torch.tensor([c]))
                       for c in range(logits.shape[1]))
        else:
            loss = -(probs * probs.log()).sum()
        loss.backward()
        out.append(sum(p.grad.norm().item() for p in model.parameters()))
    return np.array(out)


@pytest.mark.parametrize("strategy, loss_name", [(ExpectedGradNorm, "expected"), (EntropyGradNorm, "entropy")])
def test_gradnorm_matches_per_sample_autograd_loop(strategy, loss_name):
    model, x = tiny_model(), features(12)
    scores = strategy(chunk_size=5).score(Pool(x, model), np.random.default_rng(0))
    np.testing.assert_allclose(scores, loop_gradnorm(model, x, loss_name), rtol=1e-5)


def test_gradnorm_uses_buffers_and_all_parameters():
    # Preprocess's offset/scale buffers must reach functional_call: a changed scale changes scores
    meta = {"feature_shape": [5], "classes": ["a", "b", "c"], "value_range": [0, 4]}
    torch.manual_seed(0)
    model = build("mlp", meta, hidden=7).double().eval()
    x = features(6)
    np.testing.assert_allclose(ExpectedGradNorm().score(Pool(x, model), None), loop_gradnorm(model, x, "expected"),
                               rtol=1e-5)
    before = ExpectedGradNorm().score(Pool(x, model), None)
    model[0].scale.fill_(8.0)
    assert not np.allclose(ExpectedGradNorm().score(Pool(x, model), None), before)


def test_gradnorm_chunked_equals_unchunked_and_both_losses_agree():
    model, x = tiny_model(), features(23)
    whole = ExpectedGradNorm(chunk_size=1000).score(Pool(x, model), None)
    np.testing.assert_allclose(ExpectedGradNorm(chunk_size=4).score(Pool(x, model), None), whole, rtol=1e-12)
    # sum_c p_c CE(., c) with p not detached IS the entropy: the two variants coincide
    np.testing.assert_allclose(EntropyGradNorm(chunk_size=7).score(Pool(x, model), None), whole, rtol=1e-9)


@pytest.mark.parametrize("strategy", GRADNORMS)
def test_gradnorm_candidates_scores_and_picks_only_the_subset(strategy):
    model, x = tiny_model(dtype=torch.float32), features(40).astype(np.float32)
    full = strategy().score(Pool(x, model), None)
    picks, scores = strategy(candidates=10, seed=4).select(Pool(x, model), 6)
    scored = np.flatnonzero(scores > scores.min())
    assert len(scored) == 10
    np.testing.assert_allclose(scores[scored], full[scored], rtol=1e-6)  # same values as full scoring
    assert set(picks) <= set(scored)
    np.testing.assert_array_equal(picks, scored[np.argsort(-scores[scored])][:6])
    # a batch larger than the subset takes all of it first, then unscored items
    big, _ = strategy(candidates=10, seed=4).select(Pool(x, model), 15)
    assert set(scored) <= set(big[:10])
    again, _ = strategy(candidates=10, seed=4).select(Pool(x, model), 6)
    np.testing.assert_array_equal(picks, again)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_gradnorm_rejects_bad_candidates(bad):
    with pytest.raises(ValueError, match="candidates must be a positive integer"):
        ExpectedGradNorm(candidates=bad).select(Pool(features(5), tiny_model(dtype=torch.float32)), 2)


# --- BALD ---------------------------------------------------------------------------------------

def test_bald_is_zero_when_dropout_changes_nothing():
    model, x = tiny_model(dropout=0.0, dtype=torch.float32), features(30)
    scores = BALD(mc_passes=5).score(Pool(x, model), np.random.default_rng(0))
    np.testing.assert_allclose(scores, 0.0, atol=1e-6)


def test_bald_matches_numpy_formula_over_recorded_passes():
    model, x = tiny_model(dropout=0.5, dtype=torch.float32), features(30)
    passes = []
    model[-1].register_forward_hook(lambda module, inputs, output: passes.append(output.double().numpy()))
    scores = BALD(mc_passes=6).score(Pool(x, model), np.random.default_rng(0))
    logits = np.stack(passes)  # (T, N, K): one chunk, so one recorded output per pass
    assert logits.shape == (6, 30, 3)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    mean = probs.mean(0)
    expected = -(mean * np.log(mean)).sum(-1) + (probs * np.log(probs)).sum(-1).mean(0)
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    assert scores.max() > 1e-3  # the passes did differ


def test_bald_reproducible_chunked_and_leaves_model_and_rng_alone():
    model, x = tiny_model(dropout=0.3, dtype=torch.float32), features(50)
    rng_state = torch.get_rng_state()
    first = BALD(seed=3).select(Pool(x, model, chunk_size=16), 5)
    np.testing.assert_array_equal(first[1], BALD(seed=3).select(Pool(x, model, chunk_size=16), 5)[1])
    assert not np.allclose(first[1], BALD(seed=4).select(Pool(x, model, chunk_size=16), 5)[1])
    assert not any(m.training for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng_state)


def test_bald_shared_prefix_equals_whole_model_passes():
    # a non-Sequential wrapper runs whole T times; the prefix draws no random numbers, so the masks
    # and therefore the scores are identical to the Sequential fast path
    class Wrapped(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    model, x = tiny_model(dropout=0.4, dtype=torch.float32), features(40)
    fast = BALD(seed=1).score(Pool(x, model, chunk_size=16), np.random.default_rng(7))
    slow = BALD(seed=1).score(Pool(x, Wrapped(model), chunk_size=16), np.random.default_rng(7))
    np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-9)


def test_bald_without_dropout_is_a_clear_error():
    message = r"BALD needs a model with dropout layers \(MC dropout\); Sequential has none"
    with pytest.raises(ValueError, match=message):
        BALD().select(Pool(features(5), tiny_model(dtype=torch.float32)), 2)


def test_bald_restores_eval_mode_after_an_error():
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.5), Boom(), nn.Linear(4, 2)).eval()
    with pytest.raises(RuntimeError, match="boom"):
        BALD().score(Pool(features(8).astype(np.float32), model), np.random.default_rng(0))
    assert not any(m.training for m in model.modules())


# --- BADGE --------------------------------------------------------------------------------------

def precomputed_pool(probs: np.ndarray, emb: np.ndarray) -> Pool:
    return Pool(probs=np.asarray(probs, dtype=np.float32), embeddings=np.asarray(emb, dtype=np.float32))


def test_badge_implicit_distances_equal_materialised_embeddings():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=25)
    emb = rng.normal(size=(25, 6)).astype(np.float32)
    a = gradient_residual(probs)
    g = np.einsum("nk,nh->nkh", a.astype(np.float64), emb.astype(np.float64)).reshape(25, -1)
    sq_norms = (a.astype(np.float64) ** 2).sum(1) * (emb.astype(np.float64) ** 2).sum(1)
    np.testing.assert_allclose(sq_norms, (g ** 2).sum(1), rtol=1e-6)
    for centre in (0, 13):
        explicit = ((g - g[centre]) ** 2).sum(1)
        np.testing.assert_allclose(outer_sq_distances(a, emb, sq_norms, centre), explicit, rtol=1e-5, atol=1e-6)
    _, scores = BADGE().select(precomputed_pool(probs, emb), 3)
    np.testing.assert_allclose(scores, np.linalg.norm(g, axis=1), rtol=1e-6)


def test_badge_d2_sampling_takes_the_only_item_at_nonzero_distance():
    # seven duplicates share the largest gradient norm; item 5 has a smaller norm and is the only
    # item at non-zero distance from them, so D^2 sampling must take it second, whatever the seed
    probs, emb = np.tile([0.55, 0.45], (8, 1)), np.full((8, 3), 3.0)
    emb[5] = [-1.0, 2.0, 0.5]
    for seed in range(5):
        picks, scores = BADGE(seed=seed).select(precomputed_pool(probs, emb), 2)
        assert picks[0] != 5 and np.isclose(scores[picks[0]], scores.max())
        assert picks[1] == 5


def test_badge_first_centre_unique_largest_norm_and_distinct_reproducible_picks():
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(3) * 5, size=60)
    emb = rng.normal(size=(60, 4))
    emb[17] *= 10  # unique largest gradient-embedding norm
    picks, scores = BADGE(seed=5).select(precomputed_pool(probs, emb), 20)
    assert picks[0] == 17 == scores.argmax()
    assert len(set(picks)) == 20
    np.testing.assert_array_equal(picks, BADGE(seed=5).select(precomputed_pool(probs, emb), 20)[0])


def test_badge_whole_pool_of_duplicates_stays_distinct():
    probs, emb = np.tile([0.7, 0.2, 0.1], (10, 1)), np.ones((10, 4))
    picks, _ = BADGE(seed=1).select(precomputed_pool(probs, emb), 10)
    assert sorted(picks) == list(range(10))


# --- CoreSet ------------------------------------------------------------------------------------

def identity_embedding_model(dim: int = 2) -> nn.Module:
    """Embeddings (input of the last Linear) are the raw features themselves."""
    return nn.Sequential(nn.Identity(), nn.Linear(dim, 3)).eval()


def test_coreset_greedy_order_on_a_hand_case():
    # labelled: origin. Distances: a 10, b 11, c 5, d 3, e sqrt 2. Greedy: b (11); a drops to 1;
    # then c (5), then d (3: farther from b and c than from the origin), then e (sqrt 2), then a (1)
    pool_x = np.array([[10, 0], [11, 0], [0, 5], [0, -3], [1, 1]], dtype=np.float32)
    pool = Pool(pool_x, identity_embedding_model(), np.zeros((1, 2), np.float32), np.array([0]))
    picks, scores = CoreSet().select(pool, 5)
    np.testing.assert_array_equal(picks, [1, 2, 3, 4, 0])
    np.testing.assert_allclose(scores, [10, 11, 5, 3, np.sqrt(2)], rtol=1e-6)


def test_coreset_chunked_distances_and_cold_start(monkeypatch):
    from distillery.components.selection import diversity

    rng = np.random.default_rng(3)
    pool_x, lab = rng.normal(size=(50, 2)).astype(np.float32), rng.normal(size=(9, 2)).astype(np.float32)
    _, scores = CoreSet().select(Pool(pool_x, identity_embedding_model(), lab, np.zeros(9, int)), 3)
    explicit = np.sqrt(((pool_x[:, None] - lab[None]) ** 2).sum(-1).min(1))
    np.testing.assert_allclose(scores, explicit, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(diversity, "BLOCK", 4)  # tiles smaller than both sets
    _, tiled = CoreSet().select(Pool(pool_x, identity_embedding_model(), lab, np.zeros(9, int)), 3)
    np.testing.assert_allclose(tiled, explicit, rtol=1e-5, atol=1e-5)
    cold = CoreSet(seed=2).select(Pool(pool_x, identity_embedding_model()), 50)[0]
    assert sorted(cold) == list(range(50))
    fewer = CoreSet(seed=2).select(Pool(pool_x, identity_embedding_model()), 10)[0]
    np.testing.assert_array_equal(cold[:10], fewer)  # greedy: a smaller batch is a prefix


# --- end to end on digits -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_pool():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    meta = {"feature_shape": [64], "classes": [str(i) for i in range(10)], "value_range": [0, 16]}
    torch.manual_seed(0)
    model = build("mlp", meta, hidden=32, dropout=0.25)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(30):  # a few full-batch steps on 100 labelled items: a real, imperfect model
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(torch.as_tensor(x[:100])), torch.as_tensor(y[:100])).backward()
        optimiser.step()
    model.eval()
    return lambda: Pool(x[100:], model, x[:100], y[:100], chunk_size=512)


@pytest.mark.parametrize("name", ["bald", "badge", "coreset", "expected_gradnorm", "entropy_gradnorm"])
def test_strategies_run_on_a_real_model(digits_pool, name):
    strategy = resolve(name, seed=11)
    picks, scores = strategy.select(digits_pool(), 25)
    n = len(digits_pool())
    assert picks.shape == (25,) and len(set(picks)) == 25 and picks.min() >= 0 and picks.max() < n
    assert scores.shape == (n,) and np.isfinite(scores).all() and (scores >= 0).all()
    assert scores.std() > 0
    np.testing.assert_array_equal(picks, resolve(name, seed=11).select(digits_pool(), 25)[0])
    if name in ("bald", "expected_gradnorm", "entropy_gradnorm"):  # top-b scoring strategies
        assert scores[picks].min() >= np.partition(scores, n - 25)[n - 25]
