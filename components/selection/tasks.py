"""Task bodies of the selection stage (select a batch) and of labelling (annotate it).
The method's call and its result: the stage contract, :mod:`distillery.components.selection.contract`."""
from __future__ import annotations

import numpy as np

from distillery.components.core.datasets import (
    load_arrays,
    load_labelled,
    save_arrays,
    unlabelled_rows,
)
from distillery.components.core.tracking import method_task, progress
from distillery.components.selection.pool import Pool


def run_selection(method: str, context: str, run_key: str, params: str, round_index: int, batch_size: int,
                  dataset: str, splits: str, labelled: str, model: str, selected_out: str) -> None:
    import mlflow
    from distillery.components.core import devices, models

    with method_task("selection", method, context, run_key, params, round_index) as (ctx, entry, p):
        data, labelled_set = load_labelled(dataset), load_arrays(labelled)
        pool = unlabelled_rows(load_arrays(splits), labelled_set)
        # the model on the stage's device; the pool streams through it in chunks (Pool.forward)
        view = Pool(data.features[pool], models.load(model).to(devices.current().device),
                    data.features[labelled_set["rows"]],
                    labelled_set["labels"], num_classes=data.num_classes)
        positions, scores = entry.load()(seed=ctx.seed + round_index, **p).select(view, batch_size)
        rows = pool[positions]
        save_arrays(selected_out, rows=rows, scores=scores[positions])
        log_selection(ctx, method, round_index, data.ids[rows], scores, positions)
        mlflow.log_metrics({"pool_size": len(pool), "selected": len(rows),
                            "mean_selected_score": float(scores[positions].mean())})
        progress(f"round {round_index}: {method} picked {len(rows)} of {len(pool)} unlabelled items")


def log_selection(ctx, method: str, round_index: int, ids: np.ndarray, scores: np.ndarray,
                  positions: np.ndarray) -> None:
    """``selected_ids.json`` (ids, their scores, and the data they come from, so that
    ``distillery labels export --run-id`` can rebuild the items) and the pool's score histogram."""
    import mlflow
    from distillery.components.core import plots

    data = ctx.data
    mlflow.log_dict({"selected_ids": [int(i) for i in ids], "scores": scores[positions].tolist(),
                     "dataset": data["path"], "data_rev": data.get("rev"), "data_version": ctx.data_version},
                    "selected_ids.json")
    fig = plots.score_histogram_figure(scores, positions, f"round {round_index}: {method} scores, "
                                                          f"{len(positions)} of {len(scores)} selected")
    plots.log_figure(fig, "score_histogram.png")


