"""Human label sets: export selected items as Label Studio tasks, import the completed export as a
DVC-versioned label set ``data/labels/<dataset>/<name>.json``.

An import is validated completely (every task, every id, every class, conflicts with the labels the
set already has) before anything is written; then it enters ``data/`` the same way a new dataset
does (:func:`distillery.pipelines.data.publish`: staged, renamed into place, ``dvc add data``, ``dvc push``).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np

from distillery.components.core.datasets import DATA_DVC, data_version, read_dataset
from distillery.components.labelling.labelstudio import (
    ConflictingLabels,
    export_tasks,
    import_export,
    label_set_json,
    label_set_path,
    labelling_config,
    parse_label_set,
)
from distillery.pipelines.data import publish


def _dataset_path(dataset: str) -> str:
    path = PurePosixPath(dataset)
    if path.is_absolute() or ".." in path.parts or not str(path).startswith("data/"):
        raise ValueError(f"--dataset {dataset!r}: expected a dataset folder under data/, e.g. data/mnist")
    return str(path)


def import_labels(root: Path, export_file: Path, dataset: str, name: str, log=print) -> Path:
    """Validate a completed Label Studio JSON export against ``dataset`` (as in the work tree) and
    add its labels to label set ``name``; returns the label set file.

    Labels for items the set already has must agree with it (a conflict is refused, listed).
    """
    dataset = _dataset_path(dataset)
    relative = label_set_path(dataset, name)
    target = root / relative
    if not export_file.is_file():
        raise FileNotFoundError(f"Label Studio export {export_file} does not exist")
    _, labels, meta = read_dataset(str(root), dataset)
    classes = [str(c) for c in meta["classes"]]
    imported = import_export(export_file.read_bytes(), np.arange(len(labels)), classes)
    existing = parse_label_set(target.read_text(), relative) if target.exists() else None
    if existing and existing["dataset"] != dataset:
        raise ValueError(f"{relative} labels {existing['dataset']}, not {dataset}")
    merged = dict(existing["labels"]) if existing else {}
    conflicts = [f"distillery_id {i}: {merged[i]!r} in {relative}, {classes[c]!r} in {export_file.name}"
                 for i, c in imported.items() if i in merged and merged[i] != classes[c]]
    if conflicts:
        raise ConflictingLabels(f"{len(conflicts)} item(s) already have a different label in {relative}:", conflicts)
    added = {i: classes[c] for i, c in imported.items() if i not in merged}
    if not added:
        log(f"{export_file.name}: all {len(imported)} labels are already in {relative}; nothing to do")
        return target
    merged.update(added)
    sources = (existing["sources"] if existing else []) + [export_file.name]
    text = label_set_json(dataset, merged, sources)
    publish(root, target, lambda staging: staging.write_text(text))
    counts = np.bincount([classes.index(c) for c in added.values()], minlength=len(classes))
    log(f"imported {len(added)} labels from {export_file.name} into {relative} ({len(merged)} in the set; "
        f"per class: {dict(zip(classes, counts.tolist()))}); versioned in {DATA_DVC} "
        f"(commit it: git add {DATA_DVC} && git commit)")
    log(f"use it: labelling: {{method: label_studio, params: {{label_set: {relative}}}}}")
    return target


def selected_from_run(run_id: str, tracking_uri: str) -> dict:
    """The ``selected_ids.json`` a selection task logged to MLflow run ``run_id``."""
    from mlflow.exceptions import MlflowException

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="selected_ids.json",
                                                       dst_path=tmp, tracking_uri=tracking_uri)
        except (MlflowException, OSError) as exc:
            raise ValueError(f"MLflow run {run_id} on {tracking_uri} has no selected_ids.json (is it a "
                             f"round-N-select-* task run?): {str(exc).splitlines()[0]}") from None
        return json.loads(Path(path).read_text())


def export_label_tasks(root: Path, selected: dict, out: Path, dataset: str | None = None,
                       log=print) -> tuple[Path, Path]:
    """Write the Label Studio task file ``out`` for the selected items, and the labelling config
    beside it (``<out stem>.label_config.xml``); returns both paths."""
    if not isinstance(selected, dict) or not isinstance(selected.get("selected_ids"), list):
        raise ValueError("expected a selected_ids.json as a selection task logs it: {\"selected_ids\": [...], ...}")
    dataset = _dataset_path(dataset or selected.get("dataset") or "")
    rev = selected.get("data_rev")
    features, _, meta = read_dataset(str(root), dataset, rev)
    ids = np.asarray(selected["selected_ids"], dtype=np.int64)
    outside = ids[(ids < 0) | (ids >= len(features))]
    if outside.size:
        raise ValueError(f"{outside.size} selected id(s) are not items of {dataset} ({len(features)} items): "
                         f"{outside[:10].tolist()}")
    version = selected.get("data_version") or data_version(root, rev)
    tasks = export_tasks(ids, features[ids], meta, version, dataset, selected.get("scores"))
    config = out.with_name(f"{out.stem}.label_config.xml")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(tasks) + "\n")
    config.write_text(labelling_config(meta))
    log(f"wrote {len(tasks)} Label Studio tasks to {out} and the labelling config to {config}; label them, "
        f"export the project as JSON, then: distillery labels import EXPORT.json --dataset {dataset} --name NAME")
    return out, config
