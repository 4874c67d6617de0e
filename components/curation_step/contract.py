"""Contract of a curation step: one published method that turns a curated dataset into a new version.

:func:`distillery.components.curation_step.tasks.run_curation_step` calls the registered target
(through :func:`distillery.components.core.provenance.apply_step`) as::

    result = target(data, seed=seed, context=context, **params)

* ``data``: a :class:`~distillery.components.core.datasets.LabelledData`: features ``(N, D)``,
  labels ``(N,)`` int64, ids ``(N,)`` int64, meta (``kind``, ``feature_shape``, ``classes``, ...).
* ``seed``: the run's seed; ``context``: the run context
  (:class:`~distillery.components.core.tracking.RunContext`, or ``None`` outside a pipeline), e.g.
  to read further files of the configured dataset folder.
* ``params``: the method's resolved defaults, by keyword.

Returns a :class:`~distillery.components.core.provenance.CurationResult`: the new data (any rows and
columns; ids keep naming source rows), ``stats`` (numbers, logged as metrics) and ``artifacts``
(file name -> dict/list or matplotlib figure). The provenance record is added by the caller, not the
step. The task supplies no extra inputs (:data:`INPUTS`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from distillery.components.core.datasets import LabelledData
    from distillery.components.core.provenance import CurationResult

INPUTS: tuple[str, ...] = ()  # keyword inputs beyond the call above that the task can supply


class CurationStepMethod(Protocol):
    def __call__(self, data: LabelledData, /, *, seed: int, context: Any, **params: Any) -> CurationResult: ...
