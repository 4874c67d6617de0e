"""Distillation stage: compress the final teacher into a small student."""
from distillery.components.core.registry import Method

METHODS = [
    Method("distillation", "hinton_kd", "Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, "
                                        "arXiv:1503.02531 (2015)",
           "Student learns from hard labels and the teacher's temperature-softened outputs over labelled set and pool",
           "distillery.components.distillation.hinton_kd:distil",
           defaults={"student": "mlp", "hidden": 40, "student_kwargs": {}, "temperature": 4.0, "alpha": 0.1,
                     "epochs": 60, "lr": 2e-3, "batch_size": 64}),
    Method("distillation", "fitnets", "Romero et al., FitNets: Hints for Thin Deep Nets, ICLR 2015 (arXiv:1412.6550)",
           "A regressor on a student layer learns the teacher's hint layer (MSE), then Hinton KD",
           "distillery.components.distillation.fitnets:distil",
           defaults={"student": "mlp", "hidden": 40, "student_kwargs": {}, "hint_layer": "", "guided_layer": "",
                     "hint_epochs": 20, "temperature": 4.0, "alpha": 0.1, "epochs": 60, "lr": 2e-3, "batch_size": 64}),
    Method("distillation", "lead", "Sun et al., LEAD: Liberal Feature-based Distillation for Dense Retrieval, "
                                   "WSDM 2024 (arXiv:2212.05225)",
           "Aligns in-batch similarity distributions of randomly paired teacher/student layers (any architectures), "
           "layers weighted by the teacher's per-layer loss, plus KD",
           "distillery.components.distillation.lead:distil",
           defaults={"student": "mlp", "hidden": 40, "student_kwargs": {}, "teacher_layers": [],
                     "student_layers": [], "layers_per_model": 5, "redraw_every": 20, "layer_temperature": 10.0,
                     "similarity_temperature": 0.1, "layer_vectors": "flat", "temperature": 4.0, "alpha": 0.1,
                     "epochs": 60, "lr": 2e-3, "batch_size": 64}),
    Method("distillation", "prod", "Lin et al., PROD: Progressive Distillation for Dense Retrieval, WWW 2023 "
                                   "(arXiv:2209.13335)",
           "Distils through increasingly strong teachers, each stage guarded by KL to a frozen copy of the student, "
           "then on the items the teacher gets right and the student wrong",
           "distillery.components.distillation.prod:distil",
           defaults={"student": "mlp", "hidden": 40, "student_kwargs": {}, "chain_checkpoints": [0.07, 0.33],
                     "chain_epochs": 20, "hard_epochs": 5, "stage_budget": "route", "pad_hard": True,
                     "continue_optimiser": True, "temperature": 4.0, "alpha": 0.1, "epochs": 60, "lr": 2e-3,
                     "batch_size": 64}),
    Method("distillation", "reliant", "Dong et al., RELIANT: Fair Knowledge Distillation for Graph Neural Networks, "
                                      "SDM 2023 (arXiv:2301.01150)",
           "KD plus a group-gap surrogate on the student's outputs (ΔSP or ΔEO) for a sensitive attribute; "
           "learnable per-item input proxies maximise the gap, the student is trained on their mean",
           "distillery.components.distillation.reliant:distil",
           defaults={"student": "mlp", "hidden": 40, "input_proxy": 2, "sensitive_attribute": "",
                     "bias_weight": 2.0, "fairness": "sp", "positive_class": 1, "temperature": 4.0, "alpha": 0.1,
                     "epochs": 60, "lr": 2e-3, "batch_size": 64},
           inputs=("sensitive",)),
]
