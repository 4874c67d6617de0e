"""Evaluation stage: test metrics, figures, model logging, gated registry promotion, OOD model selection."""
from distillery.components.core.registry import Method

METHODS = [
    Method("evaluation", "classification", "Guo et al., On Calibration of Modern Neural Networks, ICML 2017 (ECE)",
           "Accuracy, macro-F1, ECE, fairness gaps; confusion matrix, reliability diagram, learning curve; "
           "gated champion/challenger promotion",
           "distillery.components.evaluation.metrics:classification_metrics",
           defaults={"ece_bins": 15, "metric": "accuracy", "model_name": "",
                     # promotion gate (components/evaluation/gate.py): no extra conditions by default
                     "gate": {"min": {}, "max": {}, "beat_champion": True}}),
    Method("evaluation", "ood_selection", "Ye et al., Towards a Theoretical Framework of Out-of-Distribution "
           "Generalization, NeurIPS 2021",
           "Pick among candidate models by Acc - r*V: penultimate-feature variation across training domains",
           "distillery.components.evaluation.ood_selection:evaluate_candidates",
           defaults={"candidates": {}, "domains": [{"name": "rot0"}, {"name": "rot15", "rotate": 15},
                                                   {"name": "rot30", "rotate": 30}],
                     "informative_threshold": 0.3, "tolerance": 0.1, "grid_size": 128, "max_per_group": 200}),
]
