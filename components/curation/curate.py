"""Curation: validate a dataset version with Great Expectations, then drop exact duplicates.

Method: data validation as code (Great Expectations suites: schema, dtypes, ranges, label set,
nulls, duplicates), see ``../shared/methods.md`` §3 "Validation". A failing suite stops the
pipeline before any training with a report naming each failed expectation and its row count.
"""
from __future__ import annotations

import numpy as np

from components.curation.validation import deduplicate, validate
from components.datasets import LabelledData, read_dataset


def curate(repo: str, path: str, rev: str | None = None,
           max_duplicate_fraction: float = 0.05) -> tuple[LabelledData, dict[str, int]]:
    """Read ``path`` at ``rev`` through DVC, validate it, de-duplicate it.

    Returns:
        the curated data (``ids`` are the row numbers in the stored version) and de-dup counts.
    Raises:
        ValidationFailed: the suite failed; nothing downstream should run.
    """
    features, labels, meta = read_dataset(repo, path, rev)
    rows = features.reshape(len(features), -1) if features.ndim > 1 else features.reshape(-1, 1)
    summary = validate(rows, labels, meta, max_duplicate_fraction)
    keep, stats = deduplicate(summary)
    data = LabelledData(rows.astype(np.float32), labels.astype(np.int64), np.arange(len(rows)), meta)
    return data.subset(keep), stats
