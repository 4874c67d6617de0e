"""Choose the distillation benchmark's settings on a validation split, and freeze them.

Every choice the test run (``distillation.py``) depends on is made here, on the validation split of
:mod:`benchmarks.distillation_rows` (3,000 of the 4,000 training digits train, 1,000 score; the
test images are never read), and written to ``benchmarks/configs/distillation.json``:

* each method's variant (:data:`CANDIDATES`): the one with the best validation accuracy, averaged
  over every (student, setting) cell. The variants are the design choices earlier runs made by
  looking at test accuracy: LEAD's flattened or pooled layer vectors; PROD's epoch budget shared by
  the teacher route or equally, and its hard-data stage padded and continuing the stage's Adam, or
  neither;
* which student and method the targets speak for, per setting: the best validation accuracy among
  the distilled students with at least 20x fewer parameters than the teacher;
* RELIANT's bias weight (:data:`BIAS_WEIGHTS`): the lowest validation ΔSP among those losing at most
  2 points of accuracy against Hinton KD.

Fixed before any run, not chosen: the epoch budget (45, the issue's anchors'), optimiser, students,
KD's temperature and CE weight (the registry's, which the peer's KD uses too), dataset distillation's
settings.

    nice -n 10 python -m benchmarks.distillation_tuning --jobs 2    # ~20 min on 2 cores
    python -m benchmarks.distillation_tuning --quick                 # smoke run, writes under results/quick/
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from benchmarks import _results
from benchmarks import distillation_rows as rows

RESULTS = _results.ROOT / "benchmarks" / "results"
CONFIG = _results.CONFIGS / "distillation.json"
EPOCHS, SEEDS, STUDENTS = 45, (0,), ("cnn9k", "repghost")
CANDIDATES = {
    "hinton_kd": {"hinton_kd": {}},
    "fitnets": {"fitnets": {}},
    "lead": {"lead[flat]": {"layer_vectors": "flat"}, "lead[pooled]": {"layer_vectors": "pooled"}},
    "prod": {"prod[route, padded, continued]": {"stage_budget": "route", "pad_hard": True, "continue_optimiser": True},
             "prod[equal, padded, continued]": {"stage_budget": "equal", "pad_hard": True, "continue_optimiser": True},
             "prod[route, unpadded, fresh Adam]": {"stage_budget": "route", "pad_hard": False,
                                                   "continue_optimiser": False}},
}
BIAS_WEIGHTS = (1.0, 2.0, 4.0)
FAIR_SEEDS = 3
QUICK = {"epochs": 3, "train_size": 600}


def row_methods() -> dict[str, tuple[str, dict]]:
    """Every candidate as a row: label -> (registered method, params)."""
    return {label: (name, params) for name, variants in CANDIDATES.items() for label, params in variants.items()}


def choose_variants(summary: dict) -> dict[str, dict]:
    """Per method, the variant with the best mean validation accuracy over every cell."""
    def cell_mean(label: str) -> float:
        return float(np.mean([summary[setting][student][label]["accuracy_mean"]
                              for setting in ("full", "scarce") for student in summary[setting]]))

    return {name: {"label": (best := max(variants, key=cell_mean)), "params": variants[best],
                   "validation_accuracy": {label: cell_mean(label) for label in variants}}
            for name, variants in CANDIDATES.items()}


def choose_pick(summary: dict, variants: dict, params: dict[str, int], teacher_params: int) -> dict:
    """Per setting, the (student, method) the targets speak for: best validation accuracy among the
    chosen variants on students with at least 20x fewer parameters than the teacher."""
    picks = {}
    for setting in ("full", "scarce"):
        cells = [(student, name) for student in summary[setting] if 20 * params[student] <= teacher_params
                 for name in variants]
        student, name = max(cells, key=lambda c: summary[setting][c[0]][variants[c[1]]["label"]]["accuracy_mean"])
        picks[setting] = {"student": student, "method": name,
                          "validation_accuracy": summary[setting][student][variants[name]["label"]]["accuracy_mean"]}
    return picks


def choose_bias_weight(fair: dict[str, dict]) -> float:
    """Lowest validation ΔSP among the weights losing at most 2 points of accuracy against KD (the
    target's condition); the smallest weight if none does."""
    ok = [w for w, r in fair.items() if r["reliant"]["accuracy_mean"] >= r["hinton_kd"]["accuracy_mean"] - 0.02]
    return float(min(ok, key=lambda w: fair[w]["reliant"]["delta_sp_mean"]) if ok else min(fair, key=float))


def parameter_counts(students) -> tuple[dict[str, int], int]:
    from distillery.components.core import models

    _, _, _, _, meta = rows.settings_data("validation")
    count = {}
    for student in students:
        arch, kwargs = rows.STUDENTS[student]
        count[student] = models.count_parameters(models.build(arch, meta, **kwargs))
    return count, models.count_parameters(models.build(rows.TEACHER[0], meta, **rows.TEACHER[1]))


def student_job(student: str, seed: int, epochs: int, train_size: int | None) -> dict:
    return rows.seed_run(seed, "validation", epochs, [student], row_methods(), train_size, equivalence=False)


def merge(jobs: list[dict]) -> dict:
    """One seed's per-student jobs as one seed_run result."""
    merged = {"teacher": jobs[0]["teacher"], "scarce_teacher": jobs[0]["scarce_teacher"], "full": {}, "scarce": {}}
    for job in jobs:
        merged["full"].update(job["full"])
        merged["scarce"].update(job["scarce"])
    return merged


def markdown(result: dict) -> str:
    variants = result["variants"]
    lines = ["| method | variant | mean validation accuracy (4 cells) | chosen |", "|---|---|---:|---|"]
    for name, v in variants.items():
        for label, acc in v["validation_accuracy"].items():
            lines.append(f"| {name} | {label} | {acc:.4f} | {'**yes**' if label == v['label'] else ''} |")
    lines += ["", "| setting | student | method | validation accuracy |", "|---|---|---|---:|"]
    for setting, p in result["pick"].items():
        lines.append(f"| {setting} | {p['student']} | {p['method']} | {p['validation_accuracy']:.4f} |")
    lines += ["", "| RELIANT bias weight | KD accuracy | RELIANT accuracy | KD ΔSP | RELIANT ΔSP |",
              "|---:|---:|---:|---:|---:|"]
    for weight, r in result["fairness"].items():
        mark = " (chosen)" if float(weight) == result["bias_weight"] else ""
        lines.append(f"| {float(weight):g}{mark} | {r['hinton_kd']['accuracy_mean']:.3f} | "
                     f"{r['reliant']['accuracy_mean']:.3f} | {r['hinton_kd']['delta_sp_mean']:.3f} | "
                     f"{r['reliant']['delta_sp_mean']:.3f} |")
    p = result["summary"]["protocol"]
    lines += ["", f"Validation split: {p['split_sizes']['train']:,} training / {p['split_sizes']['validation']:,} "
                  f"validation images, seed(s) {p['seeds']}, epoch budget {result['epochs']}; test images read: "
                  f"{p['split_sizes']['test']}. Wall {result['seconds'] / 60:.0f} min."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run; writes under results/quick/ and does not "
                                                             "touch the committed config")
    parser.add_argument("--jobs", type=int, default=2, help="processes (one per student; default: %(default)s)")
    args = parser.parse_args(argv)
    epochs, train_size = (QUICK["epochs"], QUICK["train_size"]) if args.quick else (EPOCHS, None)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    rows.log(f"peer: {rows.peer_available()[1]}")
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {seed: [pool.submit(student_job, s, seed, epochs, train_size) for s in STUDENTS] for seed in SEEDS}
        per_seed = [merge([f.result() for f in futures[seed]]) for seed in SEEDS]
    summary = {setting: rows.summarise_rows(per_seed, setting) for setting in ("full", "scarce")}
    variants = choose_variants(summary)
    params, teacher_params = parameter_counts(STUDENTS)
    fair = {str(w): rows.fairness(1 if args.quick else FAIR_SEEDS, "validation", w) for w in BIAS_WEIGHTS}
    bias_weight = choose_bias_weight({float(k): v for k, v in fair.items()})
    full, _, _, _, _ = rows.settings_data("validation", train_size)
    result = {
        "epochs": epochs, "students": list(STUDENTS), "params": params, "teacher_params": teacher_params,
        "teacher": {k: [s[k]["accuracy"] for s in per_seed] for k in ("teacher", "scarce_teacher")},
        "rows": summary, "variants": variants, "pick": choose_pick(summary, variants, params, teacher_params),
        "fairness": fair, "bias_weight": bias_weight,
        "summary": {"protocol": _results.protocol(
            split_sizes={"train": len(full["y"]), "validation": rows.VALIDATION_SIZE, "test": 0},
            model_selection="validation", seeds=list(SEEDS))},
        "seconds": time.perf_counter() - started, "machine": _results.machine_info(load_before),
    }
    config = {"note": "written by python -m benchmarks.distillation_tuning from validation accuracy; the test run "
                      "reads it and records its sha256",
              "epochs": EPOCHS, "students": list(STUDENTS),
              "methods": {name: v["params"] for name, v in variants.items()},
              "pick": {setting: {"student": p["student"], "method": p["method"]}
                       for setting, p in result["pick"].items()},
              "fairness": {"bias_weight": bias_weight}}
    quick_dir = RESULTS / "quick"
    config_path = quick_dir / "distillation_config.json" if args.quick else CONFIG
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    rows.log(f"froze {config_path}")
    output = quick_dir / "distillation_tuning.json" if args.quick else RESULTS / "distillation_tuning.json"
    return _results.write_result(result, output, lambda r: print(markdown(r)))


if __name__ == "__main__":
    sys.exit(main())
