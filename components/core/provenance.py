"""Provenance of curated datasets: a content version for in-pipeline datasets and the chain of
curation steps that produced them.

A curation step turns one :class:`~distillery.components.core.datasets.LabelledData` into another. Each result
carries ``meta["provenance"]``, a list of ``{"method", "params", "parent_version", "version"}``
records, oldest first, so a dataset (an artifact between pipeline tasks, or a folder published
with ``distillery data curate``) says which steps made it from which input.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distillery.components.core.datasets import LabelledData

PROVENANCE = "provenance"


@dataclass
class CurationResult:
    """What a curation step returns.

    Attributes:
        data: the curated dataset.
        stats: scalar numbers for ``mlflow.log_metrics`` (e.g. ``rows_in``, ``rows_out``).
        artifacts: file name -> a dict/list (logged with ``mlflow.log_dict``) or a matplotlib
            Figure (logged with ``mlflow.log_figure``), e.g. ``{"fit.json": {...}, "k.png": fig}``.
    """

    data: LabelledData
    stats: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, object] = field(default_factory=dict)


def _array_bytes(name: str, array: np.ndarray) -> bytes:
    # dtype and shape go into the hash: the same bytes read as another dtype/shape are other data
    array = np.ascontiguousarray(array)
    return f"{name}:{array.dtype.str}:{array.shape}\n".encode() + array.tobytes()


def content_version(data: LabelledData) -> str:
    """md5 hex of a dataset's content: features, labels, ids and the sorted-key JSON of ``meta``
    without its provenance list (the version must not depend on how the data was reached)."""
    digest = hashlib.md5()
    for name, array in (("features", data.features), ("labels", data.labels), ("ids", data.ids)):
        digest.update(_array_bytes(name, array))
    meta = {k: v for k, v in data.meta.items() if k != PROVENANCE}
    digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def provenance(data: LabelledData) -> list[dict[str, Any]]:
    """The provenance records of ``data``, oldest first (empty for a source dataset)."""
    return list(data.meta.get(PROVENANCE) or [])


def with_provenance(data: LabelledData, method: str, params: dict[str, Any],
                    parent_version: str) -> LabelledData:
    """``data`` with a provenance record appended: ``{"method", "params", "parent_version", "version"}``
    where ``version`` is :func:`content_version` of ``data``. The input object is not modified."""
    meta = copy.deepcopy(data.meta)
    record = {"method": method, "params": json.loads(json.dumps(params, default=str)),
              "parent_version": parent_version, "version": content_version(data)}
    meta[PROVENANCE] = provenance(data) + [record]
    return LabelledData(data.features, data.labels, data.ids, meta)


def apply_step(method: str, data: LabelledData, params: dict[str, Any] | None = None, *, seed: int = 0,
               context: Any = None) -> CurationResult:
    """Run the registered curation step ``method`` on ``data`` and record its provenance.

    ``params`` override the step's registered defaults (an unknown key is an error before any work).
    The returned :class:`CurationResult` holds the curated data whose ``meta["provenance"]`` gained
    this step's record, with ``parent_version`` = :func:`content_version` of ``data``.
    """
    from distillery.components.core import registry

    entry = registry.get("curation_step", method)
    resolved = entry.resolve_params(params)
    parent = content_version(data)
    result = entry.load()(data, seed=seed, context=context, **resolved)
    if not isinstance(result, CurationResult):
        raise TypeError(f"curation step {method!r} returned {type(result).__name__}, not a CurationResult")
    result.data = with_provenance(result.data, method, resolved, parent)
    return result
