"""Small synthetic datasets that tests and benchmarks share (generated, never downloaded)."""
from __future__ import annotations

import numpy as np


def biased_tabular(seed: int = 0, n: int = 2000) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """A binary task whose label is mildly correlated with a binary sensitive attribute ``s``
    (``P(s=1 | y=1) = 0.6``, ``P(s=1 | y=0) = 0.4``), plus one feature that leaks ``s`` (``s`` +
    noise): a model leaning on that feature has a larger statistical-parity gap than the label
    itself justifies (what RELIANT's fair distillation should reduce).

    Returns:
        ``x`` ``(n, 9)`` float32 standardised features (sklearn ``make_classification``'s 8 and the
        leaking one last), ``y`` ``(n,)`` labels in {0, 1}, ``s`` ``(n,)`` int64 groups in {0, 1},
        and the dataset's ``meta`` (tabular, classes ``["0", "1"]``).
    """
    from sklearn.datasets import make_classification

    rng = np.random.default_rng(seed)
    x, y = make_classification(n_samples=n, n_features=8, n_informative=5, n_redundant=1, flip_y=0.02,
                               random_state=seed)
    s = (rng.random(n) < np.where(y == 1, 0.6, 0.4)).astype(np.int64)
    x = np.column_stack([x, s + 0.3 * rng.standard_normal(n)]).astype(np.float32)
    x = (x - x.mean(0)) / x.std(0)
    meta = {"name": "biased", "kind": "tabular", "feature_shape": [x.shape[1]], "classes": ["0", "1"],
            "value_range": None}
    return x, y, s, meta
