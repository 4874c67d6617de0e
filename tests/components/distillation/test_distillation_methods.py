"""Student-distillation methods (Hinton KD, FitNets, LEAD, PROD) on a small MNIST slice.

One small CNN teacher is trained once on 1,000 labelled images; every method distils it into a
student over those and 1,000 unlabelled ones for two epochs and must make the student agree with
the teacher on 1,000 held-out images far above an untrained student. The mechanisms are checked
one by one: FitNets' regressor shapes, LEAD's layer pairing and weights, PROD's hard subset and
forgetting guard, and the compatibility check before any optimiser step. LEAD also runs through
the distillation task body against a real SQLite MLflow store.

The shared agreement threshold would pass a method whose own term is broken (KD alone reaches it),
so each method's own term is also checked where only it acts: Hinton KD's term teaches from the pool
alone, FitNets' hint stage fits the regressor to the hint, LEAD's layer term trains the student's
layers and aligns their scores beyond KD, PROD's guard and hard-subset stage change the student.
The design choices that are parameters (PROD's ``stage_budget``, ``pad_hard``, ``continue_optimiser``,
LEAD's ``layer_vectors``) are checked to do what they say and to refuse bad values.
"""
from __future__ import annotations

import copy
import inspect
import json

import numpy as np
import pytest
import torch
from conftest import ROOT, task_context
from torch.nn import functional as F

from distillery.components.core import models, registry
from distillery.components.core.datasets import LabelledData, save_arrays, save_labelled
from distillery.components.core.train import cross_entropy, fit, train_classifier
from distillery.components.distillation import features, fitnets, hinton_kd, lead, prod
from distillery.components.distillation.common import check_compatible, logits_of
from distillery.components.distillation.tasks import method_params, run_distillation

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MNIST = ROOT / "data" / "mnist"
META = json.loads((MNIST / "dataset.json").read_text())
X, Y = np.load(MNIST / "features.npy").astype(np.float32), np.load(MNIST / "labels.npy")
ORDER = np.random.default_rng(0).permutation(len(Y))  # the files are sorted by label
LABELLED, POOL, HELD_OUT = ORDER[:1000], ORDER[1000:2000], ORDER[2000:3000]
TEACHER = {"channels": 8, "hidden": 64}
TINY_CNN = {"channels": 4, "hidden": 20}  # ~8.4k parameters, five feature layers like the teacher
STUDENT_METHODS = ["hinton_kd", "fitnets", "lead", "prod"]
QUICK = {"epochs": 3, "hint_epochs": 1, "chain_epochs": 2, "hard_epochs": 1}  # 3: one per PROD stage


@pytest.fixture(scope="module")
def teacher():
    model = train_classifier(X[LABELLED], Y[LABELLED], META, "small_cnn", TEACHER, 3, 2e-3, 64, 0)
    assert accuracy(model) > 0.7  # a quickly trained but useful teacher
    return model


def predictions(model) -> np.ndarray:
    return models.predict_proba(model, X[HELD_OUT]).argmax(-1).numpy()


def agreement(a, b) -> float:
    return float((predictions(a) == predictions(b)).mean())


def accuracy(model) -> float:
    return float((predictions(model) == Y[HELD_OUT]).mean())


def student(arch: str = "mlp", seed: int = 1):
    torch.manual_seed(seed)
    return models.build(arch, META, **(TINY_CNN if arch == "small_cnn" else {}))


def run_method(name: str, teacher, model, **overrides):
    """The method as the task calls it: registry defaults, overridden, minus student-architecture keys."""
    entry = registry.get("distillation", name)
    quick = {k: v for k, v in QUICK.items() if k in entry.defaults}
    params = method_params(entry.resolve_params({**quick, **overrides}))
    losses = []
    trained = entry.load()(teacher, model, X[LABELLED], Y[LABELLED], X[POOL], seed=0,
                           on_epoch=lambda epoch, loss: losses.append((epoch, loss)), **params)
    return trained, losses


@pytest.mark.parametrize("name", STUDENT_METHODS)
def test_every_method_makes_the_student_agree_with_the_teacher(name, teacher):
    untrained = student("mlp")
    before = agreement(untrained, teacher)
    trained, losses = run_method(name, teacher, student("mlp"))
    assert before < 0.3  # an untrained student agrees about by chance
    assert agreement(trained, teacher) > 0.6, (name, agreement(trained, teacher))
    epochs = [e for e, _ in losses]
    assert epochs == list(range(len(epochs))) and len(epochs) >= QUICK["epochs"]  # one count across stages
    assert all(np.isfinite(loss) for _, loss in losses)


@pytest.mark.parametrize("name", STUDENT_METHODS)
def test_mismatched_models_are_refused_before_any_optimiser_step(name, teacher, monkeypatch):
    steps = []
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: steps.append(1))
    three_classes = models.build("mlp", {**META, "classes": list("abc")})
    with pytest.raises(ValueError, match="teacher has 3 classes but the student 10"):
        run_method(name, three_classes, student("mlp"))
    digits_student = models.build("mlp", {**META, "feature_shape": [1, 8, 8]})  # 64 input features
    with pytest.raises(ValueError, match="student does not accept inputs of 784 features"):
        run_method(name, teacher, digits_student)
    assert steps == []


def test_check_compatible_names_the_dataset_the_chain_and_bad_labels(teacher):
    tiny = student("mlp")
    assert check_compatible(teacher, tiny, 784, 10) == 10
    with pytest.raises(ValueError, match="dataset has 12 classes but the teacher 10"):
        check_compatible(teacher, tiny, 784, 12)
    three = models.build("mlp", {**META, "classes": list("abc")})
    with pytest.raises(ValueError, match="teacher 1 has 10 classes but the teacher 0 3"):
        check_compatible([three, teacher], tiny, 784)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        check_compatible(teacher, tiny, 784, labels=np.array([0, 10]))


@pytest.mark.parametrize("guided_arch, hint_arch", [("small_cnn", "small_cnn"), ("mlp", "small_cnn"),
                                                    ("small_cnn", "mlp"), ("repghost", "small_cnn")])
def test_fitnets_regressor_maps_every_guided_layer_to_the_hint_shape(guided_arch, hint_arch):
    guided_model, hint_model = student(guided_arch), models.build(hint_arch, META)
    hints = features.feature_shapes(hint_model, features.feature_layers(hint_model, 784), 784)
    guided = features.feature_shapes(guided_model, features.feature_layers(guided_model, 784), 784)
    for g_shape in guided.values():
        for h_shape in hints.values():
            regressor = fitnets.make_regressor(g_shape, h_shape, torch.nn.ReLU())
            assert regressor(torch.rand(3, *g_shape)).shape == (3, *h_shape)
            if len(g_shape) == len(h_shape) == 3:
                # the paper's convolutional regressor, or up-sampling and a 1x1 conv: never a dense
                # map of two flattened feature maps, which can outweigh the student many times over
                assert not any(isinstance(m, torch.nn.Linear) for m in regressor.modules())
                assert (models.count_parameters(regressor)
                        <= g_shape[0] * h_shape[0] * g_shape[1] * g_shape[2] + h_shape[0])


def test_fitnets_hint_stage_fits_the_hint_then_kd_trains_the_classifier(teacher):
    trained, losses = run_method("fitnets", teacher, student("small_cnn"), hint_epochs=2, epochs=2)
    hint_losses, kd_losses = [loss for _, loss in losses[:2]], [loss for _, loss in losses[2:]]
    assert hint_losses[1] < hint_losses[0] and kd_losses[1] < kd_losses[0]
    assert agreement(trained, teacher) > 0.5
    with pytest.raises(ValueError, match=r"student has no module\(s\) \['nope'\]"):
        run_method("fitnets", teacher, student("mlp"), guided_layer="nope")


def test_lead_pairing_is_sorted_paired_in_order_and_redrawn_every_k_steps():
    pairing = lead.LayerPairing(list("abcde"), list("vwxyz"), k=2, redraw_every=3, seed=0)
    drawn = [pairing.step() for _ in range(10)]
    assert pairing.draws == 4  # steps 0, 3, 6, 9
    for block in (drawn[0:3], drawn[3:6], drawn[6:9]):
        assert block[0] == block[1] == block[2]
    for pairs in drawn:
        assert len(pairs) == 2
        teachers, students = zip(*pairs)
        assert list(teachers) == sorted(teachers) and list(students) == sorted(students)  # depth order
    assert len({tuple(p) for p in drawn}) > 1  # the draws differ
    assert lead.LayerPairing(list("ab"), list("vwxyz"), k=5, redraw_every=1, seed=0).k == 2


def test_lead_weights_follow_the_teacher_layer_losses(teacher):
    model = student("small_cnn")
    pairing = lead.LayerPairing(features.feature_layers(teacher, 784), features.feature_layers(model, 784),
                                k=5, redraw_every=1, seed=0)
    objective = lead.LeadObjective(teacher, model, pairing, temperature=4.0, alpha=0.1, layer_temperature=10.0,
                                   similarity_temperature=0.1)
    x, y = torch.as_tensor(X[LABELLED[:64]]), torch.as_tensor(Y[LABELLED[:64]])
    with objective.hooks():
        loss = objective(model, x, y)
    loss.backward()
    record = objective.last
    assert [t for t, _ in record.pairs] == features.feature_layers(teacher, 784)  # K = 5 of 5: all, in order
    assert not record.weights.requires_grad
    assert float(record.weights.sum()) == pytest.approx(1.0)
    assert torch.allclose(record.weights, torch.softmax(-record.teacher_losses / 10.0, 0))
    assert torch.equal(torch.argsort(record.weights), torch.argsort(-record.teacher_losses))
    assert float(record.teacher_losses.max() - record.teacher_losses.min()) > 0.05  # layers do differ
    assert all(p.grad is not None for p in model.parameters())  # every student layer gets a gradient


def test_lead_layer_measures_match_their_formulas():
    h = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    scores = lead.similarity_logits(h, 0.5)
    cos = F.normalize(h, dim=1) @ F.normalize(h, dim=1).T / 0.5
    off = ~torch.eye(4, dtype=torch.bool)
    assert torch.allclose(scores[off], cos[off]) and bool((scores.diagonal() < -1e8).all())
    p = torch.softmax(scores, -1)
    assert torch.allclose(p.diagonal(), torch.zeros(4))
    classes = torch.tensor([0, 0, 1, 1])
    expected = -torch.log(torch.stack([p[0, 1], p[1, 0], p[2, 3], p[3, 2]])).mean()
    assert torch.allclose(lead.neighbour_loss(scores, classes), expected)
    other = lead.similarity_logits(torch.rand(4, 3), 0.5)
    q = torch.softmax(other, -1)
    kl = sum(p[i, j] * torch.log(p[i, j] / q[i, j]) for i in range(4) for j in range(4) if i != j) / 4
    assert torch.allclose(lead.layer_kl(scores, other), kl, atol=1e-6)
    assert float(lead.layer_kl(scores, scores)) == pytest.approx(0.0, abs=1e-6)


def test_prod_hard_subset_is_exactly_teacher_right_and_student_wrong(teacher):
    weak = student("mlp")
    rows = prod.hard_subset(teacher, weak, X[HELD_OUT], Y[HELD_OUT])
    expected = np.flatnonzero((predictions(teacher) == Y[HELD_OUT]) & (predictions(weak) != Y[HELD_OUT]))
    assert rows.tolist() == expected.tolist() and 0 < len(rows) < len(HELD_OUT)


def test_prod_guard_is_a_frozen_copy_from_the_start_of_the_stage(teacher):
    model = student("mlp")
    x = torch.as_tensor(X[LABELLED[:256]])
    y = torch.as_tensor(Y[LABELLED[:256]])
    start = {k: v.clone() for k, v in model.state_dict().items()}
    old = prod.distil_stage(model, teacher, x, y, guard=True, temperature=4.0, alpha=0.1, epochs=1, lr=2e-3,
                            batch_size=64, seed=0)
    assert old is not model and not any(p.requires_grad for p in old.parameters())
    assert all(torch.equal(old.state_dict()[k], v) for k, v in start.items())  # unchanged by training
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in start.items())  # the student moved
    # the loss is 0.1·CE + 0.9·T²·KL(teacher‖student) + T²·KL(old‖student)
    s, t, o = torch.randn(5, 10), torch.randn(5, 10), torch.randn(5, 10)
    labels, temp = torch.tensor([1, 2, 3, 4, 5]), 4.0

    def kl(a, b):
        return (F.softmax(a / temp, -1) * (F.log_softmax(a / temp, -1) - F.log_softmax(b / temp, -1))).sum(-1)

    expected = (0.1 * F.cross_entropy(s, labels, reduction="none") + 0.9 * temp ** 2 * kl(t, s)
                + temp ** 2 * kl(o, s)).mean()
    assert torch.allclose(prod.stage_loss(s, t, o, labels, temp, 0.1), expected, atol=1e-5)


def test_prod_builds_its_chain_from_snapshots_of_a_retrained_teacher(teacher):
    chain = prod.teacher_chain(teacher, X[LABELLED], Y[LABELLED], [0.2, 0.5], epochs=6, lr=2e-3, batch_size=64,
                               seed=0)
    assert len(chain) == 3 and chain[-1] is teacher
    assert all(m.state_dict().keys() == teacher.state_dict().keys() for m in chain[:2])
    assert not torch.equal(chain[0].state_dict()["1.0.weight"], teacher.state_dict()["1.0.weight"])
    # snapshots, not one model twice: the second took two more epochs of training than the first
    assert not torch.equal(chain[0].state_dict()["1.0.weight"], chain[1].state_dict()["1.0.weight"])
    assert not any(p.requires_grad for m in chain[:2] for p in m.parameters())
    chain_accuracy = [accuracy(m) for m in chain[:2]]
    assert chain_accuracy[0] <= chain_accuracy[1] + 0.02, chain_accuracy  # increasingly strong (up to noise)
    assert prod.snapshot_epochs([0.2, 0.5], 6) == [1, 3] and prod.snapshot_epochs([0.01, 0.02], 10) == [1, 2]
    # one run: the last snapshot is the re-trained copy after 3 epochs of a single fit
    one_run = fit(prod.reinitialised(teacher, 0), (torch.as_tensor(X[LABELLED]), torch.as_tensor(Y[LABELLED])),
                  cross_entropy, 3, 2e-3, 64, 0)
    assert all(torch.equal(v, chain[1].state_dict()[k]) for k, v in one_run.state_dict().items())
    with pytest.raises(ValueError, match="chain_checkpoints must be ascending fractions"):
        prod.teacher_chain(teacher, X[LABELLED], Y[LABELLED], [0.5, 0.2], epochs=1, lr=1e-3, batch_size=64, seed=0)
    # a given chain is used as it is: two teachers, two stages sharing `epochs` equally
    _, losses = run_method("prod", [chain[0], teacher], student("mlp"), epochs=4, hard_epochs=0)
    assert len(losses) == 4


def test_prod_shares_its_epochs_among_stages_as_the_route_does(teacher, monkeypatch):
    assert prod.stage_epochs(45, [0.07, 0.26, 0.67]) == [3, 12, 30]
    assert prod.stage_epochs(10, [1, 1, 1]) == [4, 3, 3] and prod.stage_epochs(5, [0.01, 0.01, 0.98]) == [1, 1, 3]
    assert all(sum(prod.stage_epochs(n, [0.07, 0.26, 0.67])) == n for n in range(3, 80))
    stages = []
    real_stage = prod.distil_stage
    monkeypatch.setattr(prod, "distil_stage", lambda *a, **k: stages.append(k["epochs"]) or real_stage(*a, **k))
    run_method("prod", teacher, student("mlp"), epochs=10, hard_epochs=0, chain_checkpoints=[0.2, 0.5])
    assert stages == [2, 3, 5]
    steps = []
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: steps.append(1))
    with pytest.raises(ValueError, match="at least one epoch per stage: 2 epochs for 3 stages"):
        run_method("prod", teacher, student("mlp"), epochs=2)
    assert steps == []  # refused before the chain's teachers are trained


def test_prod_pads_a_hard_subset_smaller_than_a_batch_with_other_items():
    hard = np.array([7, 2])
    rows = prod.padded(hard, total=100, batch_size=10, seed=0)
    assert rows[:2].tolist() == [7, 2] and len(rows) == 10 and len(set(rows.tolist())) == 10
    assert set(rows[2:].tolist()) <= set(range(100)) - {7, 2}
    assert rows.tolist() == prod.padded(hard, 100, 10, seed=0).tolist()  # seeded
    assert rows.tolist() != prod.padded(hard, 100, 10, seed=1).tolist()
    assert prod.padded(np.arange(12), 100, 10, seed=0).tolist() == list(range(12))  # a full batch: as it is
    assert sorted(prod.padded(np.array([3, 1]), total=5, batch_size=10, seed=0)) == [0, 1, 2, 3, 4]  # all there are


def test_fit_continues_a_given_optimiser():
    model = student("mlp")
    data = (torch.as_tensor(X[LABELLED[:128]]), torch.as_tensor(Y[LABELLED[:128]]))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    fit(model, data, cross_entropy, 1, 1e-3, 64, 0, optimiser=optimiser)
    fit(model, data, cross_entropy, 1, 1e-3, 64, 1, optimiser=optimiser)
    assert int(optimiser.state[next(model.parameters())]["step"]) == 4  # 2 batches x 2 calls, one Adam


def test_run_distillation_task_logs_and_saves_a_lead_student(tmp_path, teacher):
    import mlflow

    save_labelled(tmp_path / "dataset", LabelledData(X, Y, np.arange(len(Y)), META))
    save_arrays(tmp_path / "splits", test_rows=HELD_OUT, train_rows=np.concatenate([LABELLED, POOL]))
    save_arrays(tmp_path / "labelled", rows=LABELLED, labels=Y[LABELLED])
    models.save(teacher, str(tmp_path / "teacher"), "small_cnn", META, TEACHER)
    params = {"student": "mlp", "student_kwargs": {"hidden": 32}, "epochs": 2, "redraw_every": 5}
    paths = [str(tmp_path / name) for name in ("dataset", "splits", "labelled", "teacher", "student")]
    run_distillation("lead", task_context(tmp_path, ROOT), "run-1", json.dumps(params), *paths)

    trained = models.load(str(tmp_path / "student"))
    assert models.count_parameters(trained) == models.count_parameters(models.build("mlp", META, hidden=32))
    assert agreement(trained, teacher) > 0.6
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tasks").experiment_id
    run = client.search_runs([experiment], filter_string="tags.`distillery.task` = 'distil-lead'")[0]
    assert run.info.status == "FINISHED" and run.data.params["redraw_every"] == "5"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "distillation_loss")] == [0, 1]
    assert run.data.metrics["compression"] == pytest.approx(
        models.count_parameters(teacher) / models.count_parameters(trained))

    # a teacher of another dataset (3 classes): refused before training, the run marked FAILED
    other = {**META, "classes": list("abc")}
    models.save(models.build("mlp", other), paths[3], "mlp", other, {})
    with pytest.raises(ValueError, match="dataset has 10 classes but the teacher 3"):
        run_distillation("lead", task_context(tmp_path, ROOT), "run-2", json.dumps(params),
                         *paths[:4], str(tmp_path / "student-2"))
    assert not (tmp_path / "student-2").exists()
    failed = client.search_runs([experiment], filter_string="tags.`distillery.run_key` = 'run-2'")
    assert {r.info.status for r in failed} == {"FAILED"}


# --------------------------------------------------------------------------------------------------
# each method's own term: the shared agreement threshold above would pass a student trained by any
# of them with its own term broken (KD alone gets there), so every term is checked where only it acts


def held_out_batch(n: int = 256) -> torch.Tensor:
    return torch.as_tensor(X[HELD_OUT[:n]])


def test_hinton_kd_term_carries_the_teachers_signal_where_labels_do_not(teacher, monkeypatch):
    # no labels at all: only the KD term can teach anything
    pool_only = hinton_kd.distil(teacher, student(), X[LABELLED[:0]], Y[LABELLED[:0]], X[POOL], seed=0, epochs=2,
                                 lr=2e-3, batch_size=64)
    assert agreement(pool_only, teacher) > 0.5 > agreement(student(), teacher) + 0.3  # 0.66 vs 0.10 when written
    # 50 labels and the pool, the same steps, with the KD term removed from the loss (CE on the labels only)
    with_kd = hinton_kd.distil(teacher, student(), X[LABELLED[:50]], Y[LABELLED[:50]], X[POOL], seed=0, epochs=2,
                               lr=2e-3, batch_size=64)

    def ce_only(student_logits, teacher_logits, labels, temperature, alpha):
        known = labels >= 0
        if not known.any():
            return student_logits.sum() * 0.0
        return F.cross_entropy(student_logits[known], labels[known])

    monkeypatch.setattr(hinton_kd, "kd_loss", ce_only)
    without_kd = hinton_kd.distil(teacher, student(), X[LABELLED[:50]], Y[LABELLED[:50]], X[POOL], seed=0,
                                  epochs=2, lr=2e-3, batch_size=64)
    assert agreement(with_kd, teacher) > agreement(without_kd, teacher) + 0.2  # 0.73 vs 0.29 when written


def hint_error(teacher, model, regressor, hint_layer: str, guided_layer: str) -> float:
    """FitNets' hint loss on held-out images: MSE of the regressor's map of the guided layer to the hint."""
    model.eval()
    with features.capture(teacher, [hint_layer]) as hint, features.capture(model, [guided_layer]) as guided, \
            torch.no_grad():
        teacher(held_out_batch())
        model(held_out_batch())
        return float(F.mse_loss(regressor(guided[guided_layer]), hint[hint_layer]))


def test_fitnets_hint_stage_fits_the_regressor_to_the_hint_and_shapes_the_student(teacher, monkeypatch):
    made = []  # (the regressor fitnets trains, a copy of it at init)
    real_regressor = fitnets.make_regressor
    monkeypatch.setattr(fitnets, "make_regressor",
                        lambda *a, **k: made.append((r := real_regressor(*a, **k), copy.deepcopy(r))) or r)
    model = student("small_cnn")
    at_init = copy.deepcopy(model)
    # epochs=0: the student as the hint stage left it, before any KD
    hinted = run_method("fitnets", teacher, model, hint_epochs=2, epochs=0)[0]
    (regressor, regressor_at_init), = made
    layer = features.middle_layer(teacher, 784)  # "1.4" in both small CNNs
    before = hint_error(teacher, at_init, regressor_at_init, layer, layer)
    after = hint_error(teacher, hinted, regressor, layer, layer)
    assert after < 0.6 * before, (before, after)  # 0.35 -> 0.12 when written
    # only the layers up to the guided one learnt: the classifier head is as it was
    moved = {k for k, v in at_init.state_dict().items() if not torch.equal(v, hinted.state_dict()[k])}
    assert moved == {"1.0.weight", "1.0.bias", "1.3.weight", "1.3.bias"}
    # the hints change the student KD then trains (the same seed and KD epochs, without hints)
    with_hints = run_method("fitnets", teacher, student("small_cnn"), hint_epochs=2, epochs=1)[0]
    without = run_method("fitnets", teacher, student("small_cnn"), hint_epochs=0, epochs=1)[0]
    assert (predictions(with_hints) != predictions(without)).mean() > 0.1


def layer_divergence(teacher, model, layer_vectors: str = "flat") -> float:
    """Mean over the five in-order (teacher, student) layer pairs of LEAD's layer KL on held-out images."""
    t_layers, s_layers = features.feature_layers(teacher, 784), features.feature_layers(model, 784)
    model.eval()
    with features.capture(teacher, t_layers) as t_out, features.capture(model, s_layers) as s_out, torch.no_grad():
        teacher(held_out_batch())
        model(held_out_batch())
        return float(np.mean([float(lead.layer_kl(lead.similarity_logits(t_out[t], 0.1, layer_vectors),
                                                   lead.similarity_logits(s_out[s], 0.1, layer_vectors)))
                              for t, s in zip(t_layers, s_layers)]))


def test_lead_layer_term_alone_trains_the_students_layers(teacher, monkeypatch):
    model = student("small_cnn")
    pairing = lead.LayerPairing(features.feature_layers(teacher, 784), features.feature_layers(model, 784),
                                k=5, redraw_every=1, seed=0)
    objective = lead.LeadObjective(teacher, model, pairing, temperature=4.0, alpha=0.1, layer_temperature=10.0,
                                   similarity_temperature=0.1)
    monkeypatch.setattr(lead, "kd_loss", lambda student_logits, *_: student_logits.sum() * 0.0)  # the KD term off
    with objective.hooks():
        objective(model, held_out_batch(64), torch.as_tensor(Y[HELD_OUT[:64]])).backward()
    for name in ("1.0.weight", "1.3.weight", "1.7.weight"):  # both convolutions and the hidden layer
        assert float(model.get_parameter(name).grad.abs().sum()) > 0, name
    head = model.get_parameter("1.10.weight").grad  # past every candidate layer: the KD term's alone
    assert head is None or not head.any()


def test_lead_brings_the_students_layer_scores_to_the_teachers_beyond_kd(teacher):
    initial = layer_divergence(teacher, student("small_cnn"))
    by_lead = run_method("lead", teacher, student("small_cnn"), epochs=2)[0]
    by_kd = run_method("hinton_kd", teacher, student("small_cnn"), epochs=2)[0]  # LEAD without its layer term
    lead_divergence, kd_divergence = layer_divergence(teacher, by_lead), layer_divergence(teacher, by_kd)
    assert lead_divergence < 0.5 * initial and lead_divergence < 0.7 * kd_divergence, \
        (initial, lead_divergence, kd_divergence)  # 0.41, 0.07, 0.14 when written


def test_prod_guard_term_pulls_the_student_to_its_old_copy(teacher):
    s, t, o, labels, temp = torch.randn(6, 10), torch.randn(6, 10), torch.randn(6, 10), torch.arange(6), 4.0
    guard = prod.stage_loss(s, t, o, labels, temp, 0.1) - prod.stage_loss(s, t, None, labels, temp, 0.1)
    assert float(guard) > 0 and torch.allclose(prod.stage_loss(s, t, s, labels, temp, 0.1),
                                               prod.stage_loss(s, t, None, labels, temp, 0.1))
    # a stage from a student taught by a weak teacher, guarded vs not: the guard keeps it near its old self
    x = torch.as_tensor(X[np.concatenate([LABELLED, POOL])])
    y = torch.cat([torch.as_tensor(Y[LABELLED]), torch.full((len(POOL),), -1)])
    settings = dict(temperature=4.0, alpha=0.1, lr=2e-3, batch_size=64)
    weak = prod.teacher_chain(teacher, X[LABELLED], Y[LABELLED], [0.2], epochs=5, lr=2e-3, batch_size=64, seed=0)[0]
    start = student()
    prod.distil_stage(start, weak, x, y, guard=False, epochs=1, seed=0, **settings)

    def kl_from(source, model) -> float:
        source_logits, model_logits = logits_of(source, held_out_batch()) / 4, logits_of(model, held_out_batch()) / 4
        return float(F.kl_div(F.log_softmax(model_logits, -1), F.log_softmax(source_logits, -1), log_target=True,
                              reduction="batchmean"))

    drift = {}
    for guarded in (True, False):
        model = copy.deepcopy(start)
        old = prod.distil_stage(model, teacher, x, y, guard=guarded, epochs=1, seed=1, **settings)
        assert (old is not None) == guarded
        drift[guarded] = kl_from(start, model)
    assert drift[True] < 0.6 * drift[False], drift  # 0.04 vs 0.12 when written


def test_prod_hard_subset_stage_fixes_the_items_the_student_gets_wrong(teacher):
    quick = dict(epochs=1, lr=2e-3, batch_size=64, seed=0)
    after_stage = prod.distil([teacher], student(), X[LABELLED], Y[LABELLED], X[POOL], hard_epochs=0, **quick)
    hard = prod.hard_subset(teacher, after_stage, X[LABELLED], Y[LABELLED])
    assert len(hard) > 20  # teacher right, student wrong after one epoch
    # the same stage (same seeds), then two epochs on its hard subset
    with_hard = prod.distil([teacher], student(), X[LABELLED], Y[LABELLED], X[POOL], hard_epochs=2, **quick)
    fixed = (models.predict_proba(with_hard, X[LABELLED[hard]]).argmax(-1).numpy() == Y[LABELLED[hard]]).mean()
    assert fixed > 0.4, fixed  # 0.67 when written; 0 by definition before


# --------------------------------------------------------------------------------------------------
# the design choices exposed as parameters (issue 18): a benchmark picks them on a validation split


def test_registry_defaults_are_the_signature_defaults():
    for method in registry.methods("distillation"):
        signature = inspect.signature(method.load()).parameters
        for key, default in method.defaults.items():
            if key in signature and signature[key].default is not inspect.Parameter.empty:
                given = signature[key].default
                given = list(given) if isinstance(given, tuple) else given
                assert given == default, (method.name, key, given, default)
    prod_defaults = registry.get("distillation", "prod").defaults
    assert {k: prod_defaults[k] for k in ("stage_budget", "pad_hard", "continue_optimiser")} == \
        {"stage_budget": "route", "pad_hard": True, "continue_optimiser": True}  # the choices made before
    assert registry.get("distillation", "lead").defaults["layer_vectors"] == "flat"


def recorded_stages(monkeypatch) -> list[dict]:
    """Every ``prod.distil_stage`` call's inputs and keywords, from now on (the stage still runs)."""
    calls, real_stage = [], prod.distil_stage
    monkeypatch.setattr(prod, "distil_stage",
                        lambda model, t, x, y, **k: calls.append({"x": x, **k}) or real_stage(model, t, x, y, **k))
    return calls


@pytest.mark.parametrize("stage_budget, expected", [("route", [2, 3, 5]), ("equal", [4, 3, 3])])
def test_prod_stage_budget_shares_epochs_by_route_or_equally(teacher, monkeypatch, stage_budget, expected):
    assert prod.budget_shares([0.2, 0.5], 3, "route") == pytest.approx([0.2, 0.3, 0.5])
    assert prod.budget_shares([0.2, 0.5], 3, "equal") == prod.budget_shares(None, 3, "route") == [1.0] * 3
    calls = recorded_stages(monkeypatch)
    run_method("prod", teacher, student("mlp"), epochs=10, hard_epochs=0, chain_checkpoints=[0.2, 0.5],
               stage_budget=stage_budget)
    assert [c["epochs"] for c in calls] == expected


@pytest.mark.parametrize("pad_hard", [True, False])
def test_prod_pad_hard_pads_a_small_hard_subset_or_leaves_it_alone(teacher, monkeypatch, pad_hard):
    monkeypatch.setattr(prod, "hard_subset", lambda *a: np.array([3, 5]))  # two hard items, a batch is 64
    calls = recorded_stages(monkeypatch)
    run_method("prod", [teacher], student("mlp"), epochs=1, hard_epochs=1, pad_hard=pad_hard)
    stage, hard = calls
    assert len(stage["x"]) == len(LABELLED) + len(POOL)
    assert torch.equal(hard["x"][:2], torch.as_tensor(X[LABELLED[[3, 5]]]))
    assert len(hard["x"]) == (64 if pad_hard else 2)


def test_prod_continue_optimiser_or_a_fresh_adam_on_the_hard_subset(teacher, monkeypatch):
    calls = recorded_stages(monkeypatch)
    continued = run_method("prod", [teacher], student("mlp"), epochs=1, hard_epochs=1)[0]
    fresh = run_method("prod", [teacher], student("mlp"), epochs=1, hard_epochs=1, continue_optimiser=False)[0]
    (stage, hard), (fresh_stage, fresh_hard) = calls[:2], calls[2:]
    assert hard["optimiser"] is stage["optimiser"] is not None  # moments and all
    assert fresh_hard["optimiser"] is None and fresh_stage["optimiser"] is not None  # fit's own new Adam
    assert any(not torch.equal(a, b) for a, b in zip(continued.state_dict().values(), fresh.state_dict().values()))


def test_lead_layer_vectors_flat_or_pooled_over_positions(teacher):
    maps, vectors = torch.rand(5, 3, 4, 4), torch.rand(5, 7)
    assert lead.layer_vectors_of(maps, "flat").shape == (5, 48)
    assert torch.equal(lead.layer_vectors_of(maps, "pooled"), maps.mean((2, 3)))  # (5, 3): one value per channel
    assert torch.equal(lead.layer_vectors_of(vectors, "pooled"), lead.layer_vectors_of(vectors, "flat"))
    pooled = F.normalize(maps.mean((2, 3)), dim=1)
    off = ~torch.eye(5, dtype=torch.bool)
    assert torch.allclose(lead.similarity_logits(maps, 0.5, "pooled")[off], (pooled @ pooled.T / 0.5)[off])
    assert not torch.allclose(lead.similarity_logits(maps, 0.5, "pooled"), lead.similarity_logits(maps, 0.5))
    # the choice reaches training: the same run, pooled, aligns other scores and ends elsewhere
    flat_student = run_method("lead", teacher, student("small_cnn"), epochs=1)[0]
    pooled_student = run_method("lead", teacher, student("small_cnn"), epochs=1, layer_vectors="pooled")[0]
    assert (predictions(flat_student) != predictions(pooled_student)).mean() > 0.02
    assert layer_divergence(teacher, pooled_student, "pooled") < layer_divergence(teacher, student("small_cnn"),
                                                                                  "pooled")


@pytest.mark.parametrize("name, bad, message", [
    ("prod", {"stage_budget": "thirds"}, r"stage_budget must be one of \('route', 'equal'\), got 'thirds'"),
    ("prod", {"pad_hard": "false"}, "pad_hard must be true or false, got 'false'"),
    ("prod", {"continue_optimiser": 1}, "continue_optimiser must be true or false, got 1"),
    ("lead", {"layer_vectors": "mean"}, r"layer_vectors must be one of \('flat', 'pooled'\), got 'mean'"),
])
def test_bad_design_choices_are_refused_before_any_training(teacher, monkeypatch, name, bad, message):
    steps = []
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: steps.append(1))
    with pytest.raises(ValueError, match=message):
        run_method(name, teacher, student("mlp"), **bad)
    assert steps == []  # PROD: before its chain of teachers is trained
