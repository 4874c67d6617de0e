"""Seconds and peak memory of one active-learning query on a 1,000,000-item pool, for every strategy.

The pool is synthetic and seeded: 1,000,000 x 64 float32 features from a 10-class Gaussian mixture
(class means ~ N(0, 0.3^2) per feature, unit noise). The model is an MLP 64-128-10 with dropout 0.2
(``models.build("mlp", ...)``), trained with the active-learning loop's budget on 200 labelled items
drawn from the same mixture (20 per class), so its probabilities are far from uniform. Each query
asks for 100 items with that model and labelled set.

Measured per strategy, each in its own fresh process (forked from a clean server process that has
only imported torch, numpy and our modules, so no earlier run's memory counts):

* seconds (one torch/BLAS thread per measurement by default, ``--threads``: on a shared 2-core
  machine a second thread made per-sample-gradient strategies 10x slower, not faster): wall time of
  ``resolve(name, seed, params).select(Pool(...), 100)``, including the model's
  forward pass over the pool (a fresh ``Pool`` each time, so no cached outputs); the best of
  ``--repeats`` runs (a run slower than 120 s is not repeated, so every row the targets compare, ours
  and the peer's, is a best of 3), with the number of runs and their mean ± std beside it. The peer's
  queries and the floors are timed by the same code, same rule;
* peak MB: the process's peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), which
  sees torch's allocations too (tracemalloc does not); it includes the interpreter with torch
  (``base MB``, measured after loading the pool and model) and the 256 MB pool itself.

Wrappers: AnchorAL with the registry's settings (subpool 10,000, 50 neighbours, 10 anchors per
class) over BADGE, Expected-/Entropy-GradNorm and entropy; the stochastic samplers over entropy; the
stream selector over margin. A strategy that does not finish in ``--timeout`` seconds (default 300) is
stopped and reported as such in the table, never dropped.

Floors, in the same way, each measured first and again last (load drifts over a long run; the best
run of both counts):

* ``floor_seconds``: a bare torch forward pass over the pool (eval, no grad, same chunking as
  ``Pool``), softmax, entropy and ``torch.topk``: what entropy and margin cannot beat by much;
* MC-dropout floor: T = 10 passes with dropout on, batched as one ``(T*C, D)`` forward per chunk,
  softmax and the mean over passes: what BALD cannot beat by much.

Peer (scikit-activeml, ``pip install -e ".[bench]"``; see ``benchmarks/_peers.py``): its
``UncertaintySampling`` (entropy, margin), ``GreedyBALD`` and ``Badge`` querying 100 items with the
same model wrapped as its classifier and ``X = [labelled; pool]``, NaN labels for the pool. Its
BADGE materialises the ``(N, K*H)`` float64 gradient embeddings (10 GB at 1M x 10 x 128), so on
pools over ``PEER_BADGE_CANDIDATES`` items it is given that many random candidates (its
``candidates`` argument) and the table says so: a lower bound on what the full pool would cost it.

    python -m benchmarks.al_selection_speed            # 1M pool (~15 min on 2 cores)
    python -m benchmarks.al_selection_speed --quick    # 20,000-item pool, every strategy once
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

POOL_SIZE, QUICK_POOL_SIZE = 1_000_000, 20_000
DIM, CLASSES, HIDDEN, DROPOUT = 64, 10, 128, 0.2
LABELLED_PER_CLASS = 20
BATCH = 100
MC_PASSES = 10
TIMEOUT = 300
SLOW_RUN = 120.0  # a run slower than this is not repeated: above every row with a target (the peer's BALD, ~30 s)
PEER_BADGE_CANDIDATES = 100_000
META = {"name": "synthetic", "classes": [str(c) for c in range(CLASSES)], "feature_shape": [DIM],
        "value_range": [0.0, 1.0]}
MODEL = {"arch": "mlp", "hidden": HIDDEN, "dropout": DROPOUT}
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
PRELOAD = ["torch", "numpy", "scipy.special", "sklearn.cluster", "faiss", "distillery.components.selection.strategies",
           "distillery.components.selection.pool", "distillery.components.core.models"]


def strategy_configs() -> dict[str, tuple[str, dict]]:
    """label -> (registered name, params): every registered strategy; AnchorAL over each expensive one."""
    from benchmarks import _results

    return _results.strategy_configs([(f"anchoral({base})", {"base": base})
                                      for base in ("badge", "expected_gradnorm", "entropy_gradnorm", "entropy")])


PEER_STRATEGIES = ("entropy", "margin", "badge", "bald")
FLOORS = ("floor:forward_entropy_topk", "floor:mc_dropout")


# --- data and model ---------------------------------------------------------------------------------

def make_data(pool_size: int, folder: Path) -> dict:
    """Write the pool, the labelled set and the trained model under ``folder``; return their paths."""
    import torch

    from distillery.components.core import models
    from distillery.components.selection.loop import train_model

    rng = np.random.default_rng(0)
    means = rng.normal(0.0, 0.3, (CLASSES, DIM)).astype(np.float32)

    def sample(labels):
        return means[labels] + rng.standard_normal((len(labels), DIM), dtype=np.float32)

    pool_labels = rng.integers(0, CLASSES, pool_size)
    pool = sample(pool_labels)
    labelled_labels = np.repeat(np.arange(CLASSES), LABELLED_PER_CLASS)
    labelled = sample(labelled_labels)
    torch.manual_seed(0)
    model = train_model(labelled, labelled_labels, META, MODEL, {}, seed=0)
    paths = {"pool": folder / "pool.npy", "pool_labels": folder / "pool_labels.npy",
             "labelled": folder / "labelled.npy", "labelled_labels": folder / "labelled_labels.npy",
             "model": folder / "model.pt"}
    np.save(paths["pool"], pool)
    np.save(paths["pool_labels"], pool_labels)
    np.save(paths["labelled"], labelled)
    np.save(paths["labelled_labels"], labelled_labels)
    kwargs = {k: v for k, v in MODEL.items() if k != "arch"}
    models.save(model, str(paths["model"]), MODEL["arch"], META, kwargs)
    probs = models.predict_proba(model, pool[:100_000]).numpy()
    return {"paths": {k: str(v) for k, v in paths.items()},
            "model_pool_accuracy": float((probs.argmax(1) == pool_labels[:100_000]).mean()),
            "mean_max_probability": float(probs.max(1).mean())}


# --- one measurement (runs in a fresh forked process) -----------------------------------------------

def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def _current_rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2 ** 20
    except ImportError:
        return _rss_mb()


def measure(job: dict, paths: dict, repeats: int, threads: int, queue) -> None:
    """Run ``job`` ``repeats`` times (once if slow) and put ``{seconds, runs, peak_mb, base_mb}``."""
    try:
        import torch

        from distillery.components.core import models

        torch.set_num_threads(threads)
        pool = np.load(paths["pool"])
        labelled = np.load(paths["labelled"])
        labelled_labels = np.load(paths["labelled_labels"])
        model = models.load(paths["model"])
        run = _runner(job, pool, labelled, labelled_labels, model)
        base = _current_rss_mb()
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            run()
            runs.append(time.perf_counter() - started)
            if runs[-1] > SLOW_RUN:
                break
        queue.put({"seconds": min(runs), "runs": runs, "peak_mb": _rss_mb(), "base_mb": base})
    except BaseException as exc:  # report, do not hang the parent
        import traceback

        queue.put({"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]})


def _runner(job: dict, pool: np.ndarray, labelled: np.ndarray, labelled_labels: np.ndarray, model):
    """A zero-argument callable doing one query (everything it needs to start from is built here)."""
    kind, label = job["kind"], job["label"]
    if kind == "ours":
        from distillery.components.selection.pool import Pool
        from distillery.components.selection.strategies import resolve

        def run():
            view = Pool(pool, model, labelled, labelled_labels, num_classes=CLASSES)
            positions, _ = resolve(job["name"], 0, job["params"]).select(view, BATCH)
            assert len(set(positions.tolist())) == BATCH
        return run
    if kind == "peer":
        from benchmarks import _peers

        name = label.split(":", 1)[1]
        candidates = pool
        if job.get("candidates"):
            rows = np.sort(np.random.default_rng(0).choice(len(pool), job["candidates"], replace=False))
            candidates = pool[rows]

        def run():
            clf = _peers.make_classifier(model, CLASSES, seed=0)
            chosen = _peers.query(name, 0, clf, candidates, labelled, labelled_labels, BATCH, MC_PASSES)
            assert len(set(np.asarray(chosen).tolist())) == BATCH
        return run
    if label == "floor:forward_entropy_topk":
        return lambda: floor_forward_entropy_topk(model, pool, BATCH)
    if label == "floor:mc_dropout":
        return lambda: floor_mc_dropout(model, pool, MC_PASSES)
    raise ValueError(f"unknown job {label!r}")


def floor_forward_entropy_topk(model, features: np.ndarray, k: int, chunk_size: int = 65536):
    """Bare torch: forward pass in chunks, softmax, entropy, top-k."""
    import torch

    model.eval()
    entropy = torch.empty(len(features))
    with torch.no_grad():
        for start in range(0, len(features), chunk_size):
            logp = model(torch.from_numpy(features[start:start + chunk_size])).log_softmax(-1)
            entropy[start:start + len(logp)] = -(logp.exp() * logp).sum(-1)
    return torch.topk(entropy, k).indices.numpy()


def floor_mc_dropout(model, features: np.ndarray, passes: int, rows_per_forward: int = 65536):
    """Bare torch: ``passes`` MC-dropout forward passes batched as one ``(passes*C, D)`` forward per chunk,
    softmax, mean over passes."""
    import torch

    chunk = max(1, rows_per_forward // passes)
    model.eval()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.train()
    mean = torch.empty(len(features), CLASSES)
    try:
        with torch.no_grad():
            for start in range(0, len(features), chunk):
                x = torch.from_numpy(features[start:start + chunk])
                probs = model(x.repeat(passes, 1)).softmax(-1).reshape(passes, len(x), -1)
                mean[start:start + len(x)] = probs.mean(0)
    finally:
        model.eval()
    return mean


# --- the benchmark ----------------------------------------------------------------------------------

def run_jobs(jobs: list[dict], paths: dict, repeats: int, timeout: float, threads: int) -> list[dict]:
    # BLAS and OpenMP pools of the measuring processes (numpy/scikit-learn in the peer, torch in ours):
    # the fork server is a fresh interpreter, so these apply before it imports anything
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", *PRELOAD])
    results = []
    for index, job in enumerate(jobs, 1):
        queue = context.Queue()
        process = context.Process(target=measure, args=(job, paths, repeats, threads, queue))
        started = time.perf_counter()
        process.start()
        result = None
        deadline = started + timeout
        while result is None:
            try:
                result = queue.get(timeout=1.0)
            except Exception:
                if not process.is_alive():
                    result = {"error": f"the process died (exit code {process.exitcode}; out of memory?)"}
                elif time.perf_counter() > deadline:
                    process.kill()
                    result = {"timeout": True, "error": f"stopped after {timeout:.0f} s (timeout)"}
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()
        entry = {**job, **result}
        results.append(entry)
        if "seconds" in entry:
            what = (f"{entry['seconds']:8.3f} s (runs {', '.join(f'{t:.3f}' for t in entry['runs'])}), "
                    f"peak {entry['peak_mb']:.0f} MB")
        else:
            what = entry["error"].splitlines()[0][:200]
        print(f"[{index:2d}/{len(jobs)}] {job['label']:<32} {what}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    from benchmarks import _peers

    configs = strategy_configs()
    peer_labels = [f"peer:{s}" for s in PEER_STRATEGIES]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_POOL_SIZE:,}-item pool, one run each")
    parser.add_argument("--pool-size", type=int, help=f"pool size (default {POOL_SIZE:,})")
    parser.add_argument("--strategies", help=f"comma-separated labels among {sorted(configs) + peer_labels} "
                                             "(default: all; floors always run)")
    parser.add_argument("--repeats", type=int, help="runs per strategy, best reported (default 3, 1 with --quick)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds before a strategy is stopped "
                                                                       "(default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and BLAS threads of every measurement, ours and the peer's (default: %(default)s)")
    parser.add_argument("--no-peer", action="store_true", help="skip the peer library")
    parser.add_argument("--output", type=Path, help="result JSON (default: benchmarks/results/"
                                                    "al_selection_speed.json, "
                                                    "quick/al_selection_speed.json with --quick)")
    args = parser.parse_args(argv)
    pool_size = args.pool_size or (QUICK_POOL_SIZE if args.quick else POOL_SIZE)
    repeats = args.repeats or (1 if args.quick else 3)
    labels = [s.strip() for s in args.strategies.split(",")] if args.strategies else list(configs) + peer_labels
    unknown = sorted(set(labels) - set(configs) - set(peer_labels))
    if unknown:
        raise SystemExit(f"unknown strategies {unknown}; choose among {sorted(configs) + peer_labels}")
    if args.no_peer or not _peers.available():
        if not args.no_peer:
            print(f"{_peers.PEER} is not installed (pip install -e '.[bench]'): peer rows skipped", flush=True)
        labels = [s for s in labels if not s.startswith("peer:")]

    jobs = [{"kind": "floor", "label": f} for f in FLOORS]
    for label in labels:
        if label.startswith("peer:"):
            job = {"kind": "peer", "label": label}
            if label == "peer:badge" and pool_size > PEER_BADGE_CANDIDATES:
                job["candidates"] = PEER_BADGE_CANDIDATES
            jobs.append(job)
        else:
            name, params = configs[label]
            jobs.append({"kind": "ours", "label": label, "name": name, "params": params})
    # floors again at the end: the machine's load drifts over a long run, the best of both counts
    jobs += [{"kind": "floor", "label": f} for f in FLOORS]

    import torch

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="distillery-al-speed-") as tmp:
        print(f"Generating a {pool_size:,} x {DIM} pool and training the {DIM}-{HIDDEN}-{CLASSES} MLP on "
              f"{CLASSES * LABELLED_PER_CLASS} labels ...", flush=True)
        data = make_data(pool_size, Path(tmp))
        print(f"model accuracy on the pool {data['model_pool_accuracy']:.3f}, mean max probability "
              f"{data['mean_max_probability']:.3f}; {len(jobs)} measurements, each in a fresh process, best of "
              f"{repeats}, timeout {args.timeout:.0f} s", flush=True)
        started = time.perf_counter()
        results = run_jobs(jobs, data["paths"], repeats, args.timeout, args.threads)
        wall = time.perf_counter() - started

    result = summarise(results, pool_size, repeats, args.timeout, data)
    result["protocol"]["threads"] = args.threads
    from benchmarks import _results

    result["machine"] = _results.machine_info(load_before)
    result["wall_seconds"] = round(wall, 1)
    # quick runs go where benchmarks.report never looks (results/quick/, ignored by git)
    output = args.output or (RESULTS / "quick" if args.quick else RESULTS) / "al_selection_speed.json"
    return _results.write_result(result, output, print_result, script="benchmarks.al_selection_speed")


def _r(value, digits=4):
    return None if value is None else round(float(value), digits)


def _merge_floors(results: list[dict]) -> list[dict]:
    """One entry per floor: the runs of its measurements at the start and at the end, the best counting."""
    merged, floors = [], {}
    for r in results:
        if r["kind"] != "floor":
            merged.append(r)
        elif r["label"] not in floors:
            floors[r["label"]] = dict(r)
            merged.append(floors[r["label"]])
        elif "seconds" in r:
            first = floors[r["label"]]
            if "seconds" not in first:
                first.clear()
                first.update(r)
            else:
                first["runs"] = first["runs"] + r["runs"]
                first["seconds"] = min(first["runs"])
                first["peak_mb"] = max(first["peak_mb"], r["peak_mb"])
    return merged


def summarise(results: list[dict], pool_size: int, repeats: int, timeout: float, data: dict) -> dict:
    rows = {}
    for r in _merge_floors(results):
        runs = r.get("runs", [])
        rows[r["label"]] = {
            "kind": r["kind"],
            "strategy": r.get("name"), "params": r.get("params"),
            # best of the runs, and every run's mean ± std beside it (ours, the peer's and the floors alike)
            "seconds": _r(r.get("seconds")), "runs": [_r(t) for t in runs], "n_runs": len(runs),
            "runs_mean": _r(np.mean(runs)) if runs else None, "runs_std": _r(np.std(runs)) if runs else None,
            "peak_mb": _r(r.get("peak_mb"), 1), "base_mb": _r(r.get("base_mb"), 1),
            "candidates": r.get("candidates"),
            "timeout": bool(r.get("timeout")), "error": r.get("error"),
        }
    ours = {k: v for k, v in rows.items() if v["kind"] == "ours"}
    peer = {k.split(":", 1)[1]: v for k, v in rows.items() if v["kind"] == "peer"}
    floor = rows["floor:forward_entropy_topk"]["seconds"]
    mc_floor = rows["floor:mc_dropout"]["seconds"]

    def seconds(label):
        return ours.get(label, {}).get("seconds")

    def within(label, reference, factor=1.5):
        s = seconds(label)
        return None if s is None or reference is None else s <= factor * reference

    targets = {
        "entropy_within_1.5x_floor": within("entropy", floor),
        "margin_within_1.5x_floor": within("margin", floor),
        "bald_within_1.5x_mc_dropout_floor": within("bald", mc_floor),
    }
    for label in ("anchoral(expected_gradnorm)", "anchoral(entropy_gradnorm)", "anchoral(badge)"):
        s = seconds(label)
        targets[f"{label}_under_10s"] = None if s is None else s < 10.0
    for name, p in peer.items():
        s = seconds(name)
        # a peer that timed out or failed is slower than anything that finished
        targets[f"{name}_faster_than_peer"] = None if s is None else (p["seconds"] is None or s < p["seconds"])
    targets["all"] = all(v for v in targets.values() if v is not None) and None not in targets.values()

    from benchmarks import _peers, _results

    return {
        "benchmark": "al_selection_speed",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "protocol": {"pool": f"{pool_size:,} x {DIM} float32, 10-class Gaussian mixture, seed 0",
                     "model": MODEL, "labelled": CLASSES * LABELLED_PER_CLASS, "batch": BATCH,
                     "mc_passes": MC_PASSES, "repeats": repeats, "timeout_s": timeout,
                     "repeat_rule": f"every measurement (ours, the peer's, the floors) runs {repeats} time(s) in "
                                    f"its own process and reports the best; a run slower than {SLOW_RUN:g} s is "
                                    "not repeated; n_runs, runs_mean and runs_std per row",
                     "slow_run_s": SLOW_RUN,
                     "model_pool_accuracy": _r(data["model_pool_accuracy"]),
                     "mean_max_probability": _r(data["mean_max_probability"]),
                     "peer": f"{_peers.PEER} {_peers.peer_version()}",
                     "peer_badge_candidates": peer.get("badge", {}).get("candidates")},
        "strategies": ours,
        "peers": peer,
        "floors": {"forward_entropy_topk": rows["floor:forward_entropy_topk"], "mc_dropout": rows["floor:mc_dropout"]},
        "targets": targets,
        "summary": {
            "pool_size": pool_size,
            "seconds": {k: v["seconds"] for k, v in ours.items()},
            "peak_mb": {k: v["peak_mb"] for k, v in ours.items()},
            "floor_seconds": floor,
            "peer_seconds": {k: v["seconds"] for k, v in peer.items()},
            "protocol": _results.protocol(split_sizes={"pool": pool_size, "labelled": CLASSES * LABELLED_PER_CLASS},
                                          model_selection="none", seeds=[0], repeats=repeats, slow_run_s=SLOW_RUN),
        },
    }


def print_result(result: dict) -> None:
    print(markdown(result))


def markdown(result: dict) -> str:
    return "\n\n".join(part for part in (_head(result), _table(result), _targets(result), _against_peer(result),
                                          _anchoral(result)) if part)


def _head(result: dict) -> str:
    from benchmarks.report import source

    m, p, floors = result["machine"], result["protocol"], result["floors"]
    base = sorted({round(r["base_mb"]) for r in result["strategies"].values() if r["base_mb"] is not None})
    timed_out = [label for label, r in {**result["strategies"], **result["peers"]}.items() if r["timeout"]]
    return (f"{m['cores']} cores (load average {m['load_avg_1min']['before']:.1f} before / "
            f"{m['load_avg_1min']['after']:.1f} after), {p['threads']} thread(s) per measurement, "
            f"Python {m['python']}, torch {m['torch']}, {p['peer']}; best of {p['repeats']}, "
            f"wall {result['wall_seconds'] / 60:.0f} min "
            f"({source(result, 'al_selection_speed.json')}). Pool: {p['pool']}; the model's accuracy on it "
            f"{p['model_pool_accuracy']:.2f}, mean top probability {p['mean_max_probability']:.2f}. Floors: "
            f"forward + entropy + top-k {floors['forward_entropy_topk']['seconds']:.2f} s; MC-dropout forward "
            f"(T = {p['mc_passes']}) {floors['mc_dropout']['seconds']:.1f} s. Base MB (interpreter, torch, pool and "
            f"model): {_span(base)}. Timed out: {', '.join(timed_out) or 'none'}.")


def _span(values: list[int]) -> str:
    return f"{values[0]:,} for every row" if len(values) == 1 else f"{values[0]:,}-{values[-1]:,}"


def _table(result: dict) -> str:
    from benchmarks.report import table

    floor, mc = result["floors"]["forward_entropy_topk"]["seconds"], result["floors"]["mc_dropout"]["seconds"]
    rows = []
    for label, r in result["strategies"].items():
        peer = result["peers"].get(label)
        ratio = "-" if r["seconds"] is None else f"{r['seconds'] / (mc if label == 'bald' else floor):.2f}x" + \
            (" (MC floor)" if label == "bald" else "")
        rows.append([label, _seconds(r), _mb(r), ratio, _seconds(peer) if peer else "", _mb(peer) if peer else ""])
    return table(["strategy", "seconds", "peak MB", "÷ floor", "peer s", "peer peak MB"], rows)


def _seconds(r: dict, candidates: bool = True) -> str:
    if r["timeout"] or r["error"] or r["seconds"] is None:
        return "TIMEOUT" if r["timeout"] else "FAILED"
    return f"{r['seconds']:.3f}" + (f" on {r['candidates']:,} candidates" if candidates and r.get("candidates") else "")


def _mb(r: dict) -> str:
    return "-" if r["peak_mb"] is None else f"{r['peak_mb']:,.0f}"


def _targets(result: dict) -> str:
    targets = {k: v for k, v in result["targets"].items() if k != "all"}
    met = sum(v is True for v in targets.values())
    return (f"Targets (`targets` in the JSON): {met} of {len(targets)} met"
            + (": " + ", ".join(f"`{k}` {v}" for k, v in targets.items() if v is not True) if met < len(targets)
               else "") + ".")


def _against_peer(result: dict) -> str:
    ours = result["strategies"]
    pairs = [(name, p) for name, p in result["peers"].items() if name in ours and ours[name]["seconds"] is not None]
    if not pairs:
        return ""
    return "Against the peer, seconds and peak MB, ours / the peer's: " + "; ".join(
        f"{name} {_seconds(ours[name])} / {_seconds(p, False)} s, {_mb(ours[name])} / {_mb(p)} MB"
        + (f" (the peer on {p['candidates']:,} candidates)" if p.get("candidates") else "") for name, p in pairs) + "."


def _anchoral(result: dict) -> str:
    ours = result["strategies"]
    pairs = [(label, label[len("anchoral("):-1]) for label in ours if label.startswith("anchoral(")]
    pairs = [(a, b) for a, b in pairs if b in ours and ours[a]["seconds"] and ours[b]["seconds"]]
    if not pairs:
        return ""

    def over_base(label):
        return f"{ours[label]['peak_mb'] - ours[label]['base_mb']:,.0f}"

    return "AnchorAL, seconds and peak MB over the base, without / with it: " + "; ".join(
        f"{base} {ours[base]['seconds']:.1f} / {ours[label]['seconds']:.1f} s "
        f"({ours[base]['seconds'] / ours[label]['seconds']:.1f}x), {over_base(base)} / {over_base(label)} MB"
        for label, base in pairs) + "."


if __name__ == "__main__":
    sys.exit(main())
