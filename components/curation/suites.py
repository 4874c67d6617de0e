"""Great Expectations suites as code, one per dataset kind, with near-duplicate, class-balance and
drift expectations.

Method: data validation as code (Great Expectations suites), the Great Expectations documentation
(greatexpectations.io); near-duplicates by embedding distance (:mod:`distillery.components.curation.near_duplicates`).
Each suite runs on a table with one row per sample:

- ``image`` (:func:`image_suite`): a per-sample summary (label, size, dtype, min/max/mean/std,
  missing and non-finite counts), since a 784-pixel image would need 784 columns.
- ``tabular`` (:func:`tabular_suite`): the named feature columns themselves (``feature_names`` in
  ``dataset.json``) and the label.

Both tables gain the columns the shared expectations check: ``class_fraction`` and
``class_imbalance`` (class balance) and ``near_duplicate_of`` (near-duplicates; an exact duplicate
is one at distance 0, so ``gx_dedup``'s exact-duplicate check is part of it). Drift against the
previous data version (:func:`drift_checks`) compares class proportions by KL divergence
(``ExpectColumnKLDivergenceToBeLessThan``) and column means against the reference mean within a
number of reference standard deviations (``ExpectColumnMeanToBeBetween``): on MNIST that is the
10 class proportions and two summary columns, not 784 per-pixel tests.

A suite that names a column the table lacks fails with :class:`MissingColumnError` before any
validation runs. A failing suite raises :class:`~distillery.components.curation.validation.ValidationFailed`
naming each failed expectation; Data Docs are built either way when a report folder is given.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from distillery.components.curation.near_duplicates import embed, near_duplicate_of
from distillery.components.curation.validation import (
    NUMERIC_DTYPES,
    Check,
    check_sizes,
    feature_checks,
    raise_failures,
    run_checks,
)

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # before any `import great_expectations`

LABEL, CLASS_FRACTION, CLASS_IMBALANCE, NEAR_DUPLICATE_OF = ("label", "class_fraction", "class_imbalance",
                                                             "near_duplicate_of")
IMAGE_COLUMNS = ["label", "n_features", "feature_dtype", "feature_min", "feature_max", "feature_mean",
                 "feature_std", "n_missing", "n_infinite"]
IMAGE_DRIFT_COLUMNS = ["feature_mean", "feature_std"]
LABEL_DTYPES = ["int64", "int32", "int16", "int8"]


class MissingColumnError(KeyError):
    """A suite references a column that the data does not have."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


@dataclass(frozen=True)
class SuiteParams:
    """Thresholds of the suite (the ``gx_suite`` curation method's parameters, minus ``reference_rev``).

    Attributes:
        near_duplicate_threshold: cosine distance at or below which two samples are near-duplicates.
        max_near_duplicate_fraction: the suite fails if more rows than this are near-duplicates of
            an earlier row.
        min_class_fraction: every class of the label set holds at least this share of the rows.
        max_imbalance_ratio: largest class count / smallest class count at most this.
        max_class_kl: KL(current class proportions || reference proportions) at most this. KL is
            gentle: sampling alone gives about (k-1)/(2N) (0.001 for 10 classes and 5,000 rows),
            and one of 10 classes shrinking from 10% to 2% of the rows gives only 0.048.
        max_mean_shift: each drift column's mean within this many reference standard deviations
            of the reference mean.
        drift_columns: columns whose mean shift is checked; ``None``: image ``feature_mean`` and
            ``feature_std``, tabular every feature column.
    """

    near_duplicate_threshold: float = 0.01
    max_near_duplicate_fraction: float = 0.05
    min_class_fraction: float = 0.01
    max_imbalance_ratio: float = 10.0
    max_class_kl: float = 0.02
    max_mean_shift: float = 0.5
    drift_columns: list[str] | None = None


@dataclass
class Reference:
    """Statistics of the previous data version that drift is measured against."""

    rev: str
    class_weights: list[float]
    column_stats: dict[str, tuple[float, float]] = field(default_factory=dict)  # column -> (mean, std)


# --- tables -------------------------------------------------------------------------------------

def feature_names(meta: dict, n_features: int) -> list[str]:
    """Column names of a tabular dataset's ``n_features`` feature columns, in order: the
    ``feature_names`` of ``dataset.json``, ``feature_<i>`` for columns it does not name. Names
    beyond the data's columns name no column, so a suite referencing them fails clearly."""
    names = [str(n) for n in meta.get("feature_names") or []][:n_features]
    return names + [f"feature_{i}" for i in range(len(names), n_features)]


def image_table(features: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """``(N, D)`` features -> one summary row per sample (columns :data:`IMAGE_COLUMNS`)."""
    x = np.asarray(features).reshape(len(features), -1)
    numeric = x.dtype.kind in "biuf"
    values = x.astype(np.float64) if numeric else np.full(x.shape, np.nan)
    finite = np.where(np.isfinite(values), values, np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN samples: the suite reports them
        table = pd.DataFrame({
            "label": labels,
            "n_features": np.full(len(x), x.shape[1]),
            "feature_dtype": str(x.dtype),
            "feature_min": np.nanmin(finite, axis=1),
            "feature_max": np.nanmax(finite, axis=1),
            "feature_mean": np.nanmean(finite, axis=1),
            "feature_std": np.nanstd(finite, axis=1),
            "n_missing": np.isnan(values).sum(axis=1) if numeric else x.shape[1],
            "n_infinite": np.isinf(values).sum(axis=1),
        })
    return table[IMAGE_COLUMNS]


def tabular_table(features: np.ndarray, labels: np.ndarray, meta: dict) -> pd.DataFrame:
    """``(N, D)`` features -> the feature columns by name, then ``label``."""
    x = np.asarray(features).reshape(len(features), -1)
    table = pd.DataFrame(x, columns=feature_names(meta, x.shape[1]))
    table[LABEL] = labels
    return table


TABLES = {"image": lambda f, y, meta: image_table(f, y), "tabular": tabular_table}


def with_class_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Add each row's class share and ``largest class count / its class count``."""
    counts = table[LABEL].value_counts(dropna=True)
    table[CLASS_FRACTION] = table[LABEL].map(counts / len(table)).astype(float)
    table[CLASS_IMBALANCE] = table[LABEL].map(counts.max() / counts).astype(float)
    return table


# --- suites ---------------------------------------------------------------------------------------

def image_suite(meta: dict, params: SuiteParams) -> list[Check]:
    """Expectations of an ``image`` dataset, on its per-sample summary table."""
    import great_expectations as gx

    schema = Check("columns of the summary table are as expected (schema)",
                   gx.expectations.ExpectTableColumnsToMatchSet(column_set=IMAGE_COLUMNS + _DERIVED, exact_match=True))
    return [schema, *feature_checks(meta), *label_checks(meta, params)]


def tabular_suite(meta: dict, params: SuiteParams) -> list[Check]:
    """Expectations of a ``tabular`` dataset, on its named feature columns."""
    import great_expectations as gx

    E = gx.expectations
    names = ([str(n) for n in meta.get("feature_names") or []]
             or feature_names(meta, int(np.prod(meta["feature_shape"]))))
    big = float(np.finfo(np.float64).max)
    checks = [Check("columns are the named features, the label and the derived columns (schema)",
                    E.ExpectTableColumnsToMatchSet(column_set=names + [LABEL] + _DERIVED, exact_match=True))]
    for name in names:
        checks += [
            Check(f"feature {name!r} is numeric (dtype)",
                  E.ExpectColumnValuesToBeInTypeList(column=name, type_list=NUMERIC_DTYPES)),
            Check(f"feature {name!r} has no missing values (nulls)", E.ExpectColumnValuesToNotBeNull(column=name)),
            Check(f"feature {name!r} is finite", E.ExpectColumnValuesToBeBetween(column=name, min_value=-big,
                                                                                max_value=big)),
        ]
        if meta.get("value_range"):
            lo, hi = meta["value_range"]
            checks.append(Check(f"feature {name!r} is in [{lo}, {hi}] (value range)",
                                E.ExpectColumnValuesToBeBetween(column=name, min_value=lo, max_value=hi)))
    return checks + label_checks(meta, params)


SUITES = {"image": image_suite, "tabular": tabular_suite}
_DERIVED = [CLASS_FRACTION, CLASS_IMBALANCE, NEAR_DUPLICATE_OF]


def label_checks(meta: dict, params: SuiteParams) -> list[Check]:
    """Labels, class balance and near-duplicates: the same for every kind."""
    import great_expectations as gx

    E = gx.expectations
    classes = list(range(len(meta["classes"])))
    t = params.near_duplicate_threshold
    return [
        Check("labels are integers (dtype)", E.ExpectColumnValuesToBeInTypeList(column=LABEL, type_list=LABEL_DTYPES)),
        Check("labels are present (nulls)", E.ExpectColumnValuesToNotBeNull(column=LABEL)),
        Check(f"labels are in the label set 0..{len(classes) - 1}",
              E.ExpectColumnValuesToBeInSet(column=LABEL, value_set=classes)),
        Check(f"every class of the label set 0..{len(classes) - 1} occurs (class balance)",
              E.ExpectColumnDistinctValuesToContainSet(column=LABEL, value_set=classes), observed=True),
        Check(f"every class holds at least {params.min_class_fraction:.1%} of the rows (class balance)",
              E.ExpectColumnValuesToBeBetween(column=CLASS_FRACTION, min_value=params.min_class_fraction)),
        Check(f"largest / smallest class count is at most {params.max_imbalance_ratio:g} (class balance)",
              E.ExpectColumnValuesToBeBetween(column=CLASS_IMBALANCE, max_value=params.max_imbalance_ratio)),
        Check(f"rows that are near-duplicates (cosine distance <= {t:g}) of an earlier row are at most "
              f"{params.max_near_duplicate_fraction:.0%} (near duplicates)",
              E.ExpectColumnValuesToBeNull(column=NEAR_DUPLICATE_OF, mostly=1.0 - params.max_near_duplicate_fraction)),
    ]


def drift_checks(reference: Reference, params: SuiteParams, columns: list[str]) -> list[Check]:
    """Class proportions and column means against the previous data version."""
    import great_expectations as gx

    E = gx.expectations
    weights = reference.class_weights
    checks = [Check(f"class proportions within KL divergence {params.max_class_kl:g} of data version "
                    f"{reference.rev[:10]} (drift)",
                    E.ExpectColumnKLDivergenceToBeLessThan(
                        column=LABEL, threshold=params.max_class_kl,
                        partition_object={"values": list(range(len(weights))), "weights": weights}),
                    observed=True)]
    k = params.max_mean_shift
    for column in columns:
        if column not in reference.column_stats:
            continue  # the previous version had no such column: nothing to compare with
        mean, std = reference.column_stats[column]
        checks.append(Check(f"mean of {column!r} within {k:g} sd of its mean {mean:.4g} in data version "
                            f"{reference.rev[:10]} (drift)",
                            E.ExpectColumnMeanToBeBetween(column=column, min_value=mean - k * std,
                                                          max_value=mean + k * std), observed=True))
    return checks


def referenced_columns(checks: list[Check]) -> list[str]:
    """Every column an expectation of ``checks`` names, in order of first mention."""
    found: dict[str, None] = {}
    for check in checks:
        e = check.expectation
        for name in ([getattr(e, "column", None)] + list(getattr(e, "column_list", None) or [])
                     + list(getattr(e, "column_set", None) or [])):
            if name is not None:
                found.setdefault(str(name), None)
    return list(found)


def require_columns(suite: str, checks: list[Check], columns: list[str], dataset: str,
                    also: list[str] = ()) -> None:
    """Raise :class:`MissingColumnError` naming every column the suite (its ``checks``, and the
    columns in ``also``) needs that the data lacks."""
    needed = list(dict.fromkeys([*referenced_columns(checks), *also]))
    missing = [c for c in needed if c not in set(columns)]
    if missing:
        raise MissingColumnError(f"the {suite!r} suite references column(s) {missing} that dataset "
                                 f"{dataset!r} does not have; its columns are {list(columns)}")


# --- running ---------------------------------------------------------------------------------------

def reference_of(features: np.ndarray, labels: np.ndarray, meta: dict, rev: str, n_classes: int) -> Reference:
    """Drift statistics of a previous version: class proportions and per-column mean and sd."""
    table = TABLES[meta.get("kind", "image")](features, labels, meta)
    counts = np.bincount(np.asarray(labels, dtype=np.int64).clip(0, n_classes), minlength=n_classes + 1)[:n_classes]
    stats = {c: (float(table[c].mean()), float(table[c].std())) for c in table.columns
             if c != LABEL and pd.api.types.is_numeric_dtype(table[c])}
    return Reference(rev, (counts / max(counts.sum(), 1)).tolist(), stats)


@dataclass
class SuiteOutcome:
    """A passed suite: the rows to keep (near-duplicates removed) and numbers for logging."""

    keep: np.ndarray
    stats: dict[str, float]
    report: dict


def validate_suite(features: np.ndarray, labels: np.ndarray, meta: dict, params: SuiteParams = SuiteParams(),
                   reference: Reference | None = None, report_dir: str | None = None,
                   notes: list[str] | None = None) -> SuiteOutcome:
    """Validate a dataset with the suite of its kind (``meta["kind"]``).

    Args:
        features: ``(N, D)`` numeric array.
        labels: ``(N,)`` labels as stored.
        meta: the dataset's ``dataset.json`` (``kind``, ``feature_shape``, ``classes``, ...).
        reference: statistics of the previous data version; ``None`` skips the drift expectations.
        report_dir: if given, ``data_docs/`` (GX Data Docs, ``index.html``) and ``suite_report.json``
            are written there, whether the suite passes or fails.
        notes: lines for the report (e.g. why drift was not checked).
    Raises:
        MissingColumnError: the suite names a column the data lacks (before anything runs).
        ValidationFailed: an expectation failed; the message names each one.
    """
    name, kind = meta.get("name", "?"), meta.get("kind")
    if kind not in SUITES:
        raise ValueError(f"dataset {name!r} has kind {kind!r}; suites exist for {sorted(SUITES)}")
    check_sizes(features, labels, meta)
    table = TABLES[kind](features, labels, meta)
    drift_columns = list(params.drift_columns or (IMAGE_DRIFT_COLUMNS if kind == "image"
                                                 else [c for c in table.columns if c != LABEL]))
    checks = SUITES[kind](meta, params)
    drift = drift_checks(reference, params, drift_columns) if reference else []
    # the drift columns are checked even when there is no reference: a typo must not wait for one
    require_columns(kind, checks + drift, [*table.columns, *_DERIVED], name, also=drift_columns)

    table = with_class_columns(table)
    rows = np.asarray(features).reshape(len(features), -1)
    of = near_duplicate_of(embed(rows, kind), params.near_duplicate_threshold, exact_groups=_byte_groups(rows))
    table[NEAR_DUPLICATE_OF] = np.where(of >= 0, of, np.nan)

    docs_dir = None
    if report_dir is not None:
        docs_dir = Path(report_dir) / "data_docs"
        docs_dir.mkdir(parents=True, exist_ok=True)
    results = run_checks(table, checks + drift, suite_name=f"{kind}-dataset", docs_dir=docs_dir)
    report = {
        "dataset": name, "kind": kind, "params": asdict(params), "notes": list(notes or []),
        "reference_rev": reference.rev if reference else None,
        "expectations": [{"description": c.description, "expectation": r.expectation_config.type,
                          "success": bool(r.success), "result": _jsonable(r.result)}
                         for c, r in zip(checks + drift, results)],
    }
    if report_dir is not None:
        (Path(report_dir) / "suite_report.json").write_text(json.dumps(report, indent=2, default=str))
    raise_failures(name, checks + drift, results, len(table))

    keep, stats = near_duplicate_keep(table)
    stats.update(_balance_stats(table, len(meta["classes"])))
    by_type = {r.expectation_config.type: r for r in results}
    kl = by_type.get("expect_column_kl_divergence_to_be_less_than")
    stats["drift_checked"] = float(reference is not None)
    if kl is not None and kl.result.get("observed_value") is not None:
        stats["class_kl_divergence"] = float(kl.result["observed_value"])
    return SuiteOutcome(keep, stats, report)


def near_duplicate_keep(table: pd.DataFrame) -> tuple[np.ndarray, dict[str, float]]:
    """Rows to keep: the first of each near-duplicate group. As in exact de-duplication
    (:func:`distillery.components.curation.validation.deduplicate`), a group whose members disagree on the
    label is dropped whole: no member's label can be trusted."""
    of = table[NEAR_DUPLICATE_OF].to_numpy()
    group = np.where(np.isnan(of), np.arange(len(of)), of).astype(np.int64)
    labels_per_group = pd.Series(table[LABEL].to_numpy()).groupby(group).nunique()
    conflicting = labels_per_group.index[labels_per_group > 1].to_numpy()
    is_dup = ~np.isnan(of)
    keep = ~is_dup & ~np.isin(group, conflicting)
    stats = {"rows_in": float(len(of)), "near_duplicates": float(is_dup.sum()),
             "near_duplicate_fraction": float(is_dup.mean()),
             "near_duplicate_groups": float(len(np.unique(group[is_dup]))),
             "conflicting_label_groups_removed": float(len(conflicting)), "rows_out": float(keep.sum())}
    return np.flatnonzero(keep), stats


def _balance_stats(table: pd.DataFrame, n_classes: int) -> dict[str, float]:
    counts = np.bincount(table[LABEL].to_numpy(dtype=np.int64), minlength=n_classes)
    return {"min_class_fraction": float(counts.min() / counts.sum()),
            "imbalance_ratio": float(counts.max() / max(counts.min(), 1))}


def _byte_groups(rows: np.ndarray) -> np.ndarray:
    """``(N,)`` ids, equal for rows with identical bytes (hashing is much faster than ``np.unique``
    over rows)."""
    digests = [hashlib.sha1(row.tobytes()).digest() for row in np.ascontiguousarray(rows)]
    return pd.factorize(pd.Series(digests))[0]


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))

