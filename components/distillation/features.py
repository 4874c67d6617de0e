"""Intermediate features of any model, by module name, through forward hooks.

Feature distillation (FitNets, LEAD) needs a model's hidden activations. Forward hooks on named
modules read them without rewriting the model (no architecture-specific surgery), so the same code
serves every architecture of the model zoo. A module called more than once in one forward pass
reports its last call.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules import activation, pooling

from distillery.components.core.devices import model_device

# What counts as a "layer output" by default: the output of a nonlinearity or a pooling (the end of
# a block). Softmax-like modules produce probabilities, not features; MultiheadAttention returns tuples.
_NOT_FEATURES = (nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d, nn.MultiheadAttention, nn.GLU)

def _module_classes(module) -> tuple[type, ...]:
    return tuple(cls for cls in vars(module).values()
                 if isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__ == module.__name__
                 and not issubclass(cls, _NOT_FEATURES) and not cls.__name__.startswith("_"))


ACTIVATIONS = _module_classes(activation)
FEATURE_MODULES = ACTIVATIONS + _module_classes(pooling)


def _leaves(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if name and not any(True for _ in m.children())}


def execution_order(model: nn.Module, num_features: int) -> list[str]:
    """Names of ``model``'s leaf modules in the order one forward pass of ``(1, num_features)``
    zeros calls them (registration order can differ from execution order in custom modules)."""
    order: list[str] = []
    handles = [m.register_forward_hook(lambda mod, inp, out, name=name: order.append(name))
               for name, m in _leaves(model).items()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, num_features, device=model_device(model)))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return list(dict.fromkeys(order))  # first call decides the position


def feature_layers(model: nn.Module, num_features: int) -> list[str]:
    """Default candidate layers, shallow to deep: the outputs of every activation and pooling module.

    A model without such modules falls back to its parameterised leaf modules except the last (the
    classifier, whose output is the logits).
    """
    leaves = _leaves(model)
    order = execution_order(model, num_features)
    found = [n for n in order if isinstance(leaves[n], FEATURE_MODULES)]
    if not found:
        found = [n for n in order if any(True for _ in leaves[n].parameters(recurse=False))][:-1]
    if not found:
        raise ValueError(f"{type(model).__name__} has no intermediate layer to take features from")
    return found


def middle_layer(model: nn.Module, num_features: int) -> str:
    """The middle one of :func:`feature_layers` (FitNets' choice of hint and guided layer)."""
    layers = feature_layers(model, num_features)
    return layers[(len(layers) - 1) // 2]


def check_layers(model: nn.Module, names: Sequence[str], role: str) -> list[str]:
    """``names`` if each is a module of ``model``; else a ``ValueError`` listing the valid names."""
    known = dict(model.named_modules())
    missing = [n for n in names if not n or n not in known]
    if missing:
        raise ValueError(f"the {role} has no module(s) {missing}; its modules are {[n for n in known if n]}")
    return list(names)


@contextmanager
def capture(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every forward pass of ``model`` stores the outputs of the modules named
    ``names`` in the yielded dict (name -> tensor, the autograd graph kept); hooks go on exit."""
    modules = dict(model.named_modules())
    check_layers(model, names, "model")
    outputs: dict[str, torch.Tensor] = {}

    def store(name: str):
        def hook(module, inputs, output):
            outputs[name] = output
        return hook

    handles = [modules[n].register_forward_hook(store(n)) for n in dict.fromkeys(names)]
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


def feature_shapes(model: nn.Module, names: Sequence[str], num_features: int) -> dict[str, tuple[int, ...]]:
    """Per-item output shape of each named module for a ``(1, num_features)`` input."""
    was_training = model.training
    model.eval()
    try:
        with capture(model, names) as out, torch.no_grad():
            model(torch.zeros(1, num_features, device=model_device(model)))
    finally:
        model.train(was_training)
    return {n: tuple(out[n].shape[1:]) for n in names}
