"""Model fusion: the weight average of models fine-tuned from one base, used as the new base.

Choshen, Venezian, Slonim, Katz, "Fusing finetuned models for better pretraining", arXiv:2204.03044,
2022. The training method ``fusion`` (:func:`distillery.components.training.collaborative.fusion`)
fine-tunes copies of a base on different subsets of the labelled set and fuses them with
:func:`fuse_finetuned`.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn


def fuse_state_dicts(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating tensors over ``states`` (accumulated in float64, cast back).

    Non-floating entries (counters, index buffers) must be equal in every model and are kept.

    Raises:
        ValueError: no models, or a model whose keys or shapes differ from model 0's (named).
    """
    if not states:
        raise ValueError("fusion needs at least one model")
    first = states[0]
    for i, state in enumerate(states[1:], start=1):
        if set(state) != set(first):
            raise ValueError(f"model {i}'s keys differ from model 0's: "
                             f"{sorted(set(state) ^ set(first))[:5]}")
        for key, tensor in state.items():
            if tensor.shape != first[key].shape:
                raise ValueError(f"model {i}'s {key} has shape {tuple(tensor.shape)}, "
                                 f"model 0's {tuple(first[key].shape)}")
    fused = {}
    for key, tensor in first.items():
        if tensor.is_floating_point():
            fused[key] = torch.stack([s[key].double() for s in states]).mean(0).to(tensor.dtype)
        elif any(not torch.equal(s[key], tensor) for s in states):
            raise ValueError(f"non-floating entry {key} differs between models; cannot average it")
        else:
            fused[key] = tensor.clone()
    return fused


def fuse(models: Sequence[nn.Module]) -> nn.Module:
    """A copy of ``models[0]`` holding the average of every model's weights (Choshen et al. 2022)."""
    fused = copy.deepcopy(models[0])
    fused.load_state_dict(fuse_state_dicts([m.state_dict() for m in models]))
    return fused.eval()


def fuse_finetuned(base: nn.Module, finetune: Callable[[nn.Module, int], nn.Module],
                   n_models: int) -> tuple[nn.Module, list[nn.Module]]:
    """Fine-tune ``n_models`` copies of ``base`` (``finetune(copy, index)``, e.g. on different data) and
    fuse them: the fused model is the new base. Returns ``(fused, finetuned)``."""
    if n_models < 1:
        raise ValueError(f"n_models must be >= 1, got {n_models}")
    finetuned = [finetune(copy.deepcopy(base), i) for i in range(n_models)]
    return fuse(finetuned), finetuned
