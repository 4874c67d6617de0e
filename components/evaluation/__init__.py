"""Evaluation stage: test metrics, figures, model logging, registry promotion."""
from components.registry import Method

METHODS = [
    Method("evaluation", "classification", "Guo et al., On Calibration of Modern Neural Networks, ICML 2017 (ECE)",
           "Accuracy, macro-F1, ECE; confusion matrix and learning curve; champion/challenger promotion",
           "components.evaluation.metrics:classification_metrics", "components.evaluation.component:evaluate_classification",
           defaults={"ece_bins": 15, "metric": "accuracy", "model_name": ""}),
]
