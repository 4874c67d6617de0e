"""Each registered method's KFP component, derived from its stage's component: the one mechanism.

A stage has one component per signature (``components/<stage>/component.py``), whose first input is
the method's name. The component of one method is a copy of it named after the method
(``train-small-cnn``, so the compiled spec and the KFP UI show which method a task runs) with its
``method`` input defaulting to that name. Adding a method therefore means writing its code and a
registry entry; no adapter is written or copied.
"""
from __future__ import annotations

import copy
from functools import cache

from distillery.components.core import registry


@cache
def method_component(stage: str, name: str):
    """The KFP component that runs ``stage`` method ``name`` (an :class:`UnknownMethodError` if unregistered)."""
    from kfp.dsl.python_component import PythonComponent

    method = registry.get(stage, name)
    base = registry.stage_component(stage)
    spec = copy.deepcopy(base.component_spec)
    spec.name = registry.task_name(stage, method.name).replace("_", "-")
    spec.inputs["method"].default = method.name
    spec.inputs["method"].optional = True
    return PythonComponent(component_spec=spec, python_func=base.python_func)
