"""Contract of a curation method: a validating loader that reads a data version and returns it curated.

:func:`distillery.components.curation.tasks.run_curation` calls the registered target as::

    curated, stats = target(repo, path, rev, report_dir=report_dir, **params)

* ``repo``: the data repository (a local path or a git URL); ``path``: the dataset folder in it
  (``dataset.json``, ``features.npy``, ``labels.npy``); ``rev``: a git revision, ``None`` for the
  work tree. The method reads the data itself (through DVC).
* ``report_dir``: a folder whose contents the task logs as run artifacts, pass or fail (GX Data Docs
  under ``data_docs/``).
* ``params``: the method's resolved defaults, by keyword.

Returns ``(LabelledData, stats)``: features ``(N, D)`` float32, labels ``(N,)`` int64, ids ``(N,)``
int64 (row numbers in the stored version), the dataset's meta; ``stats`` holds numbers for
``mlflow.log_metrics`` and must include ``rows_in`` and ``rows_out``. A failing suite raises
:class:`~distillery.components.curation.validation.ValidationFailed` (nothing is written then).
The task supplies no extra inputs (:data:`INPUTS`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from distillery.components.core.datasets import LabelledData

INPUTS: tuple[str, ...] = ()  # keyword inputs beyond the call above that the task can supply


class CurationMethod(Protocol):
    def __call__(self, repo: str, path: str, rev: str | None, /, *, report_dir: str,
                 **params: Any) -> tuple[LabelledData, dict[str, float]]: ...
