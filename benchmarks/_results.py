"""What the benchmarks share: what they write besides their numbers (the script, the commit and the
machine a result came from, the protocol it followed, the JSON file plus the printed table) and, for
the active-learning ones, which strategies they run.

Every benchmark module defines ``markdown(result) -> str``: its tables, rendered from a result JSON.
:func:`write_result` prints it after a run, and ``benchmarks/report.py`` puts it into
``benchmarks/README.md``, so the README's numbers are the JSON's.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks import _peers

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "benchmarks" / "configs"

# torch (ATen), MKL and numpy's OpenBLAS choose their vectorised kernels per CPU (ATen by instruction set,
# AVX2 or AVX-512; MKL and OpenBLAS by vendor and model), and the float results differ in the last
# digits. In an active-learning loop such a difference flips one query's pick and the runs part: the
# same seeds and code gave supervised margin 362 labels to 95% on one machine and 393 on another, and
# ATEN_CPU_CAPABILITY=avx2 on the second reproduced the first's curve digit for digit (core-set, which
# computes its distances in numpy, also needed OPENBLAS_CORETYPE=Haswell). A benchmark whose figures
# have targets pins all three to their AVX2 paths, which every x86-64 server CPU of the last decade
# runs; worker processes inherit the pin. Elsewhere (arm64) there is nothing to pin.
PINNED_CPU_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "OPENBLAS_CORETYPE": "Haswell"}


def machine_info(load_before: float) -> dict:
    import scipy
    import sklearn
    import torch

    return {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "cpu": cpu_name(), "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "scikit-learn": sklearn.__version__,
            _peers.PEER: _peers.peer_version(),
            "gpu": gpu_name(),
            "load_avg_1min": {"before": load_before, "after": os.getloadavg()[0]}}


def pin_cpu_kernels() -> dict:
    """Pin torch's, MKL's and OpenBLAS's CPU kernels (:data:`PINNED_CPU_KERNELS`) for the processes this one
    starts from now on (this one has loaded numpy's OpenBLAS already, so only its workers run pinned in full);
    returns what was set."""
    if "avx2" not in cpu_flags():  # arm64, or an x86 CPU the pinned kernels would not run on
        return {}
    os.environ.update(PINNED_CPU_KERNELS)
    return dict(PINNED_CPU_KERNELS)


def cpu_capability() -> str:
    """The vectorised kernels torch runs in this process (``"AVX2"`` where pinned); a worker returns it."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def cpu_kernels(pinned: dict, results: list[dict]) -> dict:
    """For ``protocol.cpu_kernels``: the pin, and the kernels the workers' ``results`` say they ran."""
    return {"pinned": pinned, "workers_ran": sorted({r["cpu_capability"] for r in results if "cpu_capability" in r})}


def cpu_kernels_text(result: dict) -> str:
    """A sentence for a README block: the CPU kernels the workers ran, where the result records them."""
    kernels = result["protocol"].get("cpu_kernels")
    if not kernels:
        return ""
    pinned = "pinned" if kernels["pinned"] else "not pinned"
    return f" CPU kernels {pinned}: torch ran {', '.join(kernels['workers_ran'])} ({result['machine']['cpu']})."


def cpu_name() -> str:
    """The CPU's model name, which decides the kernels that are not pinned."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags (x86 Linux; empty elsewhere)."""
    return set(_cpuinfo("flags").split())


def _cpuinfo(field: str) -> str:
    """The first ``field`` of /proc/cpuinfo, or "" where there is none."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":")[0].strip() == field), "")


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def git_commit() -> dict:
    """The commit the benchmark ran from and the tracked files that differed from it (``dirty``: a
    result is reproducible from its commit alone only where none of them is code the benchmark ran)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    try:
        # porcelain lines are "XY path": not stripped, as X may be a space
        changed = git("status", "--porcelain", "--untracked-files=no").splitlines()
        return {"commit": git("rev-parse", "HEAD").strip(), "dirty": [line[3:] for line in changed]}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def script_name() -> str:
    """The benchmark module that is running, as ``python -m`` names it (``benchmarks.distillation``)."""
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).stem


def provenance(script: str | None = None) -> dict:
    """What every result JSON carries: the script, its command line, the commit and the date. The commit
    and the changed files are those of when the benchmark started (:data:`STARTED_AT`): a commit made
    while a long benchmark runs does not hold the code it ran."""
    return {"script": script or script_name(), "argv": sys.argv[1:], **STARTED_AT,
            "date": datetime.now(UTC).isoformat(timespec="seconds")}


STARTED_AT = git_commit()  # taken when a benchmark imports this module, at its start


def config_ref(path: Path, raw: bytes | None = None) -> dict:
    """``{"config", "config_sha256"}`` for ``summary.protocol``: the config's path (relative to the
    repository when inside it) and the sha256 of its bytes (``raw``, when the caller has read them)."""
    path = Path(path).resolve()
    raw = path.read_bytes() if raw is None else raw
    return {"config": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
            "config_sha256": hashlib.sha256(raw).hexdigest()}


def config_file(name: str) -> tuple[dict, dict]:
    """A committed benchmark config (``benchmarks/configs/<name>``): its content and its reference for
    ``summary.protocol`` (:func:`config_ref` of the bytes read)."""
    path = CONFIGS / name
    raw = path.read_bytes()
    return json.loads(raw), config_ref(path, raw)


def protocol(*, split_sizes: dict, model_selection: str, seeds, config: dict | None = None, **extra) -> dict:
    """``summary.protocol``: the split sizes, how choices were made (``"validation"``, or ``"none"`` for a
    benchmark that chooses nothing from results), the seeds or repeats, the config file and its hash."""
    return {"split_sizes": split_sizes, "model_selection": model_selection, "seeds": seeds,
            **(config or {"config": None, "config_sha256": None}), **extra}


def write_result(result: dict, output: Path, print_result: Callable[[dict], None], *,
                 script: str | None = None) -> int:
    result.setdefault("provenance", provenance(script))
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


def mean_std(values) -> dict:
    """``{"mean", "std", "values"}`` of repeated measurements (population std, as the tables print it)."""
    values = [float(v) for v in values]
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}
