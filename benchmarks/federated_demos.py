"""Federated learning and model fusion on data with a known answer: synthetic mixed linear regression
and non-IID MNIST federations, and the demos the tests check the methods against.

* Clustered FL (Su, Xu, Yang, "Global Convergence of Federated Learning for Mixed Regression",
  NeurIPS 2022) should recover every client's model: :func:`mixed_linear_regression` deals clients of
  ``k`` linear models, :func:`cluster_agreement` scores the recovered labels, and
  :func:`mnist_clustered_demo` pits it against one FedAvg model (McMahan et al., AISTATS 2017) on
  MNIST clients whose labels are permuted per cluster.
* Model fusion (Choshen et al., "Fusing finetuned models for better pretraining", arXiv:2204.03044,
  2022): :func:`mnist_fusion_demo` fuses MLPs fine-tuned from one base on disjoint MNIST subsets.

    python -m benchmarks.federated_demos     # both MNIST demos, JSON on stdout
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import permutations

import numpy as np
import torch
from torch import nn

from distillery.components.training.federated import (
    Client,
    LocalSGD,
    RoundCallback,
    clustered_fl,
    fedavg,
    load_vector,
    local_update,
    model_at,
    vector_of,
)
from distillery.components.training.fusion import fuse_finetuned

DEMO_SGD = LocalSGD(epochs=1, lr=0.1)  # the clients' local training in the clustered-FL demo


# ------------------------------------------------------------------------- synthetic mixed regression

def half_mse(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``mean((f(x) − y)²) / 2`` for a model with one output ``(n, 1)`` and targets ``(n,)``."""
    return (output.reshape(-1) - y).pow(2).mean() / 2


def mixed_linear_regression(k: int, d: int, n_clients: int, n_per_client: int, noise: float = 0.1,
                            seed: int = 0) -> tuple[list[Client], np.ndarray, torch.Tensor]:
    """Clients of a mixture of ``k`` linear models: ``y = x·θ*_{c_i} + noise``, ``x ~ N(0, I_d)``.

    Returns:
        ``(clients, true_labels (n_clients,), true_thetas (k, d))``; clients are split evenly over
        the models in shuffled order.
    """
    generator = torch.Generator().manual_seed(seed)
    true_thetas = torch.randn(k, d, generator=generator)
    labels = np.random.default_rng(seed).permutation(np.arange(n_clients) % k)
    clients = []
    for c in labels:
        x = torch.randn(n_per_client, d, generator=generator)
        y = x @ true_thetas[c] + noise * torch.randn(n_per_client, generator=generator)
        clients.append(Client(x, y))
    return clients, labels, true_thetas


def linear_model(d: int) -> nn.Module:
    """``f(x) = x·θ`` (no bias) with ``θ = 0``: the common start of the mixed-regression clients."""
    model = nn.Linear(d, 1, bias=False)
    nn.init.zeros_(model.weight)
    return model


def cluster_agreement(predicted: Sequence[int], truth: Sequence[int]) -> tuple[float, tuple[int, ...]]:
    """Fraction of clients labelled correctly under the best relabelling of the predicted clusters.

    Returns ``(accuracy, permutation)`` with ``permutation[j]`` the true cluster of predicted cluster j.
    Brute force over ``k!`` relabellings (k is small here).
    """
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    k = int(max(predicted.max(), truth.max())) + 1
    best = max(permutations(range(k)), key=lambda p: (np.asarray(p)[predicted] == truth).mean())
    return float((np.asarray(best)[predicted] == truth).mean()), tuple(best)


# ------------------------------------------------------------------------------------ MNIST demos

def _mnist(data_dir: str, seed: int, test_size: int = 1000):
    import json
    from pathlib import Path

    from benchmarks.spsa_mnist import load_mnist

    x, y = load_mnist(data_dir)
    meta = json.loads((Path(data_dir) / "dataset.json").read_text())
    order = np.random.default_rng(seed).permutation(len(x))
    return (torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long), meta,
            order[test_size:], order[:test_size])


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


def mnist_cluster_clients(x: torch.Tensor, y: torch.Tensor, rows: np.ndarray, k: int, anchors_per_cluster: int = 2,
                          anchor_size: int = 300, seed: int = 0) -> tuple[list[Client], np.ndarray, list[int]]:
    """A non-IID MNIST federation with ``k`` real models: cluster ``c`` relabels digit ``y`` as
    ``(y + c) mod 10`` (a label permutation, so no single model fits two clusters).

    Each cluster gets its own share of ``rows``: ``anchors_per_cluster`` anchor clients of
    ``anchor_size`` images of all digits, then five clients holding two digits each
    (0-1, 2-3, ..., 8-9) of the rest. Returns ``(clients, true_clusters, anchor_indices)``.
    """
    rng = np.random.default_rng(seed)
    clients, truth, anchors = [], [], []
    for c, share in enumerate(np.array_split(rng.permutation(rows), k)):
        relabel = lambda r: (y[r] + c) % 10  # noqa: E731 - the cluster's model
        for a in range(anchors_per_cluster):
            part = share[a * anchor_size:(a + 1) * anchor_size]
            anchors.append(len(clients))
            clients.append(Client(x[part], relabel(part)))
            truth.append(c)
        rest = share[anchors_per_cluster * anchor_size:]
        for pair in range(5):
            part = rest[np.isin(y[rest].numpy(), [2 * pair, 2 * pair + 1])]
            clients.append(Client(x[part], relabel(part)))
            truth.append(c)
    return clients, np.asarray(truth), anchors


def mnist_clustered_demo(data_dir: str = "data/mnist", k: int = 2, rounds: int = 10, seed: int = 0,
                         sgd: LocalSGD = DEMO_SGD, callback: RoundCallback | None = None) -> dict:
    """Clustered FL vs one FedAvg model on the federation of :func:`mnist_cluster_clients`.

    Each client's model (its cluster's, or the single global one) is scored on 1,000 held-out images
    labelled by the client's own cluster; accuracies are averaged over clients weighted by ``n_i``.
    """
    from distillery.components.core import models

    x, y, meta, train_rows, test_rows = _mnist(data_dir, seed)
    clients, truth, anchors = mnist_cluster_clients(x, y, train_rows, k, seed=seed)
    torch.manual_seed(seed)
    template = models.build("mlp", meta)
    start = vector_of(template)
    result = clustered_fl(template, clients, k, nn.functional.cross_entropy, rounds, sgd, anchors,
                          anchor_sgd=LocalSGD(10, sgd.lr, sgd.batch_size), init=start, seed=seed, callback=callback)
    # the baseline gets as many local epochs in all as the anchors' and refinement rounds together
    single = fedavg(template, clients, nn.functional.cross_entropy, rounds + 10, sgd, init=start, seed=seed)
    xt, yt = x[test_rows], y[test_rows]
    weights = [c.n for c in clients]

    def score(theta_of_client) -> float:
        return float(np.average([_accuracy(model_at(template, theta_of_client(i)), xt, (yt + truth[i]) % 10)
                                 for i in range(len(clients))], weights=weights))

    agreement, _ = cluster_agreement(result.labels, truth)
    return {"clients": len(clients), "k": k, "cluster_label_accuracy": agreement,
            "labels": result.labels.tolist(), "true_clusters": truth.tolist(),
            "clustered_accuracy": score(lambda i: result.thetas[result.labels[i]]),
            "fedavg_accuracy": score(lambda i: single)}


def mnist_fusion_demo(data_dir: str = "data/mnist", n_models: int = 3, subset_size: int = 400,
                      base_labels: int = 100, epochs: int = 5, seed: int = 0) -> dict:
    """Fuse MLPs fine-tuned from one base (trained on ``base_labels`` images) on ``n_models`` disjoint
    subsets; held-out accuracy of the base, each fine-tuned model, their mean and the fused model."""
    from distillery.components.core.train import train_classifier

    x, y, meta, train_rows, test_rows = _mnist(data_dir, seed)
    base_rows = train_rows[:base_labels]
    base = train_classifier(x[base_rows].numpy(), y[base_rows].numpy(), meta, "mlp", {}, 15, 1e-3, 32, seed)
    subsets = np.array_split(train_rows[base_labels:base_labels + n_models * subset_size], n_models)
    generator = torch.Generator().manual_seed(seed)
    sgd = LocalSGD(epochs=epochs, lr=0.05)

    def finetune(model: nn.Module, i: int) -> nn.Module:
        client = Client(x[subsets[i]], y[subsets[i]])
        load_vector(model, local_update(model, vector_of(model), client, nn.functional.cross_entropy, sgd,
                                        generator))
        return model.eval()

    fused, finetuned = fuse_finetuned(base, finetune, n_models)
    xt, yt = x[test_rows], y[test_rows]
    individual = [_accuracy(m, xt, yt) for m in finetuned]
    return {"base_accuracy": _accuracy(base, xt, yt), "individual_accuracy": individual,
            "mean_individual_accuracy": float(np.mean(individual)), "fused_accuracy": _accuracy(fused, xt, yt)}


if __name__ == "__main__":
    import json

    print(json.dumps({"clustered_fl": mnist_clustered_demo(), "fusion": mnist_fusion_demo()}, indent=2))
