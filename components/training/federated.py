"""Federated learning: FedAvg, FedProx and clustered FL over simulated clients.

* **FedAvg** (McMahan, Moore, Ramage, Hampson, Agüera y Arcas, "Communication-Efficient Learning of
  Deep Networks from Decentralized Data", AISTATS 2017) and **FedProx** (Li, Sahu, Zaheer, Sanjabi,
  Talwalkar, Smith, "Federated Optimization in Heterogeneous Networks", MLSys 2020): each round every
  client refines the server model with local SGD on ``L_i(θ) + μ/2 ‖θ − θ_server‖²`` (μ = 0: FedAvg) and
  the server averages the results weighted by the clients' sample counts ``n_i``.
* **Clustered FL** (Su, Xu, Yang, "Global Convergence of Federated Learning for Mixed Regression",
  NeurIPS 2022). Every client ``i`` holds ``n_i`` samples from one of ``k`` unknown models. Phase 1:
  anchor clients fit local estimates from a common start; k-means on those estimates gives ``k`` coarse
  models (each the ``n_i``-weighted mean of its anchors). Phase 2, each round: every client picks the
  model with the lowest local loss, ``j_i = argmin_j L_i(θ_j)``, refines it with local SGD on
  ``L_i(θ) + μ/2 ‖θ − θ_j‖²``, and the server sets each ``θ_j = Σ_{i: j_i = j} n_i θ_i / Σ n_i``. The
  output is the ``k`` models and a cluster label per client.

The clients here are simulated in one process: that is the algorithm (what the server and each client
compute, and what they exchange: models, never data). Each client's update reads only its own data and
the model the server sent it, so putting a transport between them changes no number.

Models travel as flat parameter vectors ``θ`` of shape ``(P,)`` (``parameters_to_vector`` order); one
template ``nn.Module`` evaluates any of them. Model fusion is :mod:`distillery.components.training.fusion`;
synthetic federations and MNIST demos are ``benchmarks/federated_demos.py``.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (model output, targets) -> scalar
RoundCallback = Callable[[int, dict], None]  # (round, metrics)


@dataclass
class Client:
    """One client's private data: inputs ``(n_i, ...)`` and targets ``(n_i, ...)``."""

    x: torch.Tensor
    y: torch.Tensor

    @property
    def n(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class LocalSGD:
    """How a client trains locally: ``epochs`` passes of mini-batch SGD with step ``lr``, plus the
    FedProx term ``μ/2 ‖θ − θ_start‖²`` (``mu = 0`` is FedAvg's plain local objective)."""

    epochs: int = 1
    lr: float = 0.1
    batch_size: int = 32
    mu: float = 0.0

    def __post_init__(self):
        if self.mu < 0:
            raise ValueError(f"FedProx mu must be >= 0 (it weighs a squared distance), got {self.mu}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"need epochs >= 1, batch_size >= 1, lr > 0; got {self}")


# ------------------------------------------------------------------------------------ client side

def vector_of(model: nn.Module) -> torch.Tensor:
    """The model's parameters as one detached vector ``(P,)``."""
    return parameters_to_vector(model.parameters()).detach().clone()


def load_vector(model: nn.Module, theta: torch.Tensor) -> list[nn.Parameter]:
    """Put ``theta`` ``(P,)`` into ``model``'s parameters and return them.

    Copies first: ``vector_to_parameters`` makes the parameters *views* of the vector, so training
    the model in place would otherwise overwrite the caller's ``theta`` (e.g. the server's model).
    """
    params = list(model.parameters())
    vector_to_parameters(theta.detach().clone(), params)
    return params


def model_at(model: nn.Module, theta: torch.Tensor) -> nn.Module:
    """A copy of the template ``model`` holding parameters ``theta`` ``(P,)``, in eval mode."""
    copied = copy.deepcopy(model)
    load_vector(copied, theta)
    return copied.eval()


@torch.no_grad()
def local_losses(model: nn.Module, thetas: torch.Tensor, client: Client, loss_fn: LossFn) -> torch.Tensor:
    """``L_i(θ_j)`` for every candidate ``θ_j`` in ``thetas`` ``(k, P)``: ``(k,)``, on all of the client's data."""
    model.eval()
    losses = []
    for theta in thetas:
        load_vector(model, theta)
        losses.append(float(loss_fn(model(client.x), client.y)))
    return torch.tensor(losses)


def local_update(model: nn.Module, theta: torch.Tensor, client: Client, loss_fn: LossFn, sgd: LocalSGD,
                 generator: torch.Generator) -> torch.Tensor:
    """The client's refinement of the server model ``theta`` ``(P,)``: returns its new ``θ_i`` ``(P,)``.

    Plain SGD written out (no optimiser object): the proximal gradient ``μ(θ − θ_start)`` is added
    in closed form, and thousands of tiny steps skip ``torch.optim``'s per-step overhead.
    """
    if client.n == 0:
        raise ValueError("a client with no data cannot train")
    params = load_vector(model, theta)
    starts = [p.detach().clone() for p in params]
    model.train()
    for _ in range(sgd.epochs):
        order = torch.randperm(client.n, generator=generator)
        for begin in range(0, client.n, sgd.batch_size):
            rows = order[begin:begin + sgd.batch_size]
            grads = torch.autograd.grad(loss_fn(model(client.x[rows]), client.y[rows]), params)
            with torch.no_grad():
                for p, g, p0 in zip(params, grads, starts):
                    if sgd.mu:
                        g = g + sgd.mu * (p - p0)
                    p.sub_(g, alpha=sgd.lr)
    return vector_of(model)


# ------------------------------------------------------------------------------------ server side

def weighted_average(thetas: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """``Σ w_i θ_i / Σ w_i`` over rows of ``thetas`` ``(m, P)``; accumulated in float64."""
    w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1, 1)
    return ((thetas.double() * w).sum(0) / w.sum()).to(thetas.dtype)


def kmeans(points: torch.Tensor, k: int, seed: int = 0, restarts: int = 10,
           iterations: int = 100) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding on ``points`` ``(A, P)``; the best of ``restarts``
    by within-cluster sum of squares. Returns labels ``(A,)``."""
    points = points.double()
    generator = torch.Generator().manual_seed(seed)
    best, best_cost = None, float("inf")
    for _ in range(restarts):
        centres = points[torch.randint(len(points), (1,), generator=generator)]
        while len(centres) < k:  # k-means++: next centre drawn with probability ∝ squared distance
            d2 = torch.cdist(points, centres).min(1).values.pow(2)
            pick = torch.multinomial(d2 / d2.sum(), 1, generator=generator) if d2.sum() > 0 else \
                torch.randint(len(points), (1,), generator=generator)
            centres = torch.cat([centres, points[pick]])
        for _ in range(iterations):
            labels = torch.cdist(points, centres).argmin(1)
            moved = torch.stack([points[labels == j].mean(0) if (labels == j).any() else centres[j]
                                 for j in range(k)])
            if torch.equal(moved, centres):
                break
            centres = moved
        cost = float(torch.cdist(points, centres).min(1).values.pow(2).sum())
        if cost < best_cost:
            best, best_cost = labels, cost
    return best.numpy()


def coarse_estimates(estimates: torch.Tensor, weights: Sequence[float], k: int,
                     seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """k-means on the anchors' local estimates ``(A, P)``.

    Returns:
        ``(thetas (k, P), anchor_labels (A,))``: each model is the ``n_i``-weighted mean of its anchors.
    """
    if len(estimates) < k:
        raise ValueError(f"{len(estimates)} anchor clients cannot seed k={k} clusters; need at least k")
    labels = kmeans(estimates, k, seed)
    weights = np.asarray(weights, dtype=float)
    if empty := [j for j in range(k) if not (labels == j).any()]:
        raise ValueError(f"k-means left cluster(s) {empty} without anchors: the anchors' estimates hold "
                         f"fewer than k={k} distinct models")
    thetas = torch.stack([weighted_average(estimates[labels == j], weights[labels == j]) for j in range(k)])
    return thetas, labels


@dataclass
class ClusteredFLResult:
    """``thetas`` ``(k, P)``: the cluster models; ``labels`` ``(n_clients,)``: each client's cluster;
    ``anchor_labels``: the k-means labels of the anchors; ``history``: each round's metrics."""

    thetas: torch.Tensor
    labels: np.ndarray
    anchor_labels: np.ndarray
    anchors: list[int]
    history: list[dict] = field(default_factory=list)


def assign(model: nn.Module, thetas: torch.Tensor, clients: Sequence[Client],
           loss_fn: LossFn) -> tuple[np.ndarray, torch.Tensor]:
    """Each client's choice ``argmin_j L_i(θ_j)``: labels ``(n,)`` and the losses ``(n, k)``."""
    losses = torch.stack([local_losses(model, thetas, c, loss_fn) for c in clients])
    return losses.argmin(1).numpy(), losses


def federated_round(model: nn.Module, thetas: torch.Tensor, clients: Sequence[Client], labels: np.ndarray,
                    loss_fn: LossFn, sgd: LocalSGD, generator: torch.Generator) -> torch.Tensor:
    """One round: every client refines its cluster's model; the server averages per cluster by ``n_i``.

    A cluster that no client chose keeps its model. Returns the new ``thetas`` ``(k, P)``.
    """
    new = thetas.clone()
    for j in range(len(thetas)):
        members = [i for i in range(len(clients)) if labels[i] == j]
        if members:
            updates = torch.stack([local_update(model, thetas[j], clients[i], loss_fn, sgd, generator)
                                   for i in members])
            new[j] = weighted_average(updates, [clients[i].n for i in members])
    return new


def _check(clients: Sequence[Client], k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(clients) < k:
        raise ValueError(f"{len(clients)} clients cannot form k={k} clusters; need at least k clients")
    if empty := [i for i, c in enumerate(clients) if c.n == 0]:
        raise ValueError(f"client(s) {empty} hold no data")


def clustered_fl(model: nn.Module, clients: Sequence[Client], k: int, loss_fn: LossFn, rounds: int = 10,
                 sgd: LocalSGD = LocalSGD(), anchors: Sequence[int] | None = None,
                 anchor_sgd: LocalSGD | None = None, init: torch.Tensor | None = None, seed: int = 0,
                 callback: RoundCallback | None = None) -> ClusteredFLResult:
    """Clustered FL of Su, Xu & Yang (2022): anchor k-means, then loss-based assignment + FedAvg/FedProx.

    Args:
        model: template; its current parameters are the common start ``θ_0`` unless ``init`` ``(P,)``.
        clients: the clients' data.
        k: number of models to recover.
        rounds: refinement rounds (assign, local update, per-cluster average).
        sgd: local training of the refinement rounds (``sgd.mu > 0`` is FedProx).
        anchors: indices of the anchor clients (default: all clients); they need enough data each for a
            meaningful local estimate.
        anchor_sgd: local training that produces the anchors' estimates from ``θ_0`` (default ``sgd``
            with 20 epochs and no proximal term).
        callback: ``callback(round, metrics)`` after each round: ``loss_client_<i>`` (its loss under the
            model it chose), ``cluster_size_<j>``, ``mean_loss``.

    Returns:
        :class:`ClusteredFLResult`; clusters are numbered as k-means numbered the anchors' clusters.
    """
    _check(clients, k)
    anchors = list(range(len(clients))) if anchors is None else list(anchors)
    if len(anchors) < k:
        raise ValueError(f"{len(anchors)} anchor clients cannot seed k={k} clusters; need at least k")
    anchor_sgd = anchor_sgd or LocalSGD(20, sgd.lr, sgd.batch_size, 0.0)
    generator = torch.Generator().manual_seed(seed)
    start = vector_of(model) if init is None else init.detach().clone()
    estimates = torch.stack([local_update(model, start, clients[i], loss_fn, anchor_sgd, generator)
                             for i in anchors])
    thetas, anchor_labels = coarse_estimates(estimates, [clients[i].n for i in anchors], k, seed)
    history = []
    for r in range(rounds):
        labels, _ = assign(model, thetas, clients, loss_fn)
        thetas = federated_round(model, thetas, clients, labels, loss_fn, sgd, generator)
        history.append(_round_metrics(model, thetas, clients, loss_fn, labels, k))
        if callback:
            callback(r, history[-1])
    labels, _ = assign(model, thetas, clients, loss_fn)
    return ClusteredFLResult(thetas, labels, anchor_labels, anchors, history)


def fedavg(model: nn.Module, clients: Sequence[Client], loss_fn: LossFn, rounds: int = 10,
           sgd: LocalSGD = LocalSGD(), init: torch.Tensor | None = None, seed: int = 0,
           callback: RoundCallback | None = None) -> torch.Tensor:
    """One global model by FedAvg (FedProx when ``sgd.mu > 0``), from ``θ_0``: returns ``θ`` ``(P,)``."""
    _check(clients, 1)
    generator = torch.Generator().manual_seed(seed)
    thetas = (vector_of(model) if init is None else init.detach().clone()).unsqueeze(0)
    labels = np.zeros(len(clients), dtype=int)
    for r in range(rounds):
        thetas = federated_round(model, thetas, clients, labels, loss_fn, sgd, generator)
        if callback:
            callback(r, _round_metrics(model, thetas, clients, loss_fn, labels, 1))
    return thetas[0]


def _round_metrics(model, thetas, clients, loss_fn, labels, k) -> dict:
    losses = [float(local_losses(model, thetas[labels[i]:labels[i] + 1], c, loss_fn)[0])
              for i, c in enumerate(clients)]
    metrics = {f"loss_client_{i}": loss for i, loss in enumerate(losses)}
    metrics.update({f"cluster_size_{j}": float((labels == j).sum()) for j in range(k)})
    metrics["mean_loss"] = float(np.average(losses, weights=[c.n for c in clients]))
    return metrics


def mlflow_callback(prefix: str = "") -> RoundCallback:
    """Log each round's metrics (per client: ``loss_client_<i>``) to the active MLflow run, step = round."""
    import mlflow

    return lambda r, metrics: mlflow.log_metrics({f"{prefix}{k}": v for k, v in metrics.items()}, step=r)


def label_sorted_shards(labels: Sequence[int], n_clients: int, shards_per_client: int = 2,
                        seed: int = 0) -> list[np.ndarray]:
    """A non-IID federation of one labelled set (McMahan et al. 2017): rows sorted by label (ties in
    seeded random order) are cut into ``n_clients * shards_per_client`` contiguous shards, and each
    client gets ``shards_per_client`` of them at random, so it holds only a few classes.

    Returns each client's row indices (every client non-empty).
    """
    labels = np.asarray(labels)
    n_shards = n_clients * shards_per_client
    if n_clients < 1 or shards_per_client < 1:
        raise ValueError(f"need n_clients >= 1 and shards_per_client >= 1, got {n_clients}, {shards_per_client}")
    if len(labels) < n_shards:
        raise ValueError(f"{len(labels)} items cannot fill {n_clients} clients x {shards_per_client} shards; "
                         f"need at least {n_shards} items")
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(labels))
    shards = np.array_split(shuffled[np.argsort(labels[shuffled], kind="stable")], n_shards)
    owners = rng.permutation(n_shards).reshape(n_clients, shards_per_client)
    return [np.concatenate([shards[s] for s in mine]) for mine in owners]
