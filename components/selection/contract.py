"""Contract of a selection method (active learning): a :class:`Strategy` class that picks a batch.

:func:`distillery.components.selection.tasks.run_selection` builds the registered target and asks
it for one batch::

    positions, scores = target(seed=seed + round_index, **params).select(pool, batch_size)

* the target is a subclass of :class:`~distillery.components.selection.strategies.Strategy` (the
  contract itself: it validates, ranks and checks the picks), constructed by keyword from the
  round's seed and its resolved parameters; wrappers take the strategy they wrap by name (``base``).
* ``pool``: a :class:`~distillery.components.selection.pool.Pool`: features ``(N, D)`` of the
  unlabelled training rows (the test split is never in it), the round's teacher (``(B, D) -> (B, K)``
  logits; probabilities, penultimate embeddings and gradients are computed from it lazily) and the
  labelled set, features ``(L, D)`` with labels ``(L,)`` int64.
* ``batch_size``: int, ``1 <= batch_size <= N``.

Returns ``(positions, scores)``: ``(batch_size,)`` distinct int64 positions into the pool, most
informative first where the strategy ranks, and the ``(N,)`` float64 per-item scores (logged as a
histogram). The task supplies no extra inputs (:data:`INPUTS`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from distillery.components.selection.strategies import Strategy

INPUTS: tuple[str, ...] = ()  # keyword inputs beyond the call above that the task can supply


class SelectionMethod(Protocol):
    """The registered target: called like a :class:`Strategy` subclass, it returns a strategy."""

    def __call__(self, *, seed: int, **params: Any) -> Strategy: ...


def __getattr__(name: str) -> Any:
    """``contract.Strategy`` is the base class itself, imported on first use (it brings in torch)."""
    if name == "Strategy":
        from distillery.components.selection.strategies import Strategy

        return Strategy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
