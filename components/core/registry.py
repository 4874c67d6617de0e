"""Method registries: every method is looked up by (stage, name), never wired by hand.

Each stage is its own package, ``distillery.components.<stage>``, and declares its methods in
``METHODS`` as :class:`Method` records. A record names the method code by import path, so listing
methods (``distillery methods``) and validating a config import neither torch nor kfp. Its KFP
component is not written by hand: every stage has one component per stage signature
(``<stage>/component.py``, taking the method's name), and ``distillery.pipelines.components``
derives each method's own component from it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

# Stages a pipeline config names, in pipeline order, then the stages whose components run on their
# own (their inputs are not a pipeline's: the dataset audit takes a dataset and held-out images).
PIPELINE_STAGES = ("curation", "curation_step", "split", "selection", "labelling", "training", "distillation",
                   "dataset_distillation", "evaluation")
STANDALONE_STAGES = ("audit",)
STAGES = PIPELINE_STAGES + STANDALONE_STAGES

# Where a method's work runs (stage tasks use it to decide what to log and how to hand work out):
# in the task's process (which may start its own helpers); in torchrun workers the task launches and
# follows (per-worker metrics, checkpoints); in the cluster (a TrainJob or Job the task creates and watches).
EXECUTIONS = ("in_process", "torchrun", "cluster")


class UnknownMethodError(KeyError):
    """A config names a method that no registry holds."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


@dataclass(frozen=True)
class Method:
    """One registered method.

    Attributes:
        stage: pipeline stage the method belongs to (one of :data:`STAGES`).
        name: the name a config uses to pick it.
        paper: citation of the published method (or "-" for plain engineering steps).
        summary: one line on what it computes.
        target: ``"module:attr"`` of the method code (plain Python, CPU-testable); its call follows
            the stage's contract (``<stage>/contract.py``).
        defaults: default parameters, the one place they are written; a config's ``params``
            override them key by key, and the stage's task passes the resolved set to the method.
        execution: where the work runs, one of :data:`EXECUTIONS`.
        inputs: what the method needs beyond its stage's contract, which the stage's task then
            supplies by keyword (e.g. ``"sensitive"``: each training item's group, for fair
            distillation); the stage's contract lists the inputs it can supply.
    """

    stage: str
    name: str
    paper: str
    summary: str
    target: str
    defaults: dict[str, Any] = field(default_factory=dict)
    execution: str = "in_process"
    inputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"method {self.name!r}: unknown stage {self.stage!r}; stages are {list(STAGES)}")
        if self.execution not in EXECUTIONS:
            raise ValueError(f"method {self.name!r}: execution must be one of {EXECUTIONS}, got {self.execution!r}")

    @property
    def standalone(self) -> bool:
        """Its component runs on its own: a pipeline config cannot name it."""
        return self.stage in STANDALONE_STAGES

    def load(self) -> Any:
        return _import(self.target)

    def resolve_params(self, params: dict[str, Any] | None) -> dict[str, Any]:
        """Defaults overridden by ``params``; an unknown key is an error, not silently ignored."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"{self.stage} method {self.name!r} has no parameter(s) {unknown}; "
                f"it accepts {sorted(self.defaults)}"
            )
        return {**self.defaults, **params}


_VERBS = {"curation": "curate", "curation_step": "curate", "split": "split", "selection": "select",
          "labelling": "label", "training": "train", "distillation": "distil", "dataset_distillation": "distil-data",
          "evaluation": "evaluate", "audit": "audit"}


def task_name(stage: str, method: str, round_index: int | None = None) -> str:
    """The name a task carries in the pipeline and in MLflow, e.g. ``round-2-select-entropy``."""
    name = f"{_VERBS[stage]}-{method}"
    return name if round_index is None else f"round-{round_index}-{name}"


def _import(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def stage_package(stage: str) -> str:
    """The package of a stage's code, methods and component: one package per stage."""
    return f"distillery.components.{stage}"


def stage_component(stage: str) -> Any:
    """The KFP component of a stage's signature (imports kfp; only the pipeline side calls it)."""
    return _import(f"{stage_package(stage)}.component:component")


def _stage_methods(stage: str) -> list[Method]:
    declared = importlib.import_module(stage_package(stage)).METHODS
    strays = [m.name for m in declared if m.stage != stage]
    if strays:
        raise ValueError(f"{stage_package(stage)} registers methods of other stages: {strays}")
    return list(declared)


def methods(stage: str | None = None) -> list[Method]:
    """Every registered method, or those of one stage, in declaration order."""
    stages = STAGES if stage is None else (stage,)
    if stage is not None and stage not in STAGES:
        raise UnknownMethodError(f"unknown stage {stage!r}; stages are {list(STAGES)}")
    return [m for s in stages for m in _stage_methods(s)]


def get(stage: str, name: str) -> Method:
    """The method registered under ``name`` for ``stage``; a clear error naming the choices."""
    found = {m.name: m for m in methods(stage)}
    if name not in found:
        raise UnknownMethodError(
            f"unknown {stage} method {name!r}; registered {stage} methods: {sorted(found)}"
        )
    return found[name]
