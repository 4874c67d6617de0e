"""The active-learning loop's training axis: a pool-aware method, found by name, trains every
round's model on the labels and the rest of the pool."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from distillery.components.selection import loop

META = {"name": "digits", "feature_shape": [1, 8, 8], "classes": [str(i) for i in range(10)], "value_range": [0, 16]}


def test_pool_aware_rounds_get_the_unlabelled_rest_of_the_pool(monkeypatch):
    from distillery.components.training import pool_aware

    digits = load_digits()
    x, y = digits.data[:400].astype(np.float32), digits.target[:400]
    seen = []
    real = pool_aware.fixmatch

    def spy(features, labels, *args, unlabelled, **kwargs):
        seen.append((len(features), len(unlabelled)))
        return real(features, labels, *args, unlabelled=unlabelled, **kwargs)

    monkeypatch.setattr(pool_aware, "fixmatch", spy)
    curve = loop.run_active_learning("margin", None, x[:300], y[:300], x[300:], y[300:], META, [20, 40], seed=0,
                                     model_kwargs={"arch": "mlp", "hidden": 16}, training="fixmatch",
                                     training_params={"arch": "mlp", "epochs": 1, "lr": 3e-3, "batch_size": 10})
    assert [r.labels for r in curve] == [20, 40]
    assert seen == [(20, 280), (40, 260)]  # labelled + unlabelled = the whole pool, every round


def test_a_training_method_that_ignores_the_pool_is_refused():
    x, y = np.zeros((10, 64), np.float32), np.arange(10) % 10
    with pytest.raises(ValueError, match="does not learn from the pool; pool-aware methods: \\['fixmatch', "):
        loop.train_model(x, y, META, {"arch": "mlp"}, {}, 0, training="small_cnn", unlabelled=x)
