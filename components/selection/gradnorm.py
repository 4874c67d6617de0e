"""Expected-GradNorm and Entropy-GradNorm.

Wang, Sun, Zhu, Xu et al., "Boosting Active Learning via Improving Test Performance", AAAI 2022
(reference code: xulabs/aitom ``aitom/ml/active_learning/al_gradnorm``). An item is worth labelling
when training on it would move the model a lot, measured without its label by the gradient of a
label-free surrogate loss, model in eval mode:

- expected loss  ``L(x) = sum_c p_c(x) · CE(logits(x), c)``, p NOT detached (as in the reference);
- entropy loss   ``L(x) = H(p(x)) = -sum_c p_c log p_c``;

    score(x) = sum over parameter tensors W of ||dL(x)/dW||_2     (per-tensor norms, then summed)

Note: with p not detached, ``sum_c p_c CE(logits, c) = -sum_c p_c log p_c``: the two losses are the
same function of the parameters, so the two strategies give the same scores up to rounding. Both are
kept because the paper (and its code) report them as two variants.

Shapes: pool features ``(N, D)``; per-sample gradients are computed for ``(C, D)`` chunks
(``C = chunk_size``) with ``torch.func`` (``vmap`` over ``grad`` of a ``functional_call``), holding
``C x (number of parameters)`` gradient entries at a time; scores ``(N,)``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from distillery.components.core import devices
from distillery.components.selection.strategies import Strategy


class _GradNorm(Strategy):
    """Sum of per-tensor gradient norms of a label-free loss, per pool item.

    Args:
        seed: seeds the candidate subset.
        candidates: score only a seeded random subset of this many pool items (the reference scores
            25,000 of CIFAR-10's 50,000) to bound cost; ``None`` scores the whole pool. Unscored items
            get ``min(scored) - 1``, below every scored item, so they are picked only when the batch
            is larger than ``candidates`` (and then at random among themselves).
        chunk_size: pool items per vectorised per-sample-gradient call (bounds memory).
    """

    def __init__(self, seed: int = 0, candidates: int | None = None, chunk_size: int = 256):
        self.seed = seed
        self.candidates = candidates
        self.chunk_size = chunk_size

    @staticmethod
    def loss(logits: Any) -> Any:
        """The label-free loss of one item from its logits ``(K,)``, a scalar tensor."""
        raise NotImplementedError

    def score(self, pool, rng):
        if pool.model is None or pool.features is None:
            raise ValueError(f"{self.name} needs the model and the pool features")
        _check_positive_int("chunk_size", self.chunk_size)
        subset = self.candidate_positions(len(pool), rng)
        features = pool.features if subset is None else pool.features[subset]
        scored = per_sample_gradnorms(pool.model, features, self.loss, self.chunk_size)
        if subset is None:
            return scored
        scores = np.full(len(pool), scored.min() - 1.0)
        scores[subset] = scored
        return scores

    def candidate_positions(self, n: int, rng: np.random.Generator) -> np.ndarray | None:
        """Sorted ``(candidates,)`` positions to score, or ``None`` for the whole pool."""
        if self.candidates is None:
            return None
        _check_positive_int("candidates", self.candidates)
        if self.candidates >= n:
            return None
        return np.sort(rng.choice(n, self.candidates, replace=False))


class ExpectedGradNorm(_GradNorm):
    name = "expected_gradnorm"

    @staticmethod
    def loss(logits):
        import torch
        from torch.nn import functional as F

        num_classes = logits.shape[-1]
        # CE(logits, c) for every class c at once: K copies of the logits against targets 0..K-1
        per_class = F.cross_entropy(logits.expand(num_classes, num_classes),
                                    torch.arange(num_classes, device=logits.device), reduction="none")
        return (logits.softmax(-1) * per_class).sum()


class EntropyGradNorm(_GradNorm):
    name = "entropy_gradnorm"

    @staticmethod
    def loss(logits):
        log_probs = logits.log_softmax(-1)  # not entr(softmax): its gradient is NaN where p underflows
        return -(log_probs.exp() * log_probs).sum()


def per_sample_gradnorms(model: Any, features: np.ndarray, loss: Callable[[Any], Any],
                         chunk_size: int) -> np.ndarray:
    """``(N,)`` sum over parameter tensors of ``||d loss(model(x_i)) / dW||_2``, per row of ``features``.

    ``vmap(grad(.))`` over a ``functional_call`` of the model computes a chunk's per-sample gradients
    in one batched call instead of N backward passes. Buffers (e.g. ``Preprocess``'s offset and scale,
    batch-norm statistics) go into ``functional_call`` with the parameters; every parameter counts,
    trainable or not.
    """
    from torch.func import functional_call, grad, vmap

    model.eval()
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b.detach() for name, b in model.named_buffers()}
    if not params:
        raise ValueError("GradNorm needs a model with parameters")
    dtype = next(iter(params.values())).dtype

    def item_loss(params, x):
        return loss(functional_call(model, (params, buffers), (x.unsqueeze(0),))[0])

    per_item_grads = vmap(grad(item_loss), in_dims=(None, 0))
    scores = np.empty(len(features), dtype=np.float64)
    for start in range(0, len(features), chunk_size):
        x = devices.to_model(model, features[start:start + chunk_size], dtype)  # chunks go where the model is
        grads = per_item_grads(params, x)
        norms = sum(g.reshape(len(x), -1).norm(dim=1) for g in grads.values())
        scores[start:start + len(x)] = norms.double().cpu().numpy()
    return scores


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
