"""Task body of a curation step: one published method applied to the curated dataset, as a new DVC-tracked version.
The method's call and its result: the stage contract, :mod:`distillery.components.curation_step.contract`."""
from __future__ import annotations

from distillery.components.core.datasets import load_labelled, save_labelled
from distillery.components.core.tracking import log_artifacts, method_task, progress


def run_curation_step(method: str, context: str, run_key: str, params: str, dataset: str, curated_out: str) -> None:
    """One curation step (registry stage ``curation_step``) on a dataset artifact: the curated data
    (with its provenance record) goes to ``curated_out``; the step's stats are logged as metrics,
    its artifacts as JSON or figures, and the run is tagged ``parent_data_version`` /
    ``curated_data_version`` (content versions, :func:`distillery.components.core.provenance.content_version`)."""
    import mlflow
    from distillery.components.core.provenance import apply_step, provenance

    with method_task("curation_step", method, context, run_key, params) as (ctx, _, p):
        data = load_labelled(dataset)
        progress(f"curation step {method} on {len(data.labels)} items")
        result = apply_step(method, data, p, seed=ctx.seed, context=ctx)
        record = provenance(result.data)[-1]
        mlflow.set_tags({"parent_data_version": record["parent_version"],
                         "curated_data_version": record["version"]})
        mlflow.log_metrics({"rows_in": len(data.labels), "rows_out": len(result.data.labels), **result.stats})
        log_artifacts(result.artifacts)
        save_labelled(curated_out, result.data)
        progress(f"{method}: {len(data.labels)} -> {len(result.data.labels)} items "
                 f"(version {record['version'][:12]})")
