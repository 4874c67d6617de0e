"""Asynchronous vs synchronous ADBO under a straggler: wall time to the same validation loss.

Data hyper-cleaning on MNIST (ADBO's experiment, Jiao et al., ICLR 2023): 2,000 training samples
with 30% of the labels flipped, a clean validation set of 200, a linear classifier on 50 principal
components; the training set is split over N worker processes, master and workers talk over
``torch.distributed.rpc`` (the same processes and entrypoint as on a cluster). Every report is
delayed by ``base + LogNormal`` seconds (the reference's straggler model) and one worker is
``--straggler-factor`` times slower.

1. The synchronous baseline (S = N: every iteration waits for every worker, the straggler
   included) runs ``--iterations`` master iterations; its final validation loss (the upper
   objective, sum of the workers' G_i) is the target.
2. Asynchronous ADBO (S < N, staleness bounded by tau) runs ``--max-factor`` times as many
   iterations (each is much shorter); the first time its validation loss reaches the target counts.

Both times are measured on the master's clock from its first dispatch (process start-up, the same
for both, is reported apart). The learned sample weights are then judged the way hyper-cleaning is:
the same linear model trained on the noisy labels unweighted vs weighted, test accuracy.

    python -m benchmarks.async_training            # 4 workers, straggler 3x (~2-3 min on 2 cores)
    python -m benchmarks.async_training --quick    # fewer iterations (a smoke run)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--straggler-factor", type=float, default=3.0, help="delay multiplier of worker 1")
    parser.add_argument("--s", type=int, help="reports per asynchronous iteration (default: half the workers)")
    parser.add_argument("--tau", type=int, default=4, help="staleness bound of the asynchronous run")
    parser.add_argument("--iterations", type=int, default=300, help="iterations of the synchronous baseline")
    parser.add_argument("--max-factor", type=float, default=2.5,
                        help="iterations of the asynchronous run, x --iterations")
    parser.add_argument("--delay-base", type=float, default=0.03, help="seconds per report (compute time)")
    parser.add_argument("--delay-median", type=float, default=0.03, help="median log-normal message delay, s")
    parser.add_argument("--delay-sigma", type=float, default=0.4, help="log-normal sigma of the message delay")
    parser.add_argument("--quick", action="store_true", help="100 iterations")
    parser.add_argument("--tracking-uri", help="log both runs to this MLflow store")
    parser.add_argument("--output", type=Path, help="result JSON (default: benchmarks/results/async_training.json, "
                                                    "async_training_quick.json with --quick)")
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations = 100
    output = args.output or RESULTS / ("async_training_quick.json" if args.quick else "async_training.json")
    result = benchmark(args)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print_result(result)
    print(f"\nWrote {output}")
    return 0


def _config(args, s: int, tau: int, iterations: int):
    from distillery.components.training.adbo.config import ADBOConfig

    return ADBOConfig(problem="hyperclean", problem_kwargs={"data": "data/mnist", "noise": 0.3}, workers=args.workers,
                      s=s, tau=tau, iterations=iterations, delay_base=args.delay_base,
                      delay_median=args.delay_median, delay_sigma=args.delay_sigma,
                      slowdown={1: args.straggler_factor}, rpc_timeout=60, init_timeout=120,
                      tracking_uri=args.tracking_uri, run_name=f"bench-S{s}of{args.workers}")


def _run(config, folder: Path) -> dict:
    """One launch to the end: the master's per-iteration history and final state."""
    from distillery.components.training.adbo.launcher import launch

    began = time.perf_counter()
    result = launch(config, folder)
    import torch

    return {"history": result["history"], "final_state": torch.load(folder / "final.pt", weights_only=True),
            "process_wall_s": time.perf_counter() - began}


def _seconds_to(history: list[dict], target: float) -> tuple[float, int] | None:
    """Master-clock seconds (and iteration) at which the upper loss first reaches ``target``."""
    for record in history:
        if record["upper_loss"] <= target:
            return record["time"], record["iteration"]
    return None


def benchmark(args) -> dict:
    import torch

    from distillery.components.training.adbo import problems

    n, s = args.workers, args.s or max(1, args.workers // 2)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="adbo-bench-") as tmp:
        print(f"synchronous baseline: S = {n} of {n}, {args.iterations} iterations ...", flush=True)
        sync = _run(_config(args, n, 0, args.iterations), Path(tmp) / "sync")
        target = sync["history"][-1]["upper_loss"]
        cap = int(args.max_factor * args.iterations)
        print(f"target validation loss {target:.4f}; asynchronous: S = {s} of {n}, tau = {args.tau}, "
              f"{cap} iterations ...", flush=True)
        async_config = _config(args, s, args.tau, cap)
        asyn = _run(async_config, Path(tmp) / "async")
    sync_hit, async_hit = _seconds_to(sync["history"], target), _seconds_to(asyn["history"], target)
    if async_hit is None:
        best = min(h["upper_loss"] for h in asyn["history"])
        raise SystemExit(f"the asynchronous run did not reach the target {target:.4f} in {cap} iterations "
                         f"(best {best:.4f}); raise --max-factor")

    print("judging the weights: the same linear model, unweighted vs weighted ...", flush=True)
    problem = problems.build("hyperclean", {"data": "data/mnist", "noise": 0.3})
    data = problem.data
    accuracy = {
        "unweighted_noisy": data.metrics(data.fit())["test_accuracy"],
        "hyperclean_async": data.metrics(data.fit(problem.weights(asyn["final_state"]["v"])))["test_accuracy"],
        "hyperclean_sync": data.metrics(data.fit(problem.weights(sync["final_state"]["v"])))["test_accuracy"],
        "clean_labels_oracle": data.metrics(data.fit(torch.as_tensor(~problem.flipped, dtype=torch.float32)))[
            "test_accuracy"],
    }
    weights = problem.weights(asyn["final_state"]["v"]).numpy()
    summary = {"sync_seconds_to_target": round(sync_hit[0], 3), "async_seconds_to_target": round(async_hit[0], 3),
               "ratio": round(async_hit[0] / sync_hit[0], 4), "workers": n, "straggler_factor": args.straggler_factor}
    runs = {
        "synchronous": _describe(sync["history"], n, 0, sync_hit, sync["process_wall_s"]),
        "asynchronous": _describe(asyn["history"], s, args.tau, async_hit, asyn["process_wall_s"]),
    }
    return {
        "benchmark": "async_training",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "torch": torch.__version__,
                    "load_avg_1min": {"before": load_before, "after": os.getloadavg()[0]}},
        "setup": {"problem": "hyperclean", "data": "data/mnist", "n_train": problem.n, "n_val": len(data.yva),
                  "n_test": len(data.yte), "label_noise": 0.3, "pca": 50, "straggler_rank": 1,
                  "delay_base_s": args.delay_base, "delay_median_s": args.delay_median,
                  "delay_sigma": args.delay_sigma, "target_val_loss": target, "hyper": vars_of_hyper(async_config)},
        "summary": summary,
        "runs": runs,
        "test_accuracy": accuracy,
        "weights": {"mean_clean": float(weights[~problem.flipped].mean()),
                    "mean_flipped": float(weights[problem.flipped].mean())},
    }


def vars_of_hyper(config) -> dict:
    from dataclasses import asdict

    return asdict(config.hyperparameters())


def _describe(history: list[dict], s: int, tau: int, hit, process_wall: float) -> dict:
    return {"s": s, "tau": tau, "iterations": history[-1]["iteration"], "loop_seconds": history[-1]["time"],
            "seconds_to_target": hit[0] if hit else None, "iterations_to_target": hit[1] if hit else None,
            "final_val_loss": history[-1]["upper_loss"], "max_staleness": max(max(h["staleness"].values())
                                                                              for h in history),
            "mean_iteration_s": history[-1]["time"] / history[-1]["iteration"],
            "process_wall_s": process_wall}


def print_result(result: dict) -> None:
    s, m, setup, runs = result["summary"], result["machine"], result["setup"], result["runs"]
    print(f"\nADBO data hyper-cleaning, {s['workers']} workers (worker {setup['straggler_rank']} "
          f"{s['straggler_factor']:g}x slower), delays {1000 * setup['delay_base_s']:.0f} ms + LogNormal(median "
          f"{1000 * setup['delay_median_s']:.0f} ms, sigma {setup['delay_sigma']}); {m['cores']} cores, Python "
          f"{m['python']}, torch {m['torch']}, load {m['load_avg_1min']['before']:.2f} before / "
          f"{m['load_avg_1min']['after']:.2f} after\n")
    header = f"{'run':<13} {'S':>3} {'tau':>4} {'iters':>6} {'s/iter':>7} {'to target':>10} {'iters to':>9} " \
             f"{'final val loss':>15} {'max stale':>9}"
    print(header)
    print("-" * len(header))
    for name, r in runs.items():
        print(f"{name:<13} {r['s']:>3} {r['tau']:>4} {r['iterations']:>6} {r['mean_iteration_s']:>7.3f} "
              f"{r['seconds_to_target']:>9.2f}s {r['iterations_to_target']:>9} {r['final_val_loss']:>15.4f} "
              f"{r['max_staleness']:>9}")
    print(f"\ntarget (synchronous final val loss): {setup['target_val_loss']:.4f}")
    print(f"time to target, async / sync: {s['async_seconds_to_target']:.2f} s / {s['sync_seconds_to_target']:.2f} s"
          f" = {s['ratio']:.3f}  (goal <= 0.6)")
    acc, w = result["test_accuracy"], result["weights"]
    print("\ntest accuracy, same linear model (2,000 training samples, 30% labels flipped):")
    for key, label in [("unweighted_noisy", "unweighted, noisy labels"),
                       ("hyperclean_async", "hyper-cleaned weights (async run)"),
                       ("hyperclean_sync", "hyper-cleaned weights (sync run)"),
                       ("clean_labels_oracle", "clean labels only (oracle)")]:
        print(f"  {label:<36} {acc[key]:.4f}")
    print(f"  mean learned weight: clean samples {w['mean_clean']:.3f}, flipped samples {w['mean_flipped']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
