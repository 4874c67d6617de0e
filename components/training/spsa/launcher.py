"""Starting SPSA workers on this machine: one process per worker of a membership plan.

Zelikman et al., "Just One Byte (per gradient)", arXiv:2306.10015, 2023. :func:`launch` starts every
worker of the plan at once (each runs :func:`distillery.components.training.spsa.workers.run_worker`,
meeting its peers through a :class:`~distillery.components.training.spsa.workers.FileRendezvous`), streams
their per-round metrics to a callback (e.g.
:func:`distillery.components.training.spsa.tracking.mlflow_callback`) and returns their reports.
"""
from __future__ import annotations

import queue as queue_module
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from distillery.components.training.spsa.jobs import SPSAJob
from distillery.components.training.spsa.workers import (
    Epoch,
    FileRendezvous,
    WorkerReport,
    run_worker,
    validate_plan,
)

MetricsCallback = Callable[[int, int, dict], None]  # (worker id, round, metrics)


class WorkerFailedError(RuntimeError):
    """One or more spawned workers failed; the message holds each one's error."""


@dataclass
class SPSARun:
    """The outcome of :func:`launch`: one :class:`WorkerReport` per worker, and the wall time."""

    workers: dict[int, WorkerReport]
    wall_s: float

    def final_hashes(self) -> dict[int, str]:
        return {w: r.hashes[-1][1] for w, r in self.workers.items() if r.hashes}

    def hashes_agree(self) -> bool:
        """Whether, for every round, all the workers that ran it ended it with the same weights."""
        by_round: dict[int, set[str]] = {}
        for report in self.workers.values():
            for t, digest in report.hashes:
                by_round.setdefault(t, set()).add(digest)
        return all(len(digests) == 1 for digests in by_round.values())


def _spawned_worker(worker_id: int, plan, job: SPSAJob, rendezvous_dir: str, messages) -> None:
    torch.set_num_threads(1)  # several workers share this machine's cores
    try:
        report = run_worker(worker_id, plan, job, FileRendezvous(rendezvous_dir),
                            lambda kind, payload: messages.put((kind, payload)))
        messages.put(("done", report))
    except BaseException as exc:  # the launcher re-raises it with the worker named
        messages.put(("error", (worker_id, f"{type(exc).__name__}: {exc}", traceback.format_exc())))


def launch(plan: Sequence[Epoch], job: SPSAJob, callback: MetricsCallback | None = None,
           timeout_s: float = 600.0, grace_s: float = 5.0, start_method: str = "forkserver") -> SPSARun:
    """Run the plan for real: one process per worker id, gloo process groups per epoch.

    Every process starts at once; a newcomer blocks at its epoch's rendezvous until the veterans get
    there, then receives their weights. ``callback(worker, round, metrics)`` is called here, in the
    launcher, as each worker reports a round (so MLflow logging needs no access from the workers).

    ``start_method``: ``"forkserver"`` (default) imports torch and this module once, in a server
    process that has run no torch code (so no thread pool is forked), and forks every worker of this
    and later launches from it; ``"spawn"`` starts each worker from a fresh interpreter.

    Raises:
        WorkerFailedError: naming each failing worker and its error (e.g. a :class:`ShapeMismatchError`).
        TimeoutError: the workers did not finish within ``timeout_s``.
    """
    import torch.multiprocessing as mp

    plan = validate_plan(plan)
    workers = sorted({w for epoch in plan for w in epoch.workers})
    ctx = mp.get_context(start_method)
    if start_method == "forkserver":
        ctx.set_forkserver_preload([__name__, "distillery.components.core.models",
                                    "distillery.components.core.datasets"])
    messages = ctx.Queue()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="spsa-rdzv-") as rendezvous_dir:
        processes = {w: ctx.Process(target=_spawned_worker, args=(w, plan, job, rendezvous_dir, messages),
                                    daemon=True) for w in workers}
        for process in processes.values():
            process.start()
        try:
            reports, errors = _collect(processes, messages, callback, started + timeout_s, grace_s)
        finally:
            for process in processes.values():
                process.join(timeout=grace_s)
                if process.is_alive():
                    process.terminate()  # only our own children, by handle
    if errors:
        raise WorkerFailedError("; ".join(f"worker {w}: {msg}" for w, (msg, _) in sorted(errors.items())))
    return SPSARun(reports, time.perf_counter() - started)


def _collect(processes, messages, callback, deadline: float, grace_s: float):
    reports: dict[int, WorkerReport] = {}
    errors: dict[int, tuple[str, str]] = {}
    first_error_at = None
    while len(reports) + len(errors) < len(processes):
        now = time.perf_counter()
        if now > deadline:
            raise TimeoutError(f"SPSA workers still running after the launch timeout; finished: {sorted(reports)}")
        if first_error_at is not None and now > first_error_at + grace_s:
            for w in processes:  # peers of a failed worker would wait on a collective until their timeout
                if w not in reports and w not in errors:
                    errors[w] = ("stopped after another worker failed", "")
            break
        try:
            kind, payload = messages.get(timeout=0.5)
        except queue_module.Empty:
            for w, process in processes.items():
                if process.exitcode not in (None, 0) and w not in reports and w not in errors:
                    errors[w] = (f"process exited with code {process.exitcode}", "")
            first_error_at = first_error_at or (now if errors else None)
            continue
        if kind == "round" and callback is not None:
            callback(*payload)
        elif kind == "done":
            reports[payload.worker] = payload
        elif kind == "error":
            errors[payload[0]] = payload[1:]
            first_error_at = first_error_at or now
    return reports, errors
