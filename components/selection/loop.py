"""The active-learning protocol in one function: the simulation every strategy is compared under.

Plain Python (no kfp, no MLflow), the same steps the pipeline runs as tasks:

1. an initial labelled set drawn from the pool (seeded; stratified by default);
2. every round, a model is trained **from scratch** on the labelled set
   (:func:`distillery.components.core.train.train_classifier`; with ``training``, by a pool-aware
   method on the labelled set and the rest of the pool) and scored on the test set;
3. the strategy picks the next batch from the unlabelled part of the pool, seeing a
   :class:`~distillery.components.selection.pool.Pool` of the unlabelled features, the model and the labelled
   set; the simulated annotator reveals their labels; repeat until the last size of ``schedule``.

Training budget (``train_kwargs``): a number of Adam steps that grows with the labelled set,
``steps = max(min_steps, min_epochs * ceil(L / batch_size))`` (defaults 250 and 20, batch 64, Adam
lr 3e-3), run as ``ceil(steps / batches_per_epoch)`` epochs of equal-sized mini-batches of at most
``batch_size``. Small labelled sets get enough updates to fit (250 steps on 20 labels), large ones at
least 20 passes (1,000 labels: 320 steps; 4,000: 1,260), so the cost of a round stays proportional
to the data and the model is never badly under-trained at any size. The model and its training are
identical for every strategy; only the selection differs.

``strategy`` is a registered selection strategy's name (resolved each round with seed
``seed + round``, as the pipeline's select task does) or any callable
``select(pool: Pool, batch_size: int) -> positions`` (how the benchmarks drive a peer library).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from distillery.components.selection.pool import Pool

Selector = Callable[[Pool, int], np.ndarray]
TRAIN_DEFAULTS = {"min_steps": 250, "min_epochs": 20, "batch_size": 64, "lr": 3e-3}


class Round(NamedTuple):
    """One point of a learning curve."""

    labels: int                  # size of the labelled set the model was trained on
    accuracy: float              # test accuracy of that model
    query_seconds: float         # time of the query that followed this round (0.0 after the last one)
    class_counts: list[int]      # labelled items per class
    recall: list[float]          # per-class test recall of the model (NaN for a class absent from test)


def training_epochs(num_labelled: int, batch_size: int, min_steps: int, min_epochs: int) -> int:
    """Epochs that give ``max(min_steps, min_epochs * batches_per_epoch)`` optimiser steps."""
    batches = math.ceil(num_labelled / batch_size)
    steps = max(min_steps, min_epochs * batches)
    return math.ceil(steps / batches)


def initial_labels(labels: np.ndarray, size: int, seed: int, how: str = "stratified") -> np.ndarray:
    """``size`` distinct pool positions to label first: ``"stratified"`` (class proportions of the
    pool, via scikit-learn's ``train_test_split``) or ``"random"`` (uniform)."""
    labels = np.asarray(labels)
    if not 1 <= size < len(labels):
        raise ValueError(f"the initial labelled set must have between 1 and {len(labels) - 1} items, got {size}")
    if how == "random":
        return np.sort(np.random.default_rng(seed).choice(len(labels), size, replace=False))
    if how == "stratified":
        from sklearn.model_selection import train_test_split

        _, chosen = train_test_split(np.arange(len(labels)), test_size=size, stratify=labels, random_state=seed)
        return np.sort(chosen)
    raise ValueError(f"initial must be 'stratified' or 'random', got {how!r}")


def train_model(features, labels, meta: dict, model_kwargs: dict, train_kwargs: dict, seed: int, *,
                training: str | None = None, training_params: dict | None = None, unlabelled=None):
    """A fresh model trained on ``(features, labels)`` with the step budget described above; or, with
    ``training`` (a registered training method that takes the unlabelled pool, e.g. ``fixmatch``),
    by that method with ``training_params`` (its registry defaults fill the rest) on the labelled
    rows and ``unlabelled`` ``(U, D)``. The method is found through the registry, by name."""
    model_kwargs = dict(model_kwargs)
    arch = model_kwargs.pop("arch", "mlp")
    if training is not None:
        from distillery.components.core import registry
        from distillery.components.core.train import method_call

        method = registry.get("training", training)
        if "unlabelled" not in method.inputs:
            raise ValueError(f"training method {training!r} does not learn from the pool; pool-aware methods: "
                             f"{[m.name for m in registry.methods('training') if 'unlabelled' in m.inputs]}")
        p = method.resolve_params(training_params)
        # every strategy gets the same model: the loop's architecture, not the method's own `arch`
        _, _, extra = method_call(training, {**p, "arch_kwargs": {}})
        return method.load()(features, labels, meta, arch, model_kwargs, p["epochs"], p["lr"], p["batch_size"], seed,
                             unlabelled=unlabelled, **extra)
    from distillery.components.core.train import train_classifier

    kwargs = {**TRAIN_DEFAULTS, **train_kwargs}
    epochs = training_epochs(len(labels), kwargs["batch_size"], kwargs["min_steps"], kwargs["min_epochs"])
    return train_classifier(features, labels, meta, arch, model_kwargs, epochs, kwargs["lr"],
                            balanced_batch_size(len(labels), kwargs["batch_size"]), seed)


def balanced_batch_size(num_labelled: int, batch_size: int) -> int:
    """The batch size that splits ``num_labelled`` items into ``ceil(L / batch_size)`` equal batches
    (200 labels: 4 batches of 50, not 3 of 64 and one of 8, whose noisy steps cost accuracy)."""
    return math.ceil(num_labelled / math.ceil(num_labelled / batch_size))


def evaluate(model, features, labels, num_classes: int) -> tuple[float, list[float]]:
    """Test accuracy and per-class recall."""
    from distillery.components.core import models

    predicted = models.predict_proba(model, features).argmax(-1).numpy()
    correct = predicted == labels
    recall = [float(correct[labels == c].mean()) if np.any(labels == c) else float("nan")
              for c in range(num_classes)]
    return float(correct.mean()), recall


def run_active_learning(strategy: str | Selector, params: dict | None, features_pool: np.ndarray,
                        labels_pool: np.ndarray, features_test: np.ndarray, labels_test: np.ndarray,
                        meta: dict, schedule: Sequence[int], seed: int, model_kwargs: dict | None = None,
                        train_kwargs: dict | None = None, initial: str = "stratified",
                        on_round: Callable[[Round], None] | None = None, training: str | None = None,
                        training_params: dict | None = None) -> list[Round]:
    """Simulate pool-based active learning and return the learning curve.

    Args:
        strategy: a registered selection strategy's name, or a callable ``(pool, batch_size) ->
            positions`` into ``pool`` (distinct).
        params: the strategy's parameters (registry defaults fill the rest); ignored for a callable.
        features_pool, labels_pool: the pool ``(N, D)`` and its hidden labels ``(N,)``.
        features_test, labels_test: held-out test set.
        meta: the dataset's ``dataset.json`` (classes, feature shape, value range).
        schedule: increasing labelled-set sizes; the first is the initial set, each later one a query
            of the difference.
        seed: seeds the initial set, every training run and every query.
        model_kwargs: ``arch`` (default ``"mlp"``) and that architecture's keyword arguments.
        train_kwargs: overrides of :data:`TRAIN_DEFAULTS`.
        initial: ``"stratified"`` or ``"random"`` initial labels.
        on_round: called with each :class:`Round` as it completes (progress lines).
        training, training_params: a pool-aware training method (see :func:`train_model`): every
            round's model then also learns from the unlabelled rest of the pool.
    Returns:
        one :class:`Round` per size in ``schedule``.
    """
    from distillery.components.selection.strategies import resolve

    schedule = [int(s) for s in schedule]
    if not schedule or any(b <= a for a, b in zip(schedule, schedule[1:])):
        raise ValueError(f"schedule must be a non-empty increasing list of sizes, got {schedule}")
    if schedule[-1] > len(labels_pool):
        raise ValueError(f"the schedule ends at {schedule[-1]} labels but the pool has {len(labels_pool)} items")
    labels_pool = np.asarray(labels_pool, dtype=np.int64)
    labels_test = np.asarray(labels_test, dtype=np.int64)
    num_classes = len(meta["classes"])
    model_kwargs, train_kwargs = dict(model_kwargs or {}), dict(train_kwargs or {})

    labelled = initial_labels(labels_pool, schedule[0], seed, initial)
    curve: list[Round] = []
    for index, size in enumerate(schedule):
        assert len(labelled) == size
        rest = np.setdiff1d(np.arange(len(labels_pool)), labelled)
        model = train_model(features_pool[labelled], labels_pool[labelled], meta, model_kwargs, train_kwargs,
                            seed + index, training=training, training_params=training_params,
                            unlabelled=features_pool[rest] if training else None)
        accuracy, recall = evaluate(model, features_test, labels_test, num_classes)
        query_seconds = 0.0
        if index + 1 < len(schedule):
            batch = schedule[index + 1] - size
            unlabelled = np.setdiff1d(np.arange(len(labels_pool)), labelled)
            pool = Pool(features_pool[unlabelled], model, features_pool[labelled], labels_pool[labelled],
                        num_classes=num_classes)
            started = time.perf_counter()
            if callable(strategy):
                positions = np.asarray(strategy(pool, batch), dtype=np.int64)
            else:
                positions, _ = resolve(strategy, seed + index + 1, params).select(pool, batch)
            query_seconds = time.perf_counter() - started
            if len(positions) != batch or len(np.unique(positions)) != batch \
                    or positions.min() < 0 or positions.max() >= len(unlabelled):
                raise RuntimeError(f"the strategy returned {len(positions)} positions for a batch of {batch} "
                                   f"(must be distinct positions into the {len(unlabelled)} unlabelled items)")
            new = unlabelled[positions]
        counts = np.bincount(labels_pool[labelled], minlength=num_classes).tolist()
        point = Round(size, accuracy, query_seconds, counts, recall)
        curve.append(point)
        if on_round:
            on_round(point)
        if index + 1 < len(schedule):
            labelled = np.concatenate([labelled, new])
    return curve


def labels_to_reach(curve: Sequence[Any], target: float) -> float | None:
    """Labels at which the curve first reaches ``target`` accuracy, interpolated linearly between
    the last round below it and the first at or above it; ``None`` if it never does.

    ``curve`` holds :class:`Round` items or ``(labels, accuracy, ...)`` tuples, by increasing labels.
    """
    previous = None
    for point in curve:
        labels, accuracy = float(point[0]), float(point[1])
        if accuracy >= target:
            if previous is None:
                return labels
            (l0, a0) = previous
            return l0 + (target - a0) / (accuracy - a0) * (labels - l0)
        previous = (labels, accuracy)
    return None
