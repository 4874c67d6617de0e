"""Task body of the labelling stage: annotate the selected batch (simulated oracle or Label Studio).
The method's call and its result: the stage contract, :mod:`distillery.components.labelling.contract`."""
from __future__ import annotations

import json

import numpy as np

from distillery.components.core.datasets import load_arrays, load_labelled, save_arrays
from distillery.components.core.tracking import method_task, progress
from distillery.components.labelling.labelstudio import label_set_path


def run_labelling(method: str, context: str, run_key: str, params: str, round_index: int, dataset: str,
                  labelled: str, selected: str, labelled_out: str) -> None:
    import mlflow
    from distillery.components.core import plots
    from distillery.components.labelling.labelstudio import MissingLabels

    with method_task("labelling", method, context, run_key, params, round_index) as (ctx, entry, p):
        data, before, picked = load_labelled(dataset), load_arrays(labelled), load_arrays(selected)
        overlap = np.intersect1d(before["rows"], picked["rows"])
        if overlap.size:
            raise ValueError(f"{overlap.size} selected items are already labelled (ids {data.ids[overlap][:5]}...)")
        try:
            new_labels = entry.load().from_task(data, ctx.data, **p).annotate(picked["rows"])
        except MissingLabels as missing:
            raise request_labels(ctx, data, picked, missing, round_index, p) from None
        rows = np.concatenate([before["rows"], picked["rows"]])
        save_arrays(labelled_out, rows=rows, labels=np.concatenate([before["labels"], new_labels]))
        old = np.bincount(before["labels"], minlength=data.num_classes)
        new = np.bincount(new_labels, minlength=data.num_classes)
        counts = old + new
        mlflow.log_metrics({"labelled": len(rows), "new_labels": len(new_labels),
                            "min_class_fraction": float(counts.min() / max(counts.sum(), 1))})
        mlflow.log_dict({c: int(n) for c, n in zip(data.meta["classes"], counts)}, "class_balance.json")
        fig = plots.class_balance_figure(old, new, data.meta["classes"],
                                         f"round {round_index}: labelled set, {len(rows)} items")
        plots.log_figure(fig, "class_balance.png")
        progress(f"round {round_index}: {len(new_labels)} new labels, {len(rows)} labelled in total")


class LabelsNeeded(RuntimeError):
    """Selected items have no human label yet; the message says how to provide them."""


def request_labels(ctx, data, picked: dict, missing, round_index: int, params: dict) -> LabelsNeeded:
    """Export the items that need a human label as a Label Studio task file (an MLflow artifact of
    this task) and the error that tells the user how to import the labels and re-run."""
    import tempfile
    from pathlib import Path

    import mlflow
    from distillery.components.labelling.labelstudio import (
        export_tasks,
        labelling_config,
    )

    source = ctx.data
    score_of = dict(zip(picked["rows"].tolist(), picked["scores"].tolist())) if "scores" in picked else None
    scores = None if score_of is None else [score_of[r] for r in missing.rows.tolist()]
    tasks = export_tasks(data.ids[missing.rows], data.features[missing.rows], data.meta, ctx.data_version,
                         source["path"], scores)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tasks.json").write_text(json.dumps(tasks) + "\n")
        (Path(tmp) / "label_config.xml").write_text(labelling_config(data.meta))
        mlflow.log_artifacts(tmp, "label_studio")
    task_file = mlflow.get_artifact_uri("label_studio/tasks.json")
    label_set = params.get("label_set")
    name = _label_set_name(label_set, ctx.config.get("name"))
    target = label_set_path(source["path"], name)
    then = "" if label_set == target else \
        f"set `labelling: {{method: label_studio, params: {{label_set: {target}}}}}` in the config, then "
    if source.get("rev"):
        then += f"commit data.dvc and point data.rev at that commit (the run reads {source['rev']}), then "
    progress(f"round {round_index}: {len(missing.rows)} of {len(picked['rows'])} selected items need a human label")
    return LabelsNeeded(
        f"round {round_index}: {len(missing.rows)} of {len(picked['rows'])} selected items need a human label: "
        f"{missing}.\n"
        f"  Label Studio task file: {task_file}\n"
        f"  (labelling config beside it: label_config.xml; MLflow run {mlflow.active_run().info.run_id}).\n"
        f"  Import the tasks and the config into a Label Studio project, label them, export the project as JSON, "
        f"then run:\n"
        f"    distillery labels import EXPORT.json --dataset {source['path']} --name {name}\n"
        f"  and {then}re-run the pipeline: selection is seeded, so it picks the same batch.")


def _label_set_name(label_set: str | None, config_name: str | None) -> str:
    """The ``--name`` to import labels under: the configured label set's, else the config's name."""
    from pathlib import PurePosixPath

    for name in (PurePosixPath(label_set).stem if label_set else None, config_name):
        try:
            label_set_path("data/x", name or "")
            return name
        except ValueError:
            continue
    return "labels"
