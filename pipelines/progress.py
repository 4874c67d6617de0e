"""A per-task progress display for pipelines run with kfp.local.

kfp.local reports each task through the root logger ("Executing task ...", "Task ... finished
with status ..."). A filter on the root logger sees those records without replacing kfp's own
handlers (kfp swaps handlers per task, filters on the logger survive) and prints one progress line
per event; it also keeps the wall time of every task for ``benchmarks/pipeline_overhead.py``.
"""
from __future__ import annotations

import logging
import re
import sys
import time

_START = re.compile(r"Executing task (?:\x1b\[\d+m)?'?([\w-]+)")
_END = re.compile(r"Task (?:\x1b\[\d+m)?'?([\w-]+)'?(?:\x1b\[0m)? finished with status (?:\x1b\[\d+m)?(\w+)")


class TaskProgress(logging.Filter):
    """Prints ``[i/N] task ... done in 4.2 s`` lines; ``wall_seconds`` maps task -> wall time."""

    def __init__(self, total: int, stream=sys.stdout):
        super().__init__()
        self.total, self.stream = total, stream
        self.started: dict[str, float] = {}
        self.wall_seconds: dict[str, float] = {}
        self.status: dict[str, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if match := _START.search(message):
            self.started[match.group(1)] = time.perf_counter()
            self._line(f"[{len(self.started)}/{self.total}] {match.group(1)} started")
        elif match := _END.search(message):
            name, status = match.group(1), match.group(2)
            self.wall_seconds[name] = time.perf_counter() - self.started.get(name, time.perf_counter())
            self.status[name] = status
            mark = "done" if status == "SUCCESS" else status
            self._line(f"[{len(self.wall_seconds)}/{self.total}] {name} {mark} in {self.wall_seconds[name]:.1f} s")
        return True

    def _line(self, text: str) -> None:
        print(f"\033[1m>>> {text}\033[0m" if self.stream.isatty() else f">>> {text}", file=self.stream, flush=True)

    def __enter__(self) -> TaskProgress:
        logging.getLogger().addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger().removeFilter(self)
