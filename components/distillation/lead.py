"""LEAD: layer-wise distribution alignment between a teacher and a student of any architecture.

Sun et al., "LEAD: Liberal Feature-based Distillation for Dense Retrieval", WSDM 2024
(arXiv:2212.05225; ref. code microsoft/SimXNS ``LEAD``)

At a layer of either model, the batch's items form a distribution for every item ``i``: the
softmax over the other items ``j`` of the in-batch similarity of the layer's outputs (retrieval
uses query-passage scores; for classification, the cosine similarity of the layer's vectors over a
temperature, ``similarity_temperature``: the flattened outputs, or with ``layer_vectors="pooled"``
a feature map ``(B, C, *spatial)`` averaged over its positions to ``(B, C)``, as retrieval pools a
layer's tokens; :func:`layer_vectors_of`). Distributions over the batch need no shared width,
vocabulary or architecture. Per training step:

- ``K`` layers are drawn at random from each model's candidate layers (``K = min(layers_per_model,
  #teacher layers, #student layers)``), sorted shallow to deep and paired in order; the draw is
  redrawn every ``redraw_every`` steps;
- the loss of pair ``k`` is ``KL(teacher layer ‖ student layer)``, averaged over the batch's items;
- the pairs are weighted by ``softmax(-teacher_layer_loss / layer_temperature)`` (``10`` in the paper),
  without gradient, where a teacher layer's loss is its own task loss: retrieval's NLL of the
  positive, here the NLL of the probability the layer's distribution puts on items of the same
  class (labels where known, the teacher's prediction on the pool), so the layers whose similarity
  structure best fits the task count most;
- total: task loss + final-layer KL (Hinton KD's ``alpha·CE + (1-alpha)·T²·KL`` on the class
  logits, :func:`distillery.components.distillation.hinton_kd.kd_loss`) + the weighted layer KLs.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from distillery.components.core.train import fit
from distillery.components.distillation import features
from distillery.components.distillation.common import check_compatible, training_tensors
from distillery.components.distillation.hinton_kd import check_kd_params, kd_loss

_EXCLUDED = -1e9  # the score of an item with itself: out of its own distribution (exp() == 0)


LAYER_VECTORS = ("flat", "pooled")  # the choices of ``layer_vectors``


def check_layer_vectors(layer_vectors: str) -> None:
    if layer_vectors not in LAYER_VECTORS:
        raise ValueError(f"layer_vectors must be one of {LAYER_VECTORS}, got {layer_vectors!r}")


def layer_vectors_of(layer_output: torch.Tensor, layer_vectors: str = "flat") -> torch.Tensor:
    """A layer's per-item vectors ``(B, F)`` for the in-batch similarity.

    ``"flat"``: the outputs ``(B, ...)`` flattened, ``F = C·H·W`` for a feature map. ``"pooled"``: a
    feature map ``(B, C, *spatial)`` averaged over its positions to ``(B, C)`` (which features fire,
    wherever they fire); a vector layer ``(B, D)`` is the same either way.

    Flattened is the default: on MNIST a digit's layout is what its maps share. Pooled, LEAD lost in
    three of the benchmark's four cells (e.g. 0.964 vs 0.967 on tiny_cnn, seed 1) and gained only with
    RepGhost and 200 labels (benchmarks/README.md); those figures were read on the test split, so the
    choice is a parameter for a benchmark to make on a validation split."""
    check_layer_vectors(layer_vectors)
    if layer_vectors == "pooled" and layer_output.dim() > 2:
        return layer_output.flatten(2).mean(-1)
    return layer_output.flatten(1)


def similarity_logits(layer_output: torch.Tensor, temperature: float, layer_vectors: str = "flat") -> torch.Tensor:
    """In-batch scores ``(B, B)``: cosine similarity of the layer's vectors (:func:`layer_vectors_of`
    of the outputs ``(B, ...)``) over ``temperature``, each item excluded from its own row."""
    flat = F.normalize(layer_vectors_of(layer_output, layer_vectors), dim=1)
    scores = flat @ flat.T / temperature
    return scores.masked_fill(torch.eye(len(flat), dtype=torch.bool, device=flat.device), _EXCLUDED)


def layer_kl(teacher_scores: torch.Tensor, student_scores: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``KL(softmax(teacher row) ‖ softmax(student row))`` for ``(B, B)`` scores."""
    return F.kl_div(F.log_softmax(student_scores, -1), F.log_softmax(teacher_scores, -1), reduction="batchmean",
                    log_target=True)


def neighbour_loss(scores: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """A layer's task loss: mean over items of ``-log sum_{j != i, class_j = class_i} p_ij`` with
    ``p_i = softmax(scores_i)``; items without a same-class partner in the batch are left out (a
    batch with none at all gives 0)."""
    same = (classes[:, None] == classes[None, :]) & ~torch.eye(len(classes), dtype=torch.bool,
                                                               device=classes.device)
    anchors = same.any(1)
    if not anchors.any():
        return scores.new_zeros(())
    log_p = F.log_softmax(scores[anchors], -1).masked_fill(~same[anchors], float("-inf"))
    return -torch.logsumexp(log_p, -1).mean()


def layer_weights(teacher_losses: torch.Tensor, layer_temperature: float) -> torch.Tensor:
    """``softmax(-teacher_losses / layer_temperature)``, detached (no gradient through the weights)."""
    return torch.softmax(-teacher_losses.detach() / layer_temperature, 0)


class LayerPairing:
    """``k`` layers drawn from each model, sorted in depth order and paired in order; a new draw
    every ``redraw_every`` calls of :meth:`step`.

    Attributes:
        draws: how many draws were made so far.
    """

    def __init__(self, teacher_layers: Sequence[str], student_layers: Sequence[str], k: int, redraw_every: int,
                 seed: int):
        if k < 1 or redraw_every < 1:
            raise ValueError(f"layers_per_model and redraw_every must be >= 1, got {k} and {redraw_every}")
        self.teacher_layers, self.student_layers = list(teacher_layers), list(student_layers)
        self.k = min(k, len(self.teacher_layers), len(self.student_layers))
        self.redraw_every = redraw_every
        self.rng = random.Random(seed)
        self.steps, self.draws = 0, 0
        self.pairs: list[tuple[str, str]] = []

    def _draw(self, layers: list[str]) -> list[str]:
        return [layers[i] for i in sorted(self.rng.sample(range(len(layers)), self.k))]

    def step(self) -> list[tuple[str, str]]:
        """The ``(teacher layer, student layer)`` pairs for the next training step."""
        if self.steps % self.redraw_every == 0:
            self.pairs = list(zip(self._draw(self.teacher_layers), self._draw(self.student_layers)))
            self.draws += 1
        self.steps += 1
        return self.pairs


@dataclass
class StepRecord:
    """What one step of :class:`LeadObjective` computed (for logging and tests)."""

    pairs: list[tuple[str, str]]
    teacher_losses: torch.Tensor  # (K,)
    weights: torch.Tensor  # (K,)
    layer_kls: torch.Tensor  # (K,)


class LeadObjective:
    """The LEAD loss of one batch, ``objective(student, x, y)`` (the ``loss_fn`` of :func:`fit`).

    The teacher runs on every batch (its layer outputs are too large to keep for a whole data set);
    forward hooks read both models' candidate layers while :meth:`hooks` is open.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, pairing: LayerPairing, *, temperature: float,
                 alpha: float, layer_temperature: float, similarity_temperature: float, layer_vectors: str = "flat"):
        check_layer_vectors(layer_vectors)
        self.teacher, self.student, self.pairing = teacher, student, pairing
        self.layer_vectors = layer_vectors
        self.temperature, self.alpha = temperature, alpha
        self.layer_temperature, self.similarity_temperature = layer_temperature, similarity_temperature
        self.last: StepRecord | None = None  # the latest step's pairs, losses and weights
        self._teacher_out: dict[str, torch.Tensor] = {}
        self._student_out: dict[str, torch.Tensor] = {}

    def hooks(self) -> ExitStack:
        """Open while training: forward hooks on both models' candidate layers."""
        stack = ExitStack()
        self._teacher_out = stack.enter_context(features.capture(self.teacher, self.pairing.teacher_layers))
        self._student_out = stack.enter_context(features.capture(self.student, self.pairing.student_layers))
        return stack

    def __call__(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pairs = self.pairing.step()
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        student_logits = student(x)
        loss = kd_loss(student_logits, teacher_logits, y, self.temperature, self.alpha)
        if len(x) < 2:  # a distribution over the other items of the batch needs another item
            return loss
        classes = torch.where(y >= 0, y, teacher_logits.argmax(-1))
        tau, how = self.similarity_temperature, self.layer_vectors
        teacher_scores = [similarity_logits(self._teacher_out[t], tau, how) for t, _ in pairs]
        student_scores = [similarity_logits(self._student_out[s], tau, how) for _, s in pairs]
        with torch.no_grad():
            teacher_losses = torch.stack([neighbour_loss(ts, classes) for ts in teacher_scores])
        weights = layer_weights(teacher_losses, self.layer_temperature)
        kls = torch.stack([layer_kl(ts, ss) for ts, ss in zip(teacher_scores, student_scores)])
        self.last = StepRecord(pairs, teacher_losses, weights, kls.detach())
        return loss + (weights * kls).sum()


def distil(teacher: nn.Module, student: nn.Module, labelled_features, labels, unlabelled_features, *,
           seed: int, on_epoch=None, epochs: int, lr: float, batch_size: int, teacher_layers: Sequence[str] = (),
           student_layers: Sequence[str] = (), layers_per_model: int = 5, redraw_every: int = 20,
           layer_temperature: float = 10.0, similarity_temperature: float = 0.1, temperature: float = 4.0,
           alpha: float = 0.1, layer_vectors: str = "flat") -> nn.Module:
    """Train ``student`` with the LEAD objective over the labelled set and the pool.

    Args:
        labelled_features: ``(L, D)`` raw features with ``labels`` ``(L,)``.
        unlabelled_features: ``(U, D)`` (may be empty).
        teacher_layers, student_layers: candidate module names, shallow to deep; empty: every
            activation and pooling output (:func:`distillery.components.distillation.features.feature_layers`).
        layers_per_model: ``K``, the layers drawn from each model (5 in the paper).
        redraw_every: steps (batches) between two draws of the layer pairs.
        layer_temperature: of the layer weights ``softmax(-teacher_layer_loss / layer_temperature)``.
        similarity_temperature: divides the in-batch cosine similarities.
        temperature, alpha: of the final-layer KD term.
        layer_vectors: what a layer's cosine similarity compares, ``"flat"`` (the flattened outputs)
            or ``"pooled"`` (feature maps averaged over positions): :func:`layer_vectors_of`.
    """
    check_kd_params(temperature, alpha)
    check_layer_vectors(layer_vectors)
    if layer_temperature <= 0 or similarity_temperature <= 0:
        raise ValueError(f"temperatures must be > 0, got layer_temperature={layer_temperature}, "
                         f"similarity_temperature={similarity_temperature}")
    d = labelled_features.shape[1]
    check_compatible(teacher, student, d, labels=labels)
    t_layers = features.check_layers(teacher, teacher_layers, "teacher") if teacher_layers else \
        features.feature_layers(teacher, d)
    s_layers = features.check_layers(student, student_layers, "student") if student_layers else \
        features.feature_layers(student, d)
    pairing = LayerPairing(t_layers, s_layers, layers_per_model, redraw_every, seed)
    objective = LeadObjective(teacher, student, pairing, temperature=temperature, alpha=alpha,
                              layer_temperature=layer_temperature, similarity_temperature=similarity_temperature,
                              layer_vectors=layer_vectors)
    x, y = training_tensors(labelled_features, labels, unlabelled_features)
    teacher.eval()
    with objective.hooks():
        return fit(student, (x, y), objective, epochs, lr, batch_size, seed, on_epoch)
