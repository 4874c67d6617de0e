"""Curation: validate a dataset version with Great Expectations, then drop duplicates.

Method: data validation as code (Great Expectations suites: schema, dtypes, ranges, label set,
nulls, duplicates, class balance, drift). A failing
suite stops the pipeline before any training with a report naming each failed expectation and its
row count. Two validating loaders (registry stage ``curation``):

- :func:`curate` (``gx_dedup``): one summary-table suite for every dataset, exact de-duplication.
- :func:`curate_gx_suite` (``gx_suite``): the suite of the dataset's kind
  (:mod:`distillery.components.curation.suites`), near-duplicate removal by embedding distance, class
  balance, and drift against the previous data version.

Both take ``report_dir``: GX Data Docs of the validation result go to ``report_dir/data_docs``
(``index.html``) whether the suite passes or fails.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from distillery.components.core.datasets import (
    DATA_DVC,
    DataVersionError,
    LabelledData,
    data_version,
    data_version_of,
    read_dataset,
)
from distillery.components.core.tracking import progress
from distillery.components.curation.validation import deduplicate, validate


def curate(repo: str, path: str, rev: str | None = None, max_duplicate_fraction: float = 0.05,
           report_dir: str | None = None) -> tuple[LabelledData, dict[str, int]]:
    """Read ``path`` at ``rev`` through DVC, validate it, de-duplicate it.

    Returns:
        the curated data (``ids`` are the row numbers in the stored version) and de-dup counts.
    Raises:
        ValidationFailed: the suite failed; nothing downstream should run.
    """
    features, labels, meta = read_dataset(repo, path, rev)
    rows = features.reshape(len(features), -1) if features.ndim > 1 else features.reshape(-1, 1)
    summary = validate(rows, labels, meta, max_duplicate_fraction, docs_dir=_docs_dir(report_dir))
    keep, stats = deduplicate(summary)
    data = LabelledData(rows.astype(np.float32), labels.astype(np.int64), np.arange(len(rows)), meta)
    return data.subset(keep), stats


def curate_gx_suite(repo: str, path: str, rev: str | None = None, reference_rev: str | None = None,
                    report_dir: str | None = None, **thresholds) -> tuple[LabelledData, dict[str, float]]:
    """Read ``path`` at ``rev``, validate it with the suite of its kind, drop near-duplicates.

    Args:
        reference_rev: git revision of the previous data version to measure drift against;
            ``None``: the last commit before ``rev`` whose ``data.dvc`` records another version
            (none: drift is skipped, and the report says why).
        thresholds: :class:`~distillery.components.curation.suites.SuiteParams` fields.
    Returns:
        the curated data (``ids`` are row numbers in the stored version) and numbers for logging.
    Raises:
        DataVersionError: ``rev`` or an explicit ``reference_rev`` cannot be read.
        MissingColumnError: the suite names a column the data lacks (before validation runs).
        ValidationFailed: an expectation failed; nothing downstream should run.
    """
    from distillery.components.curation.suites import (
        SuiteParams,
        reference_of,
        validate_suite,
    )

    params = SuiteParams(**thresholds)
    features, labels, meta = read_dataset(repo, path, rev)
    reference, notes = None, []
    explicit = reference_rev is not None
    if not explicit:
        reference_rev, reason = previous_data_rev(repo, rev)
        notes += [f"drift not checked: {reason}"] if reference_rev is None else []
    if reference_rev is not None:
        try:
            ref_features, ref_labels, ref_meta = read_dataset(repo, path, reference_rev)
            reference = reference_of(ref_features, ref_labels, ref_meta, reference_rev, len(meta["classes"]))
        except DataVersionError as exc:
            if explicit:  # asked for by name: an unreadable reference is an error, not a skip
                raise
            notes.append(f"drift not checked: the previous data version {reference_rev[:10]} has no readable "
                         f"{path} ({exc})")
    for note in notes:
        progress(note)
    outcome = validate_suite(features, labels, meta, params, reference, report_dir, notes)
    rows = features.reshape(len(features), -1)
    data = LabelledData(rows.astype(np.float32), labels.astype(np.int64), np.arange(len(rows)), meta)
    return data.subset(outcome.keep), outcome.stats


def previous_data_rev(repo: str, rev: str | None = None) -> tuple[str | None, str]:
    """The previous data version: the newest commit at or before ``rev`` (``HEAD`` for the work
    tree) whose ``data.dvc`` records another version than the one at ``rev``.

    Looks at the last two commits that changed ``data.dvc`` (``git log -n 2 -- data.dvc``): the
    first is the current version unless the work tree changed ``data.dvc`` since.
    Returns:
        ``(commit, "")``, or ``(None, reason)`` when there is no previous version.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout

    try:
        commits = git("log", "-n", "2", "--format=%H", rev or "HEAD", "--", DATA_DVC).split()
    except (subprocess.CalledProcessError, FileNotFoundError, NotADirectoryError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        return None, f"no previous data version ({repo} has no git history of {DATA_DVC}: {str(detail).strip()})"
    if not commits:
        return None, f"no previous data version (no commit of {repo} changed {DATA_DVC})"
    current = data_version(repo, rev)
    for commit in commits:
        if data_version_of(git("show", f"{commit}:{DATA_DVC}")) != current:
            return commit, ""
    return None, f"no previous data version (no earlier commit of {repo} changed {DATA_DVC})"


def _docs_dir(report_dir: str | None) -> str | None:
    if report_dir is None:
        return None
    docs = Path(report_dir) / "data_docs"
    docs.mkdir(parents=True, exist_ok=True)
    return str(docs)
