"""The peer library the active-learning benchmarks compare with: scikit-activeml (``pip install -e ".[bench]"``).

scikit-activeml's query strategies take a :class:`skactiveml.base.SkactivemlClassifier` and call its
``predict_proba`` themselves (BADGE asks it for ``(probabilities, embeddings)`` through a keyword flag,
BALD for ``(T, N, K)`` sampled probabilities through a named method). Its documented way to use a
torch network is to wrap it as such a classifier, which is what ``TorchClassifier`` does, around
*our* model: the peer then computes its own utilities, and its own batch, from the very outputs our
strategies see. ``fit`` trains a fresh model the way the active-learning loop does, but the benchmarks
pass the loop's already trained model and call ``query(..., fit_clf=False)``, so both libraries select
with the same network and only the selection code differs.

What the peer computes (scikit-activeml 1.0.1):

* ``UncertaintySampling(method="entropy" | "margin_sampling")``: ``predict_proba`` on the candidates,
  its ``uncertainty_scores``, then ``simple_batch``: ``batch_size`` successive random-tie-broken
  arg-maxes over the utilities.
* ``Badge(clf_embedding_flag_name="return_embeddings")``: ``predict_proba(X, return_embeddings=True)``
  gives probabilities and penultimate features; gradient embeddings ``(p - onehot(y_hat)) x h`` built
  as a dense ``(N, K*H)`` float64 array, then k-means++ seeding (first = largest norm, the rest sampled
  by squared distance, via ``pairwise_distances_argmin_min``).
* ``GreedyBALD(sample_predictions_method_name="sample_proba")``: ``sample_proba(X, n_samples=T)`` gives
  ``(T, N, K)`` MC-dropout probabilities (dropout layers in train mode, as our BALD), then its
  ``batch_bald`` with batch 1 (= BALD) and top-``batch_size``.
"""
from __future__ import annotations

import numpy as np

PEER = "scikit-activeml"


def peer_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("scikit-activeml")
    except Exception:
        return None


def available() -> bool:
    try:
        import skactiveml  # noqa: F401
    except ImportError:
        return False
    return True


def make_classifier(model, num_classes: int, meta: dict | None = None, model_kwargs: dict | None = None,
                    train_kwargs: dict | None = None, chunk_size: int = 65536, seed: int = 0):
    """A fitted ``TorchClassifier`` around an already trained torch ``model``."""
    clf = torch_classifier_class()(meta=meta, model_kwargs=model_kwargs, train_kwargs=train_kwargs,
                                   classes=np.arange(num_classes), chunk_size=chunk_size, random_state=seed)
    clf.model_ = model
    clf.classes_ = np.arange(num_classes)
    return clf


_CLASS = None


def torch_classifier_class():
    """``TorchClassifier``, a :class:`skactiveml.base.SkactivemlClassifier` subclass, built on first use
    so that importing this module does not need scikit-activeml."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _build_classifier_class()
    return _CLASS


def _build_classifier_class():
    import torch
    from skactiveml.base import SkactivemlClassifier

    from distillery.components.core.models import forward
    from distillery.components.selection.loop import train_model
    from distillery.components.selection.mc_dropout import dropout_modules

    class TorchClassifier(SkactivemlClassifier):
        """Our torch classifier as a scikit-activeml classifier (labels ``0..K-1``, missing = NaN)."""

        def __init__(self, meta=None, model_kwargs=None, train_kwargs=None, classes=None,
                     missing_label=np.nan, cost_matrix=None, random_state=None, chunk_size=65536):
            super().__init__(classes=classes, missing_label=missing_label, cost_matrix=cost_matrix,
                             random_state=random_state)
            self.meta = meta
            self.model_kwargs = model_kwargs
            self.train_kwargs = train_kwargs
            self.chunk_size = chunk_size

        def fit(self, X, y, sample_weight=None):
            X, y, _ = self._validate_data(X, y)  # encodes labels, missing -> -1
            known = y != -1
            seed = self.random_state if isinstance(self.random_state, int) else 0
            self.model_ = train_model(X[known], y[known], self.meta, self.model_kwargs or {},
                                      self.train_kwargs or {}, seed)
            return self

        def predict_proba(self, X, return_embeddings=False):
            probs, embeddings = forward(self.model_, np.asarray(X, dtype=np.float32), self.chunk_size,
                                        embeddings=return_embeddings)
            return (probs, embeddings) if return_embeddings else probs

        def sample_proba(self, X, n_samples=10, random_state=None):
            """``(n_samples, N, K)`` class probabilities from MC-dropout passes."""
            model = self.model_
            dropouts = dropout_modules(model)
            if not dropouts:
                raise ValueError("sample_proba needs a model with dropout")
            X = np.asarray(X, dtype=np.float32)
            out = None
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(random_state if isinstance(random_state, int) else 0)
                model.eval()
                for module in dropouts:
                    module.train()
                try:
                    for start in range(0, len(X), self.chunk_size):
                        x = torch.as_tensor(X[start:start + self.chunk_size])
                        chunk = np.stack([model(x).softmax(-1).numpy() for _ in range(n_samples)])
                        if out is None:
                            out = np.empty((n_samples, len(X), chunk.shape[2]), dtype=np.float32)
                        out[:, start:start + len(x)] = chunk
                finally:
                    model.eval()
            return out

    return TorchClassifier


def make_strategy(name: str, seed: int, mc_passes: int = 10):
    """The peer's query strategy for one of ``entropy``, ``margin``, ``badge``, ``bald``."""
    from skactiveml.pool import Badge, GreedyBALD, UncertaintySampling

    if name == "entropy":
        return UncertaintySampling(method="entropy", random_state=seed)
    if name == "margin":
        return UncertaintySampling(method="margin_sampling", random_state=seed)
    if name == "badge":
        return Badge(clf_embedding_flag_name="return_embeddings", random_state=seed)
    if name == "bald":
        return GreedyBALD(sample_predictions_method_name="sample_proba",
                          sample_predictions_dict={"n_samples": mc_passes}, random_state=seed)
    raise ValueError(f"no peer strategy for {name!r}")


def query(name: str, seed: int, clf, candidates: np.ndarray, labelled: np.ndarray | None,
          labelled_labels: np.ndarray | None, batch_size: int, mc_passes: int = 10) -> np.ndarray:
    """Run the peer's ``query`` with ``X = [labelled; candidates]`` and NaN labels for the candidates;
    returns positions into ``candidates``."""
    strategy = make_strategy(name, seed, mc_passes)
    if labelled is None or len(labelled) == 0:
        X, y = candidates, np.full(len(candidates), np.nan)
        offset = 0
    else:
        X = np.concatenate([labelled, candidates])
        y = np.concatenate([np.asarray(labelled_labels, dtype=float), np.full(len(candidates), np.nan)])
        offset = len(labelled)
    # candidates=None: the peer takes the unlabelled rows of (X, y) as its candidates
    if name == "bald":
        chosen = strategy.query(X, y, ensemble=clf, fit_ensemble=False, batch_size=batch_size)
    else:
        chosen = strategy.query(X, y, clf=clf, fit_clf=False, batch_size=batch_size)
    return np.asarray(chosen, dtype=np.int64) - offset


def selector(name: str, seed: int, mc_passes: int = 10):
    """A ``(pool, batch_size) -> positions`` callable for
    :func:`distillery.components.selection.loop.run_active_learning` that lets the peer select from the
    loop's pool with the loop's model."""
    calls = {"n": 0}

    def select(pool, batch_size):
        calls["n"] += 1
        clf = make_classifier(pool.model, pool.num_classes, seed=seed)
        return query(name, seed + calls["n"], clf, pool.features, pool.labelled_features, pool.labelled_labels,
                     batch_size, mc_passes)

    return select
