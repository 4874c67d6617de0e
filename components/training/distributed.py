"""Data-parallel training: PyTorch DistributedDataParallel under torchrun.

Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training", VLDB 2020
(DDP: replicated model, bucketed gradient all-reduce overlapped with the backward pass).

Two halves:

* the **worker entrypoint**, ``python -m distillery.components.training.distributed`` (one process), or
  ``torchrun --nproc-per-node N -m distillery.components.training.distributed ...`` (N ranks; the Kubernetes
  TrainJob in ``k8s/training/trainjob.yaml`` runs the same module). Every rank runs the
  single-process training code, :func:`distillery.components.core.train.train_classifier` /
  :func:`~distillery.components.core.train.fit`, with ``distributed=True``: each global batch is
  sharded over the ranks and DDP all-reduces the gradients, so N processes train the same model
  as one process with the same global batch (see ``train.py``). Backend: NCCL when CUDA is
  available (one GPU per local rank), else gloo on CPU. Inputs and outputs are files:

  - ``--data train.npz`` with ``features`` ``(N, D)`` float32, ``labels`` ``(N,)`` int64 and
    ``meta`` (the dataset's ``dataset.json`` as a JSON string); or ``--dataset data/mnist
    [--repo URL] [--rev REV]``, every row of a DVC-versioned dataset;
  - ``--out model.pt``: the trained model, :func:`distillery.components.core.models.save` format,
    written by rank 0 (atomically);
  - ``--checkpoint-dir DIR``: checkpoints every ``--checkpoint-every`` epochs, resumed from on
    restart (:mod:`distillery.components.core.checkpoint`);
  - progress on stdout; one machine-readable line per event, ``DISTILLERY_METRICS {json}``
    (also appended to ``--metrics-out``), with the per-worker loss, sample count and time.
  - every option may instead be set in the environment as ``DISTILLERY_TRAIN_<OPTION>``
    (``DISTILLERY_TRAIN_CHECKPOINT_DIR=...``), how the TrainJob configures it;
  - ``--mlflow-experiment NAME`` (standalone / cluster use): rank 0 also logs the run to
    ``MLFLOW_TRACKING_URI``: parameters, per-epoch and per-worker metrics, system metrics and
    the model file.

* the **launcher**, :func:`train_data_parallel` (the ``ddp`` training method): writes the inputs
  to a temporary folder, runs ``torchrun --standalone`` as a subprocess (from a KFP task, for
  instance), streams the workers' progress lines, hands the metrics to callbacks and loads the
  model; on failure it raises :class:`DistributedTrainingError` with the tail of the workers'
  output.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from distillery.components.core import devices

METRICS_PREFIX = "DISTILLERY_METRICS "
ENV_PREFIX = "DISTILLERY_TRAIN_"
ROOT = Path(__file__).resolve().parents[2]  # the project, so `-m components...` imports in every rank


class DistributedTrainingError(RuntimeError):
    """torchrun or one of its workers failed; the message carries the tail of their output."""


class RendezvousError(RuntimeError):
    """A rank could not join the process group (master unreachable, other ranks missing)."""


# ----------------------------------------------------------------------------------------------
# Metrics records: one schema for the launcher, the metrics file and MLflow.

def epoch_metrics(record: dict) -> dict[str, float]:
    """MLflow metrics of one epoch record: ``train_loss`` and, per worker ``r``,
    ``train_loss_rank{r}``, ``samples_rank{r}``, ``epoch_seconds_rank{r}``, ``samples_per_second_rank{r}``."""
    metrics = {"train_loss": record["train_loss"]}
    for w in record["workers"]:
        r = w["rank"]
        metrics[f"train_loss_rank{r}"] = w["loss"]
        metrics[f"samples_rank{r}"] = w["samples"]
        metrics[f"epoch_seconds_rank{r}"] = w["seconds"]
        metrics[f"samples_per_second_rank{r}"] = w["samples"] / w["seconds"] if w["seconds"] > 0 else 0.0
    return metrics


# ----------------------------------------------------------------------------------------------
# Launcher (runs in the calling process, e.g. a KFP task)

def train_data_parallel(features, labels, meta: dict, arch: str, arch_kwargs: dict, epochs: int, lr: float,
                        batch_size: int, seed: int, on_epoch: Callable[[int, float], None] | None = None, *,
                        nproc_per_node: int = 2, checkpoint_every: int = 1, checkpoint_dir: str | Path | None = None,
                        max_restarts: int = 0, timeout: float = 300.0,
                        on_workers: Callable[[int, list[dict]], None] | None = None,
                        on_record: Callable[[dict], None] | None = None,
                        on_line: Callable[[str], None] | None = print,
                        extra_args: list[str] | None = None):
    """Train ``arch`` with cross-entropy on ``(features, labels)`` with ``nproc_per_node`` DDP ranks.

    Same arguments and result as :func:`distillery.components.core.train.train_classifier`;
    ``batch_size`` is the global batch (each rank takes ``batch_size / nproc_per_node`` of it).

    Args:
        features: ``(N, D)`` raw features; labels: ``(N,)`` class indices.
        checkpoint_dir: where checkpoints live (resumed from if it holds one of this training);
            default: a temporary folder, which still lets ``max_restarts`` resume inside this call.
        max_restarts: how often torchrun restarts all workers after a failure (each restart
            resumes from the newest checkpoint).
        timeout: seconds a rank waits to join the process group, and for any collective.
        on_workers: ``(epoch, [{"rank", "loss", "samples", "seconds"}, ...])`` after each epoch.
        on_record: every metrics record as it arrives (start, epoch, done).
        on_line: each line of the workers' output that is not a metrics record.
        extra_args: more entrypoint arguments (tests: ``--crash-after-epoch``).
    Returns:
        the trained model (CPU, eval mode).
    """
    from distillery.components.core import models

    if not isinstance(nproc_per_node, int) or isinstance(nproc_per_node, bool) or nproc_per_node < 1:
        raise ValueError(f"nproc_per_node must be an integer >= 1, got {nproc_per_node!r}")
    _check_batch(batch_size, nproc_per_node)
    if len(features) != len(labels):
        raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
    placement = devices.current()
    if placement.device.type == "cuda":
        import torch

        if nproc_per_node > torch.cuda.device_count():
            raise ValueError(f"nproc_per_node {nproc_per_node} on device cuda needs one GPU per process; this machine "
                             f"has {torch.cuda.device_count()}")
    with tempfile.TemporaryDirectory(prefix="distillery-ddp-") as tmp:
        tmp = Path(tmp)
        data, out = tmp / "train.npz", tmp / "model.pt"
        np.savez(data, features=np.asarray(features, dtype=np.float32), labels=np.asarray(labels, dtype=np.int64),
                 meta=np.array(json.dumps(meta, sort_keys=True)))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={nproc_per_node}", f"--max-restarts={max_restarts}",
                   "-m", "distillery.components.training.distributed",
                   "--data", str(data), "--out", str(out), "--arch", arch, "--arch-kwargs", json.dumps(arch_kwargs),
                   "--epochs", str(epochs), "--lr", repr(float(lr)), "--batch-size", str(batch_size),
                   "--seed", str(seed), "--checkpoint-dir", str(checkpoint_dir or tmp / "checkpoints"),
                   "--checkpoint-every", str(checkpoint_every), "--timeout", str(timeout),
                   # the task's placement: every rank on the CPU, or rank r on cuda:r
                   "--device", placement.device.type, "--precision", placement.precision, *(extra_args or [])]
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        # torchrun shares its rendezvous store with the workers by default; after a restart
        # (max_restarts) workers can then read the previous attempt's addresses and fail to connect
        # (pytorch/pytorch#135712, #167288). A fresh store per attempt avoids that.
        env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
        # torchrun pins every worker to 1 thread when it starts more than one; share the cores instead.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc_per_node)))
        tail: collections.deque[str] = collections.deque(maxlen=40)
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   bufsize=1, env=env, cwd=ROOT)
        try:
            assert process.stdout is not None
            for line in process.stdout:
                line = line.rstrip("\n")
                at = line.find(METRICS_PREFIX)
                if at >= 0:
                    if at > 0:  # another process's unterminated output in front of the record
                        tail.append(line[:at])
                        if on_line:
                            on_line(line[:at])
                    record = json.loads(line[at + len(METRICS_PREFIX):])
                    if on_record:
                        on_record(record)
                    if record.get("event") == "epoch":
                        if on_epoch:
                            on_epoch(record["epoch"], record["train_loss"])
                        if on_workers:
                            on_workers(record["epoch"], record["workers"])
                    continue
                tail.append(line)
                if on_line:
                    on_line(line)
            rc = process.wait()
        except BaseException:
            process.kill()  # never leave workers behind when the caller is interrupted
            process.wait()
            raise
        if rc != 0 or not out.is_file():
            raise DistributedTrainingError(
                f"data-parallel training failed: torchrun with {nproc_per_node} process(es) exited with code {rc}. "
                "Last lines of the workers' output:\n" + "\n".join(tail))
        return models.load(str(out))


def _check_batch(batch_size: int, world: int) -> None:
    if not isinstance(batch_size, int) or batch_size < world:
        # Fewer rows than ranks would leave a rank idle in every step: a config mistake, not a plan.
        raise ValueError(f"the global batch_size ({batch_size!r}) must be an integer >= the number of "
                         f"processes ({world}); it is split across them (a remainder is spread one row "
                         f"at a time over the first ranks)")


# ----------------------------------------------------------------------------------------------
# Worker entrypoint (runs in every rank)

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m distillery.components.training.distributed",
                                description="Train a classifier; under torchrun, data-parallel (DDP).")
    src = p.add_mutually_exclusive_group()  # one is required: checked after the environment is read
    src.add_argument("--data", help="npz with features (N, D), labels (N,), meta (dataset.json as a string)")
    src.add_argument("--dataset", help="a DVC dataset folder, e.g. data/mnist (every row is trained on)")
    p.add_argument("--repo", default=".", help="git repository holding --dataset (default: %(default)s)")
    p.add_argument("--rev", default=None, help="git revision of --dataset (default: the working tree)")
    p.add_argument("--out", help="where rank 0 saves the model (models.save format); required")
    p.add_argument("--arch", default="small_cnn")
    p.add_argument("--arch-kwargs", default="{}", help="JSON object of architecture arguments")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=32, help="global batch, split across the ranks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-dir", default=None, help="save/resume checkpoints here (default: none)")
    p.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints")
    p.add_argument("--keep", type=int, default=2, help="complete checkpoints to keep")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--device", choices=devices.DEVICES, default="auto",
                   help="auto: rank r on cuda:r when CUDA is available, else the CPU")
    p.add_argument("--precision", choices=devices.PRECISIONS, default="fp32",
                   help="bf16: forward passes under autocast")
    p.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto",
                   help="auto: nccl on CUDA, else gloo")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds to wait for the process group to form, and for each collective")
    p.add_argument("--metrics-out", default=None, help="also append the metrics records (JSON lines) here")
    p.add_argument("--mlflow-experiment", default=None,
                   help="rank 0 logs a run to MLFLOW_TRACKING_URI in this experiment")
    p.add_argument("--crash-after-epoch", type=int, default=None, help=argparse.SUPPRESS)  # resume tests
    # Every option can also come from the environment, DISTILLERY_TRAIN_<OPTION> (e.g.
    # DISTILLERY_TRAIN_CHECKPOINT_DIR): a TrainJob's command stays `torchrun -m <module>` and its
    # settings live in `env`, where an overlay patches them by name. The command line wins.
    for action in p._actions:
        value = os.environ.get(ENV_PREFIX + action.dest.upper())
        if value is None or not action.option_strings or action.dest == "help":
            continue
        if isinstance(action, argparse._StoreTrueAction):
            action.default = value.strip().lower() in ("1", "true", "yes")
        else:
            action.default = value  # argparse applies `type` to string defaults
    return p


def _load_inputs(args) -> tuple[np.ndarray, np.ndarray, dict]:
    if args.data:
        path = Path(args.data)
        if not path.is_file():
            raise FileNotFoundError(f"--data {path}: no such file")
        with np.load(path, allow_pickle=False) as blob:
            missing = {"features", "labels", "meta"} - set(blob.files)
            if missing:
                raise ValueError(f"--data {path} lacks {sorted(missing)}; it has {sorted(blob.files)}")
            return blob["features"], blob["labels"], json.loads(str(blob["meta"]))
    from distillery.components.core.datasets import read_dataset

    return read_dataset(args.repo, args.dataset, args.rev)


def _validate(args) -> None:
    if bool(args.data) == bool(args.dataset):
        raise SystemExit("give exactly one input: --data FILE.npz or --dataset FOLDER "
                         f"(or {ENV_PREFIX}DATA / {ENV_PREFIX}DATASET)")
    if not args.out:
        raise SystemExit(f"--out (or {ENV_PREFIX}OUT) is required: where to save the model")
    problems = [f"{name} must be {rule}, got {value!r}" for name, value, ok, rule in (
        ("--epochs", args.epochs, args.epochs >= 0, ">= 0"),
        ("--lr", args.lr, args.lr > 0, "> 0"),
        ("--checkpoint-every", args.checkpoint_every, args.checkpoint_every >= 1, ">= 1"),
        ("--keep", args.keep, args.keep >= 1, ">= 1"),
        ("--timeout", args.timeout, args.timeout > 0, "> 0")) if not ok]
    if problems:
        raise SystemExit("; ".join(problems))


def _init_process_group(backend: str, rank: int, world: int, timeout: float) -> None:
    import torch.distributed as dist

    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        # The timeout bounds the rendezvous too: an unreachable master is an error after
        # `timeout` seconds instead of a hang.
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    except (RuntimeError, ValueError) as exc:  # DistNetworkError / DistStoreError are RuntimeErrors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RendezvousError(
            f"rank {rank} of {world} could not join the process group at MASTER_ADDR:MASTER_PORT = {where} "
            f"within {timeout:g} s ({type(exc).__name__}: {first}). Is rank 0 running, is the address "
            f"right and the port open to this node?") from exc


def _write_line(text: str) -> None:
    # All ranks share one stdout pipe: print() writes text and newline separately, so lines of two
    # ranks can interleave. One os.write of a line (<= PIPE_BUF, 4 KiB, is atomic on a pipe) cannot.
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), (text + "\n").encode())


class _Reporter:
    """Rank 0's output: progress lines, metrics records (stdout, file), and MLflow if asked."""

    def __init__(self, rank: int, metrics_out: str | None, mlflow_run: Any = None):
        self.rank, self.metrics_out, self.mlflow = rank, metrics_out, mlflow_run

    def say(self, message: str) -> None:
        _write_line(f"[{time.strftime('%H:%M:%S')}] rank {self.rank}: {message}")

    def record(self, record: dict) -> None:
        if self.rank != 0:
            return
        line = json.dumps(record, sort_keys=True, separators=(",", ":"))
        _write_line(METRICS_PREFIX + line)
        if self.metrics_out:
            with open(self.metrics_out, "a") as fh:
                fh.write(line + "\n")
        if self.mlflow is not None and record["event"] == "epoch":
            import mlflow

            mlflow.log_metrics(epoch_metrics(record), step=record["epoch"])


def _start_mlflow(args, world: int, backend: str):
    import mlflow

    mlflow.enable_system_metrics_logging()
    if "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL" not in os.environ:
        mlflow.set_system_metrics_sampling_interval(5)  # the default, 10 s, misses short runs
    mlflow.set_experiment(args.mlflow_experiment)
    run = mlflow.start_run(run_name=f"train-ddp-{args.arch}", tags={"distillery.world_size": str(world),
                                                                      "distillery.backend": backend})
    mlflow.log_params({"arch": args.arch, "arch_kwargs": args.arch_kwargs, "epochs": args.epochs, "lr": args.lr,
                       "batch_size": args.batch_size, "seed": args.seed, "world_size": world,
                       "data": args.data or f"{args.repo}:{args.dataset}@{args.rev}"})
    return run


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _validate(args)
    import torch

    from distillery.components.core import models
    from distillery.components.core.train import (
        Checkpointing,
        SimulatedCrash,
        train_classifier,
    )

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    distributed = world > 1
    _check_batch(args.batch_size, world)
    try:
        placement = devices.resolve(f"cuda:{local_rank}" if args.device == "cuda" or (
            args.device == "auto" and torch.cuda.is_available()) else "cpu", args.precision)
    except devices.DeviceError as exc:
        raise SystemExit(f"rank {rank}: {exc}") from None
    device = placement.device
    backend = ("nccl" if device.type == "cuda" else "gloo") if args.backend == "auto" else args.backend
    if backend == "nccl" and device.type != "cuda":
        raise SystemExit("--backend nccl needs CUDA (NCCL moves GPU tensors only): use gloo, or --device cuda")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    arch_kwargs = json.loads(args.arch_kwargs)
    if not isinstance(arch_kwargs, dict):
        raise SystemExit(f"--arch-kwargs must be a JSON object, got {args.arch_kwargs!r}")
    if distributed:
        _init_process_group(backend, rank, world, args.timeout)
    mlflow_run = _start_mlflow(args, world, backend) if args.mlflow_experiment and rank == 0 else None
    report = _Reporter(rank, args.metrics_out, mlflow_run)
    status = "FAILED"
    try:
        features, labels, meta = _load_inputs(args)
        report.say(f"{len(features)} samples, global batch {args.batch_size} over {world} process(es) "
                   f"(~{args.batch_size // world} each), backend {backend if distributed else 'none'}, "
                   f"device {device} ({placement.precision}), {torch.get_num_threads()} thread(s)")
        checkpointing = None
        if args.checkpoint_dir:
            digest = hashlib.sha256(np.ascontiguousarray(features).tobytes())
            digest.update(np.ascontiguousarray(labels).tobytes())
            # What must match for a checkpoint to be resumed: the same training on the same data
            # (epochs may grow: resuming can extend a finished run).
            fingerprint = {"arch": args.arch, "arch_kwargs": json.dumps(arch_kwargs, sort_keys=True), "lr": args.lr,
                           "batch_size": args.batch_size, "seed": args.seed, "data_sha256": digest.hexdigest()}
            checkpointing = Checkpointing(args.checkpoint_dir, args.checkpoint_every, args.keep,
                                          not args.no_resume, fingerprint, args.crash_after_epoch)
        started = time.perf_counter()
        report.record({"event": "start", "world_size": world, "backend": backend, "samples": len(features)})

        def on_epoch(epoch: int, loss: float) -> None:
            if rank == 0:
                report.say(f"epoch {epoch + 1}/{args.epochs} loss {loss:.4f}")

        trained = []  # epochs run by this process (fewer than --epochs after a resume)

        def on_workers(epoch: int, workers) -> None:
            trained.append(epoch)
            report.record({"event": "epoch", "epoch": epoch, "epochs": args.epochs,
                           "train_loss": (sum(w.loss * w.samples for w in workers)
                                          / max(1, sum(w.samples for w in workers))),
                           "workers": [vars(w) for w in workers]})

        try:
            with devices.placed(placement):
                model = train_classifier(features, labels, meta, args.arch, arch_kwargs, args.epochs, args.lr,
                                         args.batch_size, args.seed, on_epoch, device=device, distributed=distributed,
                                         checkpointing=checkpointing, on_workers=on_workers)
        except SimulatedCrash as exc:
            report.say(str(exc))
            return 3
        seconds = time.perf_counter() - started
        if rank == 0:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.name}.tmp")
            models.save(model.cpu(), str(tmp), args.arch, meta, arch_kwargs)
            os.replace(tmp, out)  # a reader never sees half a model
            report.record({"event": "done", "seconds": seconds, "model": str(out), "epochs_run": len(trained),
                           "samples_per_second": len(features) * len(trained) / seconds})
            report.say(f"saved {out} after {seconds:.1f} s")
            if mlflow_run is not None:
                import mlflow

                mlflow.log_artifact(str(out))
        if distributed:
            import torch.distributed as dist

            dist.barrier()  # nobody tears the group down while rank 0 is still writing
        status = "FINISHED"
    finally:
        if mlflow_run is not None:
            import mlflow

            mlflow.end_run(status)
        if distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    # @record writes the worker's traceback where torchrun's failure summary can show it.
    sys.exit(record(main)())
