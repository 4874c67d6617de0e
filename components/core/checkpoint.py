"""Atomic, verified training checkpoints, for any training loop with one writer.

Used by :func:`distillery.components.core.train.fit` (single process, or rank 0 of a DDP job) and meant to
be reused by any loop that must survive a restart (e.g. an asynchronous master). The state is any
dict that ``torch.load(..., weights_only=True)`` can read back: tensors, state dicts, numbers,
strings, lists and dicts of those (no arbitrary pickled objects, so loading a checkpoint never
runs code).

Layout of a checkpoint directory::

    ckpt-00000004.pt          torch.save(state)
    ckpt-00000004.pt.sha256   "<sha256 hex>  ckpt-00000004.pt" (``sha256sum -c`` reads it)

A checkpoint is *complete* once its ``.sha256`` file exists; the checksum is written last, so a
crash at any point leaves either a complete checkpoint or files that :func:`latest` ignores.

API:

``save(directory, step, state, keep=2) -> Path``
    Write ``state`` as checkpoint ``step``: to a temporary file in the same directory, flushed
    and fsynced, read back and verified (hash, and that it loads), then moved into place with
    ``os.replace`` and its checksum written the same way. Only then are older checkpoints pruned
    to the newest ``keep``, so the last good checkpoint is never removed before a newer one is
    complete and verified, and never overwritten by a partial one.
``load(path, map_location="cpu") -> dict``
    Verify the checksum, then load. A missing checksum, a hash mismatch or an unreadable file
    raises :class:`CorruptCheckpointError` naming the file (and the newest good checkpoint before
    it in the same directory, if any).
``latest(directory) -> Path | None``
    The newest complete checkpoint (by step), not yet verified; ``None`` if there is none.
``complete(directory) -> list[Path]``
    All complete checkpoints, oldest first.
``load_latest(directory, fallback=False) -> (state, path) | None``
    ``load(latest(directory))``; with ``fallback=True`` a corrupt newest checkpoint is skipped
    (with a warning) for the newest one that verifies, otherwise its error propagates.
``step_of(path) -> int``
    The step number a checkpoint file was saved under.
``rng_state() -> dict`` / ``set_rng_state(state)``
    The global torch RNG state (CPU, and CUDA when available) as tensors, for ``state``.

Only one process may write to a directory at a time (DDP: rank 0).
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

PREFIX, SUFFIX, HASH_SUFFIX = "ckpt-", ".pt", ".sha256"
_NAME = re.compile(rf"^{PREFIX}(\d+){re.escape(SUFFIX)}$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or used (wrong directory, different training, ...)."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's bytes do not match its recorded checksum, or do not load."""


def _name(step: int) -> str:
    return f"{PREFIX}{step:08d}{SUFFIX}"


def _hash_path(path: Path) -> Path:
    return path.with_name(path.name + HASH_SUFFIX)


def step_of(path: str | Path) -> int:
    match = _NAME.match(Path(path).name)
    if not match:
        raise CheckpointError(f"{path} is not a checkpoint file name ({PREFIX}<step>{SUFFIX})")
    return int(match.group(1))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    # The rename itself must reach the disk too; not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def complete(directory: str | Path) -> list[Path]:
    """Every complete checkpoint in ``directory`` (its checksum file exists), oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name) and _hash_path(p).is_file()]
    return sorted(found, key=step_of)


def latest(directory: str | Path) -> Path | None:
    found = complete(directory)
    return found[-1] if found else None


def save(directory: str | Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` as checkpoint ``step`` atomically and verified; keep the newest ``keep``."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / _name(step)
    tmp = directory / f".{final.name}.tmp-{os.getpid()}"
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        with open(tmp, "wb") as fh:
            fh.write(buffer.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        # Verify what is on disk, not what we meant to write: hash it and load it back, so a state
        # that cannot be restored fails now, at save time, rather than at the restart that needs it.
        digest = _sha256(tmp)
        if digest != hashlib.sha256(buffer.getbuffer()).hexdigest():
            raise CorruptCheckpointError(f"checkpoint {final} was not written intact (read-back hash differs)")
        try:
            torch.load(tmp, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"checkpoint state for {final} does not load back with weights_only=True "
                                  f"(only tensors, numbers, strings, lists and dicts): {exc}") from exc
        # Re-saving a step: drop its checksum first, so a crash between the two renames leaves an
        # incomplete checkpoint (ignored) rather than a complete-looking one with a stale hash.
        _hash_path(final).unlink(missing_ok=True)
        os.replace(tmp, final)
        _write_atomic(_hash_path(final), f"{digest}  {final.name}\n".encode())
        _fsync_dir(directory)
    finally:
        tmp.unlink(missing_ok=True)
    for old in complete(directory)[:-keep]:
        _hash_path(old).unlink(missing_ok=True)  # checksum first: a half-pruned one is just incomplete
        old.unlink(missing_ok=True)
    return final


def _previous_good(path: Path) -> Path | None:
    """The newest complete checkpoint older than ``path`` that verifies, if any."""
    for candidate in reversed(complete(path.parent)):
        if step_of(candidate) < step_of(path) and _verifies(candidate):
            return candidate
    return None


def _verifies(path: Path) -> bool:
    try:
        return _sha256(path) == _recorded_hash(path)
    except (OSError, CheckpointError):
        return False


def _recorded_hash(path: Path) -> str:
    hash_file = _hash_path(path)
    try:
        text = hash_file.read_text().split()
    except FileNotFoundError:
        raise CorruptCheckpointError(f"checkpoint {path} has no checksum file {hash_file.name}: "
                                     "its write never completed") from None
    if not text or not re.fullmatch(r"[0-9a-f]{64}", text[0]):
        raise CorruptCheckpointError(f"checksum file {hash_file} of checkpoint {path} is malformed")
    return text[0]


def _corrupt(path: Path, why: str) -> CorruptCheckpointError:
    previous = _previous_good(path) if _NAME.match(path.name) else None
    hint = (f"; the previous good checkpoint is {previous} (delete {path.name} and its "
            f"{HASH_SUFFIX} file to resume from it)" if previous else "; there is no earlier good checkpoint")
    return CorruptCheckpointError(f"checkpoint {path} is corrupt: {why}{hint}")


def load(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The state saved in ``path``, after checking it against its recorded sha256."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    expected = _recorded_hash(path)
    actual = _sha256(path)
    if actual != expected:
        raise _corrupt(path, f"sha256 {actual[:16]}... does not match {expected[:16]}... "
                             f"recorded in {_hash_path(path).name}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # hash matched but it does not load: written by an incompatible torch?
        raise _corrupt(path, f"it does not load ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise _corrupt(path, f"it holds a {type(state).__name__}, not a dict")
    return state


def load_latest(directory: str | Path, fallback: bool = False,
                map_location: Any = "cpu") -> tuple[dict[str, Any], Path] | None:
    """``(state, path)`` of the newest complete checkpoint, or ``None`` if there is none."""
    candidates = complete(directory)
    for i, path in enumerate(reversed(candidates)):
        try:
            return load(path, map_location), path
        except CorruptCheckpointError as exc:
            if not fallback or i == len(candidates) - 1:
                raise
            warnings.warn(f"{exc}; falling back to the previous checkpoint", stacklevel=2)
    return None


def rng_state() -> dict[str, Any]:
    """The global torch RNG state(s): what dropout and in-place random ops draw from."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
