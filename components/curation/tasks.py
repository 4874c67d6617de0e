"""Task bodies of the curation stage: read artifacts, call the method, write artifacts, log to MLflow.
Called by the KFP adapters in ``component.py``; plain Python, so tests call them directly."""
from __future__ import annotations

import numpy as np

from components.datasets import DataVersionError, data_version, load_labelled, save_arrays, save_labelled
from components.tracking import method_task, progress


def run_curation(method: str, context: str, run_key: str, params: str, dataset_out: str) -> None:
    """A validating loader (registry stage ``curation``): read the configured data version, run the
    method ``fn(repo, path, rev, report_dir=..., **params) -> (LabelledData, stats)``, log its stats,
    and write the curated dataset (with a provenance record) to ``dataset_out``.

    Whatever the method writes to ``report_dir`` is logged as run artifacts, whether the suite
    passes or fails: GX Data Docs under ``data_docs/`` (``data_docs/index.html``). A failed suite
    also logs ``validation_failures.json`` and fails the task; nothing is written then.
    """
    import tempfile

    import mlflow

    from components.curation.provenance import provenance, with_provenance
    from components.curation.validation import ValidationFailed

    with method_task("curation", method, context, run_key, params) as (ctx, entry, p):
        data = ctx.data
        recorded = data_version(data["repo"], data.get("rev"))
        if recorded != ctx.data_version:
            raise DataVersionError(f"data.dvc at {data.get('rev') or 'the working tree'} records {recorded} but "
                                   f"this run was configured for {ctx.data_version}; recompile the pipeline")
        progress(f"curating {data['path']} @ {data.get('rev') or 'working tree'} (data version {recorded[:12]})")
        with tempfile.TemporaryDirectory(prefix="curation-report-") as report_dir:
            try:
                curated, stats = entry.load()(data["repo"], data["path"], data.get("rev"), report_dir=report_dir, **p)
            except ValidationFailed as exc:
                mlflow.log_dict({"failed": [{"expectation": d, "failing_rows": c} for d, c in exc.failures]},
                                "validation_failures.json")
                raise
            finally:
                mlflow.log_artifacts(report_dir)  # the Data Docs of a failed suite matter most
        curated = with_provenance(curated, method, p, parent_version=recorded)
        mlflow.set_tags({"parent_data_version": recorded, "curated_data_version": provenance(curated)[-1]["version"]})
        mlflow.log_metrics(stats)
        progress(f"validation passed; {stats['rows_in'] - stats['rows_out']:.0f} of {stats['rows_in']:.0f} rows "
                 f"removed, {stats['rows_out']:.0f} kept")
        save_labelled(dataset_out, curated)


def run_split(method: str, context: str, run_key: str, params: str, dataset: str, splits_out: str, labelled_out: str) -> None:
    import mlflow

    from components.selection.annotators import SimulatedAnnotator

    with method_task("split", method, context, run_key, params) as (ctx, entry, p):
        data = load_labelled(dataset)
        test_rows, pool_rows, seed_rows = entry.load()(data.labels, p["test_fraction"], p["seed_labels"], ctx.seed,
                                                    p["label_all"])
        save_arrays(splits_out, test_rows=test_rows, train_rows=np.concatenate([pool_rows, seed_rows]))
        save_arrays(labelled_out, rows=seed_rows, labels=SimulatedAnnotator(data.labels).annotate(seed_rows))
        mlflow.log_metrics({"test_size": len(test_rows), "pool_size": len(pool_rows), "seed_labels": len(seed_rows)})
        progress(f"split: {len(test_rows)} test, {len(pool_rows)} unlabelled, {len(seed_rows)} seed labels")


def run_curation_step(method: str, context: str, run_key: str, params: str, dataset: str, curated_out: str) -> None:
    """One curation step (registry stage ``curation_step``) on a dataset artifact: the curated data
    (with its provenance record) goes to ``curated_out``; the step's stats are logged as metrics,
    its artifacts as JSON or figures, and the run is tagged ``parent_data_version`` /
    ``curated_data_version`` (content versions, :func:`components.curation.provenance.content_version`)."""
    import mlflow

    from components.curation.provenance import apply_step, provenance

    with method_task("curation_step", method, context, run_key, params) as (ctx, _, p):
        data = load_labelled(dataset)
        progress(f"curation step {method} on {len(data.labels)} items")
        result = apply_step(method, data, p, seed=ctx.seed, context=ctx)
        record = provenance(result.data)[-1]
        mlflow.set_tags({"parent_data_version": record["parent_version"],
                         "curated_data_version": record["version"]})
        mlflow.log_metrics({"rows_in": len(data.labels), "rows_out": len(result.data.labels), **result.stats})
        _log_artifacts(result.artifacts)
        save_labelled(curated_out, result.data)
        progress(f"{method}: {len(data.labels)} -> {len(result.data.labels)} items "
                 f"(version {record['version'][:12]})")


def _log_artifacts(artifacts: dict[str, object]) -> None:
    """A dict/list is logged as JSON, a matplotlib Figure as an image (then closed)."""
    import mlflow

    from components.evaluation.plots import log_figure

    for name, artifact in artifacts.items():
        if isinstance(artifact, (dict, list)):
            mlflow.log_dict(artifact, name)
        else:
            log_figure(artifact, name)
