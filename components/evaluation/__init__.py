"""Evaluation stage: test metrics, figures, model logging, gated registry promotion, OOD model selection."""
from components.registry import Method

METHODS = [
    Method("evaluation", "classification", "Guo et al., On Calibration of Modern Neural Networks, ICML 2017 (ECE)",
           "Accuracy, macro-F1, ECE, fairness gaps; confusion matrix, reliability diagram, learning curve; "
           "gated champion/challenger promotion",
           "components.evaluation.metrics:classification_metrics", "components.evaluation.component:evaluate_classification",
           defaults={"ece_bins": 15, "metric": "accuracy", "model_name": "",
                     # promotion gate (components/evaluation/gate.py): no extra conditions by default
                     "gate": {"min": {}, "max": {}, "beat_champion": True}}),
    Method("evaluation", "ood_selection", "Ye et al., Towards a Theoretical Framework of Out-of-Distribution "
           "Generalization, NeurIPS 2021",
           "Pick among candidate models by Acc - r*V: penultimate-feature variation across training domains",
           "components.evaluation.ood_selection:evaluate_candidates",
           "components.evaluation.component:evaluate_ood_selection",
           defaults={"candidates": {}, "domains": [{"name": "rot0"}, {"name": "rot15", "rotate": 15},
                                                   {"name": "rot30", "rotate": 30}],
                     "informative_threshold": 0.3, "tolerance": 0.1, "grid_size": 128, "max_per_group": 200}),
    Method("evaluation", "backdoor_audit", "Liu et al., Backdoor Attacks Against Dataset Distillation, NDSS 2023",
           "Trains a fresh model on a (distilled) dataset; clean accuracy and attack success rate of a patch trigger "
           "on held-out images; flags ASR > max(floor, factor x the untriggered target rate)",
           "components.distillation.backdoor_audit:audit_backdoor", "components.evaluation.component:evaluate_backdoor_audit",
           defaults={"target_class": 0, "trigger_size": 4, "trigger_corner": "bottom-right", "trigger_pattern": None,
                     "arch": "small_cnn", "arch_kwargs": {}, "epochs": 300, "lr": 1e-3, "batch_size": 64,
                     "floor": 0.2, "factor": 3.0},
           standalone=True),  # inputs: the dataset to audit and held-out images, not a pipeline's models
]
