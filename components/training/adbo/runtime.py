"""ADBO's master and workers as separate processes over ``torch.distributed.rpc`` (TensorPipe).

Rank 0 is the master, ranks 1..N the workers; every process is started the same way
(``python -m distillery.components.training.adbo``) with ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT`` in its environment, by the local launcher (:mod:`.launcher`) or a Kubernetes
Indexed Job (``k8s/training/async-workers.yaml``).

The master drives: it keeps one rpc call in flight per worker (``_step``: "here is your update,
send your report"). A finished call is a report; a failed one (the peer's connection closed, or
``rpc_timeout`` passed) means that worker is lost: it leaves the active set, so S becomes
``min(S, alive)``, and the run goes on unless fewer than ``min_workers`` remain. Each iteration
runs once :func:`core.gate` lets it (S reports, nobody more than tau stale) and updates exactly
the workers that reported.
"""
from __future__ import annotations

import json
import os
import queue
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributed import rpc

from distillery.components.training.adbo import core, loop, persist, problems
from distillery.components.training.adbo.config import ADBOConfig
from distillery.components.training.adbo.tracking import NullTracker, tracker

MASTER = "master"
RESULT, ERROR, FINAL, HISTORY = "result.json", "error.json", "final.pt", "history.jsonl"


class ADBOError(RuntimeError):
    """An ADBO run failed; the message says why and what to check."""


class MasterUnreachableError(ADBOError):
    """A worker could not reach the master's address in ``init_timeout``."""


class ShapeMismatchError(ADBOError):
    """A worker's variables do not have the master's shapes (it built a different problem)."""


class WorkersLostError(ADBOError):
    """Fewer workers than ``min_workers`` are still alive."""


def worker_name(rank: int) -> str:
    return f"worker{rank}"


def log(message: str) -> None:
    print(f"[adbo {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------------------
# joining the group


def wait_for_master(addr: str, port: int, timeout: float) -> None:
    """Poll ``addr:port`` until it accepts a TCP connection; :class:`MasterUnreachableError` after
    ``timeout`` seconds. (torch's own rendezvous would retry for 30 minutes.)"""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((addr, port), timeout=min(2.0, timeout)):
                return
        except OSError as exc:  # refused, unresolvable name (pod DNS may lag), unreachable
            last = exc
            time.sleep(0.2)
    raise MasterUnreachableError(f"cannot reach the ADBO master at {addr}:{port} within {timeout:g} s "
                                 f"({type(last).__name__}: {last}); check MASTER_ADDR/MASTER_PORT and that "
                                 "rank 0 is running")


def join(name: str, rank: int, world_size: int, addr: str, port: int, config: ADBOConfig,
         on_timeout=None) -> None:
    """``rpc.init_rpc`` with a deadline: a rank that never shows up must not hang the others."""
    if rank:
        wait_for_master(addr, port, config.init_timeout)
    message = (f"{name}: the rpc group ({world_size} processes) did not form within {config.init_timeout:g} s; "
               f"is every rank 0..{world_size - 1} started with the same MASTER_ADDR/MASTER_PORT?")
    watchdog = threading.Timer(config.init_timeout, _give_up, args=(message, on_timeout))
    watchdog.daemon = True
    watchdog.start()
    options = rpc.TensorPipeRpcBackendOptions(init_method=f"tcp://{addr}:{port}", rpc_timeout=config.rpc_timeout,
                                              num_worker_threads=8)
    rpc.init_rpc(name, rank=rank, world_size=world_size, rpc_backend_options=options)
    watchdog.cancel()


def _give_up(message: str, on_timeout) -> None:
    # init_rpc blocks in C++ and cannot be interrupted: report, then end the process
    print(f"ERROR: {message}", file=sys.stderr, flush=True)
    if on_timeout:
        on_timeout(message)
    os._exit(3)


# ------------------------------------------------------------------------------------------------
# worker side: module-level state, reached by the master's rpc calls


class _Worker:
    """Worker ``rank``'s shard, its ``(x_i, y_i)`` and its simulated delays."""

    def __init__(self, config: ADBOConfig, rank: int):
        problem = problems.build(config.problem, config.problem_kwargs_for(rank))
        self.shard = problem.shard(rank - 1, config.workers)
        self.x, self.y = self.shard.x0, self.shard.y0
        self.hp, self.config, self.rank = config.hyperparameters(), config, rank
        self.slowdown = config.slowdown.get(str(rank), 1.0)
        self.rng = np.random.default_rng([config.seed, rank])
        self.stop = threading.Event()
        self.last_contact = time.monotonic()
        self.lock = threading.Lock()

    def delay(self) -> float:
        """Seconds to sleep before a report: ``slowdown * (base + log-normal)``."""
        c = self.config
        noise = c.delay_median * float(np.exp(c.delay_sigma * self.rng.standard_normal())) if c.delay_median else 0.0
        return self.slowdown * (c.delay_base + noise)


_WORKER: _Worker | None = None


def _hello(v: torch.Tensor, z: torch.Tensor, restore: tuple[torch.Tensor, torch.Tensor] | None) -> loop.Report:
    """First contact: optionally restore ``(x_i, y_i)`` from the master's checkpoint, then report."""
    w = _WORKER
    with w.lock:
        w.last_contact = time.monotonic()
        if restore is not None:
            w.x, w.y = restore
        if w.x.shape != v.shape or w.y.shape != z.shape:  # the master names this worker
            return loop.Report(w.x, w.y, float("nan"), None)
        return loop.first_report(w.shard, w.x, w.y, v, z, w.hp)


def _step(update: loop.Update) -> loop.Report:
    """One worker iteration on the master's update, delayed like a slow machine or network: a
    ``slowdown`` of 3 makes both the compute and the message delay 3x longer."""
    w = _WORKER
    with w.lock:
        w.last_contact = time.monotonic()
        began = time.perf_counter()
        report = loop.worker_iteration(w.shard, w.x, w.y, update, w.hp)
        w.x, w.y = report.x, report.y
        time.sleep(w.delay() + (w.slowdown - 1.0) * (time.perf_counter() - began))
        return report


def _stop() -> None:
    _WORKER.stop.set()


def run_worker(config: ADBOConfig, rank: int, world_size: int, addr: str, port: int) -> int:
    """A worker process: build its shard, join, then serve the master until told to stop."""
    global _WORKER
    torch.set_num_threads(1)  # N + 1 processes share the machine's cores
    _WORKER = _Worker(config, rank)
    join(worker_name(rank), rank, world_size, addr, port, config)
    code = 0
    while not _WORKER.stop.wait(0.5):
        if time.monotonic() - _WORKER.last_contact > config.idle_timeout:
            log(f"worker {rank}: no word from the master for {config.idle_timeout:g} s; exiting")
            code = 4
            break
    time.sleep(0.2)  # let the reply to _stop leave before the agent goes
    rpc.shutdown(graceful=False)
    return code


# ------------------------------------------------------------------------------------------------
# master side


class Master:
    """The master's loop: gate, update, refresh cuts, checkpoint, dispatch, detect lost workers."""

    def __init__(self, config: ADBOConfig, problem: problems.Problem, output_dir: Path, track: NullTracker):
        self.config, self.problem, self.out, self.track = config, problem, output_dir, track
        self.hp = config.hyperparameters()
        self.alive = set(range(1, config.workers + 1))
        self.dropped: dict[int, str] = {}
        self.events: queue.Queue = queue.Queue()
        self.history: list[dict[str, Any]] = []
        self.fingerprint = {"problem": config.problem, "n": problem.n, "m": problem.m, "workers": config.workers}
        self.resumed_from: str | None = None

    # -- start-up ------------------------------------------------------------------------------
    def start(self) -> None:
        """Greet every worker, check shapes, then start fresh or from the newest checkpoint."""
        restored = None
        if self.config.resume:
            restored = persist.load(self.config.checkpoint_dir, self.fingerprint)
        if restored:
            state, self.parts, self.uppers, _, path = restored
            self.resumed_from = str(path)
            log(f"resuming from {path} (iteration {state.iteration})")
            v, z = state.v, state.z
        else:
            v, z = self.problem.start()
        firsts = self._hello(v, z, restored[0] if restored else None)
        self._check_shapes(firsts, v, z)
        if restored:
            state.staleness = {i: 0 for i in self.alive}
            self.parts.update({i: r.part for i, r in firsts.items()})
            self.uppers.update({i: r.upper for i, r in firsts.items()})
            self.state = state
            return
        # the workers may warm-start their y_i: start z at their mean
        z = torch.stack([firsts[i].y for i in sorted(firsts)]).mean(0)
        self.state = core.init_master(v, z, {i: r.x for i, r in firsts.items()}, {i: r.y for i, r in firsts.items()})
        self.parts = {i: r.part for i, r in firsts.items()}
        self.uppers = {i: r.upper for i, r in firsts.items()}
        self.state, _ = loop.refresh_cuts(self.state, self.parts, self.alive, self.hp)

    def _hello(self, v, z, state: core.MasterState | None) -> dict[int, loop.Report]:
        futures = {}
        for rank in sorted(self.alive):
            restore = (state.x[rank], state.y[rank]) if state is not None and rank in state.x else None
            futures[rank] = rpc.rpc_async(worker_name(rank), _hello, args=(v, z, restore),
                                          timeout=self.config.rpc_timeout)
        firsts = {}
        for rank, future in futures.items():
            try:
                firsts[rank] = future.wait()
            except Exception as exc:  # noqa: BLE001 - any failure means the worker is lost
                self._drop(rank, exc)
        return firsts

    def _check_shapes(self, firsts: dict[int, loop.Report], v: torch.Tensor, z: torch.Tensor) -> None:
        for rank in sorted(firsts):
            report = firsts[rank]
            if report.x.shape != v.shape or report.y.shape != z.shape:
                raise ShapeMismatchError(
                    f"worker {rank} reported x of shape {tuple(report.x.shape)} and y of shape "
                    f"{tuple(report.y.shape)}, but the master's v is {tuple(v.shape)} and z is {tuple(z.shape)}: "
                    f"worker {rank} built a different problem (check its problem config and data)")

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.start()
        self.started = time.perf_counter()
        for rank in sorted(self.alive):
            self._dispatch(rank)
        arrived: dict[int, loop.Report] = {}
        log_every = max(1, self.config.iterations // 20)
        while self.state.iteration < self.config.iterations:
            proceed, _ = core.gate(set(arrived), self.state.staleness, self.alive, self.config.s, self.config.tau)
            if proceed:
                self._iterate(arrived)
                if self.state.iteration % log_every == 0:
                    r = self.history[-1]
                    log(f"iteration {r['iteration']}/{self.config.iterations}: upper loss {r['upper_loss']:.4f}, "
                        f"{r['cuts']} cuts, {len(self.alive)} workers")
                arrived = {}
                continue
            self._wait_event(arrived)
        if self.config.checkpoint_every and self.state.iteration % self.config.checkpoint_every:
            self._checkpoint()  # the final state too, so a longer run can resume from the end
        return self._result()

    def _wait_event(self, arrived: dict[int, loop.Report]) -> None:
        """Block for the next report or failure; a failure drops that worker."""
        patience = self.config.rpc_timeout + 10.0
        try:
            rank, outcome = self.events.get(timeout=patience)
        except queue.Empty:
            raise ADBOError(f"no worker answered for {patience:g} s although rpc calls time out after "
                            f"{self.config.rpc_timeout:g} s") from None
        if isinstance(outcome, BaseException):
            self._drop(rank, outcome)
            arrived.pop(rank, None)
        elif rank in self.alive:
            arrived[rank] = outcome

    def _iterate(self, arrived: dict[int, loop.Report]) -> None:
        began = time.perf_counter()
        self.uppers.update({i: r.upper for i, r in arrived.items()})
        self.state, h = loop.master_iteration(self.state, dict(arrived), self.parts, self.alive, self.hp)
        record = {"iteration": self.state.iteration, "time": time.perf_counter() - self.started,
                  "reporters": sorted(arrived), "upper_loss": loop.upper_loss(self.uppers, self.alive), "h": h,
                  "cuts": len(self.state.cuts), "alive_workers": len(self.alive),
                  "staleness": {i: self.state.staleness[i] for i in sorted(self.alive)},
                  "worker_upper": {i: arrived[i].upper for i in sorted(arrived)}}
        every = self.config.eval_every
        if every and self.state.iteration % every == 0:
            record.update(self.problem.evaluate(self.state.v, self.state.z))
        record["iteration_seconds"] = time.perf_counter() - began
        self.history.append(record)
        with open(self.out / HISTORY, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        self.track.log(record)
        if self.config.checkpoint_every and self.state.iteration % self.config.checkpoint_every == 0:
            self._checkpoint()
        for rank in sorted(arrived):
            if rank in self.alive:
                self._dispatch(rank)

    def _checkpoint(self) -> None:
        persist.save(self.config.checkpoint_dir, self.state, self.parts, self.uppers, self.dropped, self.fingerprint)

    def _dispatch(self, rank: int) -> None:
        """Send ``rank`` its update; the reply (or the failure) lands in the event queue."""
        update = loop.update_for(self.state, rank)
        try:
            future = rpc.rpc_async(worker_name(rank), _step, args=(update,), timeout=self.config.rpc_timeout)
        except Exception as exc:  # noqa: BLE001 - e.g. the agent already knows the peer is gone
            self.events.put((rank, exc))
            return
        future.add_done_callback(lambda f, r=rank: self.events.put((r, _outcome(f))))

    def _drop(self, rank: int, error: BaseException) -> None:
        if rank not in self.alive:
            return
        self.alive.discard(rank)
        if hasattr(self, "state"):  # a worker lost while greeting has no staleness yet
            self.state.staleness.pop(rank, None)
        self.dropped[rank] = describe(error)
        log(f"worker {rank} lost at iteration {self._iteration()}: {self.dropped[rank]}; "
            f"{len(self.alive)} alive, S is now {min(self.config.s, len(self.alive))}")
        self.track.dropped(self.dropped)
        if len(self.alive) < self.config.min_workers:
            raise WorkersLostError(
                f"only {len(self.alive)} worker(s) alive ({sorted(self.alive)}), below min_workers="
                f"{self.config.min_workers}; lost: {self.dropped}")

    def _iteration(self) -> int:
        return self.state.iteration if hasattr(self, "state") else 0

    def _result(self) -> dict[str, Any]:
        final = self.problem.evaluate(self.state.v, self.state.z)
        return {"iterations": self.state.iteration, "start_iteration": self.history[0]["iteration"] - 1
                if self.history else self.state.iteration,
                "resumed_from": self.resumed_from, "wall_seconds": time.perf_counter() - self.started,
                "dropped": {str(k): v for k, v in self.dropped.items()}, "alive": sorted(self.alive),
                "final": {"upper_loss": loop.upper_loss(self.uppers, self.alive), "cuts": len(self.state.cuts),
                          **final},
                "config": json.loads(self.config.to_json()), "history": self.history}


def describe(error: BaseException) -> str:
    """One line for a failed rpc: the error type, and the last line of a remote traceback."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"
    return f"{type(error).__name__}: {text[:400]}"


def _outcome(future) -> Any:
    try:
        return future.value()
    except BaseException as exc:  # noqa: BLE001 - handed to the master loop as "worker lost"
        return exc


def _stop_workers(ranks) -> None:
    futures = []
    for rank in ranks:
        try:
            futures.append(rpc.rpc_async(worker_name(rank), _stop, timeout=5))
        except Exception:  # noqa: BLE001 - a lost worker cannot be told anything
            pass
    for future in futures:
        try:
            future.wait()
        except Exception:  # noqa: BLE001
            pass


def run_master(config: ADBOConfig, world_size: int, addr: str, port: int, output_dir: Path) -> int:
    """The master process: join, run, write ``result.json`` + ``final.pt`` (or ``error.json``)."""
    torch.set_num_threads(1)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in (RESULT, ERROR, HISTORY):
        (output_dir / name).unlink(missing_ok=True)
    try:
        if world_size != config.workers + 1:
            raise ADBOError(f"WORLD_SIZE={world_size} but the config has {config.workers} workers: "
                            "WORLD_SIZE must be workers + 1 (rank 0 is the master)")
        problem = problems.build(config.problem, config.problem_kwargs)
        join(MASTER, 0, world_size, addr, port, config, on_timeout=lambda m: _write_error(output_dir, ADBOError(m)))
    except Exception as exc:  # noqa: BLE001 - reported to the launcher, then the process fails
        return _fail(output_dir, exc)
    master, track = None, NullTracker()
    try:
        track = tracker(config)
        master = Master(config, problem, output_dir, track)
        result = master.run()
    except Exception as exc:  # noqa: BLE001
        track.finish(None, "FAILED")
        _stop_workers(master.alive if master else range(1, config.workers + 1))
        rpc.shutdown(graceful=False)
        return _fail(output_dir, exc)
    torch.save({"v": master.state.v, "z": master.state.z}, output_dir / FINAL)
    _stop_workers(master.alive)
    track.finish(result, "FINISHED")
    result["mlflow_run_id"] = track.run_id
    (output_dir / RESULT).write_text(json.dumps(result) + "\n")
    log(f"done: {result['iterations']} iterations in {result['wall_seconds']:.1f} s, "
        f"lost workers: {result['dropped'] or 'none'}")
    rpc.shutdown(graceful=False)
    return 0


def _write_error(output_dir: Path, exc: BaseException) -> None:
    (output_dir / ERROR).write_text(json.dumps({"type": type(exc).__name__, "message": str(exc),
                                                "traceback": traceback.format_exc()}) + "\n")


def _fail(output_dir: Path, exc: BaseException) -> int:
    _write_error(output_dir, exc)
    print(f"ERROR: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    return 1
