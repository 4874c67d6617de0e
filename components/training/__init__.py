"""Training stage: the teacher, retrained from scratch on the labelled set each round."""
from components.registry import Method

METHODS = [
    Method("training", "small_cnn", "LeCun et al., Gradient-based learning applied to document recognition, Proc. IEEE 1998",
           "Two-block CNN (~409k parameters on MNIST) trained with Adam and cross-entropy",
           "components.training.train:train_classifier", "components.training.component:train_small_cnn",
           defaults={"epochs": 30, "lr": 1e-3, "batch_size": 32, "channels": 16, "hidden": 256}),
]
