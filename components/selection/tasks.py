"""Task bodies of the selection stage (select a batch) and of labelling (annotate it)."""
from __future__ import annotations

import numpy as np

from components.datasets import load_arrays, load_labelled, save_arrays
from components.tracking import method_task, progress


def unlabelled_rows(splits: dict, labelled: dict) -> np.ndarray:
    """Training rows not yet labelled (the pool); the test split is never part of it."""
    return np.setdiff1d(splits["train_rows"], labelled["rows"])


def run_selection(method: str, context: str, run_key: str, params: str, round_index: int, batch_size: int,
                  dataset: str, splits: str, labelled: str, model: str, selected_out: str) -> None:
    import mlflow

    from components.training import models

    with method_task("selection", method, context, run_key, params, round_index) as (ctx, entry, p):
        data, labelled_set = load_labelled(dataset), load_arrays(labelled)
        pool = unlabelled_rows(load_arrays(splits), labelled_set)
        probs = models.predict_proba(models.load(model), data.features[pool]).numpy()
        positions, scores = entry.load()(seed=ctx.seed + round_index, **p).select(probs, batch_size)
        rows = pool[positions]
        save_arrays(selected_out, rows=rows, scores=scores[positions])
        mlflow.log_dict({"selected_ids": data.ids[rows].tolist()}, "selected_ids.json")
        mlflow.log_metrics({"pool_size": len(pool), "selected": len(rows),
                            "mean_selected_score": float(scores[positions].mean())})
        progress(f"round {round_index}: {method} picked {len(rows)} of {len(pool)} unlabelled items")


def run_labelling(method: str, context: str, run_key: str, params: str, round_index: int, dataset: str,
                  labelled: str, selected: str, labelled_out: str) -> None:
    import mlflow

    with method_task("labelling", method, context, run_key, params, round_index) as (ctx, entry, p):
        data, before, picked = load_labelled(dataset), load_arrays(labelled), load_arrays(selected)
        overlap = np.intersect1d(before["rows"], picked["rows"])
        if overlap.size:
            raise ValueError(f"{overlap.size} selected items are already labelled (ids {data.ids[overlap][:5]}...)")
        new_labels = entry.load()(data.labels, **p).annotate(picked["rows"])
        rows = np.concatenate([before["rows"], picked["rows"]])
        save_arrays(labelled_out, rows=rows, labels=np.concatenate([before["labels"], new_labels]))
        counts = np.bincount(np.concatenate([before["labels"], new_labels]), minlength=data.num_classes)
        mlflow.log_metrics({"labelled": len(rows), "new_labels": len(new_labels)})
        mlflow.log_dict({c: int(n) for c, n in zip(data.meta["classes"], counts)}, "class_balance.json")
        progress(f"round {round_index}: {len(new_labels)} new labels, {len(rows)} labelled in total")
