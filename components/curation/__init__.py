"""Curation stage: validate and clean a dataset version; split it for active learning."""
from components.registry import Method

METHODS = [
    Method(
        stage="curation", name="gx_dedup",
        paper="Great Expectations data validation (suites as code); exact de-duplication",
        summary="Validate schema, dtypes, value ranges, label set, nulls and duplicates; drop exact duplicates",
        target="components.curation.curate:curate",
        component="components.curation.component:curate_gx_dedup",
        defaults={"max_duplicate_fraction": 0.05},
    ),
    Method(
        stage="split", name="stratified",
        paper="-",
        summary="Stratified held-out test split and stratified seed set of labels",
        target="components.curation.split:stratified_split",
        component="components.curation.component:split_stratified",
        defaults={"test_fraction": 0.2, "seed_labels": 100},
    ),
]
