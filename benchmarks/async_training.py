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

The pair of runs is repeated ``--repeats`` times (default 3) with distinct seeds ``0 .. repeats-1``:
the seed picks the problem's split and flipped labels (``problem_kwargs["seed"]``) and the delays
(``ADBOConfig.seed``), and each repeat has its own target. Reported: each side's seconds to target and
the ratio async / sync as mean ± std over the repeats (and per repeat), the target (ratio <= 0.6)
judged on the mean ratio and, apart, whether it held in every repeat; test accuracies and learned
weights as mean ± std. Nothing is chosen from the results (``summary.protocol``).

    python -m benchmarks.async_training            # 4 workers, straggler 3x, 3 repeats (~8 min on 2 cores)
    python -m benchmarks.async_training --quick    # fewer iterations, 1 repeat (a smoke run)
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


TARGET_RATIO = 0.6
SPLIT = {"train": 2000, "val": 200, "test": 1000}  # hyperclean's defaults (problems.HyperClean)


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
    parser.add_argument("--repeats", type=int, default=3, help="sync/async pairs, seeds 0 .. repeats-1")
    parser.add_argument("--quick", action="store_true", help="100 iterations, 1 repeat")
    parser.add_argument("--tracking-uri", help="log every run to this MLflow store")
    parser.add_argument("--output", type=Path, help="result JSON (default: benchmarks/results/async_training.json, "
                                                    "quick/async_training.json with --quick)")
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations, args.repeats = 100, 1
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    from benchmarks._results import write_result

    # quick runs go where benchmarks.report never looks (results/quick/, ignored by git)
    output = args.output or (RESULTS / "quick" if args.quick else RESULTS) / "async_training.json"
    return write_result(benchmark(args), output, print_result, script="benchmarks.async_training")


def _problem_kwargs(seed: int) -> dict:
    return {"data": "data/mnist", "noise": 0.3, "seed": seed}


def _config(args, s: int, tau: int, iterations: int, seed: int):
    from distillery.components.training.adbo.config import ADBOConfig

    return ADBOConfig(problem="hyperclean", problem_kwargs=_problem_kwargs(seed), workers=args.workers,
                      s=s, tau=tau, iterations=iterations, delay_base=args.delay_base,
                      delay_median=args.delay_median, delay_sigma=args.delay_sigma,
                      slowdown={1: args.straggler_factor}, rpc_timeout=60, init_timeout=120,
                      tracking_uri=args.tracking_uri, run_name=f"bench-S{s}of{args.workers}-seed{seed}", seed=seed)


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

    from benchmarks._results import machine_info

    n, s = args.workers, args.s or max(1, args.workers // 2)
    load_before = os.getloadavg()[0]
    repeats = [repeat(args, seed, n, s) for seed in range(args.repeats)]
    first = repeats[0]
    return {
        "benchmark": "async_training",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**machine_info(load_before), "torch_threads": torch.get_num_threads()},
        "setup": {"problem": "hyperclean", "data": "data/mnist", "n_train": first["n_train"],
                  "n_val": first["n_val"], "n_test": first["n_test"], "label_noise": 0.3, "pca": 50,
                  "workers": n, "s_async": s, "tau_async": args.tau, "straggler_rank": 1,
                  "straggler_factor": args.straggler_factor, "iterations_sync": args.iterations,
                  "iterations_async": int(args.max_factor * args.iterations),
                  "delay_base_s": args.delay_base, "delay_median_s": args.delay_median,
                  "delay_sigma": args.delay_sigma, "target": "the synchronous run's final validation loss, "
                                                             "per repeat",
                  "hyper": vars_of_hyper(_config(args, s, args.tau, int(args.max_factor * args.iterations), 0))},
        "summary": summarise(repeats, n, args.straggler_factor),
        "repeats": repeats,
    }


def repeat(args, seed: int, n: int, s: int) -> dict:
    """One sync/async pair with ``seed`` (problem split and flips, delays), and the learned weights judged."""
    import torch

    from distillery.components.training.adbo import problems

    with tempfile.TemporaryDirectory(prefix="adbo-bench-") as tmp:
        print(f"[seed {seed}] synchronous baseline: S = {n} of {n}, {args.iterations} iterations ...", flush=True)
        sync = _run(_config(args, n, 0, args.iterations, seed), Path(tmp) / "sync")
        target = sync["history"][-1]["upper_loss"]
        cap = int(args.max_factor * args.iterations)
        print(f"[seed {seed}] target validation loss {target:.4f}; asynchronous: S = {s} of {n}, tau = {args.tau}, "
              f"{cap} iterations ...", flush=True)
        asyn = _run(_config(args, s, args.tau, cap, seed), Path(tmp) / "async")
    sync_hit, async_hit = _seconds_to(sync["history"], target), _seconds_to(asyn["history"], target)
    if async_hit is None:
        best = min(h["upper_loss"] for h in asyn["history"])
        print(f"[seed {seed}] the asynchronous run did not reach the target {target:.4f} in {cap} iterations "
              f"(best {best:.4f}); this repeat misses the target", flush=True)

    print(f"[seed {seed}] judging the weights: the same linear model, unweighted vs weighted ...", flush=True)
    problem = problems.build("hyperclean", _problem_kwargs(seed))
    data = problem.data
    accuracy = {
        "unweighted_noisy": data.metrics(data.fit())["test_accuracy"],
        "hyperclean_async": data.metrics(data.fit(problem.weights(asyn["final_state"]["v"])))["test_accuracy"],
        "hyperclean_sync": data.metrics(data.fit(problem.weights(sync["final_state"]["v"])))["test_accuracy"],
        "clean_labels_oracle": data.metrics(data.fit(torch.as_tensor(~problem.flipped, dtype=torch.float32)))[
            "test_accuracy"],
    }
    weights = problem.weights(asyn["final_state"]["v"]).numpy()
    ratio = async_hit[0] / sync_hit[0] if async_hit else None
    print(f"[seed {seed}] to target: sync {sync_hit[0]:.2f} s, async "
          f"{'-' if async_hit is None else f'{async_hit[0]:.2f} s'}, ratio {'-' if ratio is None else f'{ratio:.3f}'}",
          flush=True)
    return {
        "seed": seed, "target_val_loss": target, "n_train": problem.n, "n_val": len(data.yva), "n_test": len(data.yte),
        "sync_seconds_to_target": sync_hit[0], "async_seconds_to_target": async_hit[0] if async_hit else None,
        "ratio": ratio,
        "runs": {"synchronous": _describe(sync["history"], n, 0, sync_hit, sync["process_wall_s"]),
                 "asynchronous": _describe(asyn["history"], s, args.tau, async_hit, asyn["process_wall_s"])},
        "test_accuracy": {k: float(v) for k, v in accuracy.items()},
        "weights": {"mean_clean": float(weights[~problem.flipped].mean()),
                    "mean_flipped": float(weights[problem.flipped].mean())},
    }


def summarise(repeats: list[dict], workers: int, straggler_factor: float, target_ratio: float = TARGET_RATIO) -> dict:
    """Mean ± std over the repeats; the target judged on the mean ratio and, apart, in every repeat (a
    repeat whose asynchronous run never reached the target counts as missing it; the means are over the
    repeats that reached it)."""
    from benchmarks._results import mean_std, protocol

    reached = [r for r in repeats if r["ratio"] is not None]
    ratio = mean_std([r["ratio"] for r in reached]) if reached else None
    sync = mean_std([r["sync_seconds_to_target"] for r in repeats])
    asyn = mean_std([r["async_seconds_to_target"] for r in reached]) if reached else None
    return {
        "sync_seconds_to_target": round(sync["mean"], 3),
        "async_seconds_to_target": None if asyn is None else round(asyn["mean"], 3),
        "ratio": None if ratio is None else round(ratio["mean"], 4),
        "sync_seconds_to_target_stats": sync, "async_seconds_to_target_stats": asyn, "ratio_stats": ratio,
        "repeats": len(repeats), "async_reached_target_in": len(reached),
        "target": {"ratio_at_most": target_ratio,
                   "met_on_mean": ratio is not None and len(reached) == len(repeats) and ratio["mean"] <= target_ratio,
                   "met_in_every_repeat": all(r["ratio"] is not None and r["ratio"] <= target_ratio for r in repeats),
                   "met_in_repeats": sum(r["ratio"] is not None and r["ratio"] <= target_ratio for r in repeats)},
        "test_accuracy": {k: mean_std([r["test_accuracy"][k] for r in repeats]) for k in repeats[0]["test_accuracy"]},
        "weights": {k: mean_std([r["weights"][k] for r in repeats]) for k in repeats[0]["weights"]},
        "workers": workers, "straggler_factor": straggler_factor,
        "protocol": protocol(split_sizes={"train": repeats[0].get("n_train", SPLIT["train"]),
                                          "val": repeats[0].get("n_val", SPLIT["val"]),
                                          "test": repeats[0].get("n_test", SPLIT["test"])},
                             model_selection="none", seeds=[r["seed"] for r in repeats], repeats=len(repeats)),
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


def _fmt(value, fmt: str, missing: str = "-") -> str:
    return missing if value is None else format(value, fmt)


def markdown(result: dict) -> str:
    """The README section's tables and numbers, from the result JSON alone."""
    from benchmarks.report import pm_stats, source

    s, setup, m = result["summary"], result["setup"], result["machine"]
    n, t = s["repeats"], s["target"]
    plural = "s" if n != 1 else ""
    load = m["load_avg_1min"]
    lines = [
        f"{setup['workers']} workers (worker {setup['straggler_rank']} {setup['straggler_factor']:g}x slower), "
        f"asynchronous S = {setup['s_async']}, tau = {setup['tau_async']}; {n} repeat{plural} (seeds "
        f"{', '.join(str(r['seed']) for r in result['repeats'])}); {m['cores']} cores, load "
        f"{load['before']:.1f} before / {load['after']:.1f} after ({source(result, 'async_training.json')}).",
        "",
        "| seed | target val loss | sync s to target | async s to target | async iterations to target | ratio |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for r in result["repeats"]:
        a = r["runs"]["asynchronous"]
        lines.append(f"| {r['seed']} | {r['target_val_loss']:.4f} | {r['sync_seconds_to_target']:.1f} | "
                     f"{_fmt(r['async_seconds_to_target'], '.1f', 'not reached')} | "
                     f"{_fmt(a['iterations_to_target'], 'd')} | {_fmt(r['ratio'], '.3f')} |")
    lines.append(f"| **mean ± std** | | {pm_stats(s['sync_seconds_to_target_stats'], '.1f')} | "
                 f"{pm_stats(s['async_seconds_to_target_stats'], '.1f')} | | **{pm_stats(s['ratio_stats'], '.3f')}** |")
    verdict = "met" if t["met_on_mean"] else "not met"
    lines += [
        "",
        f"Target (ratio <= {t['ratio_at_most']}) on the mean ratio: **{verdict}**; it held in "
        f"{t['met_in_repeats']} of {n} repeat{plural}"
        + (f" (the asynchronous run reached the target in {s['async_reached_target_in']} of {n})"
           if s["async_reached_target_in"] < n else "") + ".",
        "",
        f"| test accuracy, same linear model (mean ± std, {n} repeat{plural}) | |",
        "|---|--:|",
    ]
    for key, label in [("unweighted_noisy", "unweighted, noisy labels"),
                       ("hyperclean_async", "hyper-cleaned weights (async run)"),
                       ("hyperclean_sync", "hyper-cleaned weights (sync run)"),
                       ("clean_labels_oracle", "clean labels only (oracle)")]:
        lines.append(f"| {label} | {pm_stats(s['test_accuracy'][key], '.3f')} |")
    w = s["weights"]
    lines += ["", f"Mean learned weight (async run): {pm_stats(w['mean_clean'], '.3f')} on clean samples, "
                  f"{pm_stats(w['mean_flipped'], '.3f')} on flipped ones."]
    return "\n".join(lines) + "\n"


def print_result(result: dict) -> None:
    print()
    print(markdown(result))


if __name__ == "__main__":
    sys.exit(main())
