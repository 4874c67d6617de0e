"""``python -m distillery.components.training.adbo``: one ADBO process (rank 0 master, ranks 1..N workers).

The rank and group come from the environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``), as a Kubernetes Indexed Job or :func:`distillery.components.training.adbo.launcher.start`
sets them; the run's settings from ``--config FILE`` or ``--config-json TEXT`` (an
:class:`ADBOConfig` as JSON; ``workers`` defaults to ``WORLD_SIZE - 1``, ``tracking_uri`` to
``MLFLOW_TRACKING_URI``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distillery.components.training.adbo",
                                     description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", type=Path, help="ADBOConfig as a JSON file")
    source.add_argument("--config-json", help="ADBOConfig as JSON text")
    parser.add_argument("--output-dir", type=Path, default=Path(os.environ.get("ADBO_OUTPUT_DIR", "adbo-output")),
                        help="where the master writes result.json, final.pt, history.jsonl (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    except KeyError as exc:
        parser.error(f"environment variable {exc.args[0]} is not set (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)")
    except ValueError as exc:
        parser.error(f"RANK, WORLD_SIZE and MASTER_PORT must be integers: {exc}")

    import warnings

    # torch.distributed.rpc's own init warns about its internal use of gloo: not ours to fix
    warnings.filterwarnings("ignore", message="You are using a Backend")
    from distillery.components.training.adbo import runtime
    from distillery.components.training.adbo.config import ADBOConfig, ADBOConfigError

    text = args.config.read_text() if args.config else args.config_json or "{}"
    try:
        data = json.loads(text)
        data.setdefault("workers", world - 1)
        data.setdefault("tracking_uri", os.environ.get("MLFLOW_TRACKING_URI"))  # as on the cluster
        config = ADBOConfig.from_json(json.dumps(data))
    except (ADBOConfigError, json.JSONDecodeError) as exc:
        print(f"ERROR: invalid ADBO config: {exc}", file=sys.stderr)
        if rank == 0:  # the launcher reads error.json
            args.output_dir.mkdir(parents=True, exist_ok=True)
            runtime._write_error(args.output_dir, exc)
        return 2
    if rank == 0:
        return runtime.run_master(config, world, addr, port, args.output_dir)
    try:
        return runtime.run_worker(config, rank, world, addr, port)
    except runtime.MasterUnreachableError as exc:
        print(f"ERROR: {exc}", file=sys.stderr, flush=True)
        return 3


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the rpc agent's threads must not keep a finished process alive
