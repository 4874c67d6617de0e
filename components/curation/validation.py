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
from pathlib import Path

import numpy as np
import pandas as pd

NUMERIC_DTYPES = ["uint8", "uint16", "int8", "int16", "int32", "int64", "float16", "float32", "float64"]
SUMMARY_COLUMNS = ["label", "n_features", "feature_dtype", "feature_min", "feature_max",
                   "n_missing", "n_infinite", "fingerprint"]


class ValidationFailed(ValueError):
    """The data failed its suite; ``failures`` lists ``(description, failing_row_count)``; the
    count is ``None`` for an expectation on the table as a whole (its description then says what
    was observed)."""

    def __init__(self, dataset: str, failures: list[tuple[str, int | None]], n_rows: int):
        self.failures = failures
        lines = "\n".join(f"  - {desc}: {count} of {n_rows} rows fail" if count is not None else f"  - {desc}"
                          for desc, count in failures)
        super().__init__(f"dataset {dataset!r} failed {len(failures)} expectation(s):\n{lines}")


@dataclass(frozen=True)
class Check:
    """One expectation of the suite, with the words a user reads when it fails.

    ``observed``: the expectation is about an aggregate (a mean, a divergence), so a failure
    reports the observed value instead of a count of failing rows.
    """

    description: str
    expectation: object
    observed: bool = False


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


def feature_checks(meta: dict) -> list[Check]:
    """Expectations on the per-sample feature summary (dtype, shape, missing and infinite values,
    value range) that every suite over :func:`summarise`'s columns shares."""
    import great_expectations as gx

    E = gx.expectations
    n_features = int(np.prod(meta["feature_shape"]))
    checks = [
        Check("features are numeric (dtype)",
              E.ExpectColumnValuesToBeInSet(column="feature_dtype", value_set=NUMERIC_DTYPES)),
        Check(f"each sample has {n_features} values, shape {meta['feature_shape']} (shape)",
              E.ExpectColumnValuesToBeBetween(column="n_features", min_value=n_features, max_value=n_features)),
        Check("features contain no NaN or missing values (nulls)",
              E.ExpectColumnValuesToBeBetween(column="n_missing", min_value=0, max_value=0)),
        Check("features contain no infinite values",
              E.ExpectColumnValuesToBeBetween(column="n_infinite", min_value=0, max_value=0)),
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


def build_checks(meta: dict, max_duplicate_fraction: float) -> list[Check]:
    import great_expectations as gx

    E = gx.expectations
    n_classes = len(meta["classes"])
    return [
        Check("columns of the summary table are as expected (schema)",
              E.ExpectTableColumnsToMatchSet(column_set=SUMMARY_COLUMNS, exact_match=True)),
        Check("labels are integers (dtype)",
              E.ExpectColumnValuesToBeInTypeList(column="label", type_list=["int64", "int32", "int16", "int8"])),
        Check("labels are present (nulls)", E.ExpectColumnValuesToNotBeNull(column="label")),
        Check(f"labels are in the label set 0..{n_classes - 1}",
              E.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(n_classes)))),
        *feature_checks(meta),
        Check(f"rows that have an exact duplicate are at most {max_duplicate_fraction:.0%} (duplicates)",
              E.ExpectColumnValuesToBeUnique(column="fingerprint", mostly=1.0 - max_duplicate_fraction)),
    ]


def validate(rows, labels, meta: dict, max_duplicate_fraction: float = 0.05,
             docs_dir: str | None = None) -> pd.DataFrame:
    """Run the suite on a dataset; raise :class:`ValidationFailed` naming every failed expectation.

    Args:
        rows: ``(N, D)`` array, or a list of N 1-D arrays.
        labels: ``(N,)`` labels as stored (may be out of range or missing: that is what is checked).
        meta: the dataset's ``dataset.json``.
        docs_dir: if given, GX Data Docs (an HTML site, ``index.html``) of the result are built
            there, whether the suite passes or fails.
    Returns:
        the summary table (one row per sample), for de-duplication and logging.
    """
    check_sizes(rows, labels, meta)
    summary = summarise(rows, labels)
    checks = build_checks(meta, max_duplicate_fraction)
    raise_failures(meta.get("name", "?"), checks, run_checks(summary, checks, docs_dir=docs_dir), len(summary))
    return summary


def check_sizes(rows, labels, meta: dict) -> None:
    """Features and labels have the same, non-zero number of rows (else no table can be built)."""
    name = meta.get("name", "?")
    if len(rows) != len(labels):
        raise ValidationFailed(name, [(f"features have {len(rows)} rows but labels have {len(labels)} "
                                       "(shape)", abs(len(rows) - len(labels)))], max(len(rows), len(labels)))
    if len(rows) == 0:
        raise ValidationFailed(name, [("the dataset has at least one sample", 0)], 0)


def raise_failures(dataset: str, checks: list[Check], results: list, n_rows: int) -> None:
    """Raise :class:`ValidationFailed` listing every check whose GX result failed."""
    failures = [(_failure_text(check, result), None if check.observed else _failing_rows(result, n_rows))
                for check, result in zip(checks, results) if not result.success]
    if failures:
        raise ValidationFailed(dataset, failures, n_rows)


def _failure_text(check: Check, result) -> str:
    if not check.observed:
        return check.description
    value = result.result.get("observed_value")
    if result.exception_info and result.exception_info.get("raised_exception"):
        return f"{check.description}: could not be evaluated ({result.exception_info.get('exception_message')})"
    return f"{check.description}: observed {'infinite' if value is None else f'{value:.4g}'}"


def _failing_rows(result, n_rows: int) -> int:
    count = result.result.get("unexpected_count")
    return int(count) if count is not None else n_rows  # table-level expectations fail as a whole


def run_checks(table: pd.DataFrame, checks: list[Check], suite_name: str = "labelled-dataset",
               docs_dir: str | None = None) -> list:
    """Validate ``table`` with a GX suite made of ``checks``; one GX result per check, in order.

    With ``docs_dir``, the run goes through a GX Checkpoint whose ``UpdateDataDocsAction`` builds
    a local Data Docs site (``docs_dir/index.html``, the suite and the validation result pages).
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    batch_definition = (context.data_sources.add_pandas("distillery")
                        .add_dataframe_asset("samples")
                        .add_batch_definition_whole_dataframe("all"))
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name))
    for check in checks:
        suite.add_expectation(check.expectation)
    if docs_dir is None:
        results = batch_definition.get_batch(batch_parameters={"dataframe": table}).validate(suite).results
    else:
        context.add_data_docs_site("local", {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=suite_name, data=batch_definition, suite=suite))
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=suite_name, validation_definitions=[definition], result_format="SUMMARY",
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data-docs", site_names=["local"])]))
        run = checkpoint.run(batch_parameters={"dataframe": table})
        results = next(iter(run.run_results.values())).results
        # GX copies its tutorial animations (3.3 of the site's 4 MB) into every site; no page uses them
        for animation in Path(docs_dir).glob("static/images/*.gif"):
            animation.unlink()
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
