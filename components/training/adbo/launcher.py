"""Start an ADBO run on this machine: N + 1 processes of ``python -m distillery.components.training.adbo``.

Each process gets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` exactly as a Kubernetes
Indexed Job gives its pods, so the local run exercises the cluster entrypoint. ::

    result = launch(ADBOConfig(problem="quadratic", workers=3, s=2, tau=3, iterations=200), "out/")
    cluster = start(config, "out/"); cluster.kill_worker(2); result = cluster.wait()
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from distillery.components.training.adbo.config import ADBOConfig
from distillery.components.training.adbo.runtime import (
    ERROR,
    FINAL,
    HISTORY,
    RESULT,
    ADBOError,
)

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalCluster:
    """The processes of one local run: ``processes[rank]`` (0 = master), logs under ``output_dir``."""

    def __init__(self, config: ADBOConfig, output_dir: Path, processes: dict[int, subprocess.Popen]):
        self.config, self.output_dir, self.processes = config, output_dir, processes

    def history(self) -> list[dict[str, Any]]:
        """The master's iterations so far (it appends one JSON line per iteration)."""
        path = self.output_dir / HISTORY
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]

    def wait_for_iteration(self, iteration: int, timeout: float) -> None:
        """Block until the master has done ``iteration`` iterations (or fail after ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.history()
            if done and done[-1]["iteration"] >= iteration:
                return
            if self.processes[0].poll() is not None:
                raise ADBOError(f"the master exited (code {self.processes[0].returncode}) before iteration {iteration}"
                                f"{self._error_suffix()}")
            time.sleep(0.05)
        raise TimeoutError(f"the master did not reach iteration {iteration} within {timeout:g} s")

    def kill_worker(self, rank: int) -> None:
        """SIGKILL worker ``rank`` (a crash: no clean-up, no goodbye)."""
        self.processes[rank].send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """The master's result; :class:`ADBOError` with its message if it failed."""
        master = self.processes[0]
        try:
            code = master.wait(timeout)
        except subprocess.TimeoutExpired:
            self.terminate()
            raise ADBOError(f"the ADBO master did not finish within {timeout:g} s") from None
        self._reap(grace=10.0)
        if code != 0 or not (self.output_dir / RESULT).exists():
            raise ADBOError(f"the ADBO master failed (exit code {code}){self._error_suffix()}")
        return json.loads((self.output_dir / RESULT).read_text())

    def final_state(self) -> dict[str, torch.Tensor]:
        """``{"v": ..., "z": ...}``: the master's consensus variables at the end."""
        return torch.load(self.output_dir / FINAL, weights_only=True)

    def terminate(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
        for process in self.processes.values():
            process.wait()

    def _reap(self, grace: float) -> None:
        """Workers exit once the master stops them; any still running after ``grace`` s are killed."""
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _error_suffix(self) -> str:
        path = self.output_dir / ERROR
        if path.exists():
            error = json.loads(path.read_text())
            return f": {error['type']}: {error['message']}"
        tail = (self.output_dir / "rank-0.log").read_text()[-2000:] if (self.output_dir / "rank-0.log").exists() else ""
        return f"; its log ends with:\n{tail}" if tail else ""


def start(config: ADBOConfig, output_dir: str | Path, addr: str = "127.0.0.1", port: int | None = None,
          world_size: int | None = None, ranks: list[int] | None = None) -> LocalCluster:
    """Start the master and workers as subprocesses (logs: ``output_dir/rank-<r>.log``).

    ``world_size``/``ranks`` default to ``workers + 1`` / all of them; a test may start fewer
    ranks or point them at another address to see the errors a misconfigured cluster gets.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in (RESULT, ERROR, HISTORY, FINAL):
        (output_dir / name).unlink(missing_ok=True)
    config_path = output_dir / "config.json"
    config_path.write_text(config.to_json() + "\n")
    world_size = world_size or config.workers + 1
    port = port or free_port()
    env = {**os.environ, "MASTER_ADDR": addr, "MASTER_PORT": str(port), "WORLD_SIZE": str(world_size),
           # N + 1 processes share the cores; TensorPipe's warnings at shutdown are noise (the master
           # logs lost workers itself)
           "OMP_NUM_THREADS": "1", "TORCH_CPP_LOG_LEVEL": os.environ.get("TORCH_CPP_LOG_LEVEL", "ERROR"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    processes = {}
    for rank in (range(world_size) if ranks is None else ranks):
        with open(output_dir / f"rank-{rank}.log", "w") as log_file:
            processes[rank] = subprocess.Popen(
                [sys.executable, "-m", "distillery.components.training.adbo", "--config", str(config_path),
                 "--output-dir", str(output_dir)],
                env={**env, "RANK": str(rank)}, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    return LocalCluster(config, output_dir, processes)


def launch(config: ADBOConfig, output_dir: str | Path, timeout: float | None = None) -> dict[str, Any]:
    """Run ADBO to the end on this machine and return the master's result (see :class:`LocalCluster`)."""
    cluster = start(config, output_dir)
    try:
        return cluster.wait(timeout)
    finally:
        cluster.terminate()
