"""Shared-randomness SPSA on MNIST: the demo job the tests and ``spsa_bytes.py`` fine-tune, and its
command line.

Zelikman et al., "Just One Byte (per gradient)", arXiv:2306.10015, 2023. :func:`prepare_mnist_job`
briefly trains a base model with Adam on a few labels and returns an
:class:`~distillery.components.training.spsa.SPSAJob` that fine-tunes it with SPSA on other images, split
into worker shards read from the dataset folder (:class:`ArrayShards`).

    python -m benchmarks.spsa_mnist                                 # spawns --workers processes
    torchrun --nproc-per-node 2 -m benchmarks.spsa_mnist            # one membership epoch, torchrun's group
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distillery.components.training.spsa import (
    EnvRendezvous,
    Epoch,
    MnistModel,
    Shard,
    SPSAConfig,
    SPSAJob,
    launch,
    run_worker,
)


@dataclass
class ArrayShards:
    """Picklable ``shard_fn``: worker ``w`` gets rows ``rows[w % n_shards :: n_shards]`` of a dataset folder."""

    data_dir: str
    rows: np.ndarray
    n_shards: int

    def __call__(self, worker_id: int) -> Shard:
        x, y = load_mnist(self.data_dir)
        mine = self.rows[worker_id % self.n_shards::self.n_shards]
        return Shard(torch.as_tensor(x[mine], dtype=torch.float32), torch.as_tensor(y[mine], dtype=torch.long))


def load_mnist(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(N, 784)`` and labels ``(N,)`` of a dataset folder in the work tree (no DVC needed)."""
    from distillery.components.core.datasets import read_raw

    x, y, _ = read_raw(lambda name, mode: open(Path(data_dir) / name, mode))
    return x, y


def prepare_mnist_job(data_dir: str | Path, out_dir: str | Path, arch: str = "mlp", arch_kwargs: dict | None = None,
                      base_labels: int = 100, base_epochs: int = 15, finetune_size: int = 2000, n_shards: int = 2,
                      config: SPSAConfig | None = None, seed: int = 0,
                      train_base: bool = True) -> tuple[SPSAJob, np.ndarray]:
    """A base model briefly trained (Adam) on ``base_labels`` labelled images, and a job that fine-tunes
    it with SPSA on ``finetune_size`` other images split into ``n_shards`` worker shards.

    ``train_base=False`` skips the base (for workers that will receive it from a peer).

    Returns:
        ``(job, held_out_rows)``: rows of the dataset used neither for the base nor for fine-tuning.
    """
    import json

    from distillery.components.core.train import train_classifier

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = json.loads((data_dir / "dataset.json").read_text())
    x, y = load_mnist(data_dir)
    order = np.random.default_rng(seed).permutation(len(x))
    base_rows, tune_rows = order[:base_labels], order[base_labels:base_labels + finetune_size]
    kwargs = dict(arch_kwargs or {})
    base_state = None
    if train_base:
        base = train_classifier(x[base_rows], y[base_rows], meta, arch, kwargs, base_epochs, 1e-3, 32, seed)
        base_state = str(out_dir / "base.pt")
        torch.save(base.state_dict(), base_state)
    job = SPSAJob(MnistModel(meta, arch, kwargs, base_state), ArrayShards(str(data_dir), tune_rows, n_shards),
                  config or SPSAConfig(seed=seed), out_dir=str(out_dir))
    return job, order[base_labels + finetune_size:]


# ----------------------------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    """Fine-tune the MNIST MLP with SPSA: ``torchrun --nproc-per-node 2 -m benchmarks.spsa_mnist``
    (one membership epoch, torchrun's group), or without torchrun (spawns ``--workers`` processes)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--data", default="data/mnist")
    parser.add_argument("--out", default=".distillery/spsa")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--samples-per-worker", type=int, default=SPSAConfig.samples_per_worker)
    parser.add_argument("--lr", type=float, default=SPSAConfig.lr)
    args = parser.parse_args(argv)
    config = SPSAConfig(samples_per_worker=args.samples_per_worker, lr=args.lr)
    under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ
    world = int(os.environ.get("WORLD_SIZE", args.workers))
    rank = int(os.environ.get("RANK", 0))
    # under torchrun only rank 0 trains the base; the others receive it by broadcast when they meet
    out = Path(args.out) / (f"rank-{rank}" if under_torchrun else "")
    job, _ = prepare_mnist_job(args.data, out, n_shards=world, config=config, train_base=rank == 0)
    plan = [Epoch(args.rounds, tuple(range(world)))]
    if under_torchrun:
        torch.set_num_threads(1)
        report = run_worker(rank, plan, job, EnvRendezvous(), holders=[0])
        reports = {report.worker: report}
    else:
        reports = launch(plan, job).workers
    for r in reports.values():
        print(json.dumps({"worker": r.worker, "rounds": len(r.rounds), "shard_loss_first": r.shard_losses[0][1],
                          "shard_loss_last": r.shard_losses[-1][1], "final_hash": r.hashes[-1][1][:16],
                          "bytes": r.bytes, "full_gradient_bytes_per_step": 4 * r.parameters}))
    return 0


if __name__ == "__main__":
    # the job's classes travel to the worker processes by name: use them from the importable module
    from benchmarks.spsa_mnist import main as _main

    raise SystemExit(_main())
