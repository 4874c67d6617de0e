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

from distillery.components.core import registry

PIPELINE_STAGES = ("curation", "split", "selection", "labelling", "training", "distillation", "evaluation")
# The two pipelines a config can describe (top-level key `pipeline`):
#  - active_learning: curate -> split -> train -> R x [select -> label -> train] -> distil -> evaluate
#  - retraining (scheduled): check drift/new labels -> curate -> split -> train -> distil -> evaluate/gate
KIND_STAGES = {
    "active_learning": PIPELINE_STAGES,
    "retraining": ("curation", "split", "training", "distillation", "evaluation"),
}
TOP_LEVEL = {"name", "description", "seed", "experiment", "data", "pipeline", "retraining", "cluster",
             "device", "precision", *PIPELINE_STAGES}
STAGE_KEYS = {"method", "params"}
# Stages that run torch take `device` (auto | cpu | cuda) and `precision` (fp32 | bf16); the
# top-level keys of the same names are their default (components/core/devices.py).
PLACEMENT_KEYS = {"device", "precision"}
EXTRA_STAGE_KEYS = {"selection": {"rounds", "batch_size", *PLACEMENT_KEYS}, "curation": {"steps"},
                    "training": PLACEMENT_KEYS, "distillation": PLACEMENT_KEYS, "evaluation": PLACEMENT_KEYS}
# When a scheduled run retrains (see components/evaluation/retraining.py).
RETRAINING_DEFAULTS = {"min_new_labels": 100, "drift_alpha": 0.01, "retrain_on_drift": True}
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"
RETRAINING_CONFIG = Path(__file__).parent / "configs" / "retraining.yaml"


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
    for key in ("name", "data"):
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
    kind = config.setdefault("pipeline", "active_learning")
    if kind not in KIND_STAGES:
        raise ConfigError(f"{source}: pipeline must be one of {sorted(KIND_STAGES)}, got {kind!r}")
    stages = KIND_STAGES[kind]
    for stage in PIPELINE_STAGES:
        if stage in config and stage not in stages:
            raise ConfigError(f"{source}: a {kind} pipeline has no {stage!r} stage; its stages are {list(stages)}")
    for stage in stages:
        if stage not in config:
            raise ConfigError(f"{source}: missing required key {stage!r}")
        section = config[stage]
        where = f"{source}: {stage}"
        if not isinstance(section, dict) or "method" not in section:
            raise ConfigError(f"{where}: needs a 'method'")
        _no_unknown(section, STAGE_KEYS | EXTRA_STAGE_KEYS.get(stage, set()), where)
        section["params"] = _resolve(stage, section, where)
    _placements(config, stages, source)
    config["curation"]["steps"] = _curation_steps(config["curation"].get("steps"), f"{source}: curation.steps")
    if kind == "active_learning":
        selection = config["selection"]
        for key, minimum in (("rounds", 0), ("batch_size", 1)):
            value = selection.setdefault(key, {"rounds": 3, "batch_size": 100}[key])
            if not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{source}: selection.{key} must be an integer >= {minimum}, got {value!r}")
    if "retraining" in config and kind != "retraining":
        raise ConfigError(f"{source}: 'retraining' settings need `pipeline: retraining`")
    if kind == "retraining":
        config["retraining"] = _retraining(config.get("retraining"), f"{source}: retraining")
    for stage in stages:
        _check_ranges(config[stage]["params"], f"{source}: {stage}.params")
    for i, step in enumerate(config["curation"]["steps"]):
        _check_ranges(step["params"], f"{source}: curation.steps[{i}].params")
    evaluation = config["evaluation"]
    if evaluation["method"] == "classification":  # a gate or metric nobody computes fails here
        from distillery.components.evaluation.gate import (
            EVALUATION_METRICS,
            validate_config_gate,
        )

        try:
            evaluation["params"]["gate"] = validate_config_gate(evaluation["params"]["gate"])
        except ValueError as exc:
            raise ConfigError(f"{source}: evaluation.params.gate: {exc}") from None
        if evaluation["params"]["metric"] not in EVALUATION_METRICS[:3]:
            raise ConfigError(f"{source}: evaluation.params.metric {evaluation['params']['metric']!r} is not a metric "
                              f"the evaluation computes; use one of {list(EVALUATION_METRICS[:3])}")
    if "cluster" in config:
        from distillery.pipelines.cluster import ClusterConfigError, validate_cluster

        try:
            config["cluster"] = validate_cluster(config["cluster"], stages)
        except ClusterConfigError as exc:
            raise ConfigError(f"{source}: cluster: {exc}") from None
    return config


def _placements(config: dict[str, Any], stages: tuple[str, ...], source: str) -> None:
    """Every torch stage gets its ``device`` and ``precision`` (its own, else the top-level ones,
    else auto / fp32), checked here; whether CUDA is there is checked where the stage runs."""
    from distillery.components.core.devices import DeviceError, check_spec

    config.setdefault("device", "auto")
    config.setdefault("precision", "fp32")
    try:
        check_spec(config["device"], config["precision"], source)
        for stage in stages:
            if PLACEMENT_KEYS <= EXTRA_STAGE_KEYS.get(stage, set()):
                section = config[stage]
                section.setdefault("device", config["device"])
                section.setdefault("precision", config["precision"])
                check_spec(section["device"], section["precision"], f"{source}: {stage}")
    except DeviceError as exc:
        raise ConfigError(str(exc)) from None


def _check_ranges(params: dict[str, Any], where: str) -> None:
    """Training budgets by name, for every method: ``epochs`` an integer >= 1 (other ``*_epochs``
    >= 0), ``batch_size`` an integer >= 1, ``lr`` / ``*_lr`` a number > 0."""
    for key, value in params.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key == "epochs" or key.endswith("_epochs"):
            least = 1 if key == "epochs" else 0
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ConfigError(f"{where}.{key} must be an integer >= {least}, got {value!r}")
        elif key == "batch_size" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{where}.{key} must be an integer >= 1, got {value!r}")
        elif (key == "lr" or key.endswith("_lr")) and (not number or not value > 0 or value != value):
            raise ConfigError(f"{where}.{key} must be a number > 0, got {value!r}")


def check_against_data(config: dict[str, Any], labels, meta: dict, source: str = "config") -> None:
    """What a config asks of its dataset, checked before any work (``distillery run``): the split
    it gives, active-learning rounds that fit the pool it leaves, and architectures that take the
    dataset's kind and shape. ``labels`` ``(N,)`` and ``meta`` (its ``dataset.json``)."""
    import numpy as np

    split = config["split"]
    try:
        _, pool, _ = registry.get("split", split["method"]).load()(np.asarray(labels), seed=config["seed"],
                                                                   **split["params"])
    except ValueError as exc:
        raise ConfigError(f"{source}: split: {exc}") from None
    if config["pipeline"] == "active_learning":
        selection = config["selection"]
        wanted = selection["rounds"] * selection["batch_size"]
        if wanted > len(pool):
            raise ConfigError(f"{source}: selection asks for {selection['rounds']} rounds x batch_size "
                              f"{selection['batch_size']} = {wanted} labels, but the split leaves {len(pool)} "
                              f"unlabelled items of {len(labels)} in {config['data']['path']}: "
                              "lower rounds or batch_size")
    for stage, arch, kwargs in _architectures(config):
        _check_architecture(arch, kwargs, meta, f"{source}: {stage}")


def _architectures(config: dict[str, Any]) -> list[tuple[str, str, dict]]:
    """``(stage, architecture, its keywords)`` of the models a config builds from the model zoo."""
    from distillery.components.core.models import ARCHITECTURES

    found = []
    training = config["training"]
    params = training["params"]
    if "arch" in params:
        found.append(("training.params.arch", params["arch"], dict(params.get("arch_kwargs") or {})))
    elif training["method"] in ARCHITECTURES:  # a method named after its architecture (small_cnn)
        kwargs = {k: v for k, v in params.items() if k not in ("epochs", "lr", "batch_size")}
        found.append((f"training.method {training['method']}", training["method"], kwargs))
    distillation = config["distillation"]["params"]
    if "student" in distillation:
        from distillery.components.distillation.tasks import student_arch_kwargs

        found.append(("distillation.params.student", distillation["student"], student_arch_kwargs(distillation)))
    return found


def _check_architecture(arch: str, kwargs: dict, meta: dict, where: str) -> None:
    from distillery.components.core import models

    if arch not in models.ARCHITECTURES:
        raise ConfigError(f"{where}: unknown architecture {arch!r}; the model zoo has {sorted(models.ARCHITECTURES)}")
    try:
        models.build(arch, meta, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {arch} does not fit dataset {meta.get('name')!r} (kind {meta.get('kind')!r}, "
                          f"feature shape {meta.get('feature_shape')}): {exc}") from None


def _resolve(stage: str, section: dict, where: str) -> dict[str, Any]:
    try:
        method = registry.get(stage, section["method"])
        params = method.resolve_params(section.get("params"))
    except (registry.UnknownMethodError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return params


def _curation_steps(steps: Any, where: str) -> list[dict[str, Any]]:
    """Curation steps run in order after the validating loader (e.g. quality filtering)."""
    if steps is None:
        return []
    if not isinstance(steps, list):
        raise ConfigError(f"{where}: expected a list of {{method, params}}, got {type(steps).__name__}")
    resolved = []
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or "method" not in step:
            raise ConfigError(f"{where}[{i}]: needs a 'method'")
        _no_unknown(step, STAGE_KEYS, f"{where}[{i}]")
        resolved.append({"method": step["method"], "params": _resolve("curation_step", step, f"{where}[{i}]")})
    return resolved


def _retraining(section: Any, where: str) -> dict[str, Any]:
    section = dict(section or {})
    _no_unknown(section, set(RETRAINING_DEFAULTS), where)
    merged = {**RETRAINING_DEFAULTS, **section}
    if not isinstance(merged["min_new_labels"], int) or merged["min_new_labels"] < 1:
        raise ConfigError(f"{where}: min_new_labels must be an integer >= 1, got {merged['min_new_labels']!r}")
    if not 0 < float(merged["drift_alpha"]) < 1:
        raise ConfigError(f"{where}: drift_alpha must be in (0, 1), got {merged['drift_alpha']!r}")
    if not isinstance(merged["retrain_on_drift"], bool):
        raise ConfigError(f"{where}: retrain_on_drift must be true or false")
    return merged


def _no_unknown(section: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def task_names(config: dict[str, Any]) -> list[str]:
    """The tasks a config's pipeline runs, in order (one per component invocation). A retraining
    run that finds nothing new stops after its first task."""
    def name(stage: str, round_index: int | None = None) -> str:
        return registry.task_name(stage, config[stage]["method"], round_index)

    curation = [name("curation")] + [registry.task_name("curation_step", s["method"])
                                     for s in config["curation"]["steps"]]
    if config["pipeline"] == "retraining":
        return [RETRAINING_CHECK_TASK, *curation, name("split"), name("training", 0), name("distillation"),
                name("evaluation")]
    names = [*curation, name("split"), name("training", 0)]
    for r in range(1, config["selection"]["rounds"] + 1):
        names += [name("selection", r), name("labelling", r), name("training", r)]
    return names + [name("distillation"), name("evaluation")]


RETRAINING_CHECK_TASK = "check-retraining"
