"""Human labelling with Label Studio, through its documented JSON formats (no server needed here).

Out: :func:`export_tasks` turns selected dataset items into Label Studio *tasks* (the import format:
``{"id", "data", "meta"}``), and :func:`labelling_config` writes the matching labelling interface
(one single-choice ``Choices`` control over the dataset's class names).

In: :func:`import_export` reads a completed Label Studio JSON *export* (the tasks again, each with its
``annotations``) and returns ``{dataset id: class index}``, or raises a ``ValueError`` naming every
task it cannot use. Nothing is dropped silently.

Label sets: imported labels are kept as ``data/labels/<dataset>/<name>.json`` inside ``data/``, so
DVC versions them with the datasets (``distillery labels import``); :func:`read_label_set` reads one
at a data revision through DVC, like the datasets themselves.
"""
from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterable
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from distillery.components.core.annotators import check_rows

LABELS_DIR = "data/labels"
CONTROL, IMAGE_OBJECT, TABLE_OBJECT = "label", "image", "row"
ID_KEY = "distillery_id"
LABEL_SET_KEYS = {"count", "dataset", "labels", "sources"}


class LabelStudioError(ValueError):
    """A Label Studio file Distillery cannot use; ``problems`` lists every offending task."""

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = problems or []
        listed = "".join(f"\n  - {p}" for p in self.problems[:20])
        more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        super().__init__(message + listed + more)


class MalformedExport(LabelStudioError):
    """Not a Label Studio JSON export (bad JSON, wrong structure, missing ``data.distillery_id``)."""


class UnknownIds(LabelStudioError):
    """Tasks whose ``distillery_id`` is not an item of the dataset."""


class UnknownClasses(LabelStudioError):
    """Annotations choosing a class name the dataset does not have."""


class MissingAnnotations(LabelStudioError):
    """Tasks with no usable annotation (none, all cancelled, or no single choice in the latest)."""


class ConflictingLabels(LabelStudioError):
    """The same item labelled with two different classes (within an export, or against a label set)."""


# ----------------------------------------------------------------------------------------- export

def is_image(meta: dict) -> bool:
    return len(meta.get("feature_shape") or []) == 3


def png_data_uri(item: np.ndarray, meta: dict) -> str:
    """A ``data:image/png;base64,...`` URI of one flattened image item (``feature_shape`` [C, H, W]).

    Values are mapped from ``meta["value_range"]`` (default ``[0, 255]``) to 0..255; 1 channel is
    greyscale, 3 RGB, 4 RGBA.
    """
    from PIL import Image

    channels, height, width = meta["feature_shape"]
    if channels not in (1, 3, 4):
        raise ValueError(f"cannot draw an image with {channels} channels as PNG (1, 3 or 4)")
    lo, hi = meta.get("value_range") or (0, 255)
    pixels = np.asarray(item, dtype=np.float64).reshape(channels, height, width)
    pixels = np.clip(np.rint((pixels - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels[0] if channels == 1 else np.ascontiguousarray(pixels.transpose(1, 2, 0)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def feature_keys(meta: dict) -> list[str]:
    """The ``data`` keys of a tabular item's features: the feature names, with characters other
    than letters, digits and ``_`` replaced by ``_`` (Label Studio variables are ``$word``)."""
    width = int(np.prod(meta.get("feature_shape") or [0]))
    names = meta.get("feature_names") or [f"f{i}" for i in range(width)]
    keys = [re.sub(r"\W", "_", str(name)) or "_" for name in names]
    clashes = sorted({k for k in keys if keys.count(k) > 1} | ({ID_KEY} & set(keys)))
    if clashes:
        raise ValueError(f"feature names {clashes} clash as Label Studio data keys (after replacing "
                         f"characters other than letters, digits and '_'); rename those columns")
    return keys


def export_tasks(ids: Iterable[int], features: np.ndarray, meta: dict, data_version: str = "",
                 dataset_path: str | None = None, scores: Iterable[float] | None = None) -> list[dict]:
    """One Label Studio task per item, in the given order.

    Args:
        ids: ``(B,)`` dataset item ids (row numbers in the stored dataset version).
        features: ``(B, D)`` the items' flattened features, as stored.
        meta: the dataset's ``dataset.json``; a 3-dim ``feature_shape`` [C, H, W] means images.
        data_version: the data version (md5 in ``data.dvc``) the items come from.
        dataset_path: the dataset folder, e.g. ``data/mnist`` (recorded in each task's ``meta``).
        scores: optional ``(B,)`` selection scores, recorded in each task's ``meta``.
    Returns:
        tasks ``{"id": id, "data": {..., "distillery_id": id}, "meta": {...}}``: images as a PNG data
        URI under ``data.image``; tabular features by (sanitised) feature name under ``data``.
    """
    ids = [int(i) for i in ids]
    features = np.asarray(features)
    if len(features) != len(ids):
        raise ValueError(f"{len(ids)} ids but {len(features)} feature rows")
    scores = None if scores is None else [float(s) for s in scores]
    if scores is not None and len(scores) != len(ids):
        raise ValueError(f"{len(ids)} ids but {len(scores)} scores")
    image = is_image(meta)
    keys = None if image else feature_keys(meta)
    task_meta = {"dataset": meta.get("name", ""), "dataset_path": dataset_path or "", "data_version": data_version}
    tasks = []
    for position, (item_id, row) in enumerate(zip(ids, features)):
        if image:
            data: dict[str, Any] = {IMAGE_OBJECT: png_data_uri(row, meta)}
        else:
            data = {key: _plain(value) for key, value in zip(keys, np.asarray(row).reshape(-1))}
        data[ID_KEY] = item_id
        extra = {} if scores is None else {"selection_score": scores[position]}
        tasks.append({"id": item_id, "data": data, "meta": {**task_meta, **extra}})
    return tasks


def _plain(value: Any) -> Any:
    value = value.item() if isinstance(value, np.generic) else value
    return None if isinstance(value, float) and not np.isfinite(value) else value


def labelling_config(meta: dict) -> str:
    """The Label Studio labelling interface matching :func:`export_tasks` for this dataset."""
    classes = meta["classes"]
    if image := is_image(meta):
        shown = f'  <Image name="{IMAGE_OBJECT}" value="${IMAGE_OBJECT}" zoom="true" smoothing="false"/>'
    else:
        keys = feature_keys(meta)
        names = meta.get("feature_names") or keys
        rows = "\n".join(f"{name}: ${key}" for name, key in zip(names, keys))
        shown = f'  <Text name="{TABLE_OBJECT}" value={quoteattr(rows)}/>'
    target = IMAGE_OBJECT if image else TABLE_OBJECT
    choices = "\n".join(f"    <Choice value={quoteattr(str(c))}/>" for c in classes)
    return (f'<View>\n  <Header value="Item ${ID_KEY} of {_xml_text(meta.get("name", "the dataset"))}: '
            f'choose its class"/>\n{shown}\n'
            f'  <Choices name="{CONTROL}" toName="{target}" choice="single" required="true" showInline="true">\n'
            f'{choices}\n  </Choices>\n</View>\n')


def _xml_text(text: str) -> str:
    return quoteattr(str(text))[1:-1]


# ----------------------------------------------------------------------------------------- import

def import_export(export_json: str | bytes | list, dataset_ids: Iterable[int], classes: list[str]) -> dict[int, int]:
    """Labels from a completed Label Studio JSON export.

    Per task the latest non-cancelled annotation counts (by ``updated_at``, then ``created_at``, then
    position); it must hold exactly one ``choices`` result with exactly one choice. The same item in
    several tasks must get the same class.

    Args:
        export_json: the export's text (or bytes), or the already-parsed list of tasks.
        dataset_ids: every item id of the dataset (the labels must be for these).
        classes: the dataset's class names (index = class).
    Returns:
        ``{dataset id: class index}``, sorted by id.
    Raises:
        MalformedExport, UnknownIds, UnknownClasses, MissingAnnotations, ConflictingLabels: each
        a ``ValueError`` listing every offending task.
    """
    tasks = _parse(export_json)
    known = set(int(i) for i in dataset_ids)
    index = {str(c): i for i, c in enumerate(classes)}
    unknown_ids, unknown_classes, missing, chosen = [], [], [], {}
    for task, item_id in tasks:
        where = f"task {task.get('id', '?')} (distillery_id {item_id})"
        if item_id not in known:
            unknown_ids.append(f"{where}: not an item of the dataset ({len(known)} items)")
            continue
        name, reason = _latest_choice(task)
        if reason:
            missing.append(f"{where}: {reason}")
        elif name not in index:
            unknown_classes.append(f"{where}: class {name!r} is not one of {list(index)}")
        else:
            chosen.setdefault(item_id, []).append((where, name))
    if unknown_ids:
        raise UnknownIds(f"{len(unknown_ids)} task(s) name items that are not in the dataset "
                         "(exported from another dataset or version?):", unknown_ids)
    if unknown_classes:
        raise UnknownClasses(f"{len(unknown_classes)} annotation(s) choose a class the dataset does not have "
                             "(does the labelling config match the dataset's classes?):", unknown_classes)
    if missing:
        raise MissingAnnotations(f"{len(missing)} task(s) have no usable annotation; finish (or remove) them "
                                 "in Label Studio and export again:", missing)
    conflicts = [f"distillery_id {i}: " + ", ".join(f"{where} says {name!r}" for where, name in found)
                 for i, found in sorted(chosen.items()) if len({name for _, name in found}) > 1]
    if conflicts:
        raise ConflictingLabels(f"{len(conflicts)} item(s) appear in several tasks with different classes:",
                                conflicts)
    return {i: index[found[0][1]] for i, found in sorted(chosen.items())}


def _parse(export_json: str | bytes | list) -> list[tuple[dict, int]]:
    if isinstance(export_json, (str, bytes)):
        try:
            export_json = json.loads(export_json)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MalformedExport(f"not valid JSON: {exc}") from None
    if not isinstance(export_json, list):
        raise MalformedExport(f"expected a Label Studio JSON export (a list of tasks), got a "
                              f"{type(export_json).__name__}")
    if not export_json:
        raise MalformedExport("the export holds no tasks")
    problems, tasks = [], []
    for n, task in enumerate(export_json):
        where = f"task #{n}" + (f" (id {task.get('id')})" if isinstance(task, dict) and "id" in task else "")
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            problems.append(f"{where}: not a task object with a 'data' object")
            continue
        item_id = task["data"].get(ID_KEY)
        if isinstance(item_id, str) and item_id.strip().isdigit():
            item_id = int(item_id)
        if isinstance(item_id, bool) or not isinstance(item_id, int):
            problems.append(f"{where}: data.{ID_KEY} is missing or not an integer ({item_id!r}); "
                            "was it exported from tasks made by `distillery labels export`?")
            continue
        annotations = task.get("annotations", [])
        if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
            problems.append(f"{where}: 'annotations' is not a list of objects")
            continue
        bad = [a.get("id", k) for k, a in enumerate(annotations) if not isinstance(a.get("result", []), list)]
        if bad:
            problems.append(f"{where}: annotation(s) {bad} have a 'result' that is not a list")
            continue
        tasks.append((task, item_id))
    if problems:
        raise MalformedExport(f"{len(problems)} of {len(export_json)} entries are not Label Studio tasks "
                              "as `distillery labels export` makes them:", problems)
    return tasks


def _latest_choice(task: dict) -> tuple[str | None, str | None]:
    """``(class name, None)`` from the task's latest non-cancelled annotation, or ``(None, reason)``."""
    annotations = task.get("annotations") or []
    usable = [(k, a) for k, a in enumerate(annotations) if not a.get("was_cancelled", False)]
    if not usable:
        return None, ("no annotations" if not annotations else f"all {len(annotations)} annotation(s) cancelled")
    _, latest = max(usable, key=lambda ka: (_time(ka[1].get("updated_at")), _time(ka[1].get("created_at")), ka[0]))
    results = [r for r in latest.get("result") or [] if isinstance(r, dict) and r.get("type") == "choices"]
    picked = [c for r in results for c in ((r.get("value") or {}).get("choices") or [])]
    who = f"latest annotation {latest.get('id', '')}".rstrip()
    if not picked:
        return None, f"the {who} chose no class"
    if len(picked) > 1:
        return None, f"the {who} chose {len(picked)} classes {picked} (one expected)"
    return str(picked[0]), None


def _time(value: Any) -> float:
    if not value:
        return float("-inf")
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise MalformedExport(f"annotation time {value!r} is not an ISO-8601 timestamp") from None


# ------------------------------------------------------------------------------------- label sets

def label_set_path(dataset_path: str, name: str) -> str:
    """Where label set ``name`` of dataset ``dataset_path`` lives: ``data/labels/<dataset>/<name>.json``."""
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum() or name.startswith("."):
        raise ValueError(f"label set name {name!r}: use letters, digits, '-', '_' and '.' only")
    return f"{LABELS_DIR}/{PurePosixPath(dataset_path).name}/{name}.json"


def label_set_json(dataset_path: str, labels: dict[int, str], sources: list[str]) -> str:
    """The label set file, byte-for-byte deterministic: ids in numeric order, keys sorted."""
    body = {"count": len(labels), "dataset": dataset_path,
            "labels": {str(i): labels[i] for i in sorted(labels)}, "sources": list(sources)}
    return json.dumps(body, indent=2) + "\n"


def parse_label_set(text: str, where: str) -> dict:
    """A label set's contents, checked: ``{"dataset", "labels": {int id: class name}, "sources", "count"}``."""
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"label set {where} is not valid JSON: {exc}") from None
    if not isinstance(body, dict) or set(body) != LABEL_SET_KEYS or not isinstance(body["labels"], dict) \
            or not all(k.isdigit() and isinstance(v, str) for k, v in body["labels"].items()):
        raise ValueError(f"label set {where} is not a Distillery label set (keys {sorted(LABEL_SET_KEYS)}, "
                         "labels {id: class name})")
    return {**body, "labels": {int(k): v for k, v in body["labels"].items()}}


def read_label_set(repo: str, path: str, rev: str | None = None) -> dict | None:
    """The label set at ``path`` in ``repo`` at ``rev`` (``None``: the working tree), read through
    DVC like the datasets; ``None`` when it does not exist there."""
    from distillery.components.core.datasets import DataVersionError, dvc_filesystem

    try:
        fs = dvc_filesystem(repo, rev)
    except Exception as exc:  # dvc raises many types for a bad repo/rev
        raise DataVersionError(f"cannot open data repo {repo!r} at revision {rev!r}: {exc}") from exc
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as fh:
        return parse_label_set(fh.read(), f"{path} @ {rev or 'working tree'}")


class MissingLabels(LookupError):
    """Some rows have no human label yet. ``rows``/``ids``: those rows and their dataset ids."""

    def __init__(self, rows: np.ndarray, ids: np.ndarray, label_set: str | None, exists: bool):
        self.rows, self.ids, self.label_set, self.exists = rows, ids, label_set, exists
        where = (f"label set {label_set}" + ("" if exists else " (not created yet)")) if label_set \
            else "no label set (labelling.params.label_set is not set)"
        super().__init__(f"{len(rows)} item(s) have no human label in {where}")


class LabelStudioAnnotator:
    """Answers with human labels from a Label Studio label set (``data/labels/<dataset>/<name>.json``).

    Args:
        ids: ``(N,)`` dataset item ids of the curated dataset, indexed by row.
        classes: the dataset's class names (index = label).
        labels: ``{dataset id: class name}`` from the label set.
        label_set: the label set's path (for messages); ``exists``: whether it exists yet.
    """

    def __init__(self, ids: np.ndarray, classes: list[str], labels: dict[int, str],
                 label_set: str | None = None, exists: bool = True):
        index = {str(c): i for i, c in enumerate(classes)}
        unknown = sorted({name for name in labels.values() if name not in index})
        if unknown:
            raise ValueError(f"label set {label_set} uses class(es) {unknown} the dataset does not have "
                             f"({list(index)})")
        self.ids = np.asarray(ids, dtype=np.int64)
        self.labels = {int(i): index[name] for i, name in labels.items()}
        self.label_set, self.exists = label_set, exists

    @classmethod
    def from_task(cls, data: Any, source: dict, label_set: str | None = None) -> LabelStudioAnnotator:
        """Read ``label_set`` at the run's data revision through DVC, like the dataset."""
        from distillery.components.labelling.labelstudio import read_label_set

        body = read_label_set(source["repo"], label_set, source.get("rev")) if label_set else None
        if body is not None and PurePosixPath(body["dataset"]) != PurePosixPath(source["path"]):
            raise ValueError(f"label set {label_set} labels {body['dataset']}, but this run reads {source['path']}")
        return cls(data.ids, data.meta["classes"], body["labels"] if body else {}, label_set, body is not None)

    def annotate(self, rows: np.ndarray) -> np.ndarray:
        """Labels ``(len(rows),)`` for dataset rows ``rows``; :class:`MissingLabels` if any has none."""
        rows = check_rows(rows, len(self.ids))
        ids = self.ids[rows]
        missing = np.array([i not in self.labels for i in ids.tolist()], dtype=bool)
        if missing.any():
            raise MissingLabels(rows[missing], ids[missing], self.label_set, self.exists)
        return np.array([self.labels[i] for i in ids.tolist()], dtype=np.int64)
