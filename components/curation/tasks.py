"""Task bodies of the curation stage: read artifacts, call the method, write artifacts, log to MLflow.
Called by the KFP adapters in ``component.py``; plain Python, so tests call them directly.
The method's call and its result: the stage contract, :mod:`distillery.components.curation.contract`."""
from __future__ import annotations

from distillery.components.core.datasets import (
    DataVersionError,
    data_version,
    save_labelled,
)
from distillery.components.core.tracking import method_task, progress


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
    from distillery.components.core.provenance import provenance, with_provenance
    from distillery.components.curation.validation import ValidationFailed

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


