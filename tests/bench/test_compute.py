"""The compute counter behind the distillation benchmark's steps and FLOPs columns (benchmarks/_compute.py)."""
import torch
from torch import nn

from benchmarks import _compute


def test_counts_a_training_step_as_three_forward_passes_and_one_step():
    model = nn.Linear(10, 5)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    with _compute.counting() as spent:
        model(torch.randn(8, 10)).sum().backward()
        optimiser.step()
    assert spent.steps == 1
    assert spent.flops == 3 * 2 * 8 * 5 * 10


def test_counts_a_frozen_or_no_grad_forward_once_and_nothing_outside_the_block():
    conv = nn.Conv2d(4, 8, 3, groups=2, padding=1)
    x = torch.randn(2, 4, 6, 6)
    with _compute.counting() as spent:
        with torch.no_grad():
            conv(x)
    conv(x)  # after the block: not counted
    # output 2 x 8 x 6 x 6 elements, each (4 / 2) x 3 x 3 multiply-adds
    assert spent.flops == 2 * (2 * 8 * 6 * 6) * (2 * 9) and spent.steps == 0
    frozen = nn.Linear(3, 2).requires_grad_(False)
    with _compute.counting() as spent:
        frozen(torch.randn(4, 3))
    assert spent.flops == 2 * 4 * 2 * 3


def test_nested_models_count_every_layer_they_run():
    """A teacher's forward pass inside a student's training (what distillation does) counts too."""
    teacher, student = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3)), nn.Linear(6, 3)
    x = torch.randn(5, 6)
    with _compute.counting() as spent:
        with torch.no_grad():
            target = teacher(x)
        (student(x) - target).pow(2).mean().backward()
    assert spent.flops == 2 * 5 * (6 * 6 + 3 * 6) + 3 * 2 * 5 * 3 * 6
