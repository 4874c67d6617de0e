"""Running benchmarks the way a user does, for tests/bench/."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_quick(tmp_path, *names: str, extra: tuple[str, ...] = ()) -> tuple[dict[str, dict], dict[str, str]]:
    """Run ``python -m benchmarks.<name> --quick`` from the repository root for every name side by
    side, as a user runs them; each must exit 0. Returns ``(name -> result JSON, name -> its output)``."""
    outputs = {name: tmp_path / f"{name}.json" for name in names}
    processes = {name: subprocess.Popen([sys.executable, "-m", f"benchmarks.{name}", "--quick", *extra,
                                         "--output", str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
                 for name, path in outputs.items()}
    logs = {}
    for name, process in processes.items():
        logs[name], _ = process.communicate(timeout=600)
        assert process.returncode == 0, f"{name} --quick failed:\n{logs[name][-3000:]}"
    return {name: json.loads(path.read_text()) for name, path in outputs.items()}, logs
