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
import json
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
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print_result(result)
    print(f"\nWrote {args.output}")
    return 0


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
                    "ids": {"cold": cold.id, "after_code_change": rebuilt.id}},
    }


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
    s = result["summary"]
    print(f"\nImage {result['image']} on {result['machine']['cores']} cores ({result['machine']['podman']}, "
          f"{result['machine']['buildah']})\n")
    rows = [("base image (mmdebstrap + import)", f"{s['base_image_s']:7.1f} s"),
            ("cold build (every layer)", f"{s['cold_build_s']:7.1f} s"),
            ("cold, in all", f"{s['cold_total_s']:7.1f} s"),
            (f"rebuild after a code-only change ({s['changed_file']})", f"{s['code_only_rebuild_s']:7.1f} s"),
            ("image size", f"{s['image_size_bytes'] / 1e9:7.2f} GB")]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    sys.exit(main())
