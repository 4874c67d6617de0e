"""Training throughput of data-parallel training (DDP under torchrun) with 1 and 2 processes.

Trains the teacher, the small CNN (409k parameters), on MNIST 5,000 through the ``ddp`` training
method's launcher (:func:`distillery.components.training.distributed.train_data_parallel`: ``torchrun
--standalone``, gloo on CPU) with the same *global* batch for every process count, so every run
does the same optimisation and only the work per process changes. With one process torchrun
starts a single worker that trains without a process group (the single-process loop); with N,
each rank takes 1/N of every global batch and DDP all-reduces the 1.6 MB of gradients per step.

Throughput = samples / the slowest rank's epoch time, per epoch, median over the epochs after the
first (the first pays one-off warm-up). It excludes process start-up, which the table reports
separately (``wall s``: the whole launcher call). Beside them, the same training in this process
(``in-process``: no torchrun, what the ``small_cnn`` method does).

Threads: the launcher gives N processes cores / N threads each (one process: every core). On a
2-core machine 2 processes do not add compute, they replace intra-op threading by data
parallelism; so the benchmark also runs every process count with 1 thread per process (the same
compute per process: the speed-up that data parallelism alone buys, minus the all-reduce).
Multi-threaded runs suffer most when other work shares the machine (OpenMP threads wait on each
other), so read the numbers with the load average the result records.

    python -m benchmarks.ddp_throughput                      # batch 32 (the pipeline's), 3 epochs
    python -m benchmarks.ddp_throughput --batch-sizes 32 256 --epochs 4
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SEED = 0  # the training seed of every run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (>= 2; the first is warm-up)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32],
                        help="global batch sizes; the first one is the summary's (default: %(default)s)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--samples", type=int, default=5000, help="MNIST rows to train on")
    parser.add_argument("--output", type=Path, default=RESULTS / "ddp_throughput.json")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        raise SystemExit("--epochs must be >= 2 (the first epoch is warm-up)")
    result = benchmark(args.epochs, args.batch_sizes, args.processes, args.samples)
    result["summary"]["protocol"] = protocol(result)
    from benchmarks import _results

    return _results.write_result(result, args.output, print_result, script="benchmarks.ddp_throughput")


def _load(samples: int):
    import numpy as np

    folder = ROOT / "data" / "mnist"
    if not (folder / "features.npy").is_file():
        raise SystemExit("data/mnist is missing: run `distillery data materialize` (or `make data`)")
    meta = json.loads((folder / "dataset.json").read_text())
    return np.load(folder / "features.npy")[:samples].astype(np.float32), np.load(folder / "labels.npy")[:samples], meta


def benchmark(epochs: int, batch_sizes: list[int], processes: list[int], samples: int) -> dict:
    import torch

    from distillery.components.core.train import train_classifier
    from distillery.components.training.distributed import train_data_parallel

    x, y, meta = _load(samples)
    arch, kwargs, lr, seed = "small_cnn", {}, 1e-3, SEED
    cores = os.cpu_count() or 1
    runs = []
    load_before = os.getloadavg()[0]
    for batch in batch_sizes:
        # The same training in this process: the single-process method, no torchrun.
        seconds: list[float] = []
        last = [time.perf_counter()]

        def tick(epoch: int, loss: float) -> None:
            now = time.perf_counter()
            seconds.append(now - last[0])
            last[0] = now

        torch.set_num_threads(cores)
        started = time.perf_counter()
        last[0] = started
        train_classifier(x, y, meta, arch, kwargs, epochs, lr, batch, seed, tick)
        runs.append(_row("in-process", 1, cores, batch, len(x), seconds, time.perf_counter() - started))
        print(f"batch {batch}: in-process {runs[-1]['samples_per_second']:.0f} samples/s", flush=True)
        # Each process count with the cores shared out (what the launcher does), and every count
        # with 1 thread per process: the same compute per process, so only data parallelism differs.
        configs = [(n, max(1, cores // n)) for n in processes]
        configs += [(n, 1) for n in processes if max(1, cores // n) != 1]
        for n, threads in configs:
            records: list[dict] = []
            started = time.perf_counter()
            os.environ["OMP_NUM_THREADS"] = str(threads)  # the launcher's workers inherit it
            try:
                train_data_parallel(x, y, meta, arch, kwargs, epochs, lr, batch, seed, nproc_per_node=n,
                                    checkpoint_every=epochs, on_record=records.append, on_line=None)
            finally:
                os.environ.pop("OMP_NUM_THREADS", None)
            wall = time.perf_counter() - started
            per_epoch = [max(w["seconds"] for w in r["workers"]) for r in records if r["event"] == "epoch"]
            runs.append(_row("torchrun", n, threads, batch, len(x), per_epoch, wall))
            print(f"batch {batch}: {n} process(es) x {threads} thread(s) {runs[-1]['samples_per_second']:.0f} "
                  "samples/s", flush=True)
    load_after = os.getloadavg()[0]

    main_batch = batch_sizes[0]
    main = [r for r in runs if r["launcher"] == "torchrun" and r["batch_size"] == main_batch]
    sps = {str(r["processes"]): r["samples_per_second"] for r in main
           if r["threads_per_process"] == max(1, cores // r["processes"])}
    one_thread = {str(r["processes"]): r["samples_per_second"] for r in main if r["threads_per_process"] == 1}
    lo, hi = str(min(processes)), str(max(processes))
    summary = {"batch_size": main_batch, "samples_per_second": sps,
               "speedup": sps[hi] / sps[lo] if len(sps) > 1 else None,
               "samples_per_second_1_thread_per_process": one_thread,
               "speedup_1_thread_per_process": one_thread[hi] / one_thread[lo] if len(one_thread) > 1 else None,
               "in_process_samples_per_second": next(r["samples_per_second"] for r in runs
                                                     if r["launcher"] == "in-process"
                                                     and r["batch_size"] == main_batch)}
    return {
        "benchmark": "ddp_throughput",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cores": cores, "python": platform.python_version(), "platform": platform.platform(),
                    "torch": torch.__version__, "cuda": torch.cuda.is_available(), "backend": "gloo",
                    # 1-minute load average before and after: other work on the machine skews timings
                    "load_avg_1min": {"before": load_before, "after": load_after}},
        "model": {"arch": arch, "parameters": _parameters(meta), "samples": len(x), "epochs": epochs},
        "runs": runs,
        "summary": {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()},
    }


def protocol(result: dict) -> dict:
    """``summary.protocol`` of a timing, from the result: nothing chosen from results; each run's throughput
    is the median of its epochs after the first (the repeats, ``seeds``), all runs with one training seed."""
    from benchmarks import _results

    model = result["model"]
    return _results.protocol(split_sizes={"train": model["samples"]}, model_selection="none",
                             seeds=model["epochs"] - 1, repeats="epochs after the warm-up one, median taken",
                             training_seed=SEED)


def _parameters(meta: dict) -> int:
    from distillery.components.core import models

    return models.count_parameters(models.build("small_cnn", meta))


def _row(launcher: str, processes: int, threads: int, batch: int, samples: int, epoch_seconds: list[float],
         wall: float) -> dict:
    steady = epoch_seconds[1:] or epoch_seconds  # the first epoch pays warm-up
    median = statistics.median(steady)
    return {"launcher": launcher, "processes": processes, "threads_per_process": threads, "batch_size": batch,
            "epoch_seconds": [round(s, 4) for s in epoch_seconds], "median_epoch_s": round(median, 4),
            "samples_per_second": round(samples / median, 1), "wall_s": round(wall, 2)}


def print_result(result: dict) -> None:
    print(markdown(result))


def markdown(result: dict) -> str:
    from benchmarks.report import source, table

    m, model = result["machine"], result["model"]
    load = m["load_avg_1min"]
    head = (f"{m['cores']} CPU cores (1-minute load average {load['before']:.2f} before / {load['after']:.2f} "
            f"after), torch {m['torch']}, {m['backend']}, {model['arch']} ({model['parameters']:,} parameters) on "
            f"MNIST {model['samples']:,}, {model['epochs']} epochs ({source(result, 'ddp_throughput.json')}):")
    rows = [[r["launcher"], r["processes"], r["threads_per_process"], r["batch_size"], f"{r['median_epoch_s']:.2f}",
             f"{r['samples_per_second']:,.0f}", f"{r['wall_s']:.1f}"] for r in result["runs"]]
    columns = ["launcher", "processes", "threads / process", "global batch", "epoch s (median)", "samples/s",
               "wall s"]
    return "\n\n".join([head, table(columns, rows), _speedups(result)])


def _speedups(result: dict) -> str:
    """Speed-up of 2 torchrun processes over 1 per batch size, cores shared out and at 1 thread per process;
    with the gradient bytes each rank all-reduces per step (fp32)."""
    cores, runs = result["machine"]["cores"], result["runs"]

    def rate(batch, processes, threads):
        return next((r["samples_per_second"] for r in runs if r["launcher"] == "torchrun" and r["batch_size"] == batch
                     and r["processes"] == processes and r["threads_per_process"] == threads), None)

    def ratio(batch, threads_one, threads_two):
        one, two = rate(batch, 1, threads_one), rate(batch, 2, threads_two)
        return "-" if one is None or two is None else f"{two / one:.2f}x"

    batches = sorted({r["batch_size"] for r in runs})
    cells = [f"batch {b}: {ratio(b, cores, max(cores // 2, 1))} with the cores shared out, "
             f"{ratio(b, 1, 1)} at 1 thread per process" for b in batches]
    return (f"Speed-up of 2 processes over 1: {'; '.join(cells)}. Each step all-reduces "
            f"{4 * result['model']['parameters'] / 1e6:.1f} MB of fp32 gradients.")


if __name__ == "__main__":
    sys.exit(main())
