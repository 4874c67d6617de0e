"""Dataset audit (a standalone stage: it audits a dataset, e.g. a distilled one, not a pipeline's models)."""
from distillery.components.core.registry import Method

METHODS = [
    Method("audit", "backdoor_audit", "Liu et al., Backdoor Attacks Against Dataset Distillation, NDSS 2023",
           "Trains a fresh model on a (distilled) dataset; clean accuracy and attack success rate of a patch trigger "
           "on held-out images; flags ASR > max(floor, factor x the untriggered target rate)",
           "distillery.components.audit.backdoor_audit:audit_backdoor",
           defaults={"target_class": 0, "trigger_size": 4, "trigger_corner": "bottom-right", "trigger_pattern": None,
                     "arch": "small_cnn", "arch_kwargs": {}, "epochs": 300, "lr": 1e-3, "batch_size": 64,
                     "floor": 0.2, "factor": 3.0}),
]
