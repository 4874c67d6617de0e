"""PROD: progressive distillation through increasingly strong teachers and increasingly hard data.

Lin et al., "PROD: Progressive Distillation for Dense Retrieval", WWW 2023 (arXiv:2209.13335; ref.
code microsoft/SimXNS ``PROD``)

Teacher-progressive: the student is distilled through a chain of teachers, weakest first. Stage
``s`` minimises, over the labelled set and the pool,
``0.1·CE(y, s) + 0.9·T²·KL(t_s ‖ s) + T²·KL(old ‖ s)`` (``T = 4``; CE only where a label is known, the
KD term then weighted 1), where ``old`` is a frozen copy of the student taken at the start of the
stage: the forgetting guard. The first stage has no guard (a student that has learnt nothing yet has
nothing to forget). ``epochs`` is the whole budget; by default (``stage_budget="route"``) the stages
share it in proportion to the part of the teacher's route each teacher stands for
(:func:`stage_epochs`): with snapshots at 7% and 33% of the teacher's training, 45 epochs go
3 / 12 / 30. Equal thirds (``stage_budget="equal"``) left the final teacher 15 epochs, and with 200
labels PROD then trailed Hinton KD's 45 on RepGhost (0.886 vs 0.897, benchmarks/README.md).

Data-progressive: after each stage, the labelled items that the stage's teacher classifies right
and the student wrong are kept, and the student is distilled further on them (same loss, same guard;
after the first stage, a frozen copy of the student at that point) for ``hard_epochs``. "Right"
needs a label, so the hard subset comes from the labelled set. By default (``pad_hard``) a hard
subset smaller than one batch is filled up to a batch with other items of the stage
(:func:`padded`), and the hard-data training continues the stage's Adam (``continue_optimiser``).

These three choices (``stage_budget``, ``pad_hard``, ``continue_optimiser``) are not the paper's:
they were made from benchmark figures read on the test split (benchmarks/README.md), so they are
parameters, for a benchmark to choose on a validation split; the defaults keep the choices made.

Where the chain of teachers comes from: :func:`distil` takes a list of teachers (weakest first),
e.g. the teachers of earlier active-learning rounds. Given one teacher, as the pipeline's
distillation task passes it today, the chain is built here by :func:`teacher_chain`: a copy of the
teacher's architecture re-trained from scratch on the labelled set in one run, snapshotted early
in its training (``chain_checkpoints``, fractions of ``chain_epochs``), followed by the given teacher: the
route the teacher's own training takes, as in Jin et al., "Knowledge Distillation via Route
Constrained Optimization", ICCV 2019. An earlier version re-trained the weaker teachers on 25% and
50% of the labels; with 200 labels those teachers saw 50 and 100 and taught errors the guard then
kept (benchmarks/README.md).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from distillery.components.core.train import cross_entropy, fit
from distillery.components.distillation.common import (
    UNLABELLED,
    StageEpochs,
    check_compatible,
    logits_of,
    training_tensors,
)
from distillery.components.distillation.hinton_kd import check_kd_params, kd_loss


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode whose parameters take no gradient."""
    old = copy.deepcopy(model).eval()
    for p in old.parameters():
        p.requires_grad_(False)
    return old


def stage_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, old_logits: torch.Tensor | None,
               labels: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    """``alpha·CE + (1-alpha)·T²·KL(teacher ‖ student)`` (KD weight 1 on unlabelled items) plus, with a
    guard, ``T²·KL(old ‖ student)`` on every item; all ``(B, K)`` logits, ``labels`` ``(B,)``."""
    loss = kd_loss(student_logits, teacher_logits, labels, temperature, alpha)
    if old_logits is not None:  # alpha = 0 and every item "unlabelled": the plain T²·KL term
        loss = loss + kd_loss(student_logits, old_logits, torch.full_like(labels, UNLABELLED), temperature, 0.0)
    return loss


def hard_subset(teacher: nn.Module, student: nn.Module, features, labels) -> np.ndarray:
    """Rows (ascending) of the items ``teacher`` classifies right and ``student`` wrong.

    Args:
        features: ``(N, D)`` raw features; labels: ``(N,)``.
    """
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    labels = np.asarray(labels)
    teacher_right = logits_of(teacher, x).argmax(-1).numpy() == labels
    student_wrong = logits_of(student, x).argmax(-1).numpy() != labels
    return np.flatnonzero(teacher_right & student_wrong)


def reinitialised(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with freshly initialised parameters (every module's ``reset_parameters``)."""
    torch.manual_seed(seed)
    fresh = copy.deepcopy(model)
    for module in fresh.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return fresh


def snapshot_epochs(checkpoints: Sequence[float], epochs: int) -> list[int]:
    """The epoch counts after which :func:`teacher_chain` takes its snapshots: ``round(f * epochs)``
    for each ``f`` in ``checkpoints`` (ascending, in (0, 1)), each at least one more than the one before."""
    checkpoints = list(checkpoints)
    if any(not 0 < f < 1 for f in checkpoints) or checkpoints != sorted(checkpoints):
        raise ValueError(f"chain_checkpoints must be ascending fractions in (0, 1) of chain_epochs, got {checkpoints}")
    after: list[int] = []
    for f in checkpoints:
        after.append(max(after[-1] + 1 if after else 1, round(f * epochs)))
    return after


def teacher_chain(teacher: nn.Module, labelled_features, labels, checkpoints: Sequence[float], *, epochs: int,
                  lr: float, batch_size: int, seed: int) -> list[nn.Module]:
    """``[weaker teachers..., teacher]``: the teacher's architecture re-trained from scratch with
    cross-entropy on the labelled set, in one run, with a frozen snapshot taken after each of
    :func:`snapshot_epochs` epochs. The run stops at the last snapshot: its full length is the
    given teacher."""
    after = snapshot_epochs(checkpoints, epochs)
    x = torch.as_tensor(np.asarray(labelled_features), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    weaker, chain = reinitialised(teacher, seed), []

    def snapshot(epoch: int, _loss: float) -> None:
        if epoch + 1 in after:
            chain.append(frozen_copy(weaker))

    fit(weaker, (x, y), cross_entropy, after[-1], lr, batch_size, seed, snapshot)
    return [*chain, teacher]


def stage_epochs(epochs: int, shares: Sequence[float]) -> list[int]:
    """``epochs`` split over the stages in proportion to ``shares`` (largest remainders round up), at
    least one each; e.g. ``stage_epochs(45, [0.07, 0.26, 0.67]) == [3, 12, 30]``."""
    if epochs < len(shares):
        raise ValueError(f"PROD needs at least one epoch per stage: {epochs} epochs for {len(shares)} stages")
    exact = epochs * np.asarray(shares, dtype=float) / float(np.sum(shares))
    split = np.floor(exact).astype(int)
    split[np.argsort(split - exact, kind="stable")[:epochs - int(split.sum())]] += 1
    for empty in np.flatnonzero(split == 0):  # a tiny share still gets one epoch, from the largest
        split[np.argmax(split)] -= 1
        split[empty] = 1
    return split.tolist()


def padded(hard: np.ndarray, total: int, batch_size: int, seed: int) -> np.ndarray:
    """``hard`` rows, followed, when there are fewer than ``batch_size``, by rows drawn (without
    replacement, seeded) from the rest of ``range(total)`` up to one batch.

    Why: with 200 labels the student soon gets all but one to four labelled items right. Trained on
    those alone, a step's gradient, BatchNorm's batch statistics and the forgetting guard all see one
    to four items: after one hard item RepGhost went from 0.882 to 0.823, padded to 0.886
    (benchmarks/README.md)."""
    missing = batch_size - len(hard)
    if missing <= 0:
        return hard
    rest = np.setdiff1d(np.arange(total), hard)
    fill = np.random.default_rng(seed).choice(rest, min(missing, len(rest)), replace=False)
    return np.concatenate([hard, np.sort(fill)])


STAGE_BUDGETS = ("route", "equal")  # the choices of ``stage_budget``


def check_choices(stage_budget: str, pad_hard: bool, continue_optimiser: bool) -> None:
    """A ``ValueError`` for a ``stage_budget`` not in :data:`STAGE_BUDGETS` or a flag that is not a
    bool (a config's ``"false"`` would otherwise read as true)."""
    if stage_budget not in STAGE_BUDGETS:
        raise ValueError(f"stage_budget must be one of {STAGE_BUDGETS}, got {stage_budget!r}")
    for name, flag in (("pad_hard", pad_hard), ("continue_optimiser", continue_optimiser)):
        if not isinstance(flag, (bool, np.bool_)):
            raise ValueError(f"{name} must be true or false, got {flag!r}")


def budget_shares(chain_checkpoints: Sequence[float] | None, stages: int, stage_budget: str) -> list[float]:
    """Each stage's share of ``epochs`` (for :func:`stage_epochs`): ``"route"``, a built chain's share
    of the teacher's route, ``diff([0, *chain_checkpoints, 1])`` (``chain_checkpoints`` empty or
    ``None``, a given chain, whose route is unknown: equal); ``"equal"``, ``1 / stages`` each."""
    if stage_budget == "route" and chain_checkpoints:
        return np.diff([*chain_checkpoints, 1.0], prepend=0.0).tolist()
    return [1.0] * stages


def distil_stage(student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, *, guard: bool,
                 temperature: float, alpha: float, epochs: int, lr: float, batch_size: int, seed: int,
                 on_epoch=None, old: nn.Module | None = None,
                 optimiser: torch.optim.Optimizer | None = None) -> nn.Module | None:
    """Train ``student`` for ``epochs`` on ``(x, y)`` (labels -1 on the pool) with :func:`stage_loss`
    (with ``optimiser``, continuing it; by default a new Adam); returns the frozen copy used as guard
    (taken now, or ``old`` when given), ``None`` without guard."""
    if guard and old is None:
        old = frozen_copy(student)
    old = old if guard else None
    teacher_logits = logits_of(teacher, x)
    old_logits = logits_of(old, x) if old is not None else torch.zeros_like(teacher_logits)

    def loss(model, xb, tb, ob, yb):
        return stage_loss(model(xb), tb, ob if old is not None else None, yb, temperature, alpha)

    fit(student, (x, teacher_logits, old_logits, y), loss, epochs, lr, batch_size, seed, on_epoch,
        optimiser=optimiser)
    return old


def distil(teacher: nn.Module | Sequence[nn.Module], student: nn.Module, labelled_features, labels,
           unlabelled_features, *, seed: int, on_epoch=None, epochs: int, lr: float, batch_size: int,
           temperature: float = 4.0, alpha: float = 0.1, chain_checkpoints: Sequence[float] = (0.07, 0.33),
           chain_epochs: int = 20, hard_epochs: int = 5, stage_budget: str = "route", pad_hard: bool = True,
           continue_optimiser: bool = True) -> nn.Module:
    """Teacher- and data-progressive distillation of ``student``.

    Args:
        teacher: one teacher (a chain is then built with :func:`teacher_chain` from
            ``chain_checkpoints``; ``[]`` distils from it alone), or the chain itself, weakest first.
        labelled_features: ``(L, D)`` raw features with ``labels`` ``(L,)``.
        unlabelled_features: ``(U, D)`` (may be empty).
        epochs: the teacher stages' budget, shared by :func:`stage_epochs` as ``stage_budget`` says;
            ``hard_epochs``: on each stage's hard subset, beyond the budget.
        chain_epochs: the training epochs ``chain_checkpoints`` are fractions of (the teacher's own).
        stage_budget: ``"route"``: a built chain's stages share ``epochs`` in proportion to the route
            each teacher stands for (a given chain, whose route is unknown: equally); ``"equal"``:
            equal shares (:func:`budget_shares`).
        pad_hard: fill a hard subset smaller than ``batch_size`` up to one batch (:func:`padded`);
            ``False``: train on the hard items alone.
        continue_optimiser: the hard-subset training continues the stage's Adam, moments and all;
            ``False``: a fresh Adam.
    """
    check_kd_params(temperature, alpha)
    check_choices(stage_budget, pad_hard, continue_optimiser)
    if hard_epochs < 0 or chain_epochs < 1:
        raise ValueError(f"need hard_epochs >= 0 and chain_epochs >= 1, got {hard_epochs} and {chain_epochs}")
    d = labelled_features.shape[1]
    check_compatible(teacher, student, d, labels=labels)
    if isinstance(teacher, nn.Module):
        budget = stage_epochs(epochs, budget_shares(chain_checkpoints, len(chain_checkpoints) + 1, stage_budget))
        chain = teacher_chain(teacher, labelled_features, labels, chain_checkpoints, epochs=chain_epochs, lr=lr,
                              batch_size=batch_size, seed=seed) if chain_checkpoints else [teacher]
    else:
        chain = list(teacher)
        budget = stage_epochs(epochs, budget_shares(None, len(chain), stage_budget))
    x, y = training_tensors(labelled_features, labels, unlabelled_features)
    labelled_x, labelled_y = x[:len(labels)], y[:len(labels)]
    stages = StageEpochs(on_epoch)
    settings = dict(temperature=temperature, alpha=alpha, lr=lr, batch_size=batch_size)
    for s, stage_teacher in enumerate(chain):
        # by default one Adam per stage, continued on the hard subset: a fresh Adam's first steps are
        # near lr·sign(gradient) in every parameter, and five of them on the hard subset cost RepGhost
        # 1.3 points that the stage had just gained (benchmarks/README.md)
        optimiser = torch.optim.Adam(student.parameters(), lr=lr)
        old = distil_stage(student, stage_teacher, x, y, guard=s > 0, epochs=budget[s], seed=seed + s,
                           on_epoch=stages.next(budget[s]), optimiser=optimiser, **settings)
        hard = hard_subset(stage_teacher, student, labelled_x, labelled_y.numpy())
        if hard_epochs and len(hard):
            # labelled rows come first in x, so the hard rows index x as they are
            rows = torch.as_tensor(padded(hard, len(x), batch_size, seed + s) if pad_hard else hard)
            # guarded by the stage's frozen copy (the first stage: a copy taken now, after it learnt)
            distil_stage(student, stage_teacher, x[rows], y[rows], guard=True, old=old,
                         epochs=hard_epochs, seed=seed + s, on_epoch=stages.next(hard_epochs),
                         optimiser=optimiser if continue_optimiser else None, **settings)
    return student.eval()
