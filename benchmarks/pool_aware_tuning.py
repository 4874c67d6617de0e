"""Choose the pool-aware training of the label-efficiency benchmark on a validation split only.

The label-efficiency protocol's 4,000-item pool (``benchmarks.al_label_efficiency.load_data``) is split
once more, stratified, into a 3,000-item tuning pool and a 1,000-item validation set; the benchmark's
1,000-item test split is never read here. Every candidate (supervised training with the loop's step
budget, FixMatch at two confidence thresholds, mean teacher) trains the benchmark's MLP on 100 and
200 stratified random labels of the tuning pool, with the rest of it as the unlabelled pool, for 2
seeds. The candidate with the best mean validation accuracy over both label counts is frozen in
``benchmarks/configs/pool_aware.json``, which the benchmark then reads (and records with its hash).
The workers run the benchmark's pinned CPU kernels (``_results.PINNED_CPU_KERNELS``).

    python -m benchmarks.pool_aware_tuning            # ~3 minutes on 2 cores
    python -m benchmarks.pool_aware_tuning --quick    # machinery only (seconds)
"""
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from benchmarks import _results
from benchmarks.al_label_efficiency import MODEL, ROOT, load_data

CONFIG = ROOT / "benchmarks" / "configs" / "pool_aware.json"
RESULTS = ROOT / "benchmarks" / "results" / "pool_aware_tuning.json"
VALIDATION_SIZE, TUNING_SEED = 1000, 1
LABELS, SEEDS = (100, 200), 2
# Candidates: FixMatch's paper threshold (0.95) and a lower one for a small MLP, whose confidence
# grows slowly; mean teacher with the paper's decay and a consistency weight for squared error.
COMMON = {"epochs": 50, "lr": 3e-3, "batch_size": 64, "mu": 3}
CANDIDATES = {
    "supervised": None,
    "fixmatch(tau=0.95)": ("fixmatch", {**COMMON, "threshold": 0.95, "lambda_u": 1.0}),
    "fixmatch(tau=0.8)": ("fixmatch", {**COMMON, "threshold": 0.8, "lambda_u": 1.0}),
    "mean_teacher": ("mean_teacher", {**COMMON, "lambda_u": 10.0, "ema_decay": 0.99, "rampup_fraction": 0.3}),
}
QUICK, QUICK_SUPERVISED = {"epochs": 1}, {"min_steps": 5, "min_epochs": 1}


def tuning_split() -> tuple[np.ndarray, np.ndarray]:
    """(tuning pool, validation) rows: a stratified split of the benchmark's pool, test untouched."""
    from sklearn.model_selection import train_test_split

    data = load_data()
    pool = data["pool"]
    tuning, validation = train_test_split(pool, test_size=VALIDATION_SIZE, stratify=data["y"][pool],
                                          random_state=TUNING_SEED)
    return np.sort(tuning), np.sort(validation)


def run(job: dict) -> dict:
    import torch

    from distillery.components.selection.loop import evaluate, initial_labels, train_model

    torch.set_num_threads(1)
    data = load_data()
    x, y, meta = data["x"], data["y"], data["meta"]
    tuning, validation = tuning_split()
    labelled = tuning[initial_labels(y[tuning], job["labels"], job["seed"])]
    unlabelled = np.setdiff1d(tuning, labelled)
    started = time.perf_counter()
    training = CANDIDATES[job["candidate"]]
    params = None if training is None else {**training[1], **job["overrides"]}
    model = train_model(x[labelled], y[labelled], meta, MODEL, job["overrides"] if training is None else {},
                        job["seed"], training=None if training is None else training[0], training_params=params,
                        unlabelled=x[unlabelled])
    accuracy, _ = evaluate(model, x[validation], y[validation], len(meta["classes"]))
    return {**job, "validation_accuracy": accuracy, "seconds": time.perf_counter() - started,
            "cpu_capability": _results.cpu_capability()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one epoch, one seed (machinery only)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", type=Path, help="result JSON (default: benchmarks/results/pool_aware_tuning.json, "
                                                    "quick/pool_aware_tuning.json with --quick)")
    parser.add_argument("--config", type=Path, default=CONFIG, help="where the chosen training is frozen")
    args = parser.parse_args(argv)
    seeds = 1 if args.quick else SEEDS
    # quick runs go where benchmarks.report never looks (results/quick/, ignored by git)
    output = args.output or (RESULTS.parent / "quick" / RESULTS.name if args.quick else RESULTS)

    def overrides(candidate: str) -> dict:  # --quick: a token budget, supervised or pool-aware
        return {} if not args.quick else QUICK_SUPERVISED if CANDIDATES[candidate] is None else QUICK

    jobs = [{"candidate": c, "labels": n, "seed": s, "overrides": overrides(c)}
            for c in CANDIDATES for n in LABELS for s in range(seeds)]
    pinned = _results.pin_cpu_kernels()  # the label-efficiency benchmark's pin; the workers inherit it
    load_before, started = os.getloadavg()[0], time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as executor:
        results = list(executor.map(run, jobs))
    for r in results:
        print(f"{r['candidate']:<20} {r['labels']:>4} labels seed {r['seed']}: validation "
              f"{r['validation_accuracy']:.4f} ({r['seconds']:.1f} s)", flush=True)
    scores = {c: {str(n): [round(float(np.mean(v)), 4), round(float(np.std(v)), 4)]
                  for n in LABELS for v in [[r["validation_accuracy"] for r in results
                                             if r["candidate"] == c and r["labels"] == n]]}
              for c in CANDIDATES}
    mean = {c: float(np.mean([s[0] for s in per.values()])) for c, per in scores.items()}
    pool_aware = [c for c in CANDIDATES if CANDIDATES[c] is not None]
    chosen = max(pool_aware, key=lambda c: mean[c])
    method, params = CANDIDATES[chosen]
    tuning, validation = tuning_split()
    result = {
        "benchmark": "pool_aware_tuning",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "protocol": {"model_selection": "validation", "test_split_read": False,
                     "tuning_pool_size": len(tuning), "validation_size": len(validation),
                     "split": f"stratified split of the benchmark's pool, random_state={TUNING_SEED}",
                     "labels": list(LABELS), "seeds": seeds, "model": MODEL, "quick": args.quick,
                     "cpu_kernels": _results.cpu_kernels(pinned, results)},
        "candidates": {c: (None if t is None else {"method": t[0], "params": t[1]}) for c, t in CANDIDATES.items()},
        "validation_accuracy": scores,
        "summary": {"mean_validation_accuracy": {c: round(v, 4) for c, v in mean.items()}, "chosen": chosen},
    }
    ref = None
    if not args.quick:
        raw = config_bytes(chosen, method, params)
        args.config.parent.mkdir(parents=True, exist_ok=True)
        args.config.write_bytes(raw)
        result["summary"]["config"] = str(args.config.relative_to(ROOT))
        ref = _results.config_ref(args.config, raw)
    result["summary"]["protocol"] = protocol(result, ref)
    result["machine"] = _results.machine_info(load_before)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    return _results.write_result(result, output, print_result, script="benchmarks.pool_aware_tuning")


def config_bytes(chosen: str, method: str, params: dict) -> bytes:
    """The frozen config, as written to ``configs/pool_aware.json`` (its sha256 is the protocol's)."""
    return (json.dumps({"chosen_by": "benchmarks/pool_aware_tuning.py on the validation split",
                        "candidate": chosen, "method": method, "params": params}, indent=2) + "\n").encode()


def protocol(result: dict, config: dict | None) -> dict:
    """``summary.protocol`` from the result: the candidate is chosen on the validation split, the test
    split is never read (size 0 here); ``config`` is the file the choice was frozen in (None with --quick)."""
    p = result["protocol"]
    return _results.protocol(
        split_sizes={"train": p["tuning_pool_size"], "validation": p["validation_size"], "test": 0},
        model_selection="validation", seeds=list(range(p["seeds"])), config=config, cpu_kernels=p.get("cpu_kernels"),
        **({"config_role": "written here: the choice frozen for benchmarks.al_label_efficiency's +pool cells"}
           if config else {}))


def print_result(result: dict) -> None:
    print(markdown(result))


def markdown(result: dict) -> str:
    from benchmarks.report import pm, source, table

    p, s = result["protocol"], result["summary"]
    chosen = s["chosen"]
    rows = [[f"**{c}**" if c == chosen else c, *(pm(per[str(n)], 4) for n in p["labels"]),
             f"{s['mean_validation_accuracy'][c]:.4f}"] for c, per in result["validation_accuracy"].items()]
    head = ["candidate", *(f"{n} labels" for n in p["labels"]), "mean"]
    params = result["candidates"][chosen]["params"]
    frozen = f"frozen in `{s['config']}`" if s.get("config") else "not frozen (--quick)"
    return (f"Validation accuracy, mean ± std over {p['seeds']} seed(s), {p['validation_size']:,} validation items, "
            f"{p['tuning_pool_size']:,}-item tuning pool ({source(result, 'pool_aware_tuning.json')}):\n\n"
            f"{table(head, rows)}\n\nChosen: {chosen} ({params['epochs']} passes over the pool, mu = "
            f"{params['mu']}), {frozen}.{_results.cpu_kernels_text(result)}")


if __name__ == "__main__":
    raise SystemExit(main())
