"""Knowledge distillation on MNIST, reported on the untouched test split: every student-distillation
method against the same student trained alone and against torchdistill's KD, with plenty and with
scarce labels; dataset distillation and the backdoor audit; RELIANT's fairness.

Protocol (``summary.protocol`` in the JSON): every choice was made beforehand on a validation split
by ``python -m benchmarks.distillation_tuning`` and frozen in ``benchmarks/configs/distillation.json``
(this run records its sha256): each method's variant, which student and method the targets speak
for, RELIANT's bias weight. This run trains on all 4,000 training digits and reads the 1,000 test
images once. Data, settings, rows and the peer: :mod:`benchmarks.distillation_rows`.

Budgets. ``E`` (the config's ``epochs``, 45: the issue's anchors' budget) is the number of passes a
student makes over its training data: Hinton KD, LEAD and the peer train ``E`` epochs; FitNets
``E // 5`` hint epochs then the rest of KD; PROD ``E`` over the stages of its teacher chain (plus
hard-subset epochs, and it re-trains a copy of the teacher for its weaker snapshots). A model trained
on 200 labels alone gets ``20 x E`` epochs, as many optimiser steps as ``E`` passes over labels and
pool. Because the methods do not all spend the same, every row reports what it spent, counted while it
ran (:mod:`benchmarks._compute`): optimiser steps and training FLOPs, teacher forward passes and side
training included, and its ratio to Hinton KD in the same cell.

The peer: torchdistill 1.1.5's ``KDLoss`` (``pip install --no-deps torchdistill==1.1.5``; with its
dependencies pip would replace torch 2.13.0 by 2.14.1) inside this project's training loop, same seed,
batch order and optimiser. It computes the same loss as ``hinton_kd``; ``peer_equivalence`` in the
JSON measures how close the two runs are after one epoch, which is what explains their final gap.

    nice -n 10 python -m benchmarks.distillation --jobs 2    # 3 seeds, E = 45 (~50 min on 2 cores)
    python -m benchmarks.distillation --quick                # smoke run: 1 seed, E = 3, 1,000 images

Dataset distillation (:func:`benchmarks.dataset_distillation.evaluate`): a model trained on 10 and 50
distribution-matching images per class vs as many random real ones; the backdoor audit against a
clean, a NAIVEATTACK and a DOORPING distilled set, with a 4x4 trigger on 5% of the data and at the
strength methods.md specifies, a 2x2 trigger on 1%.
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
from benchmarks import distillation_rows as rows
from benchmarks.distillation_rows import ALONE, PEER, STUDENTS, TEACHER

RESULTS = _results.ROOT / "benchmarks" / "results"
CONFIG = "distillation.json"
DM_SETTINGS = {"iterations": 200, "width": 16, "batch_real": 32, "epochs": 200, "draws": 2}
FAIR_SEEDS = 3
QUICK = {"seeds": 1, "epochs": 3, "train_size": 1000,  # 3: one epoch per PROD stage (prod_stage_count)
         "dm": {"iterations": 2, "width": 8, "batch_real": 8, "epochs": 2, "draws": 1}}
SETTINGS = ("full", "scarce")


# ---------------------------------------------------------------------------- jobs


def dataset_distillation_job(dm: dict) -> dict:
    """Dataset distillation and the backdoor audits (one job of ``--jobs``), on the test split."""
    import torch

    torch.set_num_threads(1)
    train, x_test, y_test = dataset_distillation.mnist_split()
    return dataset_distillation.evaluate(train, x_test, y_test, **dm, log=rows.log)


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


# ---------------------------------------------------------------------------- summaries


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


def stats(values: list[float]) -> dict:
    return {"accuracy_mean": float(np.mean(values)), "accuracy_std": float(np.std(values)), "accuracy": values}


def knowledge_distillation(per_seed: list[dict], *, budget: int, students: list[str], train_size: int | None) -> dict:
    """Both settings summarised over the seeds: per row accuracy (mean, std), seconds, steps and FLOPs
    and their ratio to Hinton KD's in the same cell; parameters and inference times."""
    import torch

    from distillery.components.core import models

    torch.set_num_threads(1)
    full, scarce, x_test, _, meta = rows.settings_data("test", train_size)
    out = {}
    for setting in SETTINGS:
        summary = rows.summarise_rows(per_seed, setting)
        for cell in summary.values():
            kd = cell["hinton_kd"]
            for row in cell.values():
                row["steps_vs_kd"], row["flops_vs_kd"] = row["steps"] / kd["steps"], row["flops"] / kd["flops"]
        out[setting] = summary
    teacher_params = models.count_parameters(models.build(TEACHER[0], meta, **TEACHER[1]))

    def teacher_stats(key: str) -> dict:
        return {**stats([seed[key]["accuracy"] for seed in per_seed]),
                "steps": per_seed[0][key]["steps"], "flops": per_seed[0][key]["flops"]}

    return {
        "teacher": {"arch": TEACHER[0], "arch_kwargs": TEACHER[1], "params": teacher_params,
                    "ms_per_1000": inference_ms(*TEACHER, meta, x_test[:1000]), **teacher_stats("teacher")},
        "students": {s: {"arch": STUDENTS[s][0], "arch_kwargs": STUDENTS[s][1],
                         "params": models.count_parameters(models.build(STUDENTS[s][0], meta, **STUDENTS[s][1])),
                         "ms_per_1000": inference_ms(*STUDENTS[s], meta, x_test[:1000])} for s in students},
        **out,
        "scarce_setting": {"labels": len(scarce["y"]), "unlabelled": len(scarce["pool"]),
                           "label_only_epochs": rows.label_only_epochs(budget, scarce),
                           "teacher": teacher_stats("scarce_teacher")},
        "peer_status": rows.peer_available()[1], "train_size": len(full["y"]),
        "peer_equivalence": [seed["peer_equivalence"] for seed in per_seed if "peer_equivalence" in seed],
        "epochs": {name: rows.budget_params(name, budget, budget) for name in ("hinton_kd", "fitnets", "lead", "prod")}
        | {ALONE: budget, PEER: budget},
    }


def peer_comparison(kd: dict) -> dict:
    """Per cell (student, setting): each row against the peer's KD in the same cell, its difference and
    whether it beats or trails the peer by more than one standard deviation (the larger of the two)."""
    out = {}
    for setting in SETTINGS:
        for student, cell in kd[setting].items():
            peer = cell.get(PEER)
            if peer is None:
                continue
            out[f"{student}, {setting}"] = {
                row: {"difference": r["accuracy_mean"] - peer["accuracy_mean"],
                      "one_std": (margin := max(r["accuracy_std"], peer["accuracy_std"])),
                      "verdict": ("better" if r["accuracy_mean"] - peer["accuracy_mean"] > margin else
                                  "worse" if peer["accuracy_mean"] - r["accuracy_mean"] > margin else "within noise")}
                for row, r in cell.items() if row != PEER}
    return out


def targets(kd: dict, dd: dict, fair: dict, pick: dict) -> dict:
    """The issue's targets, for the (student, method) chosen on validation; ``None`` where the run
    cannot tell (no peer)."""
    teacher = kd["teacher"]
    methods = ("hinton_kd", "fitnets", "lead", "prod")

    def mean(setting: str, student: str, row: str) -> float:
        return kd[setting][student][row]["accuracy_mean"]

    def picked(setting: str) -> dict:
        return kd[setting][pick[setting]["student"]][pick[setting]["method"]]

    full_pick, peer = picked("full"), kd["full"][pick["full"]["student"]].get(PEER)
    beats_peer = None if peer is None else \
        full_pick["accuracy_mean"] - peer["accuracy_mean"] > max(full_pick["accuracy_std"], peer["accuracy_std"])
    small = 20 * kd["students"][pick["full"]["student"]]["params"] <= teacher["params"]
    return {
        "picked_student_within_0.2_points_of_teacher_at_20x_fewer_params":
            small and full_pick["accuracy_mean"] >= teacher["accuracy_mean"] - 0.002,
        "picked_student_beats_peer_kd_in_its_cell_by_more_than_one_std": beats_peer,
        **{f"every_method_beats_alone_{setting}": all(mean(setting, s, m) > mean(setting, s, ALONE)
                                                     for s in kd[setting] for m in methods) for setting in SETTINGS},
        "lead_or_prod_at_least_kd": all(max(mean(setting, s, "lead"), mean(setting, s, "prod"))
                                        >= mean(setting, s, "hinton_kd") for setting in SETTINGS for s in kd[setting]),
        "scarce_picked_student_reaches_scarce_teacher":
            picked("scarce")["accuracy_mean"] >= kd["scarce_setting"]["teacher"]["accuracy_mean"],
        "dm_beats_random_real_at_10_per_class": dd["accuracy"]["10"]["dm"] > dd["accuracy"]["10"]["random_real_mean"],
        "reliant_lowers_delta_sp_losing_at_most_2_points":
            fair["reliant"]["delta_sp_mean"] < fair["hinton_kd"]["delta_sp_mean"]
            and fair["reliant"]["accuracy_mean"] >= fair["hinton_kd"]["accuracy_mean"] - 0.02,
    }


def summary(kd: dict, dd: dict, pick: dict, protocol: dict) -> dict:
    """The headline numbers: the picked student's rows per setting, the peer, DM, the audits."""
    def cell(setting: str) -> dict:
        return {row: {"accuracy": r["accuracy_mean"], "std": r["accuracy_std"], "steps_vs_kd": r["steps_vs_kd"],
                      "flops_vs_kd": r["flops_vs_kd"]} for row, r in kd[setting][pick[setting]["student"]].items()}

    return {
        "protocol": protocol, "pick": pick,
        "teacher_accuracy": kd["teacher"]["accuracy_mean"], "teacher_params": kd["teacher"]["params"],
        "full": cell("full"), "scarce": cell("scarce"),
        "scarce_teacher_accuracy": kd["scarce_setting"]["teacher"]["accuracy_mean"],
        "peer_status": kd["peer_status"],
        "dm_vs_random": {ipc: [row["dm"], row["random_real_mean"]] for ipc, row in dd["accuracy"].items()},
        "audit": {name: {"asr": a["asr"], "verdict": a["verdict"]} for name, a in dd["audit"].items()},
    }


# ---------------------------------------------------------------------------- report


def _pm(row: dict) -> str:
    return f"{row['accuracy_mean']:.3f} ± {row['accuracy_std']:.3f}"


def setting_table(kd: dict, setting: str, comparison: dict) -> list[str]:
    lines = ["| student (params) | row | accuracy | steps | GFLOPs | FLOPs ÷ KD's | vs peer KD |",
             "|---|---|---:|---:|---:|---:|---|"]
    for student, cell in kd[setting].items():
        versus = comparison.get(f"{student}, {setting}", {})
        for row, r in cell.items():
            peer = versus.get(row)
            note = "" if peer is None else f"{peer['difference']:+.3f} ({peer['verdict']})"
            lines.append(f"| {student} ({kd['students'][student]['params']:,}) | {row} | {_pm(r)} | "
                         f"{r['steps']:,.0f} | {r['flops'] / 1e9:,.0f} | {r['flops_vs_kd']:.2f}x | {note} |")
    return lines


def equivalence_lines(kd: dict) -> list[str]:
    checks = kd["peer_equivalence"]
    if not checks:
        return []
    loss = max(c["loss_abs_difference"] for c in checks)
    weights = max(c["weights_max_abs_difference_after_1_epoch"] for c in checks)
    scale = min(c["weights_max_abs_after_1_epoch"] for c in checks)
    gaps = [f"{a - b:+.3f}" for student, cell in kd["full"].items()
            for a, b in zip(cell["hinton_kd"]["accuracy"], cell[PEER]["accuracy"])]
    return [f"Our `hinton_kd` against the peer's KD, same loss: on the same logits the two losses differ by at most "
            f"{loss:.1e}; after one epoch from the same weights and batches the students' weights differ by at most "
            f"{weights:.1e} (largest weight {scale:.2f}). Per seed and full-setting cell, ours minus the peer's "
            f"test accuracy after the whole budget: {', '.join(gaps)}."]


def markdown(result: dict) -> str:
    kd, p, fair, dd = result["knowledge_distillation"], result["summary"]["protocol"], result["fairness"], \
        result["dataset_distillation"]
    teacher, scarce = kd["teacher"], kd["scarce_setting"]
    lines = [f"Protocol: choices from `{p['config']}` (sha256 `{p['config_sha256'][:12]}`, made on validation); "
             f"trained on {p['split_sizes']['train']:,} images, tested once on {p['split_sizes']['test']:,}; "
             f"seeds {p['seeds']}; epoch budget {p['epoch_budget']}; wall {result['seconds'] / 60:.0f} min.", "",
             f"Teacher `{teacher['arch']}` ({teacher['params']:,} parameters): {_pm(teacher)}, "
             f"{teacher['ms_per_1000']:.0f} ms per 1,000 images; its training: {teacher['steps']:,.0f} steps, "
             f"{teacher['flops'] / 1e9:,.0f} GFLOPs (shared by every row, not counted in them).", "",
             "Full setting (every training image labelled):", "",
             *setting_table(kd, "full", result["peer_comparison"]), "",
             f"Label-scarce: {scarce['labels']} labels + {scarce['unlabelled']:,} unlabelled; the teacher trained on "
             f"the {scarce['labels']} labels: {_pm(scarce['teacher'])}; models on labels alone (and the peer) "
             f"{scarce['label_only_epochs']} epochs:", "",
             *setting_table(kd, "scarce", result["peer_comparison"]), "",
             *equivalence_lines(kd), "",
             "| student | parameters | fewer than the teacher | ms per 1,000 images |", "|---|---:|---:|---:|"]
    for name, st in kd["students"].items():
        lines.append(f"| {name} | {st['params']:,} | {teacher['params'] / st['params']:.1f}x | "
                     f"{st['ms_per_1000']:.0f} |")
    lines += ["", "| images per class | distribution matching | random real (mean of draws) |", "|---:|---:|---:|"]
    lines += [f"| {ipc} | {row['dm']:.3f} | {row['random_real_mean']:.3f} |" for ipc, row in dd["accuracy"].items()]
    lines += [f"| all {kd['train_size']:,} | {dd['full_4000_accuracy']:.3f} | |", "",
              "| backdoor audit | ASR | clean accuracy | baseline | threshold | verdict |",
              "|---|---:|---:|---:|---:|---|"]
    lines += [f"| {name} | {a['asr']:.3f} | {a['clean_accuracy']:.3f} | {a['baseline']:.3f} | {a['threshold']:.3f} | "
              f"{a['verdict']} |" for name, a in dd["audit"].items()]
    lines += ["", f"| RELIANT (bias weight {p['fairness']['bias_weight']:g}) | accuracy | ΔSP |", "|---|---:|---:|"]
    lines += [f"| {name} | {r['accuracy_mean']:.3f} ± {r['accuracy_std']:.3f} | {r['delta_sp_mean']:.3f} ± "
              f"{r['delta_sp_std']:.3f} |" for name, r in fair.items()]
    pick = result["summary"]["pick"]
    met = sum(v is True for v in result["targets"].values())
    lines += ["", f"Picked on validation: full {pick['full']['student']} + {pick['full']['method']}, scarce "
                  f"{pick['scarce']['student']} + {pick['scarce']['method']}. Targets met on test: {met} of "
                  f"{len(result['targets'])}.", ""]
    lines += [f"- {name}: {'n/a' if v is None else 'met' if v else '**missed**'}"
              for name, v in result["targets"].items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK['seeds']} seed, budget {QUICK['epochs']} epochs, "
                             f"{QUICK['train_size']} training images, token dataset distillation")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds (default: %(default)s)")
    parser.add_argument("--students", nargs="+", choices=sorted(STUDENTS),
                        help="students (default: the config's)")
    parser.add_argument("--jobs", type=int, default=1, help="processes running the seeds and the dataset "
                                                            "distillation side by side (default: %(default)s)")
    parser.add_argument("--output", type=Path, help="result JSON (default: benchmarks/results/distillation.json, "
                                                    "results/quick/distillation.json with --quick)")
    args = parser.parse_args(argv)
    config, config_ref = _results.config_file(CONFIG)
    students = args.students or config["students"]
    if missing := {p["student"] for p in config["pick"].values()} - set(students):
        parser.error(f"--students must include the config's picked students {sorted(missing)}")
    if min(args.seeds, args.jobs) < 1:
        parser.error("--seeds and --jobs must be >= 1")
    seeds, budget = (QUICK["seeds"], QUICK["epochs"]) if args.quick else (args.seeds, config["epochs"])
    if budget < rows.prod_stage_count():
        parser.error(f"the epoch budget must be >= {rows.prod_stage_count()}: PROD trains one epoch per stage at least")
    dm = QUICK["dm"] if args.quick else DM_SETTINGS
    methods = {name: (name, params) for name, params in config["methods"].items()}
    train_size = QUICK["train_size"] if args.quick else None

    import torch

    torch.set_num_threads(1)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    rows.log(f"peer: {rows.peer_available()[1]}")
    # one job per seed and one for dataset distillation, each on one thread; spawned processes (a
    # forked child would inherit torch's thread pools mid-state)
    jobs = ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) if args.jobs > 1 \
        else InProcess()
    with jobs:
        dd_job = jobs.submit(dataset_distillation_job, dm)
        seed_jobs = [jobs.submit(rows.seed_run, seed, "test", budget, students, methods, train_size)
                     for seed in range(seeds)]
        per_seed = [job.result() for job in seed_jobs]
        dd = dd_job.result()
    kd = knowledge_distillation(per_seed, budget=budget, students=students, train_size=train_size)
    rows.log("RELIANT ...")
    bias_weight = config["fairness"]["bias_weight"]
    fair = rows.fairness(1 if args.quick else FAIR_SEEDS, "test", bias_weight)
    protocol = _results.protocol(
        split_sizes={"train": kd["train_size"], "validation": 0, "test": 1000}, model_selection="validation",
        seeds=list(range(seeds)), config=config_ref, epoch_budget=budget, epochs_per_row=kd.pop("epochs"),
        split=dataset_distillation.SPLIT, optimiser=f"Adam lr {rows.LR:g}, batch {rows.BATCH_SIZE}", threads=1,
        methods=config["methods"], scarce_labels=rows.SCARCE_LABELS, peer=kd["peer_status"],
        dataset_distillation={**dd.pop("dm"), "model": dd.pop("model")},
        fairness={**rows.FAIR, "seeds": FAIR_SEEDS, "bias_weight": bias_weight}, quick=args.quick)
    result = {"knowledge_distillation": kd, "peer_comparison": peer_comparison(kd), "dataset_distillation": dd,
              "fairness": fair}
    result["summary"] = summary(kd, dd, config["pick"], protocol)
    result["targets"] = targets(kd, dd, fair, config["pick"])
    result["seconds"] = time.perf_counter() - started
    result["machine"] = _results.machine_info(load_before)
    output = args.output or (RESULTS / "quick" / "distillation.json" if args.quick else RESULTS / "distillation.json")
    return _results.write_result(result, output, lambda r: print(markdown(r)))


if __name__ == "__main__":
    sys.exit(main())
