"""Method code on hand-checked cases (no kfp, no MLflow server)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from distillery.components.core import models
from distillery.components.core.annotators import SimulatedAnnotator
from distillery.components.core.train import accuracy, train_classifier
from distillery.components.distillation.hinton_kd import distil, kd_loss
from distillery.components.evaluation.metrics import classification_metrics
from distillery.components.selection.strategies import (
    EntropySampling,
    MarginSampling,
    RandomSampling,
)
from distillery.components.split.stratified import stratified_split

MNIST_META = {"name": "m", "feature_shape": [1, 28, 28], "classes": [str(i) for i in range(10)],
              "value_range": [0, 255]}

PROBS = np.array([
    [0.98, 0.01, 0.01],   # confident
    [0.34, 0.33, 0.33],   # most uncertain: max entropy, tiny margin
    [0.50, 0.49, 0.01],   # smallest margin, medium entropy
    [0.70, 0.20, 0.10],
])


def test_entropy_scores_and_order():
    picked, scores = EntropySampling().select(PROBS, 2)
    expected = -(PROBS * np.log(PROBS)).sum(1)
    np.testing.assert_allclose(scores, expected)
    assert list(picked) == [1, 3]  # H = 1.099, 0.802 (row 3) > 0.742 (row 2) > 0.112


def test_margin_scores_and_order():
    picked, scores = MarginSampling().select(PROBS, 2)
    np.testing.assert_allclose(scores, -np.array([0.97, 0.01, 0.01, 0.5]))
    assert set(picked) == {1, 2}  # tie at margin 0.01, broken at random
    assert 0 not in MarginSampling().select(PROBS, 3)[0]


def test_random_is_distinct_and_reproducible_per_seed():
    probs = np.full((500, 10), 0.1)
    a, _ = RandomSampling(seed=3).select(probs, 100)
    b, _ = RandomSampling(seed=3).select(probs, 100)
    c, _ = RandomSampling(seed=4).select(probs, 100)
    assert len(set(a)) == 100 and list(a) == list(b) and list(a) != list(c)


@pytest.mark.parametrize("probs, batch, message", [
    (PROBS, 5, "batch_size must be between 1 and the pool size 4"),
    (np.empty((0, 3)), 1, "the unlabelled pool is empty"),
    (np.array([[np.nan, 0.5], [0.5, 0.5]]), 1, "probs contain 1 NaN or infinite values"),
    (np.array([0.5, 0.5]), 1, "probs must be (N, K)"),
])
def test_selection_bad_input(probs, batch, message):
    with pytest.raises(ValueError) as err:
        EntropySampling().select(probs, batch)
    assert message in str(err.value)


def test_simulated_annotator_reveals_labels_and_rejects_unknown_rows():
    annotator = SimulatedAnnotator(np.array([3, 1, 4]))
    assert list(annotator.annotate(np.array([2, 0]))) == [4, 3]
    with pytest.raises(IndexError):
        annotator.annotate(np.array([3]))


def test_stratified_split_is_disjoint_complete_and_stratified():
    labels = np.repeat(np.arange(10), 50)
    test, pool, seed = stratified_split(labels, 0.2, 20, seed=0)
    assert len(test) == 100 and len(seed) == 20 and len(pool) == 380
    assert not set(test) & set(pool) and not set(test) & set(seed) and not set(pool) & set(seed)
    assert np.bincount(labels[seed]).tolist() == [2] * 10
    assert np.bincount(labels[test]).tolist() == [10] * 10
    with pytest.raises(ValueError, match="seed_labels must be at least the number of classes"):
        stratified_split(labels, 0.2, 5, seed=0)


def test_kd_loss_matches_its_formula():
    torch.manual_seed(0)
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, -1, -1, 3])
    T, alpha = 4.0, 0.1
    kl = (torch.softmax(t / T, -1) * (torch.log_softmax(t / T, -1) - torch.log_softmax(s / T, -1))).sum(-1) * T * T
    ce = torch.nn.functional.cross_entropy(s, y.clamp(min=0), reduction="none")
    labelled = y >= 0
    expected = torch.where(labelled, alpha * ce + (1 - alpha) * kl, kl).mean()
    torch.testing.assert_close(kd_loss(s, t, y, T, alpha), expected)
    # alpha = 1 on a fully labelled batch is plain cross-entropy
    torch.testing.assert_close(kd_loss(s, t, y.clamp(min=0), T, 1.0),
                               torch.nn.functional.cross_entropy(s, y.clamp(min=0)))


def test_student_is_at_least_10x_smaller_than_teacher():
    teacher = models.build("small_cnn", MNIST_META, channels=16, hidden=256)
    student = models.build("mlp", MNIST_META, hidden=40)
    assert models.count_parameters(teacher) >= 10 * models.count_parameters(student)


def test_kd_student_learns_from_teacher_on_digits():
    """On scikit-learn's 8x8 digits, a student distilled over the unlabelled pool from a teacher
    trained on 150 labels beats the same student trained on those 150 labels alone."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target
    meta = {"name": "digits", "feature_shape": [1, 8, 8], "classes": [str(i) for i in range(10)],
            "value_range": [0, 16]}
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    test, labelled, pool = order[:400], order[400:550], order[550:]
    teacher = train_classifier(x[labelled], y[labelled], meta, "small_cnn", {"channels": 8, "hidden": 64},
                               60, 3e-3, 32, 0)
    alone = train_classifier(x[labelled], y[labelled], meta, "mlp", {"hidden": 16}, 60, 3e-3, 32, 0)
    student = distil(teacher, models.build("mlp", meta, hidden=16), x[labelled], y[labelled], x[pool],
                     temperature=4.0, alpha=0.1, epochs=60, lr=3e-3, batch_size=64, seed=0)
    acc = {name: accuracy(m, x[test], y[test]) for name, m in [("teacher", teacher), ("alone", alone), ("kd", student)]}
    assert acc["teacher"] > 0.85, acc
    assert acc["kd"] > acc["alone"], acc


def test_distil_rejects_mismatched_class_counts():
    teacher = models.build("mlp", {**MNIST_META, "classes": list("abc")})
    student = models.build("mlp", MNIST_META)
    with pytest.raises(ValueError, match="teacher has 3 classes but the student 10"):
        distil(teacher, student, np.zeros((4, 784)), np.zeros(4, dtype=int), np.zeros((0, 784)),
               temperature=4, alpha=0.1, epochs=1, lr=1e-3, batch_size=2, seed=0)


def test_classification_metrics_on_a_hand_checked_case():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([0, 1, 1, 0])
    m = classification_metrics(probs, labels, ece_bins=10)
    assert m["accuracy"] == pytest.approx(0.75)
    # class 0: precision 2/3, recall 1 -> F1 0.8; class 1: precision 1, recall 0.5 -> F1 2/3
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    # bins: conf 0.9 (acc 1), 0.8 (acc 0), 0.7 (acc 1), 0.6 (acc 1): ECE = (0.1 + 0.8 + 0.3 + 0.4) / 4
    assert m["ece"] == pytest.approx(0.4)


def test_model_roundtrip(tmp_path):
    model = models.build("small_cnn", MNIST_META)
    models.save(model, tmp_path / "m.pt", "small_cnn", MNIST_META, {})
    x = torch.rand(3, 784) * 255
    torch.testing.assert_close(models.load(str(tmp_path / "m.pt"))(x), model.eval()(x))
