"""Task bodies of the curation stage: read artifacts, call the method, write artifacts, log to MLflow.
Called by the KFP adapters in ``component.py``; plain Python, so tests call them directly."""
from __future__ import annotations

import numpy as np

from components.datasets import DataVersionError, data_version, load_labelled, save_arrays, save_labelled
from components.tracking import method_task, progress


def run_curation(method: str, context: str, run_key: str, params: str, dataset_out: str) -> None:
    from components.curation.validation import ValidationFailed
    import mlflow

    with method_task("curation", method, context, run_key, params) as (ctx, entry, p):
        data = ctx.data
        recorded = data_version(data["repo"], data.get("rev"))
        if recorded != ctx.data_version:
            raise DataVersionError(f"data.dvc at {data.get('rev') or 'the working tree'} records {recorded} but "
                                   f"this run was configured for {ctx.data_version}; recompile the pipeline")
        progress(f"curating {data['path']} @ {data.get('rev') or 'working tree'} (data version {recorded[:12]})")
        try:
            curated, stats = entry.load()(data["repo"], data["path"], data.get("rev"), **p)
        except ValidationFailed as exc:
            mlflow.log_dict({"failed": [{"expectation": d, "failing_rows": c} for d, c in exc.failures]},
                            "validation_failures.json")
            raise
        mlflow.log_metrics(stats)
        progress(f"validation passed; {stats['exact_duplicates_removed']} exact duplicates removed, "
                 f"{stats['rows_out']} rows kept")
        save_labelled(dataset_out, curated)


def run_split(method: str, context: str, run_key: str, params: str, dataset: str, splits_out: str, labelled_out: str) -> None:
    import mlflow

    from components.selection.annotators import SimulatedAnnotator

    with method_task("split", method, context, run_key, params) as (ctx, entry, p):
        data = load_labelled(dataset)
        test_rows, pool_rows, seed_rows = entry.load()(data.labels, p["test_fraction"], p["seed_labels"], ctx.seed)
        save_arrays(splits_out, test_rows=test_rows, train_rows=np.concatenate([pool_rows, seed_rows]))
        save_arrays(labelled_out, rows=seed_rows, labels=SimulatedAnnotator(data.labels).annotate(seed_rows))
        mlflow.log_metrics({"test_size": len(test_rows), "pool_size": len(pool_rows), "seed_labels": len(seed_rows)})
        progress(f"split: {len(test_rows)} test, {len(pool_rows)} unlabelled, {len(seed_rows)} seed labels")
