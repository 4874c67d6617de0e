"""BALD with Monte-Carlo dropout.

BALD (Houlsby, Huszár, Ghahramani & Lengyel, "Bayesian Active Learning for Classification and
Preference Learning", arXiv 1112.5745, 2011) scores an item by the mutual information between its
label and the model parameters. Gal, Islam & Ghahramani ("Deep Bayesian Active Learning with Image
Data", ICML 2017) estimate it with T stochastic forward passes, dropout left on (MC dropout):

    p_t = softmax(f(x; dropout mask t))                  t = 1..T, each (K,)
    BALD(x) = H[mean_t p_t] - mean_t H[p_t]              H[p] = -sum_c p_c log p_c

Shapes: pool features ``(N, D)`` are streamed in chunks of ``(C, D)`` (``C = pool.chunk_size``);
each chunk gives T passes of ``(C, K)`` probabilities, reduced on the fly to two ``(C,)`` / ``(C, K)``
running sums, so memory stays at one chunk's activations whatever N and T are. Scores are ``(N,)``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from distillery.components.core import devices
from distillery.components.selection.strategies import Strategy


class BALD(Strategy):
    """Mutual information ``H[mean p] - mean H[p]`` over ``mc_passes`` MC-dropout passes.

    Only dropout modules are put in train mode; every other module (batch norm included) stays in
    eval mode, so the passes differ by their dropout masks alone. Torch's RNG is seeded from the
    strategy's seed inside a forked RNG state (reproducible, and the caller's torch RNG is untouched),
    and the model is left in eval mode afterwards, also when a pass fails.

    Args:
        seed: seeds the dropout masks.
        mc_passes: T, the number of stochastic forward passes per item.
    """

    name = "bald"

    def __init__(self, seed: int = 0, mc_passes: int = 10):
        self.seed = seed
        self.mc_passes = mc_passes

    def score(self, pool, rng):
        import torch

        if pool.model is None or pool.features is None:
            raise ValueError("BALD needs the model and the pool features")
        if isinstance(self.mc_passes, bool) or not isinstance(self.mc_passes, (int, np.integer)) \
                or self.mc_passes < 1:
            raise ValueError(f"mc_passes must be a positive integer, got {self.mc_passes!r}")
        model = pool.model
        dropouts = dropout_modules(model)
        if not dropouts:
            raise ValueError(f"BALD needs a model with dropout layers (MC dropout); {type(model).__name__} "
                             f"has none (build the mlp with dropout > 0, or use small_cnn)")
        prefix, suffix = split_at_first_dropout(model)
        seed = int(rng.integers(2 ** 63 - 1))
        scores = np.empty(len(pool), dtype=np.float64)
        device = devices.model_device(model)
        # the masks are drawn where the model runs: fork that device's generator too
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(seed)
            try:
                model.eval()
                for module in dropouts:
                    module.train()
                for start in range(0, len(pool), pool.chunk_size):
                    x = devices.to_model(model, pool.features[start:start + pool.chunk_size])
                    with devices.autocast(device):
                        scores[start:start + len(x)] = mc_mutual_information(prefix, suffix, x, self.mc_passes)
            finally:
                model.eval()
        return scores


def dropout_modules(model: Any) -> list:
    """Every dropout module of ``model`` (``nn.Dropout``, ``Dropout2d``, ``AlphaDropout``, ...)."""
    from torch.nn.modules.dropout import _DropoutNd

    return [m for m in model.modules() if isinstance(m, _DropoutNd)]


def split_at_first_dropout(model: Any) -> tuple[Any, Any]:
    """``(prefix, suffix)`` with ``suffix(prefix(x)) == model(x)`` and no dropout in ``prefix``.

    In eval mode everything before the first dropout is deterministic, so MC dropout needs it once
    per chunk, not T times: for the 64-128-10 MLP this skips T-1 of the T first-layer matmuls, the
    bulk of the FLOPs. Only a chain of plain ``nn.Sequential`` modules can be cut safely (a custom
    ``forward`` could do anything); any other model gets an empty prefix and runs whole T times.
    """
    from torch import nn

    leaves = list(_sequential_leaves(model))
    cut = next((i for i, m in enumerate(leaves) if dropout_modules(m)), None)  # first leaf holding dropout
    if not cut:  # no dropout, or dropout in the very first leaf: nothing deterministic to share
        return nn.Identity(), model
    return nn.Sequential(*leaves[:cut]), nn.Sequential(*leaves[cut:])


def _sequential_leaves(module: Any):
    from torch import nn

    if type(module) is nn.Sequential:  # subclasses may override forward: treat them as leaves
        for child in module:
            yield from _sequential_leaves(child)
    else:
        yield module


def mc_mutual_information(prefix: Any, suffix: Any, x: Any, passes: int) -> np.ndarray:
    """BALD ``(C,)`` for one chunk ``x`` ``(C, D)``: ``passes`` stochastic passes of ``suffix``.

    The T passes run one after another on the whole chunk rather than on a ``(T*C, D)`` stacked
    copy: with chunks of thousands of rows each pass is already a large, BLAS-efficient matmul, so
    stacking only multiplies the activation memory by T (and adds a copy) without saving time on CPU.
    Sums are kept in float64: BALD is a small difference of two entropies near log K.
    """
    import torch

    hidden = prefix(x)
    sum_probs = None
    sum_entropy = torch.zeros(len(x), dtype=torch.float64, device=hidden.device)
    for _ in range(passes):
        log_probs = suffix(hidden).log_softmax(-1).double()
        probs = log_probs.exp()
        sum_probs = probs if sum_probs is None else sum_probs + probs
        sum_entropy -= (probs * log_probs).sum(-1)  # log_softmax keeps 0 * log 0 finite
    mean_probs = sum_probs / passes
    entropy_of_mean = torch.special.entr(mean_probs).sum(-1)
    # mutual information is >= 0; rounding can leave -1e-16 where all passes agree
    return (entropy_of_mean - sum_entropy / passes).clamp_min(0.0).cpu().numpy()
