"""Figures logged to MLflow: confusion matrix and learning curve."""
from __future__ import annotations

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: tasks run in pods and subprocesses without a display
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix_figure(labels: np.ndarray, predicted: np.ndarray, class_names: list[str], title: str):
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ConfusionMatrixDisplay.from_predictions(labels, predicted, labels=range(len(class_names)),
                                            display_labels=class_names, ax=ax, colorbar=False)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def learning_curve_figure(n_labels: list[int], accuracy: list[float], reference: dict[str, float]):
    """Test accuracy of the teacher per round against labels used; horizontal lines for ``reference``."""
    plt = _pyplot()
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
