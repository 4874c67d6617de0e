"""Method registries: every method is looked up by (stage, name), never wired by hand.

Each stage package declares its methods in ``METHODS`` as :class:`Method` records. A record names
the method code and its KFP adapter by import path, so listing methods (``distillery methods``)
and validating a config import neither torch nor kfp.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

STAGES = ("curation", "curation_step", "split", "selection", "labelling", "training", "distillation", "dataset_distillation",
          "evaluation")


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
        target: ``"module:attr"`` of the method code (plain Python, CPU-testable).
        component: ``"module:attr"`` of its KFP component (a thin adapter).
        defaults: default parameters; a config's ``params`` override them key by key.
        standalone: the component is not a pipeline stage's slot (its inputs differ, e.g. the
            backdoor audit of a distilled dataset): it runs on its own, and a config cannot name it.
    """

    stage: str
    name: str
    paper: str
    summary: str
    target: str
    component: str
    defaults: dict[str, Any] = field(default_factory=dict)
    standalone: bool = False

    def load(self) -> Any:
        return _import(self.target)

    def load_component(self) -> Any:
        return _import(self.component)

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


_VERBS = {"curation": "curate", "curation_step": "curate", "split": "split", "selection": "select", "labelling": "label",
          "training": "train", "distillation": "distil", "dataset_distillation": "distil-data",
          "evaluation": "evaluate"}


def task_name(stage: str, method: str, round_index: int | None = None) -> str:
    """The name a task carries in the pipeline and in MLflow, e.g. ``round-2-select-entropy``."""
    name = f"{_VERBS[stage]}-{method}"
    return name if round_index is None else f"round-{round_index}-{name}"


def _import(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def _stage_methods(stage: str) -> list[Method]:
    # annotators live beside the selection strategies; splitting and curation steps beside curation;
    # dataset distillation beside (model) distillation
    package = {"labelling": "selection", "split": "curation", "curation_step": "curation",
               "dataset_distillation": "distillation"}.get(stage, stage)
    return [m for m in importlib.import_module(f"components.{package}").METHODS if m.stage == stage]


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
