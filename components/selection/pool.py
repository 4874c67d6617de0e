"""What a selection strategy may look at: the unlabelled pool, the labelled set and the current model.

A :class:`Pool` computes the model's outputs lazily, streaming the pool through the model in chunks
so memory stays bounded by ``chunk_size`` rows of activations plus the ``(N, K)`` probabilities, and
caches them: a wrapper (AnchorAL) and the strategy it wraps share one forward pass.

Embeddings are the model's *penultimate features*, i.e. the input of its last ``nn.Linear`` layer,
captured with a forward hook, so any classifier of the model zoo works without a special method.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from distillery.components.core import devices
from distillery.components.core.models import forward


class Pool:
    """One query's view of the data.

    Args:
        features: ``(N, D)`` raw features of the unlabelled pool (as stored in the dataset).
        model: the current classifier, ``(B, D) -> (B, K)`` logits; ``None`` for model-free use.
        labelled_features: ``(L, D)`` features of the labelled set.
        labelled_labels: ``(L,)`` integer labels of the labelled set.
        num_classes: K; taken from the model's output or the probabilities when not given.
        probs: precomputed ``(N, K)`` class probabilities (instead of running ``model``).
        embeddings: precomputed ``(N, H)`` embeddings (instead of running ``model``).
        chunk_size: rows per forward pass.
        rows: ``(N,)`` positions of these items in the caller's pool (set by :meth:`subset`).
    """

    def __init__(self, features: np.ndarray | None = None, model: Any = None,
                 labelled_features: np.ndarray | None = None, labelled_labels: np.ndarray | None = None,
                 num_classes: int | None = None, probs: np.ndarray | None = None,
                 embeddings: np.ndarray | None = None, chunk_size: int = 65536):
        self.features = features
        self.model = model
        self.labelled_features = labelled_features
        self.labelled_labels = None if labelled_labels is None else np.asarray(labelled_labels, dtype=np.int64)
        self._num_classes = num_classes
        self._probs = probs
        self._embeddings = embeddings
        self.chunk_size = chunk_size

    def __len__(self) -> int:
        for array in (self.features, self._probs, self._embeddings):
            if array is not None:
                return len(array)
        raise ValueError("a Pool needs features, probs or embeddings")

    @property
    def num_labelled(self) -> int:
        return 0 if self.labelled_labels is None else len(self.labelled_labels)

    @property
    def num_classes(self) -> int:
        if self._num_classes is None:
            self._num_classes = self.probs().shape[1]
        return self._num_classes

    def validate(self) -> None:
        """Raise a ``ValueError`` naming the problem before any strategy work is spent."""
        n = len(self)
        if n == 0:
            raise ValueError("the unlabelled pool is empty: nothing to select")
        if self._probs is not None:
            probs = np.asarray(self._probs)
            if probs.ndim != 2:
                raise ValueError(f"probs must be (N, K), got shape {probs.shape}")
            bad = int((~np.isfinite(probs)).sum())
            if bad:
                raise ValueError(f"probs contain {bad} NaN or infinite values")
        if self.features is not None:
            if self.features.ndim != 2:
                raise ValueError(f"pool features must be (N, D), got shape {self.features.shape}")
            labelled = self.labelled_features
            if labelled is not None and len(labelled) and labelled.shape[1:] != self.features.shape[1:]:
                raise ValueError(f"feature-dimension mismatch: the pool has {self.features.shape[1]} features "
                                 f"per item, the labelled set {labelled.shape[1]}")
            if self.model is not None:
                self._check_model_accepts(self.features[:1])
        if self.labelled_labels is not None and self.labelled_features is not None \
                and len(self.labelled_labels) != len(self.labelled_features):
            raise ValueError(f"{len(self.labelled_features)} labelled items but {len(self.labelled_labels)} labels")

    def _check_model_accepts(self, sample: np.ndarray) -> None:
        import torch

        try:
            with torch.no_grad():
                self.model(devices.to_model(self.model, sample))
        except RuntimeError as exc:
            raise ValueError(f"feature-dimension mismatch: the model does not accept pool items with "
                             f"{sample.shape[1]} features ({str(exc).splitlines()[0]})") from None

    def probs(self) -> np.ndarray:
        """``(N, K)`` float32 class probabilities from the model in eval mode."""
        if self._probs is None:
            self._forward(embeddings=False)
        return self._probs

    def embeddings(self) -> np.ndarray:
        """``(N, H)`` float32 penultimate features (input of the model's last linear layer)."""
        if self._embeddings is None:
            self._forward(embeddings=True)
        return self._embeddings

    def labelled_embeddings(self) -> np.ndarray:
        """``(L, H)`` penultimate features of the labelled set."""
        if self.labelled_features is None or self.model is None:
            raise ValueError("labelled embeddings need the labelled features and the model")
        _, embeddings = forward(self.model, self.labelled_features, self.chunk_size, embeddings=True)
        return embeddings

    def _forward(self, embeddings: bool) -> None:
        if self.model is None or self.features is None:
            raise ValueError("this strategy needs the model and the pool features (or precomputed outputs)")
        probs, emb = forward(self.model, self.features, self.chunk_size, embeddings)
        self._probs = probs
        if emb is not None:
            self._embeddings = emb

    def subset(self, positions: np.ndarray) -> Pool:
        """The pool restricted to ``positions`` (cached outputs are sliced, not recomputed)."""
        def take(array):
            return None if array is None else array[positions]

        return Pool(take(self.features), self.model, self.labelled_features, self.labelled_labels,
                    self._num_classes, take(self._probs), take(self._embeddings), self.chunk_size)


def as_pool(pool_or_probs: Any) -> Pool:
    """Accept a :class:`Pool` or, for model-free strategies, an ``(N, K)`` probability array."""
    if isinstance(pool_or_probs, Pool):
        return pool_or_probs
    return Pool(probs=np.asarray(pool_or_probs, dtype=np.float64))
