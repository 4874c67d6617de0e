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
        stage="curation", name="gx_suite",
        paper="Great Expectations data validation (suites as code, per dataset kind); embedding near-duplicate "
              "removal (cf. SemDeDup, Abbas et al. 2023)",
        summary="Kind-aware GX suite (image/tabular) with Data Docs; drop near-duplicates (faiss cosine k-NN); "
                "class balance; drift of class proportions and means against the previous data version",
        target="components.curation.curate:curate_gx_suite",
        component="components.curation.component:curate_gx_suite",
        defaults={"near_duplicate_threshold": 0.01, "max_near_duplicate_fraction": 0.05,
                  "min_class_fraction": 0.01, "max_imbalance_ratio": 10.0, "reference_rev": None,
                  "max_class_kl": 0.02, "max_mean_shift": 0.5, "drift_columns": None},
    ),
    Method(
        stage="split", name="stratified",
        paper="-",
        summary="Stratified held-out test split and stratified seed set of labels",
        target="components.curation.split:stratified_split",
        component="components.curation.component:split_stratified",
        defaults={"test_fraction": 0.2, "seed_labels": 100, "label_all": False},
    ),
    *[Method(stage="curation_step", name=name, paper=paper, summary=summary,
             target=f"components.curation.{name}:{name}",
             component=f"components.curation.component:curate_step_{name}", defaults=defaults)
      for name, paper, summary, defaults in [
          ("quality_filter", "Goyal et al., Scaling Laws for Data Filtering -- Data Curation cannot be Compute "
           "Agnostic, CVPR 2024", "Quality buckets by a per-item score; per-bucket scaling laws with repetition "
           "decay; keep the top-p bucket mix of lowest predicted error at the compute budget",
           {"score": "proxy_loss", "buckets": 4, "budget": None, "fit_passes": [0.25, 0.5, 1, 2, 4],
            "val_fraction": 0.2, "repeats": 2, "eta0": 0.001, "alpha": 0.001}),
          ("consensus", "Kong et al., Robust Consensus Clustering and its Applications for Advertising "
           "Forecasting, arXiv 2301.00717", "l1 consensus of several annotators' labels by ADMM "
           "(min sum_t ||M_t - HH^T||_1); per-annotator reliability",
           {"annotations": None, "iterations": 100, "block_size": 1500}),
          ("info_gain", "Information-gain feature selection as in MGTAB (Shi et al., 2023)",
           "Keep the k tabular features of highest IG(Y;F) = H(Y) - H(Y|F) (quantile-binned)",
           {"k": 20, "bins": 10}),
          ("ppp", "PPP: k-means validated by a GMM initialised from it (methods.md section 3)",
           "Choose k where k-means and a GMM started from it agree and are stable across seeds; "
           "cluster assignments into meta, data unchanged",
           {"k_min": 2, "k_max": 12, "seeds": 3, "components": 20, "covariance": "diag", "tolerance": 0.05}),
      ]],
]
