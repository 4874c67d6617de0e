"""The default pipeline's torch stages on the CPU and on CUDA, side by side in one run.

Each stage does exactly the work its pipeline task does, with the default config's parameters
(``pipelines/configs/default.yaml``), inside the placement a task would give it
(:func:`distillery.components.core.devices.placed`): the model on the device, the data streamed to it batch by
batch or chunk by chunk.

* **training**: the teacher on the final round's labelled set (100 seed labels + 3 rounds x 100 = 400
  items of MNIST 5,000's training split), by the default's training method and parameters, called the
  way the training task calls it (``components/training/tasks.py``): architecture, architecture
  arguments, ``epochs``/``lr``/``batch_size``, the method's own keywords, and -- for a pool-aware method
  such as the default's ``fixmatch`` -- the unlabelled pool (the rest of the training split, 3,600 items);
* **distillation**: the default's method (``hinton_kd``) of that teacher into the default's student over
  the labelled set and the unlabelled pool, with the student built and the method's keywords taken as
  the distillation task does (``components/distillation/tasks.py``);
* **selection**: one query of the default strategy (batch 100) over a pool of ``--pool`` items
  (default 1,000,000: MNIST's training images repeated; stored as uint8 like the dataset, converted
  chunk by chunk) through the trained teacher.

Devices: the CPU always; CUDA (fp32, and bf16 where the GPU supports it) when torch sees a GPU.
Seconds are wall time of the stage's call, after a CUDA synchronise; model-quality numbers (test
accuracy of teacher and student) are reported beside them, so a faster device that learnt less
would show. Speed-up = CPU seconds / CUDA seconds. Without a GPU the result holds the CPU column
and says so.

    python -m benchmarks.gpu_stages                 # ~10 min on 2 CPU cores, about 1 min more on a GPU
    python -m benchmarks.gpu_stages --pool 100000 --output /tmp/gpu_stages.json   # shorter
    python -m benchmarks.gpu_stages --quick         # 1 epoch per stage, 20,000-item pool: a smoke run
                                                    # (results/quick/, not a timing to report)
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
STAGES = ("training", "distillation", "selection")
QUICK_EPOCHS = 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, help="selection pool size (default: 1,000,000; 20,000 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_EPOCHS} epoch(s) of training and distillation, a 20,000-item pool by default; "
                             "writes under results/quick/")
    parser.add_argument("--output", type=Path, help="result JSON (default: benchmarks/results/gpu_stages.json, "
                                                    "quick/gpu_stages.json with --quick)")
    args = parser.parse_args(argv)
    pool = args.pool if args.pool is not None else 20_000 if args.quick else 1_000_000
    if pool < 100:
        raise SystemExit("--pool must be at least the query's batch (100)")
    result = benchmark(pool, epochs=QUICK_EPOCHS if args.quick else None)
    from benchmarks import _results

    # quick runs go where benchmarks.report never looks (results/quick/, ignored by git)
    output = args.output or (RESULTS / "quick" if args.quick else RESULTS) / "gpu_stages.json"
    return _results.write_result(result, output, print_result, script="benchmarks.gpu_stages")


def placements() -> list:
    import torch

    from distillery.components.core import devices

    found = [devices.resolve("cpu")]
    if torch.cuda.is_available():
        found.append(devices.resolve("cuda"))
        if torch.cuda.is_bf16_supported():
            found.append(devices.resolve("cuda", "bf16"))
    return found


def benchmark(pool_size: int, epochs: int | None = None) -> dict:
    """Every stage on every placement; ``epochs`` (quick mode) overrides the training and distillation
    epochs of the default config."""
    import torch

    from distillery.pipelines.config import DEFAULT_CONFIG, load_config

    config = load_config(DEFAULT_CONFIG)
    if epochs is not None:
        for stage in ("training", "distillation"):
            config[stage]["params"]["epochs"] = epochs
    data = _default_data(config)
    load_before = os.getloadavg()[0]
    runs = {}
    for placement in placements():
        label = f"{placement.device.type}-{placement.precision}"
        print(f"\n== {label} ==", flush=True)
        runs[label] = run_stages(config, data, pool_size, placement)
    cpu = runs["cpu-fp32"]
    speedups = {label: {stage: cpu["seconds"][stage] / run["seconds"][stage] for stage in STAGES}
                for label, run in runs.items() if label != "cpu-fp32"}
    result = {
        "benchmark": "gpu_stages",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "gpu_count": torch.cuda.device_count(),
                    "load_avg_1min": {"before": load_before, "after": os.getloadavg()[0]}},
        "setup": {"labelled": len(data["labelled"]), "unlabelled": len(data["unlabelled"]), "test": len(data["test"]),
                  "selection_pool": pool_size, "training_method": config["training"]["method"],
                  "training": config["training"]["params"], "distillation_method": config["distillation"]["method"],
                  "distillation": config["distillation"]["params"], "selection": config["selection"]["method"],
                  "epochs_overridden": epochs is not None},
        "runs": runs,
        "speedup_vs_cpu": speedups,
        "note": None if speedups else "no CUDA device on this machine: the CPU column only",
    }
    from benchmarks import _results

    result["summary"] = {"protocol": protocol(result, _results.config_ref(DEFAULT_CONFIG), config["seed"])}
    return result


def protocol(result: dict, config: dict, seed: int | None) -> dict:
    """``summary.protocol`` of a timing, from the result: nothing chosen from results, one timed call per
    stage and device (``seeds``: 1), the pipeline config (and its seed) the stages ran with."""
    from benchmarks import _results

    setup = result["setup"]
    return _results.protocol(
        split_sizes={k: setup[k] for k in ("labelled", "unlabelled", "test", "selection_pool")},
        model_selection="none", seeds=1, config=config, repeats="one timed call per stage and device",
        training_seed=seed, **({"epochs_overridden": True} if setup.get("epochs_overridden") else {}))


def _default_data(config: dict) -> dict:
    """MNIST 5,000 split as the default pipeline splits it: test rows, the final labelled set, the rest."""
    from distillery.components.core import registry
    from distillery.components.core.datasets import read_dataset

    features, labels, meta = read_dataset(str(ROOT), config["data"]["path"])
    split = registry.get("split", config["split"]["method"]).load()
    test, pool, seed_rows = split(labels, seed=config["seed"], **config["split"]["params"])
    # the final round's labelled set: the seed labels and 3 rounds x 100 more (random here: the
    # timing does not depend on which items the strategy would have picked)
    more = config["selection"]["rounds"] * config["selection"]["batch_size"]
    pool = np.random.default_rng(config["seed"]).permutation(pool)
    return {"features": features, "labels": labels, "meta": meta, "labelled": np.concatenate([seed_rows, pool[:more]]),
            "unlabelled": pool[more:], "test": test}


def training_call(method: str, params: dict) -> tuple[str, dict, dict, dict]:
    """``(arch, arch_kwargs, training, method_kwargs)``: the training task's mapping of a method's
    parameters (:func:`distillery.components.core.train.method_call`), with the shared training keys."""
    from distillery.components.core.train import TRAINING_KEYS, method_call

    arch, arch_kwargs, method_kwargs = method_call(method, params)
    return arch, arch_kwargs, {k: params[k] for k in TRAINING_KEYS}, method_kwargs


def run_stages(config: dict, data: dict, pool_size: int, placement) -> dict:
    from distillery.components.core import devices, models, registry
    from distillery.components.core.train import accuracy
    from distillery.components.distillation.hinton_kd import make_student
    from distillery.components.distillation.tasks import method_params, student_arch_kwargs
    from distillery.components.selection.pool import Pool

    x, y, meta = data["features"], data["labels"], data["meta"]
    lab, unl, test = data["labelled"], data["unlabelled"], data["test"]
    seed = config["seed"]
    seconds, quality = {}, {}
    with devices.placed(placement):
        method = registry.get("training", config["training"]["method"])
        if method.execution != "in_process":
            raise SystemExit(f"gpu_stages times training in this process; the default's training method "
                             f"{method.name!r} runs as {method.execution!r}")
        arch, arch_kwargs, training, method_kwargs = training_call(method.name, config["training"]["params"])
        if "unlabelled" in method.inputs:  # pool-aware methods also learn from the unlabelled pool
            method_kwargs["unlabelled"] = x[unl]
        train = method.load()
        teacher, seconds["training"] = timed(placement, lambda: train(
            x[lab], y[lab], meta, arch, arch_kwargs, training["epochs"], training["lr"], training["batch_size"],
            seed, None, **method_kwargs))
        quality["teacher_test_accuracy"] = accuracy(teacher, x[test], y[test])
        print(f"training ({method.name}, {arch}): {seconds['training']:.1f} s, teacher accuracy "
              f"{quality['teacher_test_accuracy']:.4f}", flush=True)

        kd = config["distillation"]["params"]
        student = models.standardise(make_student(kd["student"], meta, student_arch_kwargs(kd), seed),
                                     x[np.concatenate([lab, unl])]).to(placement.device)
        distil = registry.get("distillation", config["distillation"]["method"]).load()
        student, seconds["distillation"] = timed(placement, lambda: distil(
            teacher, student, x[lab], y[lab], x[unl], seed=seed, **method_params(kd)))
        quality["student_test_accuracy"] = accuracy(student, x[test], y[test])
        print(f"distillation: {seconds['distillation']:.1f} s, student accuracy "
              f"{quality['student_test_accuracy']:.4f}", flush=True)

        pool = np.resize(x[np.concatenate([lab, unl])], (pool_size, x.shape[1]))  # uint8, as stored
        strategy = registry.get("selection", config["selection"]["method"]).load()(
            seed=seed, **config["selection"]["params"])
        view = Pool(pool, teacher, x[lab], y[lab], num_classes=len(meta["classes"]))
        (picked, _), seconds["selection"] = timed(placement, lambda: strategy.select(
            view, config["selection"]["batch_size"]))
        quality["selected"] = len(picked)
        print(f"selection: {seconds['selection']:.1f} s for {pool_size:,} pool items "
              f"({pool_size / seconds['selection']:,.0f} items/s)", flush=True)
    return {"device": str(placement.device), "precision": placement.precision, "seconds": seconds,
            "selection_items_per_second": pool_size / seconds["selection"], "quality": quality}


def timed(placement, work):
    """``(result, seconds)`` of ``work()``, with the GPU's queue drained before the clock stops."""
    import torch

    def synchronise():
        if placement.device.type == "cuda":
            torch.cuda.synchronize(placement.device)

    synchronise()
    started = time.perf_counter()
    result = work()
    synchronise()
    return result, time.perf_counter() - started


def print_result(result: dict) -> None:
    print(markdown(result))


def markdown(result: dict, view: str | None = None) -> str:
    """The README's table (``view`` ``"summary"``: sentences for the top-level README)."""
    if view not in (None, "summary"):
        raise ValueError(f"unknown view {view!r}: none or 'summary'")
    if view == "summary":
        return _summary(result)
    from benchmarks.report import source, table

    m, runs, speedups = result["machine"], result["runs"], result["speedup_vs_cpu"]
    head = ["stage", *(f"{label} s" for label in runs), *(f"speed-up {label}" for label in speedups)]
    rows = [[stage, *(f"{run['seconds'][stage]:.2f}" for run in runs.values()),
             *(f"{speedups[label][stage]:.1f}x" for label in speedups)] for stage in STAGES]
    rows += [[key.replace("_", " "), *(f"{run['quality'][key]:.4f}" for run in runs.values()), *[""] * len(speedups)]
             for key in ("teacher_test_accuracy", "student_test_accuracy")]
    rate = ", ".join(f"{run['selection_items_per_second']:,.0f} on {label}" for label, run in runs.items())
    text = (f"{source(result, 'gpu_stages.json')}: {m['cores']} CPU cores, {m['cpu_threads']} torch threads, "
            f"GPU {m['gpu'] or 'none'}, torch {m['torch']}; {_stages_setup(result['setup'])}."
            f"\n\n{table(head, rows)}\n\n"
            f"Selection, pool items per second: {rate}.")
    return text + (f" Note (`note` in the JSON): {result['note']}." if result.get("note") else "")


def _stages_setup(setup: dict) -> str:
    """What the stages ran: training method and epochs, distillation epochs (results written before
    ``training_method`` was recorded: the selection pool only, as they were rendered), the selection pool;
    says when the epochs were overridden (--quick)."""
    pool = f"selection over {setup['selection_pool']:,} items"
    if "training_method" not in setup:
        return pool
    train, kd, method = setup["training"], setup["distillation"], setup["training_method"]
    arch = f", {train['arch']}" if train.get("arch") and train["arch"] != method else ""
    quick = " (epochs overridden: a --quick smoke run, not the default's timing)" if setup.get("epochs_overridden") \
        else ""

    def epochs(n: int) -> str:
        return f"{n} epoch{'' if n == 1 else 's'}"

    return (f"training {method}{arch}, {epochs(train['epochs'])}; distillation {setup['distillation_method']}, "
            f"{epochs(kd['epochs'])}{quick}; {pool}")


def _summary(result: dict) -> str:
    m, setup = result["machine"], result["setup"]

    def stages(run):
        sec = run["seconds"]
        method = f" ({setup['training_method']})" if "training_method" in setup else ""
        return (f"training{method} {sec['training']:.2f} s, distillation {sec['distillation']:.2f} s, one "
                f"{setup['selection']} query over {setup['selection_pool']:,} pool items {sec['selection']:.1f} s "
                f"({run['selection_items_per_second']:,.0f} items/s); teacher "
                f"{run['quality']['teacher_test_accuracy']:.3f} and student "
                f"{run['quality']['student_test_accuracy']:.3f} test accuracy")

    cpu = result["runs"]["cpu-fp32"]
    parts = [f"On {m['cores']} CPU cores (`benchmarks/results/gpu_stages.json`, {result['date'][:10]}): "
             f"{stages(cpu)}."]
    for label, run in result["runs"].items():
        if label != "cpu-fp32":
            speed = ", ".join(f"{stage} {x:.1f}x" for stage, x in result["speedup_vs_cpu"][label].items())
            parts.append(f"On {m['gpu']} ({label}): {stages(run)}; speed-up over the CPU: {speed}.")
    if result.get("note"):
        parts.append(f"Note: {result['note']}.")
    return " ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
