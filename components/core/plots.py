"""Figures logged to MLflow: confusion matrix, learning curve, reliability diagram and OOD feature
variation (evaluation); per-round score histogram of the pool and class balance of the labelled set
(selection and labelling)."""
from __future__ import annotations

import math

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: tasks run in pods and subprocesses without a display
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix_figure(labels: np.ndarray, predicted: np.ndarray, class_names: list[str], title: str):
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ConfusionMatrixDisplay.from_predictions(labels, predicted, labels=range(len(class_names)),
                                            display_labels=class_names, ax=ax, colorbar=False)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def learning_curve_figure(n_labels: list[int], accuracy: list[float], reference: dict[str, float]):
    """Test accuracy of the teacher per round against labels used; horizontal lines for ``reference``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(n_labels, accuracy, marker="o", label="teacher (per round)")
    for (name, value), style in zip(reference.items(), ["--", ":", "-."]):
        ax.axhline(value, linestyle=style, color="grey", label=f"{name} {value:.3f}")
    ax.set_xlabel("labelled examples")
    ax.set_ylabel("test accuracy")
    ax.set_title("Learning curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def log_figure(fig, artifact_file: str, also_to: tuple[str, ...] = ()) -> None:
    """Log ``fig`` to the active MLflow run (and to the runs ``also_to``), then free it: tasks make a
    few per round, and pyplot keeps every open figure alive."""
    import mlflow

    mlflow.log_figure(fig, artifact_file)
    for run_id in also_to:
        mlflow.MlflowClient().log_figure(run_id, fig, artifact_file)
    pyplot().close(fig)


def score_histogram_figure(scores: np.ndarray, selected: np.ndarray, title: str):
    """Histogram of the per-item scores of the whole pool, the selected items marked.

    Args:
        scores: ``(N,)`` the strategy's score of every pool item (higher: more worth labelling).
        selected: positions into ``scores`` of the items picked this round.
    """
    plt = pyplot()
    scores = np.asarray(scores, dtype=np.float64)
    picked = scores[np.asarray(selected, dtype=np.int64)]
    edges = np.histogram_bin_edges(scores, bins=min(50, max(10, len(scores) // 20)))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.hist(scores, bins=edges, color="lightgrey", edgecolor="grey", label=f"pool ({len(scores)} items)")
    ax.hist(picked, bins=edges, color="tab:orange", alpha=0.85, label=f"selected ({len(picked)})")
    ax.plot(picked, np.zeros_like(picked), "|", color="tab:red", markersize=14, clip_on=False,
            label="selected items")
    ax.set_xlabel("score (higher: more worth labelling)")
    ax.set_ylabel("pool items")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


def class_balance_figure(before: np.ndarray, new: np.ndarray, class_names: list[str], title: str):
    """Stacked bars of the labelled set's class counts: labelled earlier, and labelled this round."""
    plt = pyplot()
    before, new = np.asarray(before), np.asarray(new)
    x = np.arange(len(class_names))
    total = before + new
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(class_names) + 2), 4))
    ax.bar(x, before, color="tab:blue", label=f"labelled before ({int(before.sum())})")
    ax.bar(x, new, bottom=before, color="tab:orange", label=f"new this round ({int(new.sum())})")
    if total.sum():
        ax.axhline(total.sum() / len(class_names), color="grey", linestyle="--", label="balanced")
    ax.set_xticks(x, [str(c) for c in class_names], rotation=0 if len(class_names) <= 12 else 90)
    ax.set_xlabel("class")
    ax.set_ylabel("labelled items")
    ax.set_title(title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    fig.tight_layout()
    return fig


def reliability_diagram_figure(probs: np.ndarray, labels: np.ndarray, n_bins: int, title: str):
    """Reliability diagram (Guo et al., ICML 2017): accuracy against confidence in ``n_bins`` equal-width
    confidence bins, the diagonal marking perfect calibration, bar gaps the miscalibration; below, how
    many samples fall in each bin. The ECE in the legend is this binning's.

    Args:
        probs: ``(N, K)`` predicted probabilities.
        labels: ``(N,)`` true classes.
    """
    plt = pyplot()
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    confidence, correct = probs.max(1), (probs.argmax(1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)  # (lo, hi] bins
    counts = np.bincount(bins, minlength=n_bins)
    filled = counts > 0
    accuracy = np.bincount(bins, correct, n_bins)[filled] / counts[filled]
    mean_conf = np.bincount(bins, confidence, n_bins)[filled] / counts[filled]
    ece = float(np.sum(counts[filled] / len(labels) * np.abs(accuracy - mean_conf)))
    centres, width = (edges[:-1] + edges[1:]) / 2, 1.0 / n_bins
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(centres[filled], accuracy, width=width, edgecolor="black", color="tab:blue", label="accuracy")
    top.bar(centres[filled], mean_conf - accuracy, bottom=accuracy, width=width, edgecolor="tab:red",
            color="tab:red", alpha=0.3, hatch="//", label="gap to confidence")
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.set_title(title)
    top.legend(loc="upper left", title=f"ECE {ece:.4f}")
    bottom.bar(centres, counts, width=width, color="grey", edgecolor="black")
    bottom.set_xlabel("confidence (max probability)")
    bottom.set_ylabel("samples")
    bottom.set_xlim(0, 1)
    fig.tight_layout()
    return fig


def feature_variation_figure(variation: np.ndarray, informativeness: np.ndarray, threshold: float, title: str):
    """One point per penultimate feature: informativeness I_j against variation V_j (Ye et al., NeurIPS
    2021); features right of the threshold line enter the model's variation."""
    plt = pyplot()
    informative = informativeness >= threshold
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.scatter(informativeness[~informative], variation[~informative], s=14, color="lightgrey",
               edgecolor="grey", label=f"not informative ({int((~informative).sum())})")
    ax.scatter(informativeness[informative], variation[informative], s=14, color="tab:blue",
               label=f"informative ({int(informative.sum())})")
    ax.axvline(threshold, linestyle="--", color="grey")
    if informative.any():
        ax.axhline(variation[informative].mean(), linestyle=":", color="tab:red",
                   label=f"model variation {variation[informative].mean():.3f}")
    ax.set_xlabel("informativeness I_j")
    ax.set_ylabel("variation V_j across training domains")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def image_grid_figure(images: np.ndarray, feature_shape: list[int], titles: list[str], ncols: int,
                      title: str, value_range: list[float] | None = None):
    """A matplotlib grid of images (rows of ``ncols``); ``images`` ``(N, D)`` raw features."""
    plt = pyplot()
    lo, hi = value_range or (float(np.min(images)), float(np.max(images)))
    nrows = max(1, math.ceil(len(images) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.1 * ncols, 1.25 * nrows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label in zip(axes.flat, images, titles):
        image = np.asarray(image, dtype=np.float32).reshape(feature_shape)
        image = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        ax.imshow((image - lo) / (hi - lo), cmap="gray", vmin=0, vmax=1)
        ax.set_title(label, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
