"""Benchmarks checked where they broke: quality_filtering's law reads a validation split, never the test
split it is scored on; gpu_stages calls the default pipeline's training method the way the training task
does; al_label_efficiency's markdown prints quick runs whose schedule lacks the reported label counts."""
from __future__ import annotations

import inspect

import numpy as np
from bench_helpers import run_quick

from benchmarks import al_label_efficiency, gpu_stages, quality_filtering

# ---------------------------------------------------------------------------------- quality_filtering


def test_quality_filtering_splits_are_disjoint_with_a_stratified_validation_split():
    _, _, clean, noisy, buckets, validation, test = quality_filtering.noisy_buckets(4000)
    train = np.concatenate(buckets)
    assert (len(train), len(validation), len(test)) == (3000, 1000, 1000)
    assert [len(b) for b in buckets] == [750] * 4
    assert not set(train) & set(validation) and not set(train) & set(test) and not set(validation) & set(test)
    assert (noisy[validation] == clean[validation]).all() and (noisy[test] == clean[test]).all()
    counts = np.bincount(clean[validation], minlength=10)
    assert counts.min() >= 80 and counts.max() <= 120  # stratified: ~100 per class
    flipped = [float(np.mean(noisy[b] != clean[b])) for b in buckets]
    assert flipped[0] == 0.0 and all(abs(f - r) < 0.06 for f, r in zip(flipped[1:], quality_filtering.NOISE[1:]))


def test_quality_filtering_law_never_reads_the_test_split(monkeypatch):
    """Every small run of the fit is scored on the validation rows; the test rows only measure the mixes."""
    from distillery.components.curation_step import quality_filter as qf

    _, x, _, _, _, validation, test = quality_filtering.noisy_buckets(1000)
    scored, real = [], qf.learning_curve

    def recording(x_train, y_train, x_val, y_val, checkpoints, *args, **kwargs):
        scored.append((len(x_val), max(checkpoints)))
        return real(x_train, y_train, x_val, y_val, checkpoints, *args, **kwargs)

    monkeypatch.setattr(qf, "learning_curve", recording)
    monkeypatch.setattr(quality_filtering, "step_choices", lambda features, noisy, buckets, budgets:
                        ["top1"] * len(budgets))
    result = quality_filtering.run(train_size=1000, seeds=1, budgets=(250, 1000))
    fit, measure = scored[:4], scored[4:]  # four buckets' small runs, then four mixes
    assert all(n == len(validation) for n, _ in fit) and all(n == len(test) for n, _ in measure)
    assert len(measure) == 4 and all(top == 1000 for _, top in measure)
    setup = result["setup"]
    protocol = quality_filtering.protocol(setup)
    assert protocol["model_selection"] == "validation"
    assert protocol["split_sizes"] == {"train": 750, "validation": 250, "test": 1000}
    result.update(machine={"cores": 2, "load_avg_1min": {"before": 0.0}}, seconds=1.0)
    text = quality_filtering.markdown(result)
    assert "law's pick (validation)" in text and "best on test" in text


# ------------------------------------------------------------------------------------------ gpu_stages


def test_gpu_stages_calls_the_default_training_method_as_the_task_does():
    from distillery.components.core import registry
    from distillery.pipelines.config import DEFAULT_CONFIG, load_config

    config = load_config(DEFAULT_CONFIG)
    method = registry.get("training", config["training"]["method"])
    arch, arch_kwargs, training, method_kwargs = gpu_stages.training_call(method.name, config["training"]["params"])
    assert set(training) == {"epochs", "lr", "batch_size"}
    assert "arch" not in arch_kwargs and "arch" not in method_kwargs
    if "unlabelled" in method.inputs:
        method_kwargs["unlabelled"] = np.zeros((4, 784), np.uint8)
    # the call binds (no "multiple values for argument 'arch'", no missing method keyword)
    inspect.signature(method.load()).bind(None, None, {}, arch, arch_kwargs, training["epochs"], training["lr"],
                                          training["batch_size"], 0, None, **method_kwargs)


def test_gpu_stages_training_call_maps_both_parameter_styles():
    # small_cnn: no arch_kwargs parameter, every other parameter is an architecture argument
    assert gpu_stages.training_call("small_cnn", {"epochs": 3, "lr": 1e-3, "batch_size": 8, "channels": 4}) == (
        "small_cnn", {"channels": 4}, {"epochs": 3, "lr": 1e-3, "batch_size": 8}, {})
    # fixmatch: arch names the architecture, arch_kwargs holds its arguments, the rest are method keywords
    params = {"arch": "mlp", "arch_kwargs": {"hidden": 8}, "epochs": 1, "lr": 0.1, "batch_size": 4,
              "threshold": 0.8, "lambda_u": 1.0, "mu": 3}
    assert gpu_stages.training_call("fixmatch", params) == (
        "mlp", {"hidden": 8}, {"epochs": 1, "lr": 0.1, "batch_size": 4}, {"threshold": 0.8, "lambda_u": 1.0, "mu": 3})


# --------------------------------------------------------------------------------- al_label_efficiency


def test_al_label_efficiency_quick_pool_aware_prints_missing_points_as_dashes(tmp_path):
    """``--quick --strategies random,margin+pool`` (about 10 s): its schedule stops before 100 labels."""
    results, logs = run_quick(tmp_path, "al_label_efficiency", extra=("--strategies", "random,margin+pool"))
    result, log = results["al_label_efficiency"], logs["al_label_efficiency"]
    assert set(result["pool_aware"]["cells"]) == {"random", "margin+pool"}
    assert "| acc@100 | acc@200 | acc@400 |" in log and al_label_efficiency.MISSING in log
    assert al_label_efficiency.markdown(result, "combination").startswith("| strategy |")  # renders, too
