"""Should a scheduled run retrain? The first step of the retraining pipeline.

It resolves the newest data version, finds the data the current ``champion`` was trained on (the
model version's tags record the data version and git commit), and decides:

- no champion yet -> retrain;
- the same data version as the champion's -> skip ("nothing changed");
- at least ``min_new_labels`` more labelled items than the champion saw -> retrain;
- the features drifted (``distillery.components.evaluation.drift``) and ``retrain_on_drift`` -> retrain;
- otherwise skip, saying what changed and why it was not enough.

A skipped run is a finished pipeline run whose description gives the reason, so the MLflow UI
shows every scheduled run, including the ones that did nothing.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from distillery.components.core.datasets import (
    DataVersionError,
    LabelledData,
    data_version,
    dvc_filesystem,
)

LABELS_DIR = "data/labels"


@dataclass
class ChampionInfo:
    """The serving model a retraining run compares with (read from its registry tags)."""

    name: str
    version: str
    data_version: str
    git_commit: str


@dataclass
class RetrainDecision:
    retrain: bool
    reason: str


def decide(champion: ChampionInfo | None, current_version: str, new_labels: int | None, drift,
           min_new_labels: int, retrain_on_drift: bool) -> RetrainDecision:
    """The decision and its reason. ``new_labels``/``drift`` are ``None`` when the champion's data
    could not be read (then the run retrains: comparing is impossible, serving stale is worse)."""
    if champion is None:
        return RetrainDecision(True, "no champion model yet")
    where = f"champion {champion.name} v{champion.version}"
    if current_version == champion.data_version:
        return RetrainDecision(False, f"data version {current_version[:12]} is the one {where} was trained on; "
                                      "nothing to retrain")
    if new_labels is None:
        return RetrainDecision(True, f"the data {where} was trained on ({champion.data_version[:12]}) cannot be "
                                     f"read back to compare; retraining on {current_version[:12]}")
    change = f"data version {champion.data_version[:12]} -> {current_version[:12]}"
    if new_labels >= min_new_labels:
        return RetrainDecision(True, f"{change}: {new_labels} new labels (threshold {min_new_labels})")
    if drift is not None and drift.drifted and retrain_on_drift:
        return RetrainDecision(True, f"{change}: drift detected: {drift.reason}")
    drift_text = "no drift" if drift is None or not drift.drifted else f"drift ignored ({drift.reason})"
    return RetrainDecision(False, f"{change}: only {new_labels} new labels (threshold {min_new_labels}) and "
                                  f"{drift_text}; keeping {where}")


def champion_info(client, name: str) -> ChampionInfo | None:
    """The ``champion`` of registered model ``name``, or ``None`` when there is none."""
    import mlflow
    from distillery.components.core.tracking import DATA_VERSION, GIT_COMMIT
    from distillery.components.evaluation.promotion import CHAMPION

    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None
    return ChampionInfo(name, version.version, version.tags.get(DATA_VERSION, ""), version.tags.get(GIT_COMMIT, ""))


def pin_revision(repo: str, rev: str | None) -> str | None:
    """The commit ``rev`` (a branch, tag or ``None`` = default branch) names now, so every task of a
    run reads the same data. A local working tree (``rev`` None on a path) stays unpinned."""
    local = Path(repo).is_dir()
    if local and not rev:
        return None
    args = ["git", "-C", repo, "rev-parse", f"{rev}^{{commit}}"] if local else ["git", "ls-remote", repo, rev or "HEAD"]
    done = subprocess.run(args, capture_output=True, text=True)
    out = done.stdout.split()
    if done.returncode != 0 or not out:
        raise DataVersionError(f"cannot resolve revision {rev or 'HEAD'!r} of data repo {repo!r}: "
                               f"{done.stderr.strip() or 'no such revision'}")
    return out[0]


def revision_of_version(repo: str, version: str, hint: str) -> str | None:
    """A git revision whose ``data.dvc`` records ``version``: ``hint`` (the champion's commit) if it
    does, else the newest such commit in the history of ``data.dvc`` (local repos); ``None`` if none."""
    candidates = [hint] if hint else []
    if Path(repo).is_dir():
        log = subprocess.run(["git", "-C", repo, "log", "--format=%H", "--", "data.dvc"],
                             capture_output=True, text=True)
        candidates += log.stdout.split()
    for rev in candidates:
        try:
            if data_version(repo, rev) == version:
                return rev
        except DataVersionError:
            continue
    return None


def label_count(repo: str, path: str, rev: str | None, data: LabelledData) -> int:
    """Labelled items in a data version: the dataset's own labels plus imported label sets
    (``data/labels/<dataset>/*.json``, written by ``distillery labels import``)."""
    import json

    fs = dvc_filesystem(repo, rev)
    folder = f"{LABELS_DIR}/{PurePosixPath(path).name}"
    extra = 0
    if fs.isdir(folder):
        for file in fs.find(folder):
            if file.endswith(".json"):
                with fs.open(file, "r") as fh:
                    extra += len(json.load(fh).get("labels", {}))
    return len(data.labels) + extra
