"""The master's checkpoints: its whole state as plain tensors/numbers, through
:mod:`distillery.components.core.checkpoint` (atomic write, verified read-back, sha256 on load)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from distillery.components.core import checkpoint
from distillery.components.training.adbo import core


def _part_dict(part: core.Linearisation) -> dict[str, Any]:
    # keys are "v", "z" or worker ids: store them as strings, tagged, so ints come back as ints
    enc = {k: (f"w{k}" if isinstance(k, int) else k) for k in part.point}
    return {"value": part.value, "point": {enc[k]: t for k, t in part.point.items()},
            "grad": {enc[k]: t for k, t in part.grad.items()}}


def _part(blob: dict[str, Any]) -> core.Linearisation:
    def dec(key: str) -> str | int:
        return int(key[1:]) if key.startswith("w") else key
    return core.Linearisation(blob["value"], {dec(k): t for k, t in blob["point"].items()},
                              {dec(k): t for k, t in blob["grad"].items()})


def to_dict(state: core.MasterState, parts: dict[int, core.Linearisation], uppers: dict[int, float],
            dropped: dict[int, str], fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Everything a restarted master needs, as a ``weights_only``-loadable dict."""
    ints = lambda d: {str(k): v for k, v in d.items()}  # noqa: E731
    return {
        "fingerprint": fingerprint, "iteration": state.iteration, "v": state.v, "z": state.z,
        "theta": ints(state.theta), "x": ints(state.x), "y": ints(state.y),
        "staleness": ints(state.staleness), "uppers": ints(uppers), "dropped": ints(dropped),
        "cuts": [{"a": c.a, "b": ints(c.b), "c": c.c, "kappa": c.kappa, "lam": c.lam} for c in state.cuts],
        "parts": {str(i): _part_dict(p) for i, p in parts.items()},
    }


def from_dict(blob: dict[str, Any]) -> tuple[core.MasterState, dict[int, core.Linearisation], dict[int, float],
                                              dict[int, str]]:
    """Inverse of :func:`to_dict`: ``(state, parts, uppers, dropped)``."""
    ints = lambda d: {int(k): v for k, v in d.items()}  # noqa: E731
    cuts = [core.Cut(c["a"], ints(c["b"]), c["c"], c["kappa"], c["lam"]) for c in blob["cuts"]]
    state = core.MasterState(v=blob["v"], z=blob["z"], theta=ints(blob["theta"]), x=ints(blob["x"]),
                             y=ints(blob["y"]), cuts=cuts, staleness=ints(blob["staleness"]),
                             iteration=int(blob["iteration"]))
    return state, {int(i): _part(p) for i, p in blob["parts"].items()}, ints(blob["uppers"]), ints(blob["dropped"])


def save(directory: str | Path, state: core.MasterState, parts, uppers, dropped, fingerprint) -> Path:
    """Checkpoint ``ckpt-<iteration>.pt`` (the two newest are kept)."""
    return checkpoint.save(directory, state.iteration, to_dict(state, parts, uppers, dropped, fingerprint))


def load(directory: str | Path, fingerprint: dict[str, Any]):
    """The newest checkpoint's ``(state, parts, uppers, dropped, path)``, or ``None`` if there is none.

    A corrupt newest checkpoint raises :class:`checkpoint.CorruptCheckpointError` (naming the file
    and the previous good one): resuming silently from an older state would redo work unnoticed.
    A checkpoint of a different problem raises :class:`checkpoint.CheckpointError`.
    """
    found = checkpoint.load_latest(directory)
    if found is None:
        return None
    blob, path = found
    if blob.get("fingerprint") != fingerprint:
        raise checkpoint.CheckpointError(
            f"checkpoint {path} was written for {blob.get('fingerprint')}, but this run is {fingerprint}: "
            "use another checkpoint_dir or the same problem and worker count")
    return (*from_dict(blob), path)
