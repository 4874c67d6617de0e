"""Curation steps: published methods applied to the curated dataset, each producing a new DVC version."""
from distillery.components.core.registry import Method

METHODS = [
    *[Method(stage="curation_step", name=name, paper=paper, summary=summary,
             target=f"distillery.components.curation_step.{name}:{name}", defaults=defaults)
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
          ("ppp", "PPP: k-means validated by a GMM initialised from it "
                  "(k chosen where both agree and are stable across seeds)",
           "Choose k where k-means and a GMM started from it agree and are stable across seeds; "
           "cluster assignments into meta, data unchanged",
           {"k_min": 2, "k_max": 12, "seeds": 3, "components": 20, "covariance": "diag", "tolerance": 0.05}),
      ]],
]
