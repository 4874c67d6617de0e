"""Great Expectations suite for a labelled dataset: schema, dtypes, value ranges, label set, nulls
and exact duplicates.

GX validates tables, and a dataset of 5,000 x 784 pixels would need an expectation per pixel column,
so each sample is summarised into one row (its label, length, min/max, missing and non-finite
counts, dtype, and a fingerprint of its bytes) and the suite runs on that summary table. Every
failure is reported by a readable name and the number of rows failing it.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

NUMERIC_DTYPES = ["uint8", "uint16", "int8", "int16", "int32", "int64", "float16", "float32", "float64"]
SUMMARY_COLUMNS = ["label", "n_features", "feature_dtype", "feature_min", "feature_max",
                   "n_missing", "n_infinite", "fingerprint"]


class ValidationFailed(ValueError):
    """The data failed its suite; ``failures`` lists ``(description, failing_row_count)``."""

    def __init__(self, dataset: str, failures: list[tuple[str, int]], n_rows: int):
        self.failures = failures
        lines = "\n".join(f"  - {desc}: {count} of {n_rows} rows fail" for desc, count in failures)
        super().__init__(f"dataset {dataset!r} failed {len(failures)} expectation(s):\n{lines}")


@dataclass(frozen=True)
class Check:
    """One expectation of the suite, with the words a user reads when it fails."""

    description: str
    expectation: object


def summarise(rows, labels) -> pd.DataFrame:
    """One summary row per sample. ``rows`` is an ``(N, D)`` array or a list of 1-D arrays (ragged
    input, e.g. images of different sizes, is summarised too so the suite can report it)."""
    frame = []
    for row, label in zip(rows, labels):
        row = np.asarray(row)
        numeric = row.dtype.kind in "biuf"
        values = row.astype(np.float64) if numeric else np.array([np.nan])
        finite = values[np.isfinite(values)]
        frame.append({
            "label": label,
            "n_features": int(row.size),
            "feature_dtype": str(row.dtype),
            "feature_min": float(finite.min()) if finite.size else np.nan,
            "feature_max": float(finite.max()) if finite.size else np.nan,
            "n_missing": int(np.isnan(values).sum()) if numeric else int(row.size),
            "n_infinite": int(np.isinf(values).sum()),
            "fingerprint": hashlib.sha1(np.ascontiguousarray(row).tobytes()).hexdigest(),
        })
    return pd.DataFrame(frame, columns=SUMMARY_COLUMNS)


def build_checks(meta: dict, max_duplicate_fraction: float) -> list[Check]:
    import great_expectations as gx

    E = gx.expectations
    n_features = int(np.prod(meta["feature_shape"]))
    n_classes = len(meta["classes"])
    checks = [
        Check("columns of the summary table are as expected (schema)",
              E.ExpectTableColumnsToMatchSet(column_set=SUMMARY_COLUMNS, exact_match=True)),
        Check("labels are integers (dtype)",
              E.ExpectColumnValuesToBeInTypeList(column="label", type_list=["int64", "int32", "int16", "int8"])),
        Check("features are numeric (dtype)",
              E.ExpectColumnValuesToBeInSet(column="feature_dtype", value_set=NUMERIC_DTYPES)),
        Check("labels are present (nulls)", E.ExpectColumnValuesToNotBeNull(column="label")),
        Check(f"labels are in the label set 0..{n_classes - 1}",
              E.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(n_classes)))),
        Check(f"each sample has {n_features} values, shape {meta['feature_shape']} (shape)",
              E.ExpectColumnValuesToBeBetween(column="n_features", min_value=n_features, max_value=n_features)),
        Check("features contain no NaN or missing values (nulls)",
              E.ExpectColumnValuesToBeBetween(column="n_missing", min_value=0, max_value=0)),
        Check("features contain no infinite values",
              E.ExpectColumnValuesToBeBetween(column="n_infinite", min_value=0, max_value=0)),
        Check(f"rows that have an exact duplicate are at most {max_duplicate_fraction:.0%} (duplicates)",
              E.ExpectColumnValuesToBeUnique(column="fingerprint", mostly=1.0 - max_duplicate_fraction)),
    ]
    if meta.get("value_range"):
        lo, hi = meta["value_range"]
        checks += [
            Check(f"feature values are >= {lo} (value range)",
                  E.ExpectColumnValuesToBeBetween(column="feature_min", min_value=lo)),
            Check(f"feature values are <= {hi} (value range)",
                  E.ExpectColumnValuesToBeBetween(column="feature_max", max_value=hi)),
        ]
    return checks


def validate(rows, labels, meta: dict, max_duplicate_fraction: float = 0.05) -> pd.DataFrame:
    """Run the suite on a dataset; raise :class:`ValidationFailed` naming every failed expectation.

    Args:
        rows: ``(N, D)`` array, or a list of N 1-D arrays.
        labels: ``(N,)`` labels as stored (may be out of range or missing: that is what is checked).
        meta: the dataset's ``dataset.json``.
    Returns:
        the summary table (one row per sample), for de-duplication and logging.
    """
    name = meta.get("name", "?")
    if len(rows) != len(labels):
        raise ValidationFailed(name, [(f"features have {len(rows)} rows but labels have {len(labels)} "
                                       "(shape)", abs(len(rows) - len(labels)))], max(len(rows), len(labels)))
    if len(rows) == 0:
        raise ValidationFailed(name, [("the dataset has at least one sample", 0)], 0)
    summary = summarise(rows, labels)
    failures = []
    for check, result in zip(checks := build_checks(meta, max_duplicate_fraction), _run_gx(summary, checks)):
        if not result.success:
            failures.append((check.description, _failing_rows(result, len(summary))))
    if failures:
        raise ValidationFailed(name, failures, len(summary))
    return summary


def _failing_rows(result, n_rows: int) -> int:
    count = result.result.get("unexpected_count")
    return int(count) if count is not None else n_rows  # table-level expectations fail as a whole


def _run_gx(summary: pd.DataFrame, checks: list[Check]):
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    batch_definition = (context.data_sources.add_pandas("distillery")
                        .add_dataframe_asset("samples")
                        .add_batch_definition_whole_dataframe("all"))
    suite = context.suites.add(gx.ExpectationSuite(name="labelled-dataset"))
    for check in checks:
        suite.add_expectation(check.expectation)
    batch = batch_definition.get_batch(batch_parameters={"dataframe": summary})
    results = batch.validate(suite).results
    # GX orders results its own way; match them back to our checks by expectation id.
    by_id = {r.expectation_config.id: r for r in results}
    return [by_id[check.expectation.id] for check in checks]


def deduplicate(summary: pd.DataFrame) -> tuple[np.ndarray, dict[str, int]]:
    """Rows to keep (first occurrence of each exact duplicate) and counts for logging.

    A duplicate group whose copies disagree on the label is dropped entirely: no copy can be trusted.
    """
    labels_per_print = summary.groupby("fingerprint")["label"].nunique()
    conflicting = set(labels_per_print[labels_per_print > 1].index)
    first = ~summary["fingerprint"].duplicated(keep="first")
    keep = first & ~summary["fingerprint"].isin(conflicting)
    stats = {
        "rows_in": int(len(summary)),
        "exact_duplicates_removed": int((~first).sum()),
        "conflicting_label_groups_removed": len(conflicting),
        "rows_out": int(keep.sum()),
    }
    return np.flatnonzero(keep.to_numpy()), stats
