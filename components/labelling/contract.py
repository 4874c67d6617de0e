"""Contract of a labelling method: an annotator class that labels the batch selection picked.

:func:`distillery.components.labelling.tasks.run_labelling` builds the registered target for the
task, then asks for the labels of the selected rows::

    labels = target.from_task(data, source, **params).annotate(rows)

* ``data``: the curated :class:`~distillery.components.core.datasets.LabelledData` (features
  ``(N, D)``, labels ``(N,)`` int64, ids ``(N,)`` int64, meta with ``classes``).
* ``source``: the config's ``data`` section (``repo``, ``path``, ``rev``), to read a label set at the
  run's data revision.
* ``params``: the method's resolved defaults, by keyword.
* ``rows``: ``(B,)`` int64 dataset rows, none of them labelled before (the task checks).

``annotate`` returns ``(B,)`` int64 class indices, or raises
:class:`~distillery.components.labelling.labelstudio.MissingLabels` (``rows``/``ids`` of the items
without a label); the task turns that into ``LabelsNeeded`` with a Label Studio task file of those
items. The task supplies no extra inputs (:data:`INPUTS`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np

    from distillery.components.core.datasets import LabelledData

INPUTS: tuple[str, ...] = ()  # keyword inputs beyond the call above that the task can supply


class Annotator(Protocol):
    def annotate(self, rows: np.ndarray) -> np.ndarray: ...


class LabellingMethod(Protocol):
    """The registered target: an annotator class, built for a task by ``from_task``."""

    def from_task(self, data: LabelledData, source: dict[str, Any], /, **params: Any) -> Annotator: ...
