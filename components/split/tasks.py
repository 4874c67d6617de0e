"""Task body of the split stage: test split, unlabelled pool and seed labels.
The method's call and its result: the stage contract, :mod:`distillery.components.split.contract`."""
from __future__ import annotations

import numpy as np

from distillery.components.core.annotators import SimulatedAnnotator
from distillery.components.core.datasets import load_labelled, save_arrays
from distillery.components.core.tracking import method_task, progress


def run_split(method: str, context: str, run_key: str, params: str, dataset: str, splits_out: str,
              labelled_out: str) -> None:
    import mlflow


    with method_task("split", method, context, run_key, params) as (ctx, entry, p):
        data = load_labelled(dataset)
        test_rows, pool_rows, seed_rows = entry.load()(data.labels, p["test_fraction"], p["seed_labels"], ctx.seed,
                                                    p["label_all"])
        save_arrays(splits_out, test_rows=test_rows, train_rows=np.concatenate([pool_rows, seed_rows]))
        save_arrays(labelled_out, rows=seed_rows, labels=SimulatedAnnotator(data.labels).annotate(seed_rows))
        mlflow.log_metrics({"test_size": len(test_rows), "pool_size": len(pool_rows), "seed_labels": len(seed_rows)})
        progress(f"split: {len(test_rows)} test, {len(pool_rows)} unlabelled, {len(seed_rows)} seed labels")
