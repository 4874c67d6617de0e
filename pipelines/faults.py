"""Named points where the fault-injection tests (tests/pipelines/test_faults.py) kill the process.

``DISTILLERY_FAULT=<point>`` in the environment makes :func:`fault_point` of that name SIGKILL the
running process, as an OOM kill or a power cut would stop it, so the tests can check what the next
command finds. Unset (always, outside those tests), a point does nothing.
"""
from __future__ import annotations

import os
import signal

ENV = "DISTILLERY_FAULT"


def fault_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
