"""Online (stream-based) selection: decide for each arriving item, at once, whether to query its label.

Cohn, Atlas & Ladner, "Improving Generalization with Active Learning", Machine Learning 15(2),
201-221, 1994: in selective sampling the learner sees one unlabelled item at a time and queries it
when it falls in the region of uncertainty. Here "uncertain enough" is an informativeness score above
an adaptive threshold chosen so that a label budget is spent exactly by the end of the stream:

- :class:`OnlineSelector` holds the stream state and answers ``offer(score) -> bool``;
- :class:`StreamSelection` replays the pool as a stream (seeded random order) through an
  :class:`OnlineSelector`, scoring items with any registered scoring strategy.
"""
from __future__ import annotations

import math

import numpy as np

from distillery.components.selection.strategies import Strategy, is_scoring, resolve

#: scores kept unsorted before being merged into the sorted history (bounds the per-offer cost).
_BUFFER = 512


class OnlineSelector:
    """Query-or-skip decisions for a stream of scores (higher = more worth labelling), under a budget.

    Before each decision, with ``r`` labels left to spend and ``m`` items left (this one included),
    the threshold is the empirical quantile, at level ``1 - r / m``, of every score seen so far (this
    one included; the ``inverted_cdf`` quantile, i.e. an actual observed score). The item is queried
    when its score reaches the threshold, so on average ``r / m`` of the remaining items are queried.
    Rules, in order:

    1. no budget left: skip (also for items past ``stream_length``, by then the budget is spent);
    2. ``r >= m``: query (every remaining item is needed to spend the budget exactly);
    3. fewer than ``warmup`` items observed before this one: skip (the quantile is not yet reliable);
    4. query when ``score >= threshold``.

    Rule 2 makes the selector spend exactly ``budget`` labels over ``stream_length`` items, and rule 1
    makes it never exceed the budget. The quantile test is computed exactly from counts,
    ``#{seen <= score} / n >= 1 - r / m``, on a sorted history (``O(log n)`` search plus a small
    unsorted buffer per offer), so a stream of a million items costs seconds, not a re-sort per item.

    Args:
        budget: labels to spend, ``0 <= budget <= stream_length``.
        stream_length: the number of items the stream is expected to deliver.
        warmup: items observed before the first query unless rule 2 forces one.
    """

    def __init__(self, budget: int, stream_length: int, warmup: int = 100):
        for name, value, minimum in (("budget", budget, 0), ("stream_length", stream_length, 1),
                                     ("warmup", warmup, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ValueError(f"OnlineSelector: {name} must be an integer >= {minimum}, got {value!r}")
        if budget > stream_length:
            raise ValueError(f"OnlineSelector: a budget of {budget} cannot be spent on {stream_length} items")
        self.budget = int(budget)
        self.stream_length = int(stream_length)
        self.warmup = int(warmup)
        self.seen = 0
        self.queried = 0
        self._sorted = np.empty(0)
        self._buffer = np.empty(_BUFFER)
        self._buffered = 0

    @property
    def remaining_budget(self) -> int:
        return self.budget - self.queried

    @property
    def remaining_items(self) -> int:
        """Items still expected, the next one included (0 once ``stream_length`` items were offered)."""
        return max(self.stream_length - self.seen, 0)

    def offer(self, score: float) -> bool:
        """Observe the next item's score and return whether to query its label (decided now, final)."""
        value = _finite(score)
        at_most = self._observe(value)
        query = self._decide(at_most)
        self.seen += 1
        self.queried += query
        return query

    def threshold(self) -> float | None:
        """The current quantile threshold over the scores observed so far (for logging); ``None``
        before any score or when no quantile applies (budget spent, or every item must be queried)."""
        r, m = self.remaining_budget, self.remaining_items
        history = self._history()
        if not len(history) or r <= 0 or r >= m:
            return None
        return float(np.quantile(history, 1.0 - r / m, method="inverted_cdf"))

    def _decide(self, at_most: int) -> bool:
        r, m = self.remaining_budget, self.stream_length - self.seen
        if r <= 0:
            return False
        if r >= m:
            return True
        if self.seen < self.warmup:
            return False
        n = self.seen + 1  # scores observed, this one included
        return at_most * m >= (m - r) * n  # #{seen <= score} / n >= 1 - r / m, in integers

    def _observe(self, value: float) -> int:
        """Add ``value`` to the history; return how many observed scores (it included) are <= it."""
        if self._buffered == _BUFFER:
            merged = np.sort(self._buffer)
            self._sorted = np.insert(self._sorted, np.searchsorted(self._sorted, merged), merged)
            self._buffered = 0
        self._buffer[self._buffered] = value
        self._buffered += 1
        return int(np.searchsorted(self._sorted, value, side="right")) \
            + int(np.count_nonzero(self._buffer[:self._buffered] <= value))

    def _history(self) -> np.ndarray:
        return np.concatenate([self._sorted, self._buffer[:self._buffered]])


def _finite(score: float) -> float:
    try:
        value = float(score)
    except (TypeError, ValueError):
        raise ValueError(f"OnlineSelector: a score must be a number, got {score!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"OnlineSelector: a score must be finite, got {value} (NaN or infinite)")
    return value


class StreamSelection(Strategy):
    """Online selection on the pool: the items arrive one at a time in a seeded random order and an
    :class:`OnlineSelector` with ``budget = batch_size`` decides each at once from ``base``'s score.

    Args:
        base: registered name of a scoring strategy (one that does not pick a whole batch itself).
        base_params: its parameters (``None`` = its defaults).
        warmup: items observed before the first query (see :class:`OnlineSelector`).
    Returns from ``select``: positions in query order and the base's scores ``(N,)``.
    """

    name = "stream"

    def __init__(self, seed: int = 0, base: str = "margin", base_params: dict | None = None, warmup: int = 100):
        super().__init__(seed)
        self.base = base
        self.base_params = base_params
        self.warmup = warmup

    def pick(self, pool, batch_size, rng):
        base = resolve(self.base, self.seed, self.base_params)
        if not is_scoring(base):
            raise ValueError(f"{self.name} offers items one at a time, so it needs per-item scores; "
                             f"{self.base!r} picks a whole batch itself (choose a scoring strategy such as "
                             f"margin, entropy, least_confidence, bald)")
        selector = OnlineSelector(batch_size, len(pool), self.warmup)
        # One bulk call scores every item exactly as item-by-item calls would: the model is fixed
        # during a query (labels arrive only after the round), so an item's score does not depend on
        # what was queried before it.
        scores = base.checked_scores(pool, rng)
        order = rng.permutation(len(pool))
        positions = np.array([i for i in order if selector.offer(scores[i])], dtype=np.int64)
        return positions, scores
