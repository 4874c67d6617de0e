"""How long the project image takes to build: cold, and after a code-only change.

Builds what ``make image`` builds (:func:`distillery.pipelines.podman.build_image`: buildah, the Debian base
made with mmdebstrap, torch from the local wheel folder, every other package from PyPI) in a fresh
container store (``DISTILLERY_CONTAINERS_HOME`` in a temporary folder, so nothing is cached and the
user's images are untouched), from a copy of this checkout's committed files. Then one line of one
module changes in that copy and the image is built again: only the code's layers may rebuild.

    python -m benchmarks.image_build        # ~4-5 min on 2 cores (most of it pip downloading)
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CHANGED = "components/core/tracking.py"  # the code-only change: a comment appended to one module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=RESULTS / "image_build.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="distillery-image-bench-") as tmp:
        result = benchmark(Path(tmp))
    from benchmarks import _results

    return _results.write_result(result, args.output, print_result, script="benchmarks.image_build")


def benchmark(tmp: Path) -> dict:
    from distillery.components.core.images import IMAGE
    from distillery.pipelines import podman

    source = tmp / "source"
    _export_checkout(source)
    os.environ[podman.HOME_ENV] = str(tmp / "containers")  # a cold store: no base, no layers
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    podman.build_base()
    base_s = time.perf_counter() - started
    started = time.perf_counter()
    cold = podman.build_image(source, IMAGE)
    cold_s = time.perf_counter() - started
    with open(source / CHANGED, "a") as module:
        module.write("# a code-only change\n")
    started = time.perf_counter()
    rebuilt = podman.build_image(source, IMAGE)
    code_only_s = time.perf_counter() - started
    size = int(podman.podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip())
    return {
        "benchmark": "image_build",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "podman": _version("podman"), "buildah": _version("buildah"),
                    "load_avg_1min": {"before": load_before, "after": os.getloadavg()[0]}},
        "image": IMAGE,
        "summary": {"base_image_s": round(base_s, 1), "cold_build_s": round(cold_s, 1),
                    "cold_total_s": round(base_s + cold_s, 1), "code_only_rebuild_s": round(code_only_s, 1),
                    "image_size_bytes": size, "changed_file": CHANGED,
                    "ids": {"cold": cold.id, "after_code_change": rebuilt.id},
                    "protocol": protocol()},
    }


def protocol() -> dict:
    """``summary.protocol`` of a timing: no data and nothing chosen from results; each build is timed once."""
    from benchmarks import _results

    return _results.protocol(split_sizes={}, model_selection="none", seeds=1,
                             repeats="each build (base, cold image, code-only rebuild) timed once")


def _export_checkout(dst: Path) -> None:
    """The committed files of this checkout (what a clean clone builds from)."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], check=True, capture_output=True,
                           text=True).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        target = dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target.symlink_to(os.readlink(src))
        elif src.is_file():
            shutil.copy2(src, target)


def _version(tool: str) -> str:
    return subprocess.run([tool, "--version"], capture_output=True, text=True).stdout.strip()


def print_result(result: dict) -> None:
    print(markdown(result))


def markdown(result: dict, view: str | None = None) -> str:
    """The README's table (``view`` ``"summary"``: one sentence for the top-level README)."""
    from benchmarks.report import source, table

    s, m = result["summary"], result["machine"]
    size = s["image_size_bytes"] / 1e9
    if view not in (None, "summary"):
        raise ValueError(f"unknown view {view!r}: none or 'summary'")
    if view == "summary":
        return (f"On {m['cores']} cores (`benchmarks/results/image_build.json`, {result['date'][:10]}): "
                f"a cold build takes {s['cold_total_s']:.0f} s ({s['base_image_s']:.0f} s for the base, "
                f"{s['cold_build_s']:.0f} s for the image), a rebuild after a code-only change "
                f"{s['code_only_rebuild_s']:.1f} s; the image is {size:.1f} GB.")
    rows = [["base image (mmdebstrap + `podman import`)", f"{s['base_image_s']:.1f}"],
            ["cold build, every layer", f"{s['cold_build_s']:.1f}"],
            ["cold, in all", f"{s['cold_total_s']:.1f}"],
            [f"rebuild after a code-only change (`{s['changed_file']}`)", f"{s['code_only_rebuild_s']:.1f}"]]
    return (f"`{result['image']}` ({source(result, 'image_build.json')}, {m['cores']} cores, {m['podman']}, "
            f"{m['buildah']}):\n\n{table(['step', 'seconds'], rows)}\n\nThe image is {size:.2f} GB.")


if __name__ == "__main__":
    sys.exit(main())
