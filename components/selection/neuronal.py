"""NeurOnAl: active learning with an exploitation and an exploration network.

Ban, Zhang, Agarwal, Tong & He, "Neural Active Learning Beyond Bandits", ICLR 2024 (no official
repository; the paper's Algorithms 1 and 2 give the formulas implemented here).

- Exploitation net ``f1``: ``D -> hidden -> K`` (ReLU), trained with MSE on one-hot labels of the
  labelled set.
- Exploration net ``f2``: its input ``phi(x)`` is the gradient of ``sum_k f1(x)_k`` w.r.t. all of
  ``f1``'s parameters, flattened and mean-pooled in blocks of ``block`` values; output K; trained
  with MSE on the residual ``onehot(y) - f1(x)``, i.e. it learns where ``f1`` is wrong.
- Score ``u(x) = f1(x) + f2(phi(x)) / (t + 1)`` ``(K,)``, ``t`` = labels so far.
- Stream version: query ``x`` when ``u_top1 - u_top2 < gamma``.
- Pool version ("gap-inverse" sampling): ``w_i = u_top1 - u_top2``, ``w_hat = min w``,
  ``p_i = w_hat / (mu w_hat + gamma (w_i - w_hat))`` for every other point, the arg-min gets the rest.

Both networks are retrained from scratch at every query on the current labelled set (the selection
step has no oracle, so unlike the paper's online loop they are not updated between the items of one
batch). Inputs are standardised with the labelled set's per-feature mean and standard deviation (see
:class:`Standardiser`), so raw pixels (0..255), digits (0..16) and tabular features all reach ``f1``
on a unit scale.
"""
from __future__ import annotations

import numpy as np

from distillery.components.selection.pool import Pool
from distillery.components.selection.strategies import Strategy, top_k

#: mini-batch size of the Adam updates; a labelled set up to this size is trained full-batch.
TRAIN_BATCH = 128
#: floats of per-sample gradients materialised at once by :func:`gradient_features` (16 MiB: larger
#: chunks fall out of the CPU cache and measured slower).
GRADIENT_FLOATS = 2 ** 22
#: stream items whose gaps are computed at once by :func:`stream_queries`.
STREAM_WINDOW = 1024


# --- networks ---------------------------------------------------------------------------------


class Standardiser:
    """Per-feature ``(x - mean) / scale`` fitted on the labelled features ``(L, D)``.

    ``scale`` is the feature's standard deviation, floored at a tenth of the root-mean-square
    standard deviation over all features: a feature that is (nearly) constant on the labelled set,
    such as an MNIST border pixel, would otherwise blow a pool item's input up by orders of magnitude.
    """

    def __init__(self, labelled: np.ndarray):
        labelled = np.asarray(labelled, dtype=np.float64)
        self.mean = labelled.mean(axis=0)
        std = labelled.std(axis=0)
        overall = float(np.sqrt(np.mean(std ** 2)))
        self.scale = np.maximum(std, 0.1 * overall) if overall > 0 else np.ones_like(std)

    def __call__(self, features: np.ndarray):
        import torch

        return torch.as_tensor((np.asarray(features, dtype=np.float64) - self.mean) / self.scale,
                               dtype=torch.float32)


def mlp(inputs: int, hidden: int, outputs: int):
    """``inputs -> hidden -> outputs`` with a ReLU, the shape of both NeurOnAl networks."""
    from torch import nn

    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


def fit_mse(net, x, target, epochs: int, lr: float) -> None:
    """Train ``net`` in place: Adam on the MSE between ``net(x)`` ``(L, K)`` and ``target`` ``(L, K)``.

    Mini-batches of :data:`TRAIN_BATCH`, reshuffled each epoch from torch's global RNG (the caller
    seeds it).
    """
    import torch

    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(TRAIN_BATCH):
            optimiser.zero_grad()
            torch.nn.functional.mse_loss(net(x[batch]), target[batch]).backward()
            optimiser.step()
    net.eval()


def block_mean_pool(flat, block: int):
    """Mean of each run of ``block`` consecutive values: ``(N, P) -> (N, ceil(P / block))``.

    The last block averages the ``P mod block`` values it has (not padded with zeros), so every
    output is a plain mean of gradient entries.
    """
    import torch

    n, p = flat.shape
    full = p // block
    pooled = flat[:, :full * block].reshape(n, full, block).mean(dim=2)
    if p % block:
        pooled = torch.cat([pooled, flat[:, full * block:].mean(dim=1, keepdim=True)], dim=1)
    return pooled


def gradient_features(net, x, block: int):
    """``phi(x)`` ``(N, ceil(P / block))``: per-sample gradients of ``sum_k net(x)_k`` w.r.t. all ``P``
    parameters of ``net`` (in ``named_parameters`` order, each flattened), block-mean-pooled.

    Computed with ``torch.func`` (``vmap`` over ``grad``), in chunks of rows so that at most
    :data:`GRADIENT_FLOATS` gradient values exist at once.
    """
    import torch
    from torch.func import functional_call, grad, vmap

    params = {name: value.detach() for name, value in net.named_parameters()}
    total = sum(value.numel() for value in params.values())

    def summed_output(parameters, row):
        return functional_call(net, parameters, (row.unsqueeze(0),)).sum()

    per_sample = vmap(grad(summed_output), in_dims=(None, 0))
    chunk = max(1, GRADIENT_FLOATS // total)
    pooled = []
    for start in range(0, len(x), chunk):
        grads = per_sample(params, x[start:start + chunk])
        flat = torch.cat([g.reshape(len(g), -1) for g in grads.values()], dim=1)
        pooled.append(block_mean_pool(flat, block))
    return torch.cat(pooled) if pooled else torch.zeros(0, -(-total // block))


def top_two_gap(u: np.ndarray) -> np.ndarray:
    """``u_top1 - u_top2`` ``(N,)`` of scores ``u`` ``(N, K)``, ``K >= 2``."""
    top2 = np.partition(u, u.shape[1] - 2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


# --- gap-inverse sampling (pool version) ------------------------------------------------------


def gap_inverse_probabilities(gaps: np.ndarray, mu: float, gamma: float) -> np.ndarray:
    """NeurOnAl's sampling distribution ``(N,)`` over items with top-two gaps ``gaps`` ``(N,)`` (>= 0).

    ``p_i = w_hat / (mu w_hat + gamma (w_i - w_hat))`` for every item with ``w_i > w_hat = min w``; the
    items at the minimum get the rest of the mass. Edge cases, decided here:

    - ties at the minimum: the rest is shared equally among them (the paper's single arg-min would
      depend on the pool's order);
    - ``w_hat == 0``: the formula gives every other item ``0``, so the zero-gap items share all the mass;
    - large pools: each other item gets at most ``1 / mu``, so with more than about ``mu`` items their
      mass reaches 1 and the rest would be ``<= 0``. The minimum items then get ``1 / mu`` each (their own
      formula value, so they stay the most likely) and the whole vector is renormalised to sum to 1;
      the others keep their relative weights. The same floor applies whenever the rest would fall
      below ``m / mu`` (``m`` items at the minimum), which keeps ``p`` continuous across the switch.
    """
    return _gap_inverse(_checked_gaps(gaps, mu, gamma), mu, gamma)


def _checked_gaps(gaps: np.ndarray, mu: float, gamma: float) -> np.ndarray:
    w = np.asarray(gaps, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0:
        raise ValueError(f"gaps must be a non-empty (N,) array, got shape {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("gaps must be finite and >= 0 (top-two gaps)")
    _check_positive(mu=mu, gamma=gamma)
    return w


def _gap_inverse(w: np.ndarray, mu: float, gamma: float) -> np.ndarray:
    w_hat = w.min()
    at_min = w == w_hat
    p = np.zeros_like(w)
    # w_hat == 0 needs no branch: the numerator is 0 and the denominator gamma * w_i > 0
    p[~at_min] = w_hat / (mu * w_hat + gamma * (w[~at_min] - w_hat))
    ties = int(at_min.sum())
    p[at_min] = max(1.0 - p.sum(), ties / mu) / ties
    return p / p.sum()


def gap_inverse_sample(gaps: np.ndarray, k: int, mu: float, gamma: float,
                       rng: np.random.Generator) -> np.ndarray:
    """``k`` distinct positions drawn one at a time without replacement; before each draw ``p`` is
    recomputed by :func:`gap_inverse_probabilities` over the items not drawn yet (so ``w_hat`` is the
    smallest remaining gap). Each draw is O(N) numpy work."""
    w = _checked_gaps(gaps, mu, gamma)
    if not 1 <= k <= len(w):
        raise ValueError(f"cannot draw {k} distinct items from {len(w)}")
    alive = np.ones(len(w), dtype=bool)
    chosen = np.empty(k, dtype=np.int64)
    for i in range(k):
        remaining = np.flatnonzero(alive)
        chosen[i] = remaining[_draw(_gap_inverse(w[remaining], mu, gamma), rng)]
        alive[chosen[i]] = False
    return chosen


def _draw(p: np.ndarray, rng: np.random.Generator) -> int:
    """One index with probability ``p`` (inverse CDF; never an index with ``p == 0``)."""
    cumulative = np.cumsum(p)
    j = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return min(j, int(np.flatnonzero(p > 0)[-1]))


# --- stream version ---------------------------------------------------------------------------


def stream_queries(exploit: np.ndarray, explore: np.ndarray, t0: int, gamma: float, budget: int,
                   order: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Walk the items in ``order`` and query each whose gap ``u_top1 - u_top2 < gamma``.

    Args:
        exploit: ``f1(x)`` ``(N, K)``; explore: ``f2(phi(x))`` ``(N, K)``.
        t0: labels before the stream starts; ``t`` grows by one after each query, which shrinks the
            exploration term ``f2 / (t + 1)`` of the items that come later.
        order: ``(N,)`` permutation, the arrival order.
        budget: labels to spend (``<= N``).
    Returns:
        ``(positions (budget,), gaps (N,))``: queried positions in query order, then, if the stream
        ended with budget left, the unqueried items with the smallest gaps (the pipeline needs exactly
        ``budget`` items). ``gaps[i]`` is the gap item ``i`` had when it was offered; items after the
        last query (never offered once the budget was spent) get their gap at the final ``t``.
    """
    n = len(order)
    gaps = np.empty(n)
    queried: list[int] = []
    t, pos = t0, 0
    while pos < n and len(queried) < budget:
        window = order[pos:pos + STREAM_WINDOW]
        g = top_two_gap(exploit[window] + explore[window] / (t + 1))
        hits = np.flatnonzero(g < gamma)
        stop = int(hits[0]) + 1 if len(hits) else len(window)
        gaps[window[:stop]] = g[:stop]
        if len(hits):
            queried.append(int(window[stop - 1]))
            t += 1
        pos += stop
    rest = order[pos:]
    gaps[rest] = top_two_gap(exploit[rest] + explore[rest] / (t + 1))
    positions = np.asarray(queried, dtype=np.int64)
    if len(positions) < budget:
        unqueried = np.setdiff1d(np.arange(n), positions)
        fill = unqueried[top_k(-gaps[unqueried], budget - len(positions), rng)]
        positions = np.concatenate([positions, fill])
    return positions, gaps


# --- strategies -------------------------------------------------------------------------------


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                or not np.isfinite(value) or value <= 0:
            raise ValueError(f"NeurOnAl: {name} must be a finite number > 0, got {value!r}")


def _check_count(minimum: int, **values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"NeurOnAl: {name} must be an integer >= {minimum}, got {value!r}")


class _NeurOnAl(Strategy):
    """Shared machinery: train ``f1`` and ``f2`` on the labelled set and score the pool.

    Args:
        hidden: width of both networks' hidden layer.
        block: gradient values averaged into one input of ``f2``.
        epochs: Adam epochs of each network.
        lr: Adam learning rate.
    """

    def __init__(self, seed: int = 0, hidden: int = 100, block: int = 51, epochs: int = 100, lr: float = 0.01):
        super().__init__(seed)
        self.hidden = hidden
        self.block = block
        self.epochs = epochs
        self.lr = lr

    def outputs(self, pool: Pool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(f1(x), f2(phi(x)))``, both ``(N, K)`` float64, with networks trained on the labelled set.

        Torch's global RNG is seeded from ``rng`` inside ``fork_rng``, so the result is reproducible
        and the caller's torch RNG state is left untouched.
        """
        import torch

        _check_count(1, hidden=self.hidden, block=self.block)
        _check_count(0, epochs=self.epochs)
        _check_positive(lr=self.lr)
        labels, k = _labelled(pool)
        scale = Standardiser(pool.labelled_features)
        seed = int(rng.integers(2 ** 31))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            x_lab, x_pool = scale(pool.labelled_features), scale(pool.features)
            onehot = torch.nn.functional.one_hot(torch.as_tensor(labels), k).float()
            f1 = mlp(x_lab.shape[1], self.hidden, k)
            fit_mse(f1, x_lab, onehot, self.epochs, self.lr)
            phi_lab = gradient_features(f1, x_lab, self.block)
            with torch.no_grad():
                residual = onehot - f1(x_lab)
            f2 = mlp(phi_lab.shape[1], self.hidden, k)
            fit_mse(f2, phi_lab, residual, self.epochs, self.lr)
            with torch.no_grad():
                exploit = f1(x_pool)
                explore = f2(gradient_features(f1, x_pool, self.block))
        return exploit.double().numpy(), explore.double().numpy()


def _labelled(pool: Pool) -> tuple[np.ndarray, int]:
    """The labelled set's labels ``(L,)`` and K, or a ``ValueError`` saying what NeurOnAl lacks."""
    if pool.features is None:
        raise ValueError("NeurOnAl trains its own networks on raw features: the pool needs features (N, D)")
    if pool.num_labelled == 0 or pool.labelled_features is None or len(pool.labelled_features) == 0:
        raise ValueError("NeurOnAl needs labelled items: its exploitation network f1 is trained on the "
                         "labelled set (start the loop with a random batch)")
    labels = pool.labelled_labels
    try:
        k = pool.num_classes
    except ValueError:  # no model and no precomputed outputs: the labels are all we know
        k = int(labels.max()) + 1
    if k < 2:
        raise ValueError(f"NeurOnAl ranks the gap between the two top classes: it needs K >= 2, got {k}")
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"labelled labels must lie in [0, {k}), got {labels.min()}..{labels.max()}")
    return labels, k


class NeurOnAlPool(_NeurOnAl):
    """NeurOnAl, pool version: draw the batch by gap-inverse sampling (:func:`gap_inverse_sample`).

    Args:
        mu, gamma: gap-inverse parameters (paper: around 1,000); larger ``gamma / mu`` concentrates
            the draw on small gaps.
    Returns from ``select``: positions in draw order and scores ``-w`` ``(N,)`` (small gap = more
    informative).
    """

    name = "neuronal_pool"

    def __init__(self, seed: int = 0, hidden: int = 100, block: int = 51, epochs: int = 100, lr: float = 0.01,
                 mu: float = 1000.0, gamma: float = 1000.0):
        super().__init__(seed, hidden, block, epochs, lr)
        self.mu = mu
        self.gamma = gamma

    def pick(self, pool, batch_size, rng):
        _check_positive(mu=self.mu, gamma=self.gamma)
        exploit, explore = self.outputs(pool, rng)
        gaps = top_two_gap(exploit + explore / (pool.num_labelled + 1))
        return gap_inverse_sample(gaps, batch_size, self.mu, self.gamma, rng), -gaps


class NeurOnAlStream(_NeurOnAl):
    """NeurOnAl, stream version: the pool arrives in a seeded random order; query an item when its
    gap ``u_top1 - u_top2 < gamma`` until ``batch_size`` labels are spent (:func:`stream_queries`).

    If the stream ends with budget left, the batch is filled with the unqueried items of smallest gap,
    because the pipeline contract requires exactly ``batch_size`` distinct items.

    Args:
        gamma: query threshold on the gap (paper: about 0.3 to 0.7).
    Returns from ``select``: positions in query order (then the fill) and scores ``-gap`` ``(N,)``.
    """

    name = "neuronal_stream"

    def __init__(self, seed: int = 0, hidden: int = 100, block: int = 51, epochs: int = 100, lr: float = 0.01,
                 gamma: float = 0.5):
        super().__init__(seed, hidden, block, epochs, lr)
        self.gamma = gamma

    def pick(self, pool, batch_size, rng):
        _check_positive(gamma=self.gamma)
        exploit, explore = self.outputs(pool, rng)
        order = rng.permutation(len(pool))
        positions, gaps = stream_queries(exploit, explore, pool.num_labelled, self.gamma, batch_size, order, rng)
        return positions, -gaps
