"""What the benchmarks share: what they write besides their numbers (the machine it ran on, the JSON
file plus the printed table) and, for the active-learning ones, which strategies they run."""
from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks import _peers


def machine_info(load_before: float) -> dict:
    import scipy
    import sklearn
    import torch

    return {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "scikit-learn": sklearn.__version__,
            _peers.PEER: _peers.peer_version(),
            "load_avg_1min": {"before": load_before, "after": os.getloadavg()[0]}}


def write_result(result: dict, output: Path, print_result: Callable[[dict], None]) -> int:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print_result(result)
    print(f"\nWrote {output}")
    return 0


def strategy_configs(anchoral: list[tuple[str, dict]]) -> dict[str, tuple[str, dict]]:
    """label -> (registered name, params): every registered selection strategy, wrappers over a
    base; ``anchoral`` lists the AnchorAL variants (label, params) the benchmark runs."""
    from distillery.components.core import registry

    wrapped = {
        "anchoral": anchoral,
        "softmax_sampling": [("softmax_sampling(entropy)", {"base": "entropy"})],
        "power_sampling": [("power_sampling(entropy)", {"base": "entropy"})],
        "softrank_sampling": [("softrank_sampling(entropy)", {"base": "entropy"})],
        "stream": [("stream(margin)", {"base": "margin"})],
    }
    configs = {}
    for method in registry.methods("selection"):
        for label, params in wrapped.get(method.name, [(method.name, {})]):
            configs[label] = (method.name, params)
    return configs
