"""Task body of the dataset-audit stage: audit a (distilled) dataset, e.g. for a planted backdoor.
The method's call and its result: the stage contract, :mod:`distillery.components.audit.contract`."""
from __future__ import annotations

from distillery.components.core.datasets import load_labelled
from distillery.components.core.tracking import method_task, progress


def run_audit(method: str, context: str, run_key: str, params: str, dataset: str, test: str) -> None:
    """Train a fresh model on ``dataset``, log clean accuracy, ASR, threshold, a grid of triggered test
    images and the verdict (tag ``backdoor_audit``: ``pass`` or ``backdoor-suspected``)."""
    import mlflow
    from distillery.components.audit.backdoor_audit import (
        Trigger,
        triggered_grid_figure,
    )
    from distillery.components.core import plots

    with method_task("audit", method, context, run_key, params) as (ctx, entry, p):
        data, reference = load_labelled(dataset), load_labelled(test)
        pattern = 1.0 if p["trigger_pattern"] is None else p["trigger_pattern"]
        trigger = Trigger.square(data.meta["feature_shape"], p["trigger_size"], p["trigger_corner"], pattern)
        progress(f"auditing {len(data.labels)} items of {data.meta.get('name')!r}: training a fresh {p['arch']} "
                 f"and stamping a {p['trigger_size']}x{p['trigger_size']} {p['trigger_corner']} trigger on "
                 f"{len(reference.labels)} test images (target class {p['target_class']})")
        result = entry.load()(data, reference.features, reference.labels, trigger, p["target_class"],
                              arch=p["arch"], arch_kwargs=p["arch_kwargs"], epochs=p["epochs"], lr=p["lr"],
                              batch_size=p["batch_size"], seed=ctx.seed, floor=p["floor"], factor=p["factor"])
        mlflow.log_metrics(result.metrics())
        plots.log_figure(triggered_grid_figure(reference.features, reference.labels, result, trigger, data.meta),
                         "triggered_examples.png")
        mlflow.set_tag("backdoor_audit", result.verdict)
        progress(f"ASR {result.attack_success_rate:.3f} (threshold {result.threshold:.3f}, baseline "
                 f"{result.baseline_rate:.3f}), clean accuracy {result.clean_accuracy:.3f}: {result.verdict}")
