"""Dataset distillation: a few synthetic items per class that train a model almost as well as the real set."""
from distillery.components.core.registry import Method

METHODS = [
    Method("dataset_distillation", "distribution_matching",
           "Zhao & Bilen, Dataset Condensation with Distribution Matching, WACV 2023 (arXiv:2110.04181)",
           "A few synthetic images per class whose mean embeddings under freshly sampled random ConvNets match "
           "the real class means (Siamese augmentation on both); initialised from real images",
           "distillery.components.dataset_distillation.distribution_matching:distil_dataset",
           defaults={"ipc": 10, "iterations": 1000, "lr": 1.0, "momentum": 0.5, "batch_real": 256, "width": 128,
                     "depth": 3, "augment": True}),
]
