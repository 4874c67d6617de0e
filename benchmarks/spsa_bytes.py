"""Bytes each worker sends per step: shared-randomness SPSA (one byte per projected gradient) vs a
full fp32 gradient exchange of the same model.

For the MNIST MLP and the small CNN of ``distillery.components.core.models`` it fine-tunes, for real, a base
model (briefly trained on 100 labels) with 2 worker processes over torch.distributed (gloo), and reads
each worker's byte counters (:class:`distillery.components.training.spsa.workers.ByteCounter`): what it handed to
``all_gather`` per round. Beside them, what a data-parallel step exchanges per worker: the fp32
gradient, ``4 × parameters`` bytes (the tensor DDP's all-reduce is given, counted the same way).

* ``bytes_per_step_spsa``: the method's payload, ``samples_per_worker`` one-byte codes per round;
* ``+ hash``: with the 32-byte weight hash every worker also exchanges each round to prove the copies
  are identical (a check, not needed by the method);
* one-off ``membership`` bytes (shape handshake; no newcomer here, so no weights are broadcast).

Counts are at the collective API, as for the full gradient; gloo's framing and relaying are not
included on either side.

    python -m benchmarks.spsa_bytes            # MLP 200 rounds, CNN 20 rounds (~1 min on 2 cores)
    python -m benchmarks.spsa_bytes --quick    # fewer rounds
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
WORKERS = 2
# rounds, learning rate: the CNN has 13x the MLP's parameters, so z·g steps are noisier (smaller lr)
MODELS = {"mlp": (200, 1e-2), "small_cnn": (20, 2e-3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the rounds")
    parser.add_argument("--samples-per-worker", type=int, default=8, help="projected gradients per worker per round")
    parser.add_argument("--output", type=Path, default=RESULTS / "spsa_bytes.json")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # the workers are processes; keep the launcher from competing with them
    load_before = os.getloadavg()[0]
    rows = [measure(arch, max(rounds // (10 if args.quick else 1), 2), lr, args.samples_per_worker)
            for arch, (rounds, lr) in MODELS.items()]
    mlp = rows[0]
    result = {
        "benchmark": "spsa_bytes",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "platform": platform.platform(),
                    "load_avg_1min": {"before": load_before, "after": os.getloadavg()[0]}},
        "workers": WORKERS,
        "samples_per_worker": args.samples_per_worker,
        "models": rows,
        "summary": {key: mlp[key] for key in ("model", "model_parameters", "bytes_per_step_spsa",
                                              "bytes_per_step_full_gradient", "ratio", "ratio_with_hash")}
                   | {"small_cnn_ratio": rows[1]["ratio"], "all_hashes_agree": all(r["hashes_agree"] for r in rows)},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print_result(result)
    print(f"\nWrote {args.output}")
    return 0


def measure(arch: str, rounds: int, lr: float, samples_per_worker: int) -> dict:
    """One real 2-process SPSA fine-tuning of ``arch``; its measured byte counters and losses."""
    import torch

    from benchmarks.spsa_mnist import load_mnist, prepare_mnist_job
    from distillery.components.core.models import predict_proba
    from distillery.components.training import spsa

    config = spsa.SPSAConfig(samples_per_worker=samples_per_worker, lr=lr, eval_every=max(rounds // 4, 1))
    with tempfile.TemporaryDirectory(prefix="spsa-bench-") as tmp:
        job, held_out = prepare_mnist_job(ROOT / "data" / "mnist", tmp, arch=arch, n_shards=WORKERS, config=config)
        print(f"{arch}: {WORKERS} workers x {rounds} rounds ...", flush=True)
        run = spsa.launch([spsa.Epoch(rounds, tuple(range(WORKERS)))], job)
        x, y = load_mnist(ROOT / "data" / "mnist")
        base, finetuned = job.model_fn(0, True), job.model_fn(0, True)
        finetuned.load_state_dict(torch.load(run.workers[0].state_path, weights_only=True))
        accuracy = {name: float((predict_proba(model, x[held_out]).argmax(-1).numpy() == y[held_out]).mean())
                    for name, model in (("base", base), ("finetuned", finetuned))}
    summary = spsa.summarise(run)
    reports = run.workers.values()
    return {
        "model": arch,
        "rounds": rounds,
        "lr": lr,
        **{k: summary[k] for k in ("model_parameters", "bytes_per_step_spsa", "bytes_per_step_spsa_with_hash",
                                   "bytes_per_step_full_gradient", "ratio", "ratio_with_hash", "wall_s")},
        "hashes_agree": bool(summary["hashes_agree"]),
        "bytes_by_worker": {str(r.worker): r.bytes for r in reports},
        "shard_loss_first": sum(r.shard_losses[0][1] for r in reports) / WORKERS,
        "shard_loss_last": sum(r.shard_losses[-1][1] for r in reports) / WORKERS,
        "held_out_accuracy_base": accuracy["base"],
        "held_out_accuracy_finetuned": accuracy["finetuned"],
    }


def print_result(result: dict) -> None:
    m = result["machine"]
    print(f"\nSPSA one-byte exchange vs full fp32 gradient: {result['workers']} worker processes (gloo), "
          f"{result['samples_per_worker']} projected gradients per worker per round; {m['cores']} cores, "
          f"load average {m['load_avg_1min']['before']:.2f} before / {m['load_avg_1min']['after']:.2f} after\n")
    header = (f"{'model':<10} {'params':>8} {'SPSA B/step':>11} {'+hash':>6} {'fp32 grad B/step':>16} "
              f"{'ratio':>8} {'ratio+hash':>10} {'rounds':>6} {'hashes':>6} {'loss first->last':>17} "
              f"{'held-out acc':>15}")
    print(header)
    print("-" * len(header))
    for r in result["models"]:
        print(f"{r['model']:<10} {r['model_parameters']:>8,} {r['bytes_per_step_spsa']:>11.0f} "
              f"{r['bytes_per_step_spsa_with_hash']:>6.0f} {r['bytes_per_step_full_gradient']:>16,.0f} "
              f"{r['ratio']:>7,.0f}x {r['ratio_with_hash']:>9,.0f}x {r['rounds']:>6} "
              f"{'agree' if r['hashes_agree'] else 'DIFFER':>6} "
              f"{r['shard_loss_first']:>8.3f}->{r['shard_loss_last']:.3f} "
              f"{r['held_out_accuracy_base']:>7.3f}->{r['held_out_accuracy_finetuned']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
