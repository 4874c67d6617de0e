"""Pipeline configs: a small YAML file naming one registered method (and its parameters) per stage.

Loading validates everything a run would otherwise discover late: unknown keys, unknown method
names, unknown parameters, impossible round counts. The loaded config carries every method's
parameters with defaults filled in, which is what each run records.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from components import registry

PIPELINE_STAGES = ("curation", "split", "selection", "labelling", "training", "distillation", "evaluation")
TOP_LEVEL = {"name", "description", "seed", "experiment", "data", *PIPELINE_STAGES}
STAGE_KEYS = {"method", "params"}
EXTRA_STAGE_KEYS = {"selection": {"rounds", "batch_size"}}
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


class ConfigError(ValueError):
    """A config that cannot run; the message names the file and the offending key."""


def load_config(path: str | Path = DEFAULT_CONFIG) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return validate_config(raw, str(path))


def validate_config(raw: Any, source: str = "config") -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    config = copy.deepcopy(raw)
    _no_unknown(config, TOP_LEVEL, source)
    for key in ("name", "data", *PIPELINE_STAGES):
        if key not in config:
            raise ConfigError(f"{source}: missing required key {key!r}")
    config.setdefault("seed", 0)
    config.setdefault("experiment", "distillery")
    config.setdefault("description", "")
    if not isinstance(config["seed"], int):
        raise ConfigError(f"{source}: seed must be an integer, got {config['seed']!r}")
    data = config["data"]
    if not isinstance(data, dict) or "path" not in data:
        raise ConfigError(f"{source}: data needs at least a 'path' (a dataset folder under data/)")
    _no_unknown(data, {"repo", "path", "rev"}, f"{source}: data")
    data.setdefault("repo", ".")
    data.setdefault("rev", None)
    for stage in PIPELINE_STAGES:
        section = config[stage]
        where = f"{source}: {stage}"
        if not isinstance(section, dict) or "method" not in section:
            raise ConfigError(f"{where}: needs a 'method'")
        _no_unknown(section, STAGE_KEYS | EXTRA_STAGE_KEYS.get(stage, set()), where)
        try:
            method = registry.get(stage, section["method"])
            section["params"] = method.resolve_params(section.get("params"))
        except (registry.UnknownMethodError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
    selection = config["selection"]
    for key, minimum in (("rounds", 0), ("batch_size", 1)):
        value = selection.setdefault(key, {"rounds": 3, "batch_size": 100}[key])
        if not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{source}: selection.{key} must be an integer >= {minimum}, got {value!r}")
    return config


def _no_unknown(section: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def task_names(config: dict[str, Any]) -> list[str]:
    """The tasks a config's pipeline runs, in order (one per component invocation)."""
    def name(stage: str, round_index: int | None = None) -> str:
        return registry.task_name(stage, config[stage]["method"], round_index)

    names = [name("curation"), name("split"), name("training", 0)]
    for r in range(1, config["selection"]["rounds"] + 1):
        names += [name("selection", r), name("labelling", r), name("training", r)]
    return names + [name("distillation"), name("evaluation")]
