"""Counting the training compute a benchmark row really spends: optimiser steps and FLOPs.

A row's count covers everything that runs while it is open: the student's training, every teacher
forward pass the method makes, and anything a method trains on the side (PROD's re-trained teacher
chain, FitNets' regressors). Nothing is derived from a method's settings, so a method that spends more
than its budget shows it.

* **Steps**: every ``torch.optim.Optimizer.step`` call (torch's global step hook), whatever optimiser.
* **FLOPs**: every ``nn.Linear`` and ``nn.Conv2d`` call (torch's global forward hook), ``2 x`` the
  multiply-adds of its output; a call whose weights take gradients counts ``3 x`` that (the backward
  pass computes the gradients of the input and of the weights, about twice the forward's work), one
  under ``no_grad`` or with frozen weights ``1 x`` (the frozen layers' input gradient, where one is
  needed, is left out: a conservative count). Normalisations, activations and pooling are left out:
  on these models they are a few per cent of the convolutions' work.

Why not ``torch.utils.flop_counter.FlopCounterMode``: it dispatches every operator through Python,
which slows these small CPU models several-fold over a 45-epoch row; two hooks per layer call cost
microseconds.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Compute:
    """What a row spent: optimiser steps and training FLOPs (forward and backward passes)."""

    steps: int = 0
    flops: float = 0.0

    def as_dict(self) -> dict:
        return {"steps": self.steps, "flops": self.flops}


def layer_flops(module, output) -> float:
    """``2 x`` multiply-adds of one ``nn.Linear`` or ``nn.Conv2d`` call with this ``output``."""
    from torch import nn

    if isinstance(module, nn.Linear):
        return 2.0 * output.numel() * module.in_features
    kernel = module.kernel_size[0] * module.kernel_size[1]
    return 2.0 * output.numel() * (module.in_channels // module.groups) * kernel


@contextmanager
def counting():
    """Count steps and FLOPs of everything run inside the block (one process, one row at a time)."""
    import torch
    from torch import nn
    from torch.optim.optimizer import register_optimizer_step_post_hook

    spent = Compute()

    def on_forward(module, _inputs, output) -> None:
        if isinstance(module, (nn.Linear, nn.Conv2d)) and isinstance(output, torch.Tensor):
            trained = torch.is_grad_enabled() and module.weight.requires_grad
            spent.flops += layer_flops(module, output) * (3 if trained else 1)

    def on_step(_optimiser, _args, _kwargs) -> None:
        spent.steps += 1

    forward_hook = nn.modules.module.register_module_forward_hook(on_forward)
    step_hook = register_optimizer_step_post_hook(on_step)
    try:
        yield spent
    finally:
        forward_hook.remove()
        step_hook.remove()
