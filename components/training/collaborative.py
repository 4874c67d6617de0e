"""Training-stage methods where several workers, clients or models train one teacher.

Each is glue between the training task (:func:`distillery.components.training.tasks.run_training`: the standard
signature, a model of ``arch`` built by :func:`distillery.components.core.models.build` coming back) and the
algorithms of :mod:`distillery.components.training.spsa`, :mod:`distillery.components.training.federated` and
:mod:`distillery.components.training.fusion`:

* ``spsa_finetune`` (Zelikman et al., "Just One Byte (per gradient)", 2023): train ``arch`` with Adam,
  then fine-tune it with shared-randomness SPSA in ``workers`` real processes, each on its own shard
  of the labelled set, exchanging one byte per projected gradient; every worker must end with
  bit-identical weights (sha256 compared every round and on the saved weights).
* ``federated`` (FedAvg, McMahan et al. 2017; FedProx, Li et al. 2020; clustered FL, Su, Xu & Yang,
  NeurIPS 2022): the labelled set dealt to ``clients`` non-IID clients (few classes each); one model
  by FedAvg/FedProx, or with ``clusters`` k > 1 the k cluster models of clustered FL, of which the one
  serving the most data comes back.
* ``fusion`` (Choshen et al., "Fusing finetuned models for better pretraining", 2022): a base trained
  on the labelled set, ``models`` copies fine-tuned on different random subsets, their weights averaged.

Parameters are checked before any training starts. With an MLflow run active (the training task's),
each logs what it did: SPSA's per-worker bytes and hash agreement, federated per-client losses and
cluster labels, fusion's per-model accuracies.
"""
from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import torch
from torch import nn

from distillery.components.core import devices
from distillery.components.core.models import build
from distillery.components.core.train import (
    accuracy,
    cross_entropy,
    fit,
    train_classifier,
)


def _active_mlflow():
    """The mlflow module if the caller has an MLflow run open, else None (never imports mlflow)."""
    mlflow = sys.modules.get("mlflow")
    return mlflow if mlflow is not None and mlflow.active_run() else None


def _progress(message: str) -> None:
    from distillery.components.core.tracking import progress

    progress(message)


def spsa_finetune(features, labels, meta: dict, arch: str, arch_kwargs: dict, epochs: int, lr: float,
                  batch_size: int, seed: int, on_epoch=None, *, workers: int = 2, rounds: int = 100,
                  samples_per_worker: int = 8, spsa_lr: float = 5e-3, epsilon: float = 1e-3,
                  timeout_s: float = 3600.0) -> nn.Module:
    """``arch`` trained as :func:`train_classifier` does, then SPSA-fine-tuned by ``workers`` processes.

    ``batch_size`` is also the number of examples behind each projected gradient; ``rounds``,
    ``samples_per_worker`` (bytes each worker sends per round), ``spsa_lr``, ``epsilon`` configure
    :class:`~distillery.components.training.spsa.SPSAConfig`; ``timeout_s`` bounds the worker launch.

    Raises:
        ValueError: bad parameters (before training).
        WeightMismatchError: the workers' weights differ (a worker names which).
    """
    from distillery.components.training import spsa

    features, labels = np.asarray(features, dtype=np.float32), np.asarray(labels)
    if workers < 1 or rounds < 1:
        raise ValueError(f"spsa_finetune needs workers >= 1 and rounds >= 1, got workers={workers}, rounds={rounds}")
    if len(labels) < workers:
        raise ValueError(f"{len(labels)} labelled items cannot give each of {workers} workers a shard")
    config = spsa.SPSAConfig(samples_per_worker=samples_per_worker, batch_size=batch_size, lr=spsa_lr,
                             eps=epsilon, seed=seed)
    model = train_classifier(features, labels, meta, arch, arch_kwargs, epochs, lr, batch_size, seed, on_epoch)
    # The SPSA workers exchange bytes over gloo and step on the CPU (their agreement is checked by
    # hashing weights, which must be computed the same way everywhere): the fine-tuning is CPU work.
    model = model.cpu()
    mlflow = _active_mlflow()
    order = np.random.default_rng(seed).permutation(len(labels))  # shards: every workers-th row of a shuffle
    with tempfile.TemporaryDirectory(prefix="spsa-finetune-") as tmp:
        base = os.path.join(tmp, "base.pt")
        torch.save(model.state_dict(), base)
        job = spsa.SPSAJob(spsa.MnistModel(meta, arch, dict(arch_kwargs), base),
                           spsa.InMemoryShards(features[order], labels[order], workers), config, out_dir=tmp)
        run = spsa.launch([spsa.Epoch(rounds, tuple(range(workers)))], job,
                          spsa.mlflow_callback() if mlflow else None, timeout_s=timeout_s)
        saved = {}
        for worker, report in sorted(run.workers.items()):
            model.load_state_dict(torch.load(report.state_path, weights_only=True))
            saved[worker] = spsa.weights_hash(model)
            if saved[worker].hex() != report.hashes[-1][1]:
                raise spsa.WeightMismatchError(f"worker {worker} saved other weights than it last reported")
    spsa.check_agreement(saved, f"after round {rounds - 1} (saved weights)")
    if not run.hashes_agree():
        raise spsa.WeightMismatchError("the workers' per-round weight hashes differ")
    summary = spsa.summarise(run)
    if mlflow:
        spsa.log_summary(run)
        mlflow.set_tag("distillery.spsa_weights_hash", saved[0].hex())
    _progress(f"SPSA: {workers} workers x {rounds} rounds, {summary['bytes_per_step_spsa']:.0f} bytes per worker "
              f"per step ({summary['ratio']:.0f}x below fp32 gradients), weights agree ({saved[0].hex()[:12]})")
    return model.eval()


def federated(features, labels, meta: dict, arch: str, arch_kwargs: dict, epochs: int, lr: float,
              batch_size: int, seed: int, on_epoch=None, *, clients: int = 10, rounds: int = 20,
              local_epochs: int = 1, mu: float = 0.0, clusters: int = 1) -> nn.Module:
    """``arch`` trained by ``clients`` simulated non-IID clients (local SGD, step ``lr``, batches of
    ``batch_size``), ``rounds`` rounds of FedAvg (``mu = 0``) or FedProx (``mu > 0``).

    ``clusters`` k > 1 runs clustered FL: each client's first local estimate takes ``epochs`` epochs
    (``epochs`` is unused when k = 1); the returned model is the cluster model serving the most items.
    ``on_epoch(round, mean client loss)`` follows the rounds.
    """
    from distillery.components.training import federated as fl

    if devices.current().device.type != "cpu":  # a simulation of many clients: one CPU process holds them all
        _progress(f"federated: the clients are simulated on the CPU (the stage's device {devices.current().device} "
                  "is not used)")
    if clusters < 1 or rounds < 1:
        raise ValueError(f"federated needs clusters >= 1 and rounds >= 1, got clusters={clusters}, rounds={rounds}")
    if clients < clusters:
        raise ValueError(f"clients ({clients}) must be >= clusters ({clusters}): every cluster needs a client")
    sgd = fl.LocalSGD(local_epochs, lr, batch_size, mu)  # refuses mu < 0
    anchor_sgd = fl.LocalSGD(epochs, lr, batch_size) if clusters > 1 else None
    x, y = torch.as_tensor(np.asarray(features), dtype=torch.float32), torch.as_tensor(np.asarray(labels))
    federation = [fl.Client(x[rows], y[rows].long()) for rows in fl.label_sorted_shards(y.numpy(), clients, seed=seed)]
    mlflow = _active_mlflow()
    log_round = fl.mlflow_callback("federated_") if mlflow else None

    def callback(r: int, metrics: dict) -> None:
        if on_epoch:
            on_epoch(r, metrics["mean_loss"])
        if log_round:
            log_round(r, metrics)

    torch.manual_seed(seed)
    template = build(arch, meta, **arch_kwargs)
    loss = nn.functional.cross_entropy
    if clusters == 1:
        return fl.model_at(template, fl.fedavg(template, federation, loss, rounds, sgd, seed=seed, callback=callback))
    result = fl.clustered_fl(template, federation, clusters, loss, rounds, sgd, anchor_sgd=anchor_sgd, seed=seed,
                             callback=callback)
    items = [sum(c.n for c, j in zip(federation, result.labels) if j == k) for k in range(clusters)]
    served = int(np.argmax(items))
    if mlflow:
        mlflow.log_dict({"client_cluster": result.labels.tolist(), "client_items": [c.n for c in federation],
                         "cluster_items": items, "returned_cluster": served}, "federated/clusters.json")
    _progress(f"clustered FL: clients per cluster {np.bincount(result.labels, minlength=clusters).tolist()}, "
              f"returning cluster {served} ({items[served]} of {len(y)} items)")
    return fl.model_at(template, result.thetas[served])


def fusion(features, labels, meta: dict, arch: str, arch_kwargs: dict, epochs: int, lr: float, batch_size: int,
           seed: int, on_epoch=None, *, models: int = 3, subset_fraction: float = 0.5,
           finetune_epochs: int = 5) -> nn.Module:
    """A base ``arch`` trained as :func:`train_classifier` does; ``models`` copies fine-tuned (Adam,
    ``finetune_epochs``) each on its own random ``subset_fraction`` of the labelled set; their average."""
    from distillery.components.training.fusion import fuse_finetuned

    if models < 1 or finetune_epochs < 1:
        raise ValueError(f"fusion needs models >= 1 and finetune_epochs >= 1, got {models}, {finetune_epochs}")
    if not 0 < subset_fraction <= 1:
        raise ValueError(f"subset_fraction must be in (0, 1], got {subset_fraction}")
    base = train_classifier(features, labels, meta, arch, arch_kwargs, epochs, lr, batch_size, seed, on_epoch)
    x, y = torch.as_tensor(np.asarray(features), dtype=torch.float32), torch.as_tensor(np.asarray(labels)).long()
    size = max(1, round(subset_fraction * len(y)))

    def finetune(model: nn.Module, i: int) -> nn.Module:
        rows = torch.as_tensor(np.random.default_rng([seed, i]).choice(len(y), size, replace=False))
        return fit(model, (x[rows], y[rows]), cross_entropy, finetune_epochs, lr, batch_size, seed + 1 + i)

    fused, finetuned = fuse_finetuned(base, finetune, models)
    if mlflow := _active_mlflow():  # accuracy on the labelled set: how far fusion sits from its parts
        mlflow.log_metrics({"fusion_base_accuracy": accuracy(base, x, y.numpy()),
                            "fusion_fused_accuracy": accuracy(fused, x, y.numpy()),
                            **{f"fusion_finetuned_accuracy_{i}": accuracy(m, x, y.numpy())
                               for i, m in enumerate(finetuned)}})
    return fused
