"""The default pipeline's torch stages on the CPU and on CUDA, side by side in one run.

Each stage does exactly the work its pipeline task does, with the default config's parameters
(``pipelines/configs/default.yaml``), inside the placement a task would give it
(:func:`distillery.components.core.devices.placed`): the model on the device, the data streamed to it batch by
batch or chunk by chunk.

* **training**: the teacher (``small_cnn``, 30 epochs) on the final round's labelled set
  (100 seed labels + 3 rounds x 100 = 400 items of MNIST 5,000's training split);
* **distillation**: ``hinton_kd`` of that teacher into the MLP student over the labelled set and the
  rest of the training split (3,600 unlabelled items), the default's epochs;
* **selection**: one query of the default strategy (``entropy``, batch 100) over a pool of
  ``--pool`` items (default 1,000,000: MNIST's training images repeated; stored as uint8 like the
  dataset, converted chunk by chunk) through the trained teacher.

Devices: the CPU always; CUDA (fp32, and bf16 where the GPU supports it) when torch sees a GPU.
Seconds are wall time of the stage's call, after a CUDA synchronise; model-quality numbers (test
accuracy of teacher and student) are reported beside them, so a faster device that learnt less
would show. Speed-up = CPU seconds / CUDA seconds. Without a GPU the result holds the CPU column
and says so.

    python -m benchmarks.gpu_stages                 # ~10 min on 2 CPU cores, about 1 min more on a GPU
    python -m benchmarks.gpu_stages --pool 100000 --output /tmp/gpu_stages.json   # shorter
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
STAGES = ("training", "distillation", "selection")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=1_000_000, help="selection pool size (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=RESULTS / "gpu_stages.json")
    args = parser.parse_args(argv)
    if args.pool < 100:
        raise SystemExit("--pool must be at least the query's batch (100)")
    result = benchmark(args.pool)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print_result(result)
    print(f"\nWrote {args.output}")
    return 0


def placements() -> list:
    import torch

    from distillery.components.core import devices

    found = [devices.resolve("cpu")]
    if torch.cuda.is_available():
        found.append(devices.resolve("cuda"))
        if torch.cuda.is_bf16_supported():
            found.append(devices.resolve("cuda", "bf16"))
    return found


def benchmark(pool_size: int) -> dict:
    import torch

    from distillery.pipelines.config import DEFAULT_CONFIG, load_config

    config = load_config(DEFAULT_CONFIG)
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
    return {
        "benchmark": "gpu_stages",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "gpu_count": torch.cuda.device_count(),
                    "load_avg_1min": {"before": load_before, "after": os.getloadavg()[0]}},
        "setup": {"labelled": len(data["labelled"]), "unlabelled": len(data["unlabelled"]), "test": len(data["test"]),
                  "selection_pool": pool_size, "training": config["training"]["params"],
                  "distillation": config["distillation"]["params"], "selection": config["selection"]["method"]},
        "runs": runs,
        "speedup_vs_cpu": speedups,
        "note": None if speedups else "no CUDA device on this machine: the CPU column only",
    }


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


def run_stages(config: dict, data: dict, pool_size: int, placement) -> dict:
    from distillery.components.core import devices, registry
    from distillery.components.core.train import accuracy, train_classifier
    from distillery.components.distillation.hinton_kd import make_student
    from distillery.components.selection.pool import Pool

    x, y, meta = data["features"], data["labels"], data["meta"]
    lab, unl, test = data["labelled"], data["unlabelled"], data["test"]
    train_params = dict(config["training"]["params"])
    kd = dict(config["distillation"]["params"])
    seconds, quality = {}, {}
    with devices.placed(placement):
        epochs, lr, batch = train_params.pop("epochs"), train_params.pop("lr"), train_params.pop("batch_size")
        teacher, seconds["training"] = timed(placement, lambda: train_classifier(
            x[lab], y[lab], meta, "small_cnn", train_params, epochs, lr, batch, config["seed"]))
        quality["teacher_test_accuracy"] = accuracy(teacher, x[test], y[test])
        print(f"training: {seconds['training']:.1f} s, teacher accuracy {quality['teacher_test_accuracy']:.4f}",
              flush=True)

        student = make_student(kd["student"], meta, {"hidden": kd["hidden"]}, config["seed"]).to(placement.device)
        distil = registry.get("distillation", config["distillation"]["method"]).load()
        student, seconds["distillation"] = timed(placement, lambda: distil(
            teacher, student, x[lab], y[lab], x[unl], seed=config["seed"], epochs=kd["epochs"], lr=kd["lr"],
            batch_size=kd["batch_size"], temperature=kd["temperature"], alpha=kd["alpha"]))
        quality["student_test_accuracy"] = accuracy(student, x[test], y[test])
        print(f"distillation: {seconds['distillation']:.1f} s, student accuracy "
              f"{quality['student_test_accuracy']:.4f}", flush=True)

        pool = np.resize(x[np.concatenate([lab, unl])], (pool_size, x.shape[1]))  # uint8, as stored
        strategy = registry.get("selection", config["selection"]["method"]).load()(seed=config["seed"])
        view = Pool(pool, teacher, x[lab], y[lab], num_classes=len(meta["classes"]))
        (picked, _), seconds["selection"] = timed(placement, lambda: strategy.select(view, 100))
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
    m, runs = result["machine"], result["runs"]
    print(f"\nTorch stages of the default pipeline: {m['cores']} CPU cores ({m['cpu_threads']} torch threads), "
          f"GPU {m['gpu'] or 'none'}; selection over {result['setup']['selection_pool']:,} items\n")
    labels = list(runs)
    print(f"{'stage':<22}" + "".join(f"{label + ' s':>16}" for label in labels)
          + "".join(f"{'speed-up ' + label:>24}" for label in result["speedup_vs_cpu"]))
    for stage in STAGES:
        print(f"{stage:<22}" + "".join(f"{runs[label]['seconds'][stage]:>16.2f}" for label in labels)
              + "".join(f"{result['speedup_vs_cpu'][label][stage]:>23.1f}x" for label in result["speedup_vs_cpu"]))
    for key in ("teacher_test_accuracy", "student_test_accuracy"):
        print(f"{key:<22}" + "".join(f"{runs[label]['quality'][key]:>16.4f}" for label in labels))
    if result["note"]:
        print(f"\nNote: {result['note']}")


if __name__ == "__main__":
    sys.exit(main())
