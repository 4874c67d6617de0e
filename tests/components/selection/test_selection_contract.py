"""The contract every registered selection strategy keeps, checked on a real model and real data:
``batch_size`` distinct pool positions, the same ones for the same seed, finite per-item scores."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from distillery.components.core import models, registry
from distillery.components.core.train import train_classifier
from distillery.components.selection.pool import Pool
from distillery.components.selection.strategies import resolve

DIGITS_META = {"name": "digits", "feature_shape": [64], "classes": [str(i) for i in range(10)], "value_range": [0, 16]}
# wrappers get a base that exercises them (power sampling needs positive scores)
PARAMS = {"anchoral": {"base": "badge", "subpool_size": 200, "neighbours": 30, "anchors_per_class": 3},
          "power_sampling": {"base": "entropy"}, "neuronal_pool": {"epochs": 20},
          "neuronal_stream": {"epochs": 20}, "stream": {"base": "margin", "warmup": 20}}


@pytest.fixture(scope="module")
def digits_pool():
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    rng = np.random.default_rng(0)
    labelled = np.concatenate([rng.choice(np.flatnonzero(y == c), 3, replace=False) for c in range(10)])
    pool = np.setdiff1d(np.arange(len(y)), labelled)[:600]
    model = train_classifier(x[labelled], y[labelled], DIGITS_META, "mlp", {"hidden": 32, "dropout": 0.25},
                             epochs=30, lr=1e-2, batch_size=32, seed=0)
    return lambda: Pool(x[pool], model, x[labelled], y[labelled], num_classes=10)


@pytest.mark.parametrize("name", [m.name for m in registry.methods("selection")])
def test_every_strategy_picks_distinct_seeded_positions(name, digits_pool):
    model = digits_pool().model  # one model, shared by every strategy of the module
    state = {k: v.clone() for k, v in model.state_dict().items()}
    mode, size, probs = model.training, models.count_parameters(model), digits_pool().probs()
    first, scores = resolve(name, 7, PARAMS.get(name)).select(digits_pool(), 25)
    again, _ = resolve(name, 7, PARAMS.get(name)).select(digits_pool(), 25)
    assert first.dtype == np.int64 and len(set(first.tolist())) == 25
    assert first.min() >= 0 and first.max() < 600
    assert first.tolist() == again.tolist()
    assert scores.shape == (600,) and np.isfinite(scores).all()
    # the model is untouched (weights, buffers, train/eval mode) and still gives the same outputs:
    # a strategy that trained it or left dropout on (MC passes) would change the next round's model
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert model.training == mode and models.count_parameters(model) == size
    assert np.array_equal(digits_pool().probs(), probs)
