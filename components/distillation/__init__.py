"""Distillation stage: compress the final teacher into a small student."""
from components.registry import Method

METHODS = [
    Method("distillation", "hinton_kd", "Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, arXiv:1503.02531 (2015)",
           "Student learns from hard labels and the teacher's temperature-softened outputs over labelled set and pool",
           "components.distillation.hinton_kd:distil", "components.distillation.component:distil_hinton_kd",
           defaults={"student": "mlp", "hidden": 40, "temperature": 4.0, "alpha": 0.1, "epochs": 60,
                     "lr": 2e-3, "batch_size": 64}),
]
