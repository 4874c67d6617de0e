"""Task body of the dataset-distillation stage: a small synthetic training set distilled from the real one.
The method's call and its result: the stage contract, :mod:`distillery.components.dataset_distillation.contract`."""
from __future__ import annotations

from distillery.components.core.datasets import load_labelled, save_labelled
from distillery.components.core.tracking import method_task, progress


def run_dataset_distillation(method: str, context: str, run_key: str, params: str, dataset: str,
                             synthetic_out: str) -> None:
    """Distil the ``dataset`` artifact (a LabelledData) into a synthetic one; the loss curve and an image
    grid of the result go to MLflow, the data version of the run's source into the provenance."""
    import mlflow
    from distillery.components.core.plots import log_figure
    from distillery.components.dataset_distillation.distribution_matching import (
        synthetic_grid_figure,
    )

    with method_task("dataset_distillation", method, context, run_key, params) as (ctx, entry, p):
        data = load_labelled(dataset)
        iterations = p["iterations"]
        progress(f"distilling {len(data.labels)} items of {data.meta.get('name')!r} into {p['ipc']} synthetic "
                 f"images per class ({iterations} iterations)")

        def on_iteration(iteration: int, loss: float) -> None:
            mlflow.log_metric("dm_loss", loss, step=iteration)
            if (iteration + 1) % max(1, iterations // 10) == 0 or iteration + 1 == iterations:
                progress(f"distribution matching iteration {iteration + 1}/{iterations}: loss {loss:.4f}")

        synthetic = entry.load()(data, seed=ctx.seed, on_iteration=on_iteration,
                                 source=f"{ctx.data['path']} (data version {ctx.data_version})", **p)
        log_figure(synthetic_grid_figure(synthetic, p["ipc"]), "synthetic_images.png")
        mlflow.log_dict(synthetic.meta, "synthetic_dataset.json")
        mlflow.log_metrics({"synthetic_items": len(synthetic.labels), "source_items": len(data.labels)})
        save_labelled(synthetic_out, synthetic)
