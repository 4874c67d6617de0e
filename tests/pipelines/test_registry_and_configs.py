"""Registries and configs: every method resolves, every shipped config loads, bad configs fail early."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from distillery.components.core import registry
from distillery.pipelines.config import (
    ConfigError,
    load_config,
    task_names,
    validate_config,
)

CONFIGS = sorted((ROOT / "pipelines" / "configs").glob("*.yaml")) + sorted((ROOT / "tests" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(path: Path):
    config = load_config(path)
    names, steps = task_names(config), len(config["curation"]["steps"])
    assert names[-1].startswith("evaluate-")
    if config["pipeline"] == "retraining":
        assert names[:2] == ["check-retraining", f"curate-{config['curation']['method']}"]
        assert len(names) == 6 + steps
    else:
        assert names[0].startswith("curate-")
        assert len(names) == 5 + steps + 3 * config["selection"]["rounds"]


@pytest.mark.parametrize("raw_update, message", [
    ({"pipeline": "nightly"}, "pipeline must be one of ['active_learning', 'retraining']"),
    ({"pipeline": "retraining"}, "a retraining pipeline has no 'selection' stage"),
    ({"retraining": {"min_new_labels": 5}}, "'retraining' settings need `pipeline: retraining`"),
    ({"curation": {"method": "gx_dedup", "steps": [{"method": "no_such_step"}]}},
     "curation.steps[0]: unknown curation_step method 'no_such_step'"),
    ({"curation": {"method": "gx_dedup", "steps": {"method": "x"}}}, "curation.steps: expected a list"),
    ({"evaluation": {"method": "backdoor_audit"}},  # an audit-stage method
     "unknown evaluation method 'backdoor_audit'"),
    ({"evaluation": {"method": "classification", "params": {"gate": {"min": {"acuracy": 0.9}}}}},
     "evaluation.params.gate: gate.min names metric 'acuracy', which this evaluation does not compute"),
])
def test_pipeline_kind_and_curation_steps_are_validated(raw_update, message):
    raw = yaml.safe_load((ROOT / "pipelines" / "configs" / "default.yaml").read_text())
    raw.update(raw_update)
    with pytest.raises(ConfigError) as err:
        validate_config(raw, "c.yaml")
    assert message in str(err.value)


@pytest.mark.parametrize("method", registry.methods(), ids=lambda m: f"{m.stage}:{m.name}")
def test_every_method_has_code_a_component_and_a_paper(method):
    """Each method's component is derived from its stage's: named after the method, which its
    ``method`` input defaults to; every other input is the stage component's."""
    from distillery.pipelines.components import method_component

    assert callable(method.load())
    component = method_component(method.stage, method.name)
    stage_spec = registry.stage_component(method.stage).component_spec
    assert component.component_spec.name == registry.task_name(method.stage, method.name).replace("_", "-")
    assert component.component_spec.inputs["method"].default == method.name
    assert set(component.component_spec.inputs) == set(stage_spec.inputs)
    assert component.component_spec.outputs == stage_spec.outputs
    assert method.paper and method.summary


def test_method_code_never_imports_kfp():
    """Method modules stay plain Python: importing every method target must not pull in kfp."""
    targets = sorted({m.target.split(":")[0] for m in registry.methods()})
    code = f"import sys\nfor t in {targets!r}: __import__(t)\nprint('kfp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_methods_command_lists_every_method_with_stage_and_paper():
    out = subprocess.run([sys.executable, "-m", "distillery.pipelines.cli", "methods"], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    for method in registry.methods():
        line = next(row for row in out.splitlines() if row.split()[:2] == [method.stage, method.name])
        assert method.paper in line


def _default() -> dict:
    return yaml.safe_load((ROOT / "pipelines" / "configs" / "default.yaml").read_text())


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["selection"].update(method="bald2"), "unknown selection method 'bald2'; registered selection methods"),
    (lambda c: c["training"]["params"].update(epoch=3), "has no parameter(s) ['epoch']"),
    (lambda c: c["selection"].update(rounds=-1), "selection.rounds must be an integer >= 0"),
    (lambda c: c.update(colour="red"), "unknown key(s) ['colour']"),
    (lambda c: c.pop("distillation"), "missing required key 'distillation'"),
    (lambda c: c["data"].pop("path"), "data needs at least a 'path'"),
])
def test_bad_configs_fail_with_a_specific_message(mutate, message):
    config = _default()
    mutate(config)
    with pytest.raises(ConfigError, match=None) as err:
        validate_config(config, "cfg.yaml")
    assert message in str(err.value)


def test_params_are_filled_with_defaults_and_overrides_win():
    config = validate_config(_default())
    method = registry.get("training", config["training"]["method"])
    assert config["training"]["params"]["epochs"] == 18 != method.defaults["epochs"]  # from the YAML
    assert config["training"]["params"]["lr"] == method.defaults["lr"]


def test_task_names_are_shared_by_pipeline_and_tasks():
    assert registry.task_name("selection", "entropy", 2) == "round-2-select-entropy"
    assert registry.task_name("curation", "gx_dedup") == "curate-gx_dedup"


def test_methods_command_lists_the_model_zoo_with_sizes_and_papers():
    from distillery.components.core import models

    out = subprocess.run([sys.executable, "-m", "distillery.pipelines.cli", "methods"], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    zoo = out.split("ARCHITECTURE")[1].splitlines()[1:]
    assert [row.split()[0] for row in zoo] == list(models.ARCHITECTURES)
    for row, name in zip(zoo, models.ARCHITECTURES):
        size = models.count_parameters(models.build(name, models.MNIST_META))
        assert row.split()[1] == f"{size:,}" and models.ARCHITECTURE_PAPERS[name] in row
