"""Stratified splits: a held-out test split that no step ever selects from, and a stratified seed
set of labels to start active learning from (scikit-learn's ``train_test_split``)."""
from __future__ import annotations

import numpy as np


def stratified_split(labels: np.ndarray, test_fraction: float, seed_labels: int,
                     seed: int, label_all: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split row indices into test, unlabelled pool and labelled seed set.

    Args:
        labels: ``(N,)`` class labels (used only to stratify).
        test_fraction: share of rows held out for testing, in (0, 1).
        seed_labels: size of the initial labelled set; at least one per class.
        seed: random seed.
        label_all: every training row is labelled (the retraining pipeline: it trains on all the
            labels a data version holds); ``seed_labels`` is ignored and the pool is empty.
    Returns:
        ``(test_rows, pool_rows, seed_rows)``, disjoint, covering every row; the pool excludes the
        seed set.
    """
    from sklearn.model_selection import train_test_split

    n_classes = len(np.unique(labels))
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_train = len(labels) - int(np.ceil(test_fraction * len(labels)))
    rows = np.arange(len(labels))
    if label_all:
        train_rows, test_rows = train_test_split(rows, test_size=test_fraction, stratify=labels, random_state=seed)
        return np.sort(test_rows), np.array([], dtype=rows.dtype), np.sort(train_rows)
    if not n_classes <= seed_labels < n_train:
        raise ValueError(f"seed_labels must be at least the number of classes ({n_classes}) and below "
                         f"the {n_train} training rows, got {seed_labels}")
    train_rows, test_rows = train_test_split(rows, test_size=test_fraction, stratify=labels,
                                             random_state=seed)
    pool_rows, seed_rows = train_test_split(train_rows, test_size=seed_labels,
                                            stratify=labels[train_rows], random_state=seed)
    return np.sort(test_rows), np.sort(pool_rows), np.sort(seed_rows)
