"""Labelling stage: annotate the batch selection picked (the simulated oracle or Label Studio)."""
from distillery.components.core.registry import Method

METHODS = [
    Method("labelling", "simulated", "-", "Reveal the dataset's own labels (benchmark protocol)",
           "distillery.components.core.annotators:SimulatedAnnotator"),
    Method("labelling", "label_studio", "-", "Human labels from Label Studio, imported into a DVC-versioned "
           "label set (`distillery labels import`); unlabelled items are exported as Label Studio tasks",
           "distillery.components.labelling.labelstudio:LabelStudioAnnotator", {"label_set": None}),
]
