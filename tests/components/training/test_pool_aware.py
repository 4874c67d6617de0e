"""Pool-aware training (FixMatch, mean teacher): the formulas, the augmentations, and that the
unlabelled pool is what makes the difference on digits."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from distillery.components.core import models
from distillery.components.core.train import accuracy, train_classifier
from distillery.components.training import pool_aware
from distillery.components.training.augment import TABLE_DROPOUT, Augmenter

DIGITS_META = {"name": "digits", "feature_shape": [1, 8, 8], "classes": [str(i) for i in range(10)],
               "value_range": [0, 16]}


def test_fixmatch_loss_keeps_only_confident_pseudo_labels():
    labelled = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2])
    weak = torch.tensor([[5.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, 6.0]])  # confident, not, confident
    strong = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    loss, mask = pool_aware.fixmatch_loss(labelled, labels, weak, strong, threshold=0.95, lambda_u=2.0)

    def ce(logits, target):
        p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        return -np.log(p[target])

    assert mask.tolist() == [1.0, 0.0, 1.0]
    supervised = (ce(labelled[0].numpy(), 0) + ce(labelled[1].numpy(), 2)) / 2
    unsupervised = (ce(strong[0].numpy(), 0) + 0.0 + ce(strong[2].numpy(), 2)) / 3  # mean over all U items
    assert loss.item() == pytest.approx(supervised + 2.0 * unsupervised, rel=1e-5)


def test_fixmatch_pseudo_labels_carry_no_gradient():
    weak = torch.tensor([[5.0, 0.0]], requires_grad=True)
    strong = torch.tensor([[0.0, 1.0]], requires_grad=True)
    loss, _ = pool_aware.fixmatch_loss(torch.zeros(1, 2), torch.tensor([0]), weak, strong, 0.5, 1.0)
    loss.backward()
    assert weak.grad is None or torch.all(weak.grad == 0)
    assert strong.grad.abs().sum() > 0


def test_consistency_loss_is_the_squared_probability_gap_without_teacher_gradient():
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 0.0], [3.0, 0.0]], requires_grad=True)
    loss = pool_aware.consistency_loss(student, teacher)
    expected = ((student.softmax(-1) - teacher.softmax(-1)) ** 2).sum(-1).mean()
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


def test_ema_update_moves_the_teacher_by_one_minus_decay_and_copies_buffers():
    torch.manual_seed(0)
    student, teacher = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        student.weight.fill_(1.0), teacher.weight.fill_(3.0)
        student.running_mean.fill_(7.0)
    pool_aware.ema_update(teacher, student, decay=0.75)
    assert torch.allclose(teacher.weight, torch.full((3,), 0.75 * 3.0 + 0.25 * 1.0))
    assert torch.equal(teacher.running_mean, student.running_mean)


def test_rampup_rises_from_exp_minus_five_to_one():
    assert pool_aware.rampup(0, 10) == pytest.approx(np.exp(-5))
    assert pool_aware.rampup(5, 10) == pytest.approx(np.exp(-5 * 0.25))
    assert pool_aware.rampup(10, 10) == pool_aware.rampup(99, 10) == 1.0
    assert pool_aware.rampup(3, 0) == 1.0


def test_image_views_stay_in_range_and_strong_views_differ_more():
    x = torch.as_tensor(load_digits().data[:64], dtype=torch.float32)
    augment = Augmenter(DIGITS_META, x, seed=0)
    weak, strong = augment.weak(x), augment.strong(x)
    assert weak.shape == strong.shape == x.shape
    assert weak.min() >= -1e-4 and weak.max() <= 16 + 1e-4 and strong.min() >= 0 and strong.max() <= 16
    assert (strong - x).abs().mean() > (weak - x).abs().mean() > 0


def test_table_views_add_scaled_noise_and_drop_features_to_their_mean():
    x = torch.randn(2000, 10) * torch.arange(1, 11) + 5
    augment = Augmenter({"feature_shape": [10], "classes": ["a", "b"]}, x, seed=0)
    weak = augment.weak(x)
    assert torch.allclose((weak - x).std(0) / x.std(0), torch.full((10,), 0.05), atol=0.01)
    strong = augment.strong(x)
    near_mean = ((strong - x.mean(0)).abs() < 0.7 * x.std(0)).float().mean()
    assert near_mean > TABLE_DROPOUT  # the dropped features sit at their mean (plus noise)


def test_bad_parameters_are_refused_before_training():
    x, y = np.zeros((4, 64), np.float32), np.arange(4)
    with pytest.raises(ValueError, match="threshold must be in"):
        pool_aware.fixmatch(x, y, DIGITS_META, "mlp", {}, 1, 1e-3, 2, 0, unlabelled=x, threshold=1.5,
                            lambda_u=1.0, mu=1)
    with pytest.raises(ValueError, match="need mu >= 1"):
        pool_aware.mean_teacher(x, y, DIGITS_META, "mlp", {}, 1, 1e-3, 2, 0, unlabelled=x, lambda_u=1.0, mu=0,
                                ema_decay=0.9, rampup_fraction=0.3)


def test_the_pool_makes_fixmatch_beat_supervised_training_on_digits():
    """40 labels of digits, MLP: FixMatch over the rest of the pool beats the same model trained on
    the labels alone, averaged over seeds; with the unlabelled term switched off (lambda_u = 0) the
    gain is gone, so the margin comes from the pool."""
    torch.set_num_threads(1)
    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target
    scores = {"supervised": [], "fixmatch": [], "no_pool_term": []}
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(y))
        test, labelled, pool = order[:500], order[500:540], order[540:]
        kwargs = dict(unlabelled=x[pool], threshold=0.8, mu=3)
        runs = {"supervised": train_classifier(x[labelled], y[labelled], DIGITS_META, "mlp", {"hidden": 64}, 60,
                                               3e-3, 32, seed),
                "fixmatch": pool_aware.fixmatch(x[labelled], y[labelled], DIGITS_META, "mlp", {"hidden": 64}, 60,
                                                3e-3, 32, seed, lambda_u=1.0, **kwargs),
                "no_pool_term": pool_aware.fixmatch(x[labelled], y[labelled], DIGITS_META, "mlp", {"hidden": 64},
                                                    60, 3e-3, 32, seed, lambda_u=0.0, **kwargs)}
        for name, model in runs.items():
            scores[name].append(accuracy(model, x[test], y[test]))
    mean = {name: float(np.mean(values)) for name, values in scores.items()}
    assert mean["fixmatch"] >= mean["supervised"] + 0.04, mean
    assert mean["fixmatch"] >= mean["no_pool_term"] + 0.04, mean


def test_mean_teacher_returns_the_averaged_teacher_in_eval_mode():
    digits = load_digits()
    x, y = digits.data[:200].astype(np.float32), digits.target[:200]
    model = pool_aware.mean_teacher(x[:30], y[:30], DIGITS_META, "mlp", {"hidden": 16, "dropout": 0.5}, 2, 3e-3, 10,
                                    0, unlabelled=x[30:], lambda_u=1.0, mu=2, ema_decay=0.9, rampup_fraction=0.3)
    assert not model.training and all(p.requires_grad for p in model.parameters())
    fresh = models.build("mlp", DIGITS_META, hidden=16, dropout=0.5).state_dict()
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in fresh.items()}
