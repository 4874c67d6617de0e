"""Curation stage: validate and clean a dataset version; split it for active learning."""
from distillery.components.core.registry import Method

METHODS = [
    Method(
        stage="curation", name="gx_dedup",
        paper="Great Expectations data validation (suites as code); exact de-duplication",
        summary="Validate schema, dtypes, value ranges, label set, nulls and duplicates; drop exact duplicates",
        target="distillery.components.curation.curate:curate",
        defaults={"max_duplicate_fraction": 0.05},
    ),
    Method(
        stage="curation", name="gx_suite",
        paper="Great Expectations data validation (suites as code, per dataset kind); embedding near-duplicate "
              "removal (cf. SemDeDup, Abbas et al. 2023)",
        summary="Kind-aware GX suite (image/tabular) with Data Docs; drop near-duplicates (faiss cosine k-NN); "
                "class balance; drift of class proportions and means against the previous data version",
        target="distillery.components.curation.curate:curate_gx_suite",
        defaults={"near_duplicate_threshold": 0.01, "max_near_duplicate_fraction": 0.05,
                  "min_class_fraction": 0.01, "max_imbalance_ratio": 10.0, "reference_rev": None,
                  "max_class_kl": 0.02, "max_mean_shift": 0.5, "drift_columns": None},
    ),
]
