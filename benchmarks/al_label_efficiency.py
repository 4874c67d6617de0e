"""Label efficiency of every registered selection strategy, and of a peer library, on MNIST.

One protocol for all (``distillery.components.selection.loop.run_active_learning``): the project's MNIST
subset (5,000 digits) split once, stratified, into a 4,000-item pool and a 1,000-item test set; an
MLP 784-256-10 with dropout 0.2 (BALD samples that dropout) retrained from scratch every round with
the loop's step budget; 20 stratified initial labels, +20 per round up to 200, then +50 per round up
to 1,000; 3 seeds. For each strategy: test accuracy at 100/200/400/1,000 labels (mean ± std over
seeds) and the labels needed to reach 95% of the full-data accuracy (the same model trained on all
4,000 pool items), interpolated linearly between rounds on the seed-averaged curve.

Wrappers run over a sensible base: AnchorAL over BADGE and over entropy (with a 1,000-item subpool:
the registry's 10,000 would exceed this pool and make AnchorAL its base strategy), the three
stochastic samplers over entropy, the stream selector over margin (registry defaults otherwise).

The peer, scikit-activeml (``pip install -e ".[bench]"``), runs its own ``UncertaintySampling``
(entropy, margin), ``Badge`` and ``GreedyBALD`` in the same loop, on our trained model wrapped as its
classifier (``benchmarks/_peers.py``): same data, model, training and schedule; only the selection
code differs.

Imbalanced pool: one class cut to 1% of the pool (36 of 3,636 items), 20 random initial labels (a
user does not know the classes of an unlabelled pool), same schedule; minority-class test recall at
the end and query time, with and without AnchorAL (entropy vs anchoral(entropy), badge vs
anchoral(badge)), and the peer's entropy and BADGE.

The training axis: a label ``<strategy>+pool`` runs that strategy with pool-aware training (every
round's model also learns from the unlabelled pool; FixMatch or mean teacher, chosen on a validation
split by ``benchmarks.pool_aware_tuning`` and frozen in ``benchmarks/configs/pool_aware.json``, whose
hash the result records) on the schedule 20..200 by 20, then 300 and 400; full-data accuracy, the 95%
mark, stays that of supervised training on all 4,000 labels. Such a run writes
``al_label_efficiency_pool_aware.json`` and a PNG of accuracy against labels, the peer on it.

(strategy, seed) jobs run in worker processes (``--workers``, default 2), one torch thread each, with
torch's, MKL's and OpenBLAS's CPU kernels pinned to their AVX2 paths (``_results.PINNED_CPU_KERNELS``):
a last-digit difference between CPUs' kernels flips a query's pick, so unpinned the curves differ from
machine to machine by about their seed spread. The result records the pin and the kernels the workers ran.

    python -m benchmarks.al_label_efficiency                 # everything (tens of minutes on 2 cores)
    python -m benchmarks.al_label_efficiency --quick         # tiny schedule and training, 1 seed (seconds)
    python -m benchmarks.al_label_efficiency --strategies entropy,badge,peer:entropy --no-imbalanced
    python -m benchmarks.al_label_efficiency --no-imbalanced \
        --strategies random,margin,badge,peer:margin,peer:badge,random+pool,margin+pool,badge+pool,entropy+pool
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from benchmarks import _results

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT / "data" / "mnist"

POOL_SIZE, TEST_SIZE, SPLIT_SEED = 4000, 1000, 0
MODEL = {"arch": "mlp", "hidden": 256, "dropout": 0.2}
SCHEDULE = list(range(20, 201, 20)) + list(range(250, 1001, 50))
QUICK_SCHEDULE = [20, 40, 60]
QUICK_TRAIN = {"min_steps": 30, "min_epochs": 2}  # --quick only checks the machinery: a token training budget
SEEDS = 3
REPORT_AT = (100, 200, 400, 1000)
TARGET_FRACTION = 0.95
ANCHORAL = {"subpool_size": 1000}  # 25% of the 4,000-item pool; neighbours/anchors: registry defaults
MINORITY_CLASS, MINORITY_SHARE = 9, 0.01
PEER_PREFIX = "peer:"
POOL_AWARE = "+pool"  # label suffix: the strategy with the frozen pool-aware training
POOL_AWARE_CONFIG = ROOT / "benchmarks" / "configs" / "pool_aware.json"
POOL_AWARE_SCHEDULE = list(range(20, 201, 20)) + [300, 400]
POOL_AWARE_QUICK = {"epochs": 1}
POOL_AWARE_REPORT_AT = (100, 200, 400)


def strategy_configs() -> dict[str, tuple[str, dict]]:
    """label -> (registered name, params): every registered strategy; AnchorAL over BADGE and entropy."""
    return _results.strategy_configs([("anchoral(badge)", {**ANCHORAL, "base": "badge"}),
                                      ("anchoral(entropy)", {**ANCHORAL, "base": "entropy"})])


PEER_STRATEGIES = ("entropy", "margin", "badge", "bald")
IMBALANCED = ["entropy", "anchoral(entropy)", "badge", "anchoral(badge)", "peer:entropy", "peer:badge"]
QUICK_STRATEGIES = ["random", "entropy", "anchoral(entropy)", "peer:entropy"]
QUICK_IMBALANCED = ["entropy", "anchoral(entropy)"]


# --- data -------------------------------------------------------------------------------------------

_DATA_CACHE: dict = {}


def load_data() -> dict:
    """The fixed split (and the imbalanced pool), computed once per process."""
    if _DATA_CACHE:
        return _DATA_CACHE
    from sklearn.model_selection import train_test_split

    if not (DATA / "features.npy").exists():
        raise SystemExit(f"{DATA.relative_to(ROOT)} is missing: run `make data`")
    x = np.load(DATA / "features.npy")
    y = np.load(DATA / "labels.npy").astype(np.int64)
    meta = json.loads((DATA / "dataset.json").read_text())
    pool, test = train_test_split(np.arange(len(y)), train_size=POOL_SIZE, test_size=TEST_SIZE, stratify=y,
                                  random_state=SPLIT_SEED)
    pool, test = np.sort(pool), np.sort(test)
    # imbalanced pool: every other class whole, the minority cut to MINORITY_SHARE of the result
    others = pool[y[pool] != MINORITY_CLASS]
    n_minority = int(round(MINORITY_SHARE * len(others) / (1 - MINORITY_SHARE)))
    minority = np.random.default_rng(SPLIT_SEED).choice(pool[y[pool] == MINORITY_CLASS], n_minority, replace=False)
    imbalanced = np.sort(np.concatenate([others, minority]))
    _DATA_CACHE.update(x=x, y=y, meta=meta, pool=pool, test=test, imbalanced=imbalanced, n_minority=n_minority)
    return _DATA_CACHE


# --- jobs (run in worker processes) -----------------------------------------------------------------

def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def run_job(job: dict) -> dict:
    """One (setting, strategy, seed) run; returns its curve, or the error it raised."""
    from distillery.components.selection.loop import (
        evaluate,
        run_active_learning,
        train_model,
    )

    data = load_data()
    x, y, meta = data["x"], data["y"], data["meta"]
    test = data["test"]
    started = time.perf_counter()
    try:
        if job["setting"] == "full":
            model = train_model(x[data["pool"]], y[data["pool"]], meta, MODEL, job["train"], job["seed"])
            accuracy, recall = evaluate(model, x[test], y[test], len(meta["classes"]))
            return {**job, "accuracy": accuracy, "seconds": time.perf_counter() - started,
                    "cpu_capability": _results.cpu_capability()}
        pool = data["pool"] if job["setting"] == "balanced" else data["imbalanced"]
        label = job["label"].removesuffix(POOL_AWARE)
        if label.startswith(PEER_PREFIX):
            from benchmarks import _peers

            strategy, params = _peers.selector(label[len(PEER_PREFIX):], job["seed"]), None
        else:
            strategy, params = job["name"], job["params"]
        pool_aware = job.get("pool_aware") or {}
        curve = run_active_learning(strategy, params, x[pool], y[pool], x[test], y[test], meta, job["schedule"],
                                    job["seed"], MODEL, job["train"], initial=job["initial"],
                                    training=pool_aware.get("method"), training_params=pool_aware.get("params"))
        return {**job, "curve": [r._asdict() for r in curve], "seconds": time.perf_counter() - started,
                "cpu_capability": _results.cpu_capability()}
    except Exception as exc:  # one failing strategy must not sink the whole benchmark
        return {**job, "error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - started}


# --- the benchmark ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    from benchmarks import _peers

    configs = strategy_configs()
    peer_labels = [PEER_PREFIX + s for s in PEER_STRATEGIES]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"schedule {QUICK_SCHEDULE}, 1 seed, strategies {QUICK_STRATEGIES} (seconds)")
    parser.add_argument("--strategies", help=f"comma-separated labels among {sorted(configs) + peer_labels} "
                                             "(random is always added: the reference)")
    parser.add_argument("--seeds", type=int, help=f"seeds per strategy (default {SEEDS}, 1 with --quick)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default: %(default)s)")
    parser.add_argument("--no-peer", action="store_true", help="skip the peer library")
    parser.add_argument("--no-imbalanced", action="store_true", help="skip the imbalanced-pool runs")
    parser.add_argument("--output", type=Path, help="result JSON (default: benchmarks/results/"
                                                    "al_label_efficiency.json, "
                                                    "quick/al_label_efficiency.json with --quick)")
    args = parser.parse_args(argv)

    schedule = QUICK_SCHEDULE if args.quick else SCHEDULE
    train = QUICK_TRAIN if args.quick else {}
    seeds = args.seeds or (1 if args.quick else SEEDS)
    if args.strategies:
        labels = [s.strip() for s in args.strategies.split(",") if s.strip()]
    else:
        labels = QUICK_STRATEGIES if args.quick else list(configs) + peer_labels
    unknown = sorted({s.removesuffix(POOL_AWARE) for s in labels} - set(configs) - set(peer_labels)
                     | {s for s in labels if s.endswith(POOL_AWARE) and s.startswith(PEER_PREFIX)})
    if unknown:
        raise SystemExit(f"unknown strategies {unknown}; choose among {sorted(configs) + peer_labels}")
    if "random" not in labels:
        labels = ["random", *labels]
    peer_ok = _peers.available() and not args.no_peer
    if not peer_ok:
        if not args.no_peer:
            print(f"{_peers.PEER} is not installed (pip install -e '.[bench]'): peer rows skipped", flush=True)
        labels = [s for s in labels if not s.startswith(PEER_PREFIX)]
    imbalanced_labels = [] if args.no_imbalanced else [
        s for s in (QUICK_IMBALANCED if args.quick else IMBALANCED) if peer_ok or not s.startswith(PEER_PREFIX)]
    if args.strategies:  # only the requested strategies, on the imbalanced pool too
        imbalanced_labels = [s for s in imbalanced_labels if s in labels]

    pool_aware = pool_aware_training(args.quick) if any(s.endswith(POOL_AWARE) for s in labels) else None
    imbalanced_labels = [s for s in imbalanced_labels if not s.endswith(POOL_AWARE)]
    jobs = [{"setting": "full", "label": "full data", "seed": s, "train": train} for s in range(seeds)]
    for setting, names, initial in (("balanced", labels, "stratified"), ("imbalanced", imbalanced_labels, "random")):
        for label in names:
            name, params = configs.get(label.removesuffix(POOL_AWARE), (label, None))
            extra = {"schedule": schedule}
            if label.endswith(POOL_AWARE):
                extra = {"schedule": schedule if args.quick else POOL_AWARE_SCHEDULE, "pool_aware": pool_aware}
            jobs += [{"setting": setting, "label": label, "name": name, "params": params, "seed": s,
                      "initial": initial, "train": train, **extra} for s in range(seeds)]
    # slowest first, so the two workers finish together
    slow = ("neuronal", "gradnorm", "coreset", "badge", "bald", POOL_AWARE)
    jobs.sort(key=lambda j: (not any(k in j["label"] for k in slow), j["setting"] != "full"))

    data = load_data()
    print(f"Active-learning label efficiency on MNIST: pool {POOL_SIZE}, test {TEST_SIZE}, schedule "
          f"{schedule[0]}..{schedule[-1]} ({len(schedule)} rounds), {seeds} seed(s), {len(labels)} strategies"
          f"{f' + {len(imbalanced_labels)} on the imbalanced pool' if imbalanced_labels else ''}; "
          f"{len(jobs)} jobs on {args.workers} workers", flush=True)
    pinned = _results.pin_cpu_kernels()  # before the workers start: they inherit it
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    results = []
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn"),
                             initializer=_init_worker) as executor:
        futures = [executor.submit(run_job, job) for job in jobs]
        for done, future in enumerate(as_completed(futures), 1):
            r = future.result()
            results.append(r)
            if "error" in r:
                what = f"FAILED {r['error'].splitlines()[0][:160]}"
            elif r["setting"] == "full":
                what = f"accuracy {r['accuracy']:.4f}"
            else:
                last = r["curve"][-1]
                what = (f"accuracy {last['accuracy']:.4f} at {last['labels']} labels, "
                        f"queries {sum(p['query_seconds'] for p in r['curve']):.1f} s")
            print(f"[{done:3d}/{len(jobs)}] {r['setting']:<10} {r['label']:<27} seed {r['seed']}: {what} "
                  f"({r['seconds']:.1f} s)", flush=True)
    wall = time.perf_counter() - started

    result = summarise(results, labels, imbalanced_labels, schedule, seeds, data)
    result["protocol"]["quick"] = args.quick
    result["protocol"]["cpu_kernels"] = _results.cpu_kernels(pinned, results)
    if pool_aware:
        result["pool_aware"] = summarise_pool_aware(result, pool_aware)
    if train:
        result["protocol"]["training_overrides"] = train
    result["summary"]["protocol"] = protocol(result)
    result["machine"] = _results.machine_info(load_before)
    result["wall_seconds"] = round(wall, 1)
    name = "al_label_efficiency" + ("_pool_aware" if pool_aware else "")
    # quick runs go where benchmarks.report never looks (results/quick/, ignored by git)
    output = args.output or (RESULTS / "quick" if args.quick else RESULTS) / f"{name}.json"
    if pool_aware:
        plot_curves(result, output.with_suffix(".png"))
    return _results.write_result(result, output, print_result, script="benchmarks.al_label_efficiency")


def protocol(result: dict) -> dict:
    """``summary.protocol`` from the result: a fixed protocol (schedule, model, training), so nothing is
    chosen from results; ``+pool`` cells read the training frozen on a validation split by
    ``benchmarks.pool_aware_tuning`` (its config and sha256)."""
    p, training = result["protocol"], (result.get("pool_aware") or {}).get("training")
    sizes = {"pool": p["pool_size"], "test": p["test_size"]}
    if result.get("imbalanced"):
        sizes["imbalanced_pool"] = result["imbalanced"]["pool_size"]
    extra = {"pool_aware_training": "chosen on a validation split of the pool by benchmarks.pool_aware_tuning; "
                                    "the test split is read once, here"} if training else {}
    return _results.protocol(
        split_sizes=sizes, model_selection="none", seeds=list(range(p["seeds"])),
        config={k: training[k] for k in ("config", "config_sha256")} if training else None,
        choices="none from results: a fixed schedule, model and training; best_strategy is reported, not used",
        cpu_kernels=p.get("cpu_kernels"), **extra)


def pool_aware_training(quick: bool) -> dict:
    """The frozen pool-aware training (method, params) and the hash of the config file it came from."""
    if not POOL_AWARE_CONFIG.exists():
        raise SystemExit(f"{POOL_AWARE_CONFIG.relative_to(ROOT)} is missing: run `python -m "
                         "benchmarks.pool_aware_tuning` (it chooses the training on a validation split)")
    config, ref = _results.config_file(POOL_AWARE_CONFIG.name)
    params = {**config["params"], **(POOL_AWARE_QUICK if quick else {})}
    return {"method": config["method"], "params": params, "candidate": config["candidate"], **ref}


def summarise_pool_aware(result: dict, pool_aware: dict) -> dict:
    """Per cell (strategy x training): labels to 95% and accuracy at 100/200/400; the best
    pool-aware cell against the best peer (target: at most 200 labels; stretch: at most 100)."""
    cells = {label: {"training": pool_aware["candidate"] if label.endswith(POOL_AWARE) else "supervised",
                     "labels_to_95pct": r["labels_to_95pct"],
                     "labels_to_95pct_per_seed": r["labels_to_95pct_per_seed"],
                     "accuracy_at": {str(n): r["accuracy_at"].get(str(n)) for n in POOL_AWARE_REPORT_AT}}
             for label, r in {**result["strategies"], **result["peers"]}.items()}
    reached = {k: c["labels_to_95pct"] for k, c in cells.items() if k.endswith(POOL_AWARE)
               and c["labels_to_95pct"] is not None}
    best = min(reached, key=reached.get) if reached else None
    peers = [c["labels_to_95pct"] for k, c in cells.items() if k.startswith(PEER_PREFIX)
             and c["labels_to_95pct"] is not None]
    best_labels = reached.get(best)
    return {"training": {k: pool_aware[k] for k in ("method", "params", "candidate", "config", "config_sha256")},
            "model_selection": "validation (benchmarks.pool_aware_tuning); the test split is read once, here",
            "cells": cells, "best": best, "best_labels": best_labels,
            "best_peer_labels": min(peers) if peers else None,
            "target_at_most_200": best_labels is not None and best_labels <= 200,
            "stretch_at_most_100": best_labels is not None and best_labels <= 100}


def plot_curves(result: dict, path: Path) -> None:
    """Accuracy against labels for every cell (pool-aware solid, supervised dashed, peers dotted)."""
    from distillery.components.core.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for label, r in {**result["strategies"], **result["peers"]}.items():
        style = "-" if label.endswith(POOL_AWARE) else ":" if label.startswith(PEER_PREFIX) else "--"
        ax.plot(r["curve"]["labels"], r["curve"]["accuracy_mean"], style, marker=".", label=label)
    ax.axhline(result["target_accuracy"], color="grey", lw=0.8)
    ax.text(1000, result["target_accuracy"], " 95% of full data", va="bottom", ha="right", color="grey")
    ax.set(xscale="log", xlabel="labels", ylabel="test accuracy (mean over seeds)",
           title="MNIST MLP: supervised vs pool-aware training, with the peer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _curve_stats(runs: list[dict]) -> dict:
    labels = [p["labels"] for p in runs[0]["curve"]]
    acc = np.array([[p["accuracy"] for p in r["curve"]] for r in runs])
    return {"labels": labels, "accuracy_mean": acc.mean(0).round(4).tolist(),
            "accuracy_std": acc.std(0).round(4).tolist(), "accuracy_per_seed": acc.round(4).tolist()}


def summarise(results: list[dict], labels: list[str], imbalanced_labels: list[str], schedule: list[int],
              seeds: int, data: dict) -> dict:
    from distillery.components.selection.loop import labels_to_reach

    full = [r["accuracy"] for r in results if r["setting"] == "full" and "error" not in r]
    full_acc = float(np.mean(full))
    target = TARGET_FRACTION * full_acc
    errors = {f"{r['setting']}/{r['label']}/seed {r['seed']}": r["error"] for r in results if "error" in r}

    strategies, peers = {}, {}
    for label in labels:
        runs = sorted((r for r in results if r["setting"] == "balanced" and r["label"] == label and "error" not in r),
                      key=lambda r: r["seed"])
        if not runs:
            continue
        curve = _curve_stats(runs)
        mean_curve = list(zip(curve["labels"], curve["accuracy_mean"]))
        entry = {
            "strategy": runs[0]["name"] if not label.startswith(PEER_PREFIX) else label,
            "params": runs[0]["params"],
            "seeds": len(runs),
            "curve": curve,
            "accuracy_at": {str(n): [round(float(np.mean(a)), 4), round(float(np.std(a)), 4)]
                            for n in REPORT_AT if n in curve["labels"]
                            for a in [[r["curve"][curve["labels"].index(n)]["accuracy"] for r in runs]]},
            "labels_to_95pct": _round(labels_to_reach(mean_curve, target)),
            "labels_to_95pct_per_seed": [_round(labels_to_reach([(p["labels"], p["accuracy"]) for p in r["curve"]],
                                                                target)) for r in runs],
            "query_seconds_total": round(float(np.mean([sum(p["query_seconds"] for p in r["curve"])
                                                        for r in runs])), 3),
            "job_seconds": round(float(np.mean([r["seconds"] for r in runs])), 2),
        }
        (peers if label.startswith(PEER_PREFIX) else strategies)[label] = entry

    # the selection targets compare strategies under supervised training (pool-aware cells: pool_aware)
    reached = {k: v["labels_to_95pct"] for k, v in strategies.items()
               if v["labels_to_95pct"] is not None and not k.endswith(POOL_AWARE)}
    non_random = {k: v for k, v in reached.items() if k != "random"}
    best = min(non_random, key=lambda k: (non_random[k], -strategies[k]["curve"]["accuracy_mean"][-1])) \
        if non_random else None
    peer_reached = [v["labels_to_95pct"] for v in peers.values() if v["labels_to_95pct"] is not None]
    targets = _targets(best, strategies, peer_reached, bool(peers), schedule)

    imbalanced = {}
    if imbalanced_labels:
        imbalanced = {"minority_class": MINORITY_CLASS, "pool_size": len(data["imbalanced"]),
                      "minority_in_pool": data["n_minority"], "initial": "random", "results": {}}
        for label in imbalanced_labels:
            runs = [r for r in results if r["setting"] == "imbalanced" and r["label"] == label and "error" not in r]
            if not runs:
                continue
            last = [r["curve"][-1] for r in runs]
            queries = [p["query_seconds"] for r in runs for p in r["curve"][:-1]]
            recall = [p["recall"][MINORITY_CLASS] for p in last]
            imbalanced["results"][label] = {
                "minority_recall": [round(float(np.mean(recall)), 4), round(float(np.std(recall)), 4)],
                "minority_labels": round(float(np.mean([p["class_counts"][MINORITY_CLASS] for p in last])), 2),
                "accuracy": [round(float(np.mean([p["accuracy"] for p in last])), 4),
                             round(float(np.std([p["accuracy"] for p in last])), 4)],
                "query_seconds_mean": round(float(np.mean(queries)), 4),
                "query_seconds_total": round(float(np.sum(queries) / len(runs)), 3),
                "minority_recall_curve": np.mean([[p["recall"][MINORITY_CLASS] for p in r["curve"]] for r in runs],
                                                 axis=0).round(4).tolist(),
                "minority_labels_curve": np.mean([[p["class_counts"][MINORITY_CLASS] for p in r["curve"]]
                                                  for r in runs], axis=0).round(2).tolist(),
            }

    from benchmarks import _peers

    return {
        "benchmark": "al_label_efficiency",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "protocol": {"dataset": "mnist (data/mnist, 5,000 digits)", "pool_size": POOL_SIZE, "test_size": TEST_SIZE,
                     "split": f"stratified, random_state={SPLIT_SEED}", "schedule": schedule, "seeds": seeds,
                     "initial_labels": "stratified (imbalanced pool: random)", "model": MODEL,
                     "training": "distillery.components.selection.loop.TRAIN_DEFAULTS, "
                                 "retrained from scratch each round",
                     "target": f"{TARGET_FRACTION:.0%} of full-data accuracy, on the seed-averaged curve",
                     "anchoral": ANCHORAL, "peer": f"{_peers.PEER} {_peers.peer_version()}"},
        "full_data_accuracy_per_seed": [round(a, 4) for a in full],
        "target_accuracy": round(target, 4),
        "strategies": strategies,
        "peers": peers,
        "imbalanced": imbalanced,
        "targets": targets,
        "errors": errors,
        "summary": {
            "full_data_accuracy": round(full_acc, 4),
            "labels_to_95pct": {k: v["labels_to_95pct"] for k, v in strategies.items()},
            "best_strategy": best,
            "peer": {k: v["labels_to_95pct"] for k, v in peers.items()},
        },
    }


def _targets(best, strategies, peer_reached, have_peer, schedule) -> dict:
    """Best strategy needs at most half the labels random needs, and no more than the best peer strategy.
    A curve that never reaches the target needs more than the schedule's last size: random then counts
    as ``> schedule[-1]`` (so "half" holds when best <= schedule[-1] / 2), a peer as never reaching it."""
    random_labels = strategies.get("random", {}).get("labels_to_95pct")
    best_labels = strategies[best]["labels_to_95pct"] if best else None
    if best_labels is None:
        half = False
    elif random_labels is None:
        half = best_labels <= schedule[-1] / 2
    else:
        half = best_labels <= random_labels / 2
    if not have_peer:
        vs_peer = None
    else:
        vs_peer = best_labels is not None and (not peer_reached or best_labels <= min(peer_reached))
    return {"best_at_most_half_of_random": half, "best_not_more_than_best_peer": vs_peer,
            "best_labels": best_labels, "random_labels": random_labels,
            "best_peer_labels": min(peer_reached) if peer_reached else None}


def _round(value):
    return None if value is None else round(float(value), 1)


def _fmt_labels(value) -> str:
    return "never" if value is None else f"{value:.0f}"


MISSING = "–"  # a point the run's schedule does not have (--quick)


def _pm(pair) -> str:
    """``mean ± std`` of a ``[mean, std]`` pair, or :data:`MISSING` where the schedule has no such point."""
    from benchmarks.report import pm

    return MISSING if pair is None else pm(pair)


def print_result(result: dict) -> None:
    print(markdown(result))


def markdown(result: dict, view: str | None = None) -> str:
    """The README's tables: a pool-aware result's cells, or every strategy with the imbalanced pool;
    ``view`` ``"combination"``: the top-level README's table of a pool-aware result."""
    if view not in (None, "combination"):
        raise ValueError(f"unknown view {view!r}: none or 'combination'")
    if view == "combination":
        return _combination(result)
    if result.get("pool_aware"):
        parts = [_pool_aware_head(result), _pool_aware_table(result), _pool_aware_targets(result)]
    else:
        parts = [_head(result), _strategy_table(result), _imbalanced_table(result), _targets_text(result),
                 _query_times(result), _anchoral(result)]
    if result["errors"]:
        parts.append("Failed runs: " + "; ".join(f"{key}: `{error.splitlines()[0][:200]}`"
                                                 for key, error in result["errors"].items()))
    return "\n\n".join(part for part in parts if part)


def _head(result: dict) -> str:
    from benchmarks.report import source

    m, p, s = result["machine"], result["protocol"], result["summary"]
    load = m["load_avg_1min"]
    return (f"{m['cores']} cores (load average {load['before']:.1f} before / {load['after']:.1f} after), "
            f"Python {m['python']}, torch {m['torch']}, scikit-learn {m['scikit-learn']}, {p['peer']}; "
            f"{p['seeds']} seed(s), wall {result['wall_seconds'] / 60:.0f} min "
            f"({source(result, 'al_label_efficiency.json')}). Full-data accuracy {s['full_data_accuracy']:.3f}, "
            f"target {result['target_accuracy']:.3f}.{_results.cpu_kernels_text(result)}")


def _strategy_table(result: dict) -> str:
    from benchmarks.report import pm, table

    rows, best = {**result["strategies"], **result["peers"]}, result["summary"]["best_strategy"]
    points = [n for n in REPORT_AT if any(str(n) in r["accuracy_at"] for r in rows.values())]
    body = []
    for label, r in rows.items():
        labels = _fmt_labels(r["labels_to_95pct"])
        body.append([f"**{label}**" if label == best else label,
                     *(pm(r["accuracy_at"][str(n)]) if str(n) in r["accuracy_at"] else "-" for n in points),
                     f"**{labels}**" if label == best else labels, f"{r['query_seconds_total']:.2f}"])
    return table(["strategy", *(f"acc@{n}" for n in points), "labels→95%", "query s"], body)


def _imbalanced_table(result: dict) -> str:
    from benchmarks.report import pm, table

    imb = result["imbalanced"]
    if not imb or not imb["results"]:
        return ""
    rows = [[label, pm(r["minority_recall"]), f"{r['minority_labels']:.1f}", pm(r["accuracy"]),
             f"{r['query_seconds_mean']:.3f}"] for label, r in imb["results"].items()]
    return (f"Imbalanced pool (class {imb['minority_class']}: {imb['minority_in_pool']} of {imb['pool_size']:,} "
            f"items, {imb['initial']} initial labels), at {result['protocol']['schedule'][-1]:,} labels:\n\n"
            + table(["strategy", "minority recall", "minority labels", "accuracy", "s / query"], rows))


def _targets_text(result: dict) -> str:
    t, s, last = result["targets"], result["summary"], result["protocol"]["schedule"][-1]
    random = result["strategies"]["random"]
    if t["random_labels"] is None:
        reach = (f"random does not reach it by {last:,} (accuracy {random['curve']['accuracy_mean'][-1]:.3f} at "
                 f"{last:,} labels)")
    else:
        reach = f"random reaches it at {_fmt_labels(t['random_labels'])}"
    peers = {k: v for k, v in s["peer"].items() if v is not None}
    best_peer = (f"the best peer strategy, {min(peers, key=peers.get)}, at {_fmt_labels(t['best_peer_labels'])} "
                 "labels" if peers else "no peer strategy reaches it")
    return (f"Targets: the best strategy, {s['best_strategy']}, reaches the target at {_fmt_labels(t['best_labels'])} "
            f"labels; {reach}; {best_peer}. Best at most half of random's labels: "
            f"`{t['best_at_most_half_of_random']}`; best not more than the best peer's: "
            f"`{t['best_not_more_than_best_peer']}`.")


def _query_times(result: dict) -> str:
    pairs = [(label.removeprefix(PEER_PREFIX), r) for label, r in result["peers"].items()
             if label.removeprefix(PEER_PREFIX) in result["strategies"]]
    if not pairs:
        return ""
    queries = len(result["protocol"]["schedule"]) - 1
    return (f"Query time over the {queries} queries, ours / the peer's: " + ", ".join(
        f"{name} {result['strategies'][name]['query_seconds_total']:.2f} / {r['query_seconds_total']:.2f} s"
        for name, r in pairs) + ".")


def _anchoral(result: dict) -> str:
    rows = (result["imbalanced"] or {}).get("results", {})
    pairs = [(label, label[len("anchoral("):-1]) for label in rows if label.startswith("anchoral(")]
    pairs = [(label, base) for label, base in pairs if base in rows]
    if not pairs:
        return ""
    return "AnchorAL on the imbalanced pool: " + "; ".join(
        f"{label} {rows[label]['minority_labels']:.1f} minority labels and {rows[label]['query_seconds_mean']:.3f} s "
        f"per query, against {rows[base]['minority_labels']:.1f} and {rows[base]['query_seconds_mean']:.3f} s for "
        f"{base}" for label, base in pairs) + "."


def _pool_aware_head(result: dict) -> str:
    from benchmarks.report import source

    m, pa = result["machine"], result["pool_aware"]
    return (f"{source(result, 'al_label_efficiency_pool_aware.json')} (plot "
            f"`results/al_label_efficiency_pool_aware.png`), {m['cores']} cores, {result['protocol']['seeds']} seeds, "
            f"{result['wall_seconds']:,.0f} s: full-data accuracy {result['summary']['full_data_accuracy']:.4f}, so "
            f"the 95% mark is {result['target_accuracy']:.4f}. The `+pool` cells train with "
            f"{pa['training']['candidate']} (`{pa['training']['config']}`).{_results.cpu_kernels_text(result)}")


def _pool_aware_table(result: dict) -> str:
    from benchmarks.report import table

    pa, peer = result["pool_aware"], result["protocol"]["peer"].split()[0]
    rows = []
    for label, cell in pa["cells"].items():
        labels = _fmt_labels(cell["labels_to_95pct"])
        per_seed = ", ".join(_fmt_labels(v) for v in cell["labels_to_95pct_per_seed"])
        rows.append([f"{label} ({peer})" if label.startswith(PEER_PREFIX) else label,
                     f"{f'**{labels}**' if label == pa['best'] else labels} ({per_seed})",
                     *(_pm(cell["accuracy_at"].get(str(n))) for n in POOL_AWARE_REPORT_AT)])
    return table(["cell", "labels to 95% (per seed)", *(f"acc@{n}" for n in POOL_AWARE_REPORT_AT)], rows, "llrrr")


def _pool_aware_targets(result: dict) -> str:
    pa = result["pool_aware"]

    def met(value):
        return "not measured" if value is None else "met" if value else "not met"

    return (f"Targets: best pool-aware cell at most 200 labels: **{met(pa['target_at_most_200'])}** ({pa['best']}, "
            f"{_fmt_labels(pa['best_labels'])} against the best peer's {_fmt_labels(pa['best_peer_labels'])}). "
            f"Stretch, at most 100: **{met(pa['stretch_at_most_100'])}**.")


def _combination(result: dict) -> str:
    """Labels to the 95% mark of every strategy with and without the pool-aware training, and the peer's."""
    from benchmarks.report import table

    cells, candidate = result["pool_aware"]["cells"], result["pool_aware"]["training"]["candidate"]
    last = result["protocol"]["schedule"][-1]

    def labels(cell):
        value = cell["labels_to_95pct"]
        return f"never (by {last:,})" if value is None else _fmt_labels(value)

    def mean(cell, n: int) -> str:
        pair = cell["accuracy_at"].get(str(n))
        return MISSING if pair is None else f"{pair[0]:.3f}"

    rows = [[label, labels(cell), labels(cells[label + POOL_AWARE]),
             " / ".join(mean(cells[label + POOL_AWARE], n) for n in (100, 400))]
            for label, cell in cells.items() if label + POOL_AWARE in cells]
    peers = {k.removeprefix(PEER_PREFIX): cell for k, cell in cells.items() if k.startswith(PEER_PREFIX)}
    if peers:
        rows.append([f"peer: {result['protocol']['peer'].split()[0]} {' / '.join(peers)}",
                     " / ".join(labels(cell) for cell in peers.values()), "-", "-"])
    head = ["strategy", "supervised", f"+ {candidate} on the pool", f"accuracy at 100 / 400 labels with {candidate}"]
    return table(head, rows, "llll")


if __name__ == "__main__":
    sys.exit(main())
