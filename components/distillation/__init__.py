"""Distillation stage: compress the final teacher into a small student."""
from components.registry import Method

METHODS = [
    Method("distillation", "hinton_kd", "Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, arXiv:1503.02531 (2015)",
           "Student learns from hard labels and the teacher's temperature-softened outputs over labelled set and pool",
           "components.distillation.hinton_kd:distil", "components.distillation.component:distil_hinton_kd",
           defaults={"student": "mlp", "hidden": 40, "student_kwargs": {}, "temperature": 4.0, "alpha": 0.1,
                     "epochs": 60, "lr": 2e-3, "batch_size": 64}),
    Method("distillation", "fitnets", "Romero et al., FitNets: Hints for Thin Deep Nets, ICLR 2015 (arXiv:1412.6550)",
           "A regressor on a student layer learns the teacher's hint layer (MSE), then Hinton KD",
           "components.distillation.fitnets:distil", "components.distillation.component:distil_fitnets",
           defaults={"student": "mlp", "hidden": 40, "student_kwargs": {}, "hint_layer": "", "guided_layer": "",
                     "hint_epochs": 20, "temperature": 4.0, "alpha": 0.1, "epochs": 60, "lr": 2e-3, "batch_size": 64}),
    Method("distillation", "lead", "Sun et al., LEAD: Liberal Feature-based Distillation for Dense Retrieval, "
                                   "WSDM 2024 (arXiv:2212.05225)",
           "Aligns in-batch similarity distributions of randomly paired teacher/student layers (any architectures), "
           "layers weighted by the teacher's per-layer loss, plus KD",
           "components.distillation.lead:distil", "components.distillation.component:distil_lead",
           defaults={"student": "mlp", "hidden": 40, "student_kwargs": {}, "teacher_layers": [],
                     "student_layers": [], "layers_per_model": 5, "redraw_every": 20, "layer_temperature": 10.0,
                     "similarity_temperature": 0.1, "temperature": 4.0, "alpha": 0.1, "epochs": 60, "lr": 2e-3,
                     "batch_size": 64}),
    Method("distillation", "prod", "Lin et al., PROD: Progressive Distillation for Dense Retrieval, WWW 2023 "
                                   "(arXiv:2209.13335)",
           "Distils through increasingly strong teachers, each stage guarded by KL to a frozen copy of the student, "
           "then on the items the teacher gets right and the student wrong",
           "components.distillation.prod:distil", "components.distillation.component:distil_prod",
           defaults={"student": "mlp", "hidden": 40, "student_kwargs": {}, "chain_checkpoints": [0.07, 0.33],
                     "chain_epochs": 20, "hard_epochs": 5, "temperature": 4.0, "alpha": 0.1, "epochs": 60, "lr": 2e-3,
                     "batch_size": 64}),
    Method("distillation", "reliant", "Dong et al., RELIANT: Fair Knowledge Distillation for Graph Neural Networks, "
                                      "SDM 2023 (arXiv:2301.01150)",
           "KD plus a group-gap surrogate on the student's outputs (ΔSP or ΔEO) for a sensitive attribute; "
           "learnable per-item input proxies maximise the gap, the student is trained on their mean",
           "components.distillation.reliant:distil", "components.distillation.component:distil_reliant",
           defaults={"student": "mlp", "hidden": 40, "input_proxy": 2, "sensitive_attribute": "",
                     "bias_weight": 2.0, "fairness": "sp", "positive_class": 1, "temperature": 4.0, "alpha": 0.1,
                     "epochs": 60, "lr": 2e-3, "batch_size": 64}),
    Method("dataset_distillation", "distribution_matching",
           "Zhao & Bilen, Dataset Condensation with Distribution Matching, WACV 2023 (arXiv:2110.04181)",
           "A few synthetic images per class whose mean embeddings under freshly sampled random ConvNets match "
           "the real class means (Siamese augmentation on both); initialised from real images",
           "components.distillation.dataset_dm:distil_dataset", "components.distillation.component:distil_dataset_dm",
           defaults={"ipc": 10, "iterations": 1000, "lr": 1.0, "momentum": 0.5, "batch_real": 256, "width": 128,
                     "depth": 3, "augment": True}),
]
