"""Bytes each worker sends per step: shared-randomness SPSA (one byte per projected gradient) vs a
full fp32 gradient exchange of the same model, both counted inside torch.distributed.

For the MNIST MLP and the small CNN of ``distillery.components.core.models``, a base model (briefly
trained on 100 labels) is fine-tuned for real by 2 worker processes over torch.distributed (gloo):

* **SPSA** (``components/training/spsa/``): each worker runs with the job's ``count_collectives`` on,
  so a :class:`~distillery.components.training.spsa.workers.CollectiveCounter` wraps torch.distributed's
  collectives inside the worker process and counts the bytes of every tensor the worker hands to
  them, by purpose: ``gradients`` (the one-byte codes), ``verification`` (the 32-byte weight hash every
  round, plus the opening check) and ``membership`` (the shape handshake: ``all_gather_object``'s size
  exchange and padded pickle, as torch sends them).
* **Full gradient**: the same base model, shards and batch size in the same 2-process gloo setup,
  trained by ``DistributedDataParallel`` with its standard all-reduce comm hook
  (``default_hooks.allreduce_hook``, which calls ``torch.distributed.all_reduce`` on each gradient
  bucket), under the same counter: the fp32 gradient buckets each worker hands to ``all_reduce`` per
  step. ``forward_sync_buffers=False``: the models' only buffers are constant input scalings (synced
  once when DDP starts, outside the counted steps; SPSA does not exchange them either).

Each side runs ``--runs`` times (default 3; SPSA with base seeds 0, 1, 2, the DDP baseline with batch
seeds 0, 1, 2); bytes per step are reported as mean ± std over the runs (deterministic for a fixed
model and ``--samples-per-worker``, so the std is expected to be 0), with the ratio per run. Counts are
at the collective API on both sides: gloo's framing and relaying are not included on either.

    python -m benchmarks.spsa_bytes            # MLP 200 rounds, CNN 20 rounds, 3 runs each (~3-4 min on 2 cores)
    python -m benchmarks.spsa_bytes --quick    # a tenth of the rounds, 1 run
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
WORKERS = 2
# rounds, learning rate: the CNN has 13x the MLP's parameters, so z·g steps are noisier (smaller lr)
MODELS = {"mlp": (200, 1e-2), "small_cnn": (20, 2e-3)}
DDP_LR = 1e-2  # SGD of the full-gradient baseline (its bytes do not depend on it)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the rounds, 1 run")
    parser.add_argument("--runs", type=int, default=3, help="runs of each side per model (seeds 0 .. runs-1)")
    parser.add_argument("--samples-per-worker", type=int, default=8, help="projected gradients per worker per round")
    parser.add_argument("--output", type=Path, help="result JSON (default: benchmarks/results/spsa_bytes.json, "
                                                    "quick/spsa_bytes.json with --quick)")
    args = parser.parse_args(argv)

    import torch

    from benchmarks._results import machine_info, protocol, write_result

    torch.set_num_threads(1)  # the workers are processes; keep the launcher from competing with them
    runs = 1 if args.quick else args.runs
    # quick runs go where benchmarks.report never looks (results/quick/, ignored by git)
    output = args.output or (RESULTS / "quick" if args.quick else RESULTS) / "spsa_bytes.json"
    load_before = os.getloadavg()[0]
    rows = [measure(arch, max(rounds // (10 if args.quick else 1), 2), lr, args.samples_per_worker, runs)
            for arch, (rounds, lr) in MODELS.items()]
    mlp = rows[0]
    result = {
        "benchmark": "spsa_bytes",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(load_before),
        "setup": {"workers": WORKERS, "backend": "gloo", "samples_per_worker": args.samples_per_worker,
                  "counted": "bytes of the tensors each worker hands to torch.distributed's all_gather / "
                             "all_gather_into_tensor / all_reduce / broadcast (source side), counted inside "
                             "torch.distributed by CollectiveCounter; gloo framing and relaying not included",
                  "full_gradient": "DistributedDataParallel (gloo) with default_hooks.allreduce_hook, "
                                   "forward_sync_buffers=False, SGD, same base model, shards and batch size",
                  "models": {arch: {"rounds": rounds // (10 if args.quick else 1), "lr": lr}
                             for arch, (rounds, lr) in MODELS.items()}},
        "workers": WORKERS,
        "samples_per_worker": args.samples_per_worker,
        "models": rows,
        "summary": {
            "model": mlp["model"], "model_parameters": mlp["model_parameters"],
            **{key: mlp[key]["mean"] for key in ("bytes_per_step_spsa", "bytes_per_step_spsa_with_hash",
                                                 "bytes_per_step_full_gradient", "ratio", "ratio_with_hash")},
            "small_cnn_ratio": rows[1]["ratio"]["mean"],
            "all_hashes_agree": all(r["hashes_agree"] for r in rows),
            "spsa_bytes_equal_projected_gradients": all(r["spsa_bytes_equal_projected_gradients"] for r in rows),
            "full_gradient_bytes_equal_4x_parameters": all(r["full_gradient_bytes_equal_4x_parameters"] for r in rows),
            "target_ratio_at_least_1000x": all(min(r["ratio"]["values"]) >= 1000 and
                                               min(r["ratio_with_hash"]["values"]) >= 1000 for r in rows),
            "protocol": protocol(split_sizes={"base_labels": 100, "finetune": 2000, "shards": WORKERS},
                                 model_selection="none", seeds=list(range(runs)), runs=runs),
        },
    }
    return write_result(result, output, print_result, script="benchmarks.spsa_bytes")


# ------------------------------------------------------------------------------------ SPSA side

def spsa_run(job, rounds: int, seed: int) -> dict:
    """One real 2-process SPSA run with the collectives counted; its per-step bytes and reports."""
    from distillery.components.training import spsa

    job = dataclasses.replace(job, config=dataclasses.replace(job.config, seed=seed), count_collectives=True)
    run = spsa.launch([spsa.Epoch(rounds, tuple(range(WORKERS)))], job)
    reports = list(run.workers.values())
    wire = [r.collective_bytes for r in reports]
    return {
        "seed": seed, "rounds": rounds, "wall_s": run.wall_s, "hashes_agree": run.hashes_agree(),
        "collective_bytes_by_worker": {str(r.worker): r.collective_bytes for r in reports},
        "collective_calls_by_worker": {str(r.worker): r.collective_calls for r in reports},
        "worker_accounted_bytes_by_worker": {str(r.worker): r.bytes for r in reports},
        "bytes_per_step": sum(w.get("gradients", 0) for w in wire) / len(wire) / rounds,
        "bytes_per_step_with_hash": sum(w.get("gradients", 0) + w.get("verification", 0) for w in wire)
        / len(wire) / rounds,
        "shard_loss_first": sum(r.shard_losses[0][1] for r in reports) / len(reports),
        "shard_loss_last": sum(r.shard_losses[-1][1] for r in reports) / len(reports),
        "state_path": reports[0].state_path,
    }


# -------------------------------------------------------------------------- full-gradient side

def ddp_run(job, steps: int, seed: int, timeout_s: float = 300.0) -> dict:
    """``steps`` data-parallel SGD steps of ``job``'s model in ``WORKERS`` processes (gloo, DDP with its
    all-reduce hook), the collectives counted as on the SPSA side; the bytes per step each rank sent."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("forkserver")
    queue = ctx.Queue()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ddp-bytes-rdzv-") as rendezvous:
        processes = [ctx.Process(target=_ddp_worker, args=(rank, job, steps, seed, rendezvous, queue), daemon=True)
                     for rank in range(WORKERS)]
        for process in processes:
            process.start()
        results = {}
        try:
            while len(results) < WORKERS:
                rank, payload = queue.get(timeout=timeout_s)
                if isinstance(payload, str):
                    raise RuntimeError(f"DDP baseline rank {rank} failed: {payload}")
                results[rank] = payload
        finally:
            for process in processes:
                process.join(timeout=10)
                if process.is_alive():
                    process.terminate()  # only our own children, by handle
    wire = [results[r]["collective_bytes"] for r in range(WORKERS)]
    return {"seed": seed, "steps": steps, "wall_s": time.perf_counter() - started,
            "parameters": results[0]["parameters"],
            "collective_bytes_by_worker": {str(r): results[r]["collective_bytes"] for r in range(WORKERS)},
            "collective_calls_by_worker": {str(r): results[r]["collective_calls"] for r in range(WORKERS)},
            "bytes_per_step": sum(w.get("gradients", 0) for w in wire) / len(wire) / steps,
            "loss_first": results[0]["losses"][0], "loss_last": results[0]["losses"][-1]}


def _ddp_worker(rank: int, job, steps: int, seed: int, rendezvous: str, queue) -> None:
    import torch

    torch.set_num_threads(1)
    try:
        import torch.distributed as dist
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
        from torch.nn.parallel import DistributedDataParallel

        from distillery.components.training.spsa import CollectiveCounter, FileRendezvous

        FileRendezvous(rendezvous)(0, rank, WORKERS, timedelta(seconds=job.config.timeout_s))
        try:
            model = job.model_fn(rank, True).train()
            ddp = DistributedDataParallel(model, forward_sync_buffers=False)
            ddp.register_comm_hook(None, default_hooks.allreduce_hook)  # None: the default (WORLD) group
            optimiser = torch.optim.SGD(ddp.parameters(), lr=DDP_LR)
            shard, generator = job.shard_fn(rank), torch.Generator().manual_seed(1000 * seed + rank)
            counter, losses = CollectiveCounter(), []
            with counter.installed(), counter.purpose("gradients"):
                for _ in range(steps):
                    x, y = shard.batch(job.config.batch_size, generator)
                    optimiser.zero_grad()
                    loss = job.loss_fn(ddp, x, y)
                    loss.backward()  # DDP's hook all-reduces each gradient bucket here
                    optimiser.step()
                    losses.append(float(loss.detach()))
            queue.put((rank, {"collective_bytes": counter.bytes, "collective_calls": counter.calls,
                              "parameters": sum(p.numel() for p in model.parameters()), "losses": losses}))
        finally:
            dist.destroy_process_group()
    except BaseException as exc:  # report, do not leave the parent waiting
        import traceback

        queue.put((rank, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-2000:]}"))


# --------------------------------------------------------------------------------- the benchmark

def measure(arch: str, rounds: int, lr: float, samples_per_worker: int, runs: int) -> dict:
    """``runs`` real 2-process SPSA fine-tunings of ``arch`` and as many DDP runs of the same job; their
    counted bytes per step (mean ± std over the runs), ratios and losses."""
    import torch

    from benchmarks._results import mean_std
    from benchmarks.spsa_mnist import load_mnist, prepare_mnist_job
    from distillery.components.core.models import predict_proba
    from distillery.components.training import spsa

    config = spsa.SPSAConfig(samples_per_worker=samples_per_worker, lr=lr, eval_every=max(rounds // 4, 1))
    with tempfile.TemporaryDirectory(prefix="spsa-bench-") as tmp:
        job, held_out = prepare_mnist_job(ROOT / "data" / "mnist", tmp, arch=arch, n_shards=WORKERS, config=config)
        x, y = load_mnist(ROOT / "data" / "mnist")
        base = job.model_fn(0, True)
        params = sum(p.numel() for p in base.parameters())

        def accuracy(model) -> float:
            return float((predict_proba(model, x[held_out]).argmax(-1).numpy() == y[held_out]).mean())

        spsa_runs, ddp_runs = [], []
        for seed in range(runs):
            print(f"{arch}: SPSA, {WORKERS} workers x {rounds} rounds, seed {seed} ...", flush=True)
            run = spsa_run(job, rounds, seed)
            finetuned = job.model_fn(0, True)
            finetuned.load_state_dict(torch.load(run.pop("state_path"), weights_only=True))
            run["held_out_accuracy_finetuned"] = accuracy(finetuned)
            spsa_runs.append(run)
            print(f"{arch}: full-gradient DDP baseline, {WORKERS} workers x {rounds} steps, seed {seed} ...",
                  flush=True)
            ddp_runs.append(ddp_run(job, rounds, seed))
        base_accuracy = accuracy(base)

    spsa_bytes = [r["bytes_per_step"] for r in spsa_runs]
    spsa_hash = [r["bytes_per_step_with_hash"] for r in spsa_runs]
    full = [r["bytes_per_step"] for r in ddp_runs]
    per_worker_gradients = [w.get("gradients", 0) for r in spsa_runs for w in r["collective_bytes_by_worker"].values()]
    per_rank_full = [w.get("gradients", 0) for r in ddp_runs for w in r["collective_bytes_by_worker"].values()]
    return {
        "model": arch,
        "rounds": rounds,
        "lr": lr,
        "runs": runs,
        "model_parameters": params,
        "bytes_per_step_spsa": mean_std(spsa_bytes),
        "bytes_per_step_spsa_with_hash": mean_std(spsa_hash),
        "bytes_per_step_full_gradient": mean_std(full),
        "ratio": mean_std([f / s for f, s in zip(full, spsa_bytes)]),
        "ratio_with_hash": mean_std([f / s for f, s in zip(full, spsa_hash)]),
        "spsa_bytes_equal_projected_gradients": all(b == rounds * samples_per_worker for b in per_worker_gradients),
        "spsa_counted_equals_worker_accounting": all(
            r["collective_bytes_by_worker"][w].get("gradients") == r["worker_accounted_bytes_by_worker"][w]["gradients"]
            for r in spsa_runs for w in r["collective_bytes_by_worker"]),
        "full_gradient_bytes_equal_4x_parameters": all(b == rounds * 4 * params for b in per_rank_full),
        "hashes_agree": all(r["hashes_agree"] for r in spsa_runs),
        "shard_loss_first": mean_std([r["shard_loss_first"] for r in spsa_runs]),
        "shard_loss_last": mean_std([r["shard_loss_last"] for r in spsa_runs]),
        "held_out_accuracy_base": base_accuracy,
        "held_out_accuracy_finetuned": mean_std([r["held_out_accuracy_finetuned"] for r in spsa_runs]),
        "wall_s_spsa": mean_std([r["wall_s"] for r in spsa_runs]),
        "wall_s_full_gradient": mean_std([r["wall_s"] for r in ddp_runs]),
        "spsa_runs": spsa_runs,
        "full_gradient_runs": ddp_runs,
    }


def markdown(result: dict) -> str:
    """The README section's table and numbers, from the result JSON alone."""
    from benchmarks.report import pm_stats, source

    s, rows, m = result["summary"], result["models"], result["machine"]
    n = rows[0]["runs"]
    lines = [
        f"{result['workers']} worker processes (gloo), {result['samples_per_worker']} projected gradients per worker "
        f"per round; bytes each worker hands to torch.distributed's collectives per step, counted inside "
        f"torch.distributed in both setups, mean ± std over {n} run{'s' if n != 1 else ''} of each; "
        f"{m['cores']} cores, load {m['load_avg_1min']['before']:.1f} before / {m['load_avg_1min']['after']:.1f} "
        f"after ({source(result, 'spsa_bytes.json')}):",
        "",
        "| model | parameters | SPSA B/step | SPSA + hash B/step | full gradient B/step (DDP all-reduce) "
        "| ratio | ratio with hash | held-out acc. base → SPSA |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['model_parameters']:,} | {pm_stats(r['bytes_per_step_spsa'], ',.0f')} "
            f"| {pm_stats(r['bytes_per_step_spsa_with_hash'], ',.1f')} "
            f"| {pm_stats(r['bytes_per_step_full_gradient'], ',.0f')} "
            f"| {pm_stats(r['ratio'], ',.0f')}x | {pm_stats(r['ratio_with_hash'], ',.0f')}x "
            f"| {r['held_out_accuracy_base']:.3f} → {pm_stats(r['held_out_accuracy_finetuned'], '.3f')} |")
    checks = [
        "SPSA's counted gradient bytes equal one byte per projected gradient in every run"
        if s["spsa_bytes_equal_projected_gradients"] else
        "SPSA's counted gradient bytes DIFFER from one byte per projected gradient in some run",
        "the DDP all-reduce sends 4 bytes per parameter per step, as counted"
        if s["full_gradient_bytes_equal_4x_parameters"] else
        "the counted DDP all-reduce bytes DIFFER from 4 bytes per parameter",
        "all workers' weight hashes agreed in every round" if s["all_hashes_agree"] else
        "workers' weight hashes DIFFERED in some round",
    ]
    lines += ["", f"Checks: {'; '.join(checks)}. The hash column adds the 32-byte weight hash the workers "
                  f"compare every round (and once at the start)."]
    lines += ["", f"Target: at least 1,000x fewer bytes than the full gradient, with and without the hash, in "
                  f"every run: {'holds' if s['target_ratio_at_least_1000x'] else 'does NOT hold'}."]
    return "\n".join(lines) + "\n"


def print_result(result: dict) -> None:
    print()
    print(markdown(result))


if __name__ == "__main__":
    sys.exit(main())
