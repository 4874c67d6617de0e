"""A user's dataset read into the arrays Distillery stores, for ``distillery data add``.

Four kinds of source:

* a folder with one sub-folder of images per class;
* a CSV or Parquet table of feature columns and a label column;
* a pair of ``.npy`` files, features ``(N, D)`` (a table) or ``(N, H, W)`` / ``(N, C, H, W)``
  (images), and labels ``(N,)`` (``--labels``);
* a Distillery dataset folder (``features.npy``, ``labels.npy``, ``dataset.json``).

Whatever the source, every problem is reported with the file it is in, and the arrays are checked
after conversion to the dtypes that will be stored (:func:`check_values`): features finite and
within float32's range (checked before the cast, so 1e300 is refused rather than stored as inf),
labels whole numbers or class names, at least two classes and enough rows of each for the split.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
TABLE_SUFFIXES = {".csv", ".parquet", ".pq"}
FLOAT32_MAX = float(np.finfo(np.float32).max)
MIN_ROWS_PER_CLASS = 2  # the stratified split puts at least one of each class on each side


class SourceError(ValueError):
    """A dataset source that cannot become a dataset; the message names the file and the fix."""


def load_source(source: Path, label_column: str = "label", labels_file: Path | None = None
                ) -> tuple[np.ndarray | list[np.ndarray], np.ndarray, dict]:
    """``(rows, labels, meta)`` of ``source`` (see the module docstring); labels as class indices."""
    if not source.exists():
        raise SourceError(f"{source} does not exist")
    if labels_file is not None and source.suffix.lower() != ".npy":
        raise SourceError(f"--labels goes with a features .npy file, not {source}")
    if source.is_dir():
        if (source / "features.npy").is_file() and (source / "labels.npy").is_file():
            return load_dataset_folder(source)
        return load_image_folder(source)
    suffix = source.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        return load_table(source, label_column)
    if suffix == ".npy":
        if labels_file is None:
            raise SourceError(f"{source}: a features .npy needs its labels: pass --labels LABELS.npy")
        return load_npy_pair(source, labels_file)
    raise SourceError(f"{source}: expected a folder (images per class, or a Distillery dataset with features.npy "
                      f"and labels.npy), a .csv/.parquet table, or a features .npy with --labels")


def load_image_folder(folder: Path) -> tuple[list[np.ndarray], np.ndarray, dict]:
    """A folder with one sub-folder of images per class -> (rows, labels, meta)."""
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise SourceError(f"{folder} has no class sub-folders (expected {folder}/<class>/<image>.png), and no "
                          "features.npy + labels.npy")
    files = [(f, label) for label, c in enumerate(classes)
             for f in sorted((folder / c).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise SourceError(f"no images ({sorted(IMAGE_SUFFIXES)}) under {folder}/<class>/")
    images = []
    for file, _ in files:
        try:
            with Image.open(file) as image:
                image.load()  # decode now: a truncated file fails here, named
                images.append(image.copy())
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
            raise SourceError(f"cannot read image {file}: {exc}; fix or remove it") from None
    mode = "L" if all(im.mode in ("L", "1", "I;16") for im in images) else "RGB"
    arrays = [np.asarray(im.convert(mode), dtype=np.uint8) for im in images]
    arrays = [a[None] if a.ndim == 2 else a.transpose(2, 0, 1) for a in arrays]  # -> (C, H, W)
    shape = Counter(a.shape for a in arrays).most_common(1)[0][0]
    meta = {"kind": "image", "feature_shape": list(shape), "classes": classes, "value_range": [0, 255]}
    return [a.reshape(-1) for a in arrays], np.array([label for _, label in files]), meta


def load_table(file: Path, label_column: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """A CSV or Parquet file of numeric feature columns plus ``label_column`` -> (rows, labels, meta)."""
    import pandas as pd

    try:
        if file.suffix.lower() in (".parquet", ".pq"):
            table = pd.read_parquet(file)
        else:
            table = pd.read_csv(file, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SourceError(f"cannot read {file}: it is not UTF-8 text ({exc.reason} at byte {exc.start}); save it "
                          "as UTF-8") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise SourceError(f"cannot read {file} as a table: {str(exc).strip()}") from None
    except (OSError, ValueError) as exc:  # pyarrow's errors for a damaged Parquet file are ValueErrors/OSErrors
        raise SourceError(f"cannot read {file}: {exc}") from None
    if label_column not in table.columns:
        raise SourceError(f"{file} has no label column {label_column!r}; columns: {list(table.columns)} "
                          "(--label-column names it)")
    raw_labels = table.pop(label_column)
    missing = np.flatnonzero(raw_labels.isna().to_numpy())
    if missing.size:
        hint = " (the file may be truncated)" if missing[-1] == len(table) - 1 and _truncated(file) else ""
        raise SourceError(f"{file}: {missing.size} row(s) have no label, e.g. data row(s) "
                          f"{(missing[:5] + 1).tolist()}{hint}")
    text = [str(c) for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    if text:
        raise SourceError(f"{file}: feature columns must be numbers; {text} hold text (encode them as numbers, or "
                          "drop them)")
    labels, classes = class_indices(raw_labels.to_numpy(), str(file))
    meta = {"kind": "tabular", "feature_shape": [table.shape[1]], "classes": classes, "value_range": None,
            "feature_names": [str(c) for c in table.columns]}
    return table.to_numpy(dtype=np.float64), labels, meta


def _truncated(file: Path) -> bool:
    """A text file whose last line has fewer fields than its header, or that lacks its final newline."""
    lines = file.read_bytes().splitlines()
    return bool(lines) and (not file.read_bytes().endswith(b"\n") or lines[-1].count(b",") < lines[0].count(b","))


def load_npy_pair(features_file: Path, labels_file: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Features ``(N, D)`` (a table) or ``(N, H, W)`` / ``(N, C, H, W)`` (images) and labels ``(N,)``."""
    features, labels = _npy(features_file), _npy(labels_file)
    if labels.ndim != 1:
        raise SourceError(f"{labels_file}: labels must be one value per row, shape (N,), got {labels.shape}")
    if features.ndim == 2:
        meta = {"kind": "tabular", "feature_shape": [features.shape[1]], "value_range": None,
                "feature_names": [f"f{i}" for i in range(features.shape[1])]}
    elif features.ndim in (3, 4):
        shape = [1, *features.shape[1:]] if features.ndim == 3 else list(features.shape[1:])
        integral = features.dtype.kind in "biu"
        meta = {"kind": "image", "feature_shape": shape,
                "value_range": [0, 255] if integral else [float(np.nanmin(features)), float(np.nanmax(features))]}
    else:
        raise SourceError(f"{features_file}: features must be (N, D) or (N, [C,] H, W), got shape {features.shape}")
    indices, classes = class_indices(labels, str(labels_file))
    return features.reshape(len(features), -1), indices, {**meta, "classes": classes}


def load_dataset_folder(folder: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """A Distillery dataset folder; without ``dataset.json`` it is read as an ``.npy`` pair."""
    if not (folder / "dataset.json").is_file():
        return load_npy_pair(folder / "features.npy", folder / "labels.npy")
    try:
        meta = json.loads((folder / "dataset.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SourceError(f"cannot read {folder / 'dataset.json'}: {exc}") from None
    missing = [k for k in ("kind", "feature_shape", "classes") if k not in meta]
    if missing:
        raise SourceError(f"{folder / 'dataset.json'} lacks {missing}")
    features, labels = _npy(folder / "features.npy"), _npy(folder / "labels.npy")
    if labels.dtype.kind not in "biuf":  # class names stored as text: index them in the file's own order
        names = [str(c) for c in meta["classes"]]
        unknown = sorted(set(map(str, labels)) - set(names))
        if unknown:
            raise SourceError(f"{folder / 'labels.npy'} has labels {unknown[:5]} that dataset.json's classes lack")
        labels = np.array([names.index(str(v)) for v in labels])
    else:
        labels, _ = class_indices(labels, str(folder / "labels.npy"))
    return features.reshape(len(features), -1), labels, {k: v for k, v in meta.items() if k not in ("name", "source")}


def _npy(file: Path) -> np.ndarray:
    if not file.is_file():
        raise SourceError(f"{file} does not exist")
    try:
        return np.load(file, allow_pickle=False)
    except (OSError, ValueError) as exc:  # truncated, not an .npy, or object arrays (pickles are refused)
        raise SourceError(f"cannot read {file} as a NumPy array: {exc}") from None


def class_indices(values: np.ndarray, where: str) -> tuple[np.ndarray, list[str]]:
    """Labels as class indices ``(N,)`` int64 and the class names: whole numbers (ints, or floats
    such as 0.0/1.0) index classes ``0..max``; text labels are class names, indexed in sorted order."""
    values = np.asarray(values)
    if values.dtype.kind in "OUS":
        names = [str(v) for v in values]
        classes = sorted(set(names))
        lookup = {c: i for i, c in enumerate(classes)}
        return np.array([lookup[n] for n in names], dtype=np.int64), classes
    if values.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
        if bad.size:
            raise SourceError(f"{where}: labels must be whole numbers or class names; {bad.size} are not, e.g. "
                              f"{values[bad[:3]].tolist()} at row(s) {bad[:3].tolist()}")
    elif values.dtype.kind not in "biu":
        raise SourceError(f"{where}: labels must be whole numbers or class names, got dtype {values.dtype}")
    labels = values.astype(np.int64)  # negative ones stay: the suite counts them ("labels are in the label set")
    return labels, [str(c) for c in range(int(labels.max()) + 1 if labels.size else 0)]


def check_values(rows, labels: np.ndarray, meta: dict, where: str) -> None:
    """What must hold before anything is written, beyond the Great Expectations suite (run first):
    finite features within float32's range (tables are stored as float32; checked before the cast),
    two or more classes, and at least :data:`MIN_ROWS_PER_CLASS` rows of every class that occurs."""
    if meta["kind"] == "tabular":
        features = np.asarray(rows, dtype=np.float64)
        bad = ~np.isfinite(features) | (np.abs(np.nan_to_num(features)) > FLOAT32_MAX)
        if bad.any():
            columns = meta.get("feature_names") or [str(i) for i in range(features.shape[1])]
            named = [columns[c] for c in np.flatnonzero(bad.any(0))]
            raise SourceError(f"{where}: {int(bad.sum())} feature value(s) are missing, infinite or beyond float32's "
                              f"range (±{FLOAT32_MAX:.3g}), in column(s) {named[:10]}")
    counts = np.bincount(labels, minlength=len(meta["classes"]))
    present = np.flatnonzero(counts)
    if len(present) < 2:
        raise SourceError(f"{where}: only one class ({meta['classes'][present[0]] if present.size else 'none'}) "
                          "occurs; a classifier needs at least two")
    few = {meta["classes"][c]: int(counts[c]) for c in present if counts[c] < MIN_ROWS_PER_CLASS}
    if few:
        raise SourceError(f"{where}: classes {few} have fewer than {MIN_ROWS_PER_CLASS} rows; the stratified split "
                          "needs at least one of each class for testing and one for training")
