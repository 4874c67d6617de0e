"""Runs whose process died: found and closed by the next ``distillery run`` on the same store.

A ``distillery run`` killed by SIGKILL, the OOM killer or a power cut cannot close its MLflow runs,
which would show RUNNING forever. Every run it opens carries the identity of the launching process
(:func:`identity`: host, pid and the process's start time, which tells a reused pid apart). At its
start, the next ``distillery run`` closes every RUNNING run of this host whose launcher is gone, as
KILLED, with the reason in its description (:func:`close_dead_runs`). Runs of other hosts, runs
without an identity (a cluster's) and runs whose launcher still lives are never touched: they may
still be running.
"""
from __future__ import annotations

import os
import socket
import time

HOST, PID, STARTED = "distillery.host", "distillery.launcher_pid", "distillery.launcher_started"
NOTE = "mlflow.note.content"


def identity() -> dict[str, str]:
    """This process's identity tags."""
    import psutil

    return {HOST: socket.gethostname(), PID: str(os.getpid()),
            STARTED: repr(psutil.Process().create_time())}


def alive(pid: int, started: float) -> bool:
    """Whether process ``pid`` exists and is the one that started at ``started`` (not a reuse)."""
    import psutil

    try:
        return abs(psutil.Process(pid).create_time() - started) < 0.01
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True  # someone else's process: it exists, and is not ours to judge


def _running(client, condition: str):
    """The RUNNING runs of every experiment of the store that also meet ``condition`` (a filter)."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    for start in range(0, len(experiments), 100):  # search_runs takes at most 100 experiments at once
        yield from client.search_runs(experiments[start:start + 100], max_results=5000,
                                      filter_string=f"attributes.status = 'RUNNING' and {condition}")


def close_dead_runs(tracking_uri: str, log=print) -> list[str]:
    """Mark KILLED every RUNNING run of this host whose launching process is gone; their ids."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    host = socket.gethostname()
    closed = []
    for run in _running(client, f"tags.`{HOST}` = '{host}'"):
        tags = run.data.tags
        try:
            pid, started = int(tags[PID]), float(tags[STARTED])
        except (KeyError, ValueError):
            continue  # no usable identity: leave it alone
        if alive(pid, started):
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        reason = (f"KILLED: the `distillery run` process that ran it (pid {pid} on {host}) is gone, without "
                  f"closing it (killed, out of memory, or the machine stopped); closed by the next run at {when}.")
        previous = tags.get(NOTE, "")
        client.set_tag(run.info.run_id, NOTE, f"{reason}{' Before: ' + previous if previous else ''}")
        client.set_terminated(run.info.run_id, "KILLED")
        closed.append(run.info.run_id)
    if closed:
        log(f"Closed {len(closed)} run(s) left RUNNING by a `distillery run` that died (marked KILLED)")
    return closed


def close_unfinished(tracking_uri: str, launch_id: str) -> list[str]:
    """After a run of ``launch_id`` ended: its runs still RUNNING (a task process died without
    closing its run) become FAILED, with the reason; their ids."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    closed = []
    for run in _running(client, f"tags.`distillery.launch_id` = '{launch_id}'"):
        client.set_tag(run.info.run_id, NOTE, "FAILED: its task process ended without closing it (the pipeline "
                                              f"stopped). {run.data.tags.get(NOTE, '')}".strip())
        client.set_terminated(run.info.run_id, "FAILED")
        closed.append(run.info.run_id)
    return closed
