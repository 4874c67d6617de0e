"""Split stage: the held-out test split, the unlabelled pool and the seed labels."""
from distillery.components.core.registry import Method

METHODS = [
    Method(
        stage="split", name="stratified",
        paper="-",
        summary="Stratified held-out test split and stratified seed set of labels",
        target="distillery.components.split.stratified:stratified_split",
        defaults={"test_fraction": 0.2, "seed_labels": 100, "label_all": False},
    ),
]
