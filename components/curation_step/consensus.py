"""Robust consensus labels from several annotators.

Kong, Lu, Shmakov & Yang, "Robust Consensus Clustering and its Applications for Advertising
Forecasting", arXiv 2301.00717 (2023): every base partition ``t`` gives a connectivity matrix
``M_t`` (``M_t[i, j] = 1`` when ``t`` puts ``i`` and ``j`` together); the consensus ``H >= 0``
``(N, K)`` solves

    min_H  sum_t || M_t - H H^T ||_1 ,

solved by ADMM. The l1 loss (rather than the squared loss of classic consensus clustering) lets an
outlying partition -- here an adversarial or a lazy annotator -- cost only in proportion to how
often it disagrees, instead of dragging the solution towards it.

Applied to labels: annotator ``t``'s labels are a partition of the items (``K`` = number of
classes). Here the ADMM splits ``E_t = M_t - H H^T`` (``E_t``: l1 soft-threshold; ``H``:
a few multiplicative symmetric-NMF steps, Ding et al. 2005, towards ``mean_t(M_t - E_t + L_t/mu)``;
``L_t``: dual ascent; ``mu`` grows geometrically). An item's consensus cluster is
``argmax_k H[i, k]``; clusters are mapped to class labels by the Hungarian assignment
(``scipy.optimize.linear_sum_assignment``) that maximises the number of annotator votes the mapped
labels agree with. An annotator's reliability is reported as (a) its agreement with the consensus
labels (share of the items it labelled) and (b) its l1 residual ``||M_t - H H^T||_1`` per observed
item pair.

Size: ``M_t`` is ``N x N``. Labels make it block-structured: items with the same *label profile*
(the tuple of labels all annotators gave them) have identical rows in every ``M_t``, so the problem
is solved exactly on the ``P <= N`` distinct profiles, each pair weighted by ``count_p * count_q``
(with 5 annotators and 10 classes, 2,000 items have a few hundred profiles). Only when ``P`` exceeds
``block_size`` are the profiles split into random blocks solved independently (each block mapped to
classes by its own assignment) -- an approximation that bounds memory at ``O(T block_size^2)``.
A missing label (an annotator who did not label an item) gives its pairs weight 0 for that annotator.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from distillery.components.core.datasets import LabelledData
from distillery.components.core.provenance import CurationResult

MISSING = -1


@dataclass
class Consensus:
    """Consensus of ``T`` annotators on ``N`` items.

    Attributes:
        labels: ``(N,)`` consensus class per item.
        agreement: ``(T,)`` share of each annotator's labels equal to the consensus.
        residual: ``(T,)`` mean ``|M_t - H H^T|`` over the item pairs annotator ``t`` labelled.
        profiles: number of distinct label profiles the ADMM ran on; blocks: how many blocks.
    """

    labels: np.ndarray
    agreement: np.ndarray
    residual: np.ndarray
    profiles: int
    blocks: int


def majority_vote(annotations: np.ndarray, num_classes: int) -> np.ndarray:
    """Plurality label per row of ``annotations`` ``(N, T)`` (ties: the smallest class index; -1: missing)."""
    counts = np.stack([np.bincount(row[row != MISSING], minlength=num_classes) for row in annotations])
    return counts.argmax(axis=1)


def robust_consensus(annotations: np.ndarray, num_classes: int, seed: int = 0, iterations: int = 100,
                     mu: float = 1.0, mu_growth: float = 1.05, mu_max: float = 1e4,
                     block_size: int = 1500) -> Consensus:
    """l1 consensus of annotators' labels.

    Args:
        annotations: ``(N, T)`` int class labels, ``-1`` where annotator ``t`` did not label item ``i``;
            every item needs at least one label.
        num_classes: ``K``, the rank of ``H``.
        iterations: ADMM iterations; ``mu``, ``mu_growth``, ``mu_max``: the penalty schedule.
        block_size: most label profiles solved together (see the module docstring).
    """
    annotations = np.asarray(annotations, dtype=np.int64)
    if annotations.ndim != 2 or annotations.shape[1] < 1:
        raise ValueError(f"annotations must be (N, T), got shape {annotations.shape}")
    if np.any((annotations < MISSING) | (annotations >= num_classes)):
        raise ValueError(f"annotation labels must be in [0, {num_classes}) or -1 (missing)")
    if np.any((annotations == MISSING).all(axis=1)):
        raise ValueError("every item needs at least one annotator's label")
    profiles, inverse, counts = np.unique(annotations, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(profiles)) if len(profiles) > block_size else np.arange(len(profiles))
    blocks = [order[i:i + block_size] for i in range(0, len(order), block_size)]
    profile_labels = np.empty(len(profiles), np.int64)
    abs_residual = np.zeros(annotations.shape[1])
    observed_pairs = np.zeros(annotations.shape[1])
    for block in blocks:
        h = _admm(profiles[block], counts[block], num_classes, iterations, mu, mu_growth, mu_max)
        clusters = h.argmax(axis=1)
        profile_labels[block] = _clusters_to_classes(clusters, profiles[block], counts[block], num_classes)
        resid, pairs = _residuals(profiles[block], counts[block], h)
        abs_residual += resid
        observed_pairs += pairs
    labels = profile_labels[inverse]
    labelled = annotations != MISSING
    agreement = ((annotations == labels[:, None]) & labelled).sum(axis=0) / np.maximum(labelled.sum(axis=0), 1)
    return Consensus(labels, agreement, abs_residual / np.maximum(observed_pairs, 1), len(profiles), len(blocks))


def _connectivity(profiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``M`` ``(T, P, P)`` (same label) and the observed mask (both labelled), float32."""
    labels = profiles.T[:, :, None]
    observed = (labels != MISSING) & (labels.transpose(0, 2, 1) != MISSING)
    return ((labels == labels.transpose(0, 2, 1)) & observed).astype(np.float32), observed


def _admm(profiles: np.ndarray, counts: np.ndarray, k: int, iterations: int, mu: float, mu_growth: float,
          mu_max: float) -> np.ndarray:
    """``H`` ``(P, K)`` of ``min_{H>=0} sum_t sum_{ij observed} |M_t[i,j] - (H H^T)[i,j]|`` over *items*
    ``i, j``, run on profiles: every item-pair term of the augmented Lagrangian of profiles ``p, q``
    is the same, so the item-space ADMM is the profile-space one with each pair counted
    ``c_p c_q`` times. That weight cancels in the elementwise ``E`` step (soft-threshold ``1/mu``)
    and the dual step, and stays in the ``H`` step: ``sum_pq c_p c_q (A_pq - h_p.h_q)^2``, an
    unweighted symmetric NMF of ``G = sqrt(c) H`` against ``sqrt(c_p c_q) A_pq``."""
    m, observed = _connectivity(profiles)
    threshold_unit = observed.astype(np.float32)  # unobserved pairs carry no l1 cost
    # The minimiser does not depend on the weights' scale, so use shares of the items (c_p / N): the
    # same data duplicated then gives bit-identical weights, hence bit-identical float32 iterates
    root = np.sqrt((counts / counts.sum()).astype(np.float32))[:, None]
    h = _initial_h(profiles, k)
    hht = h @ h.T
    dual = np.zeros_like(m)
    for _ in range(iterations):
        shifted = m - hht[None] + dual / mu
        # E = soft-threshold(shifted, 1/mu) (prox of the l1); shifted - E is shifted clipped to +-1/mu
        bound = threshold_unit / mu
        kept = np.clip(shifted, -bound, bound)
        target = hht + kept.mean(axis=0)  # = mean_t(M_t - E_t + L_t/mu)
        g = _symmetric_nmf_steps(root * ((target + target.T) / 2) * root.T, root * h)
        h = g / root
        hht = h @ h.T
        dual += mu * (m - hht[None] - (shifted - kept))
        mu = min(mu * mu_growth, mu_max)
    return h


def _symmetric_nmf_steps(target: np.ndarray, h: np.ndarray, steps: int = 3, eps: float = 1e-9) -> np.ndarray:
    """A few multiplicative updates of ``min_{H>=0} ||target - H H^T||_F^2`` (Ding, He & Simon,
    SDM 2005, with ``target = A+ - A-`` split so that a target with negative entries keeps H >= 0)."""
    positive, negative = np.maximum(target, 0), np.maximum(-target, 0)
    for _ in range(steps):
        ratio = (positive @ h) / (negative @ h + h @ (h.T @ h) + eps)
        h = h * (0.5 + 0.5 * ratio)
    return h


def _initial_h(profiles: np.ndarray, k: int) -> np.ndarray:
    """Start from the plurality vote of each profile (one-hot, softened so ADMM can move items)."""
    h = np.full((len(profiles), k), 0.1, np.float32)
    h[np.arange(len(profiles)), majority_vote(profiles, k)] = 1.0
    return h


def _clusters_to_classes(clusters: np.ndarray, profiles: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
    """Class of each profile: clusters mapped to classes by the Hungarian assignment maximising the
    annotator votes that agree with the mapped label."""
    from scipy.optimize import linear_sum_assignment

    votes = np.zeros((k, k))  # votes[cluster, class]
    for t in range(profiles.shape[1]):
        labelled = profiles[:, t] != MISSING
        np.add.at(votes, (clusters[labelled], profiles[labelled, t]), counts[labelled])
    rows, cols = linear_sum_assignment(-votes)
    mapping = np.empty(k, np.int64)
    mapping[rows] = cols
    return mapping[clusters]


def _residuals(profiles: np.ndarray, counts: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per annotator: sum over observed item pairs of ``|M_t - H H^T|`` and the number of such pairs."""
    m, observed = _connectivity(profiles)
    pair_counts = np.outer(counts, counts)[None] * observed
    return (np.abs(m - (h @ h.T)[None]) * pair_counts).sum(axis=(1, 2)), pair_counts.sum(axis=(1, 2))


# -- annotator files -------------------------------------------------------------------------------

def read_annotator_files(files: dict[str, str], ids: np.ndarray, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """Annotator CSVs (``id,label``; name -> CSV text) as ``(names, annotations (N, T))`` aligned
    with ``ids``. Labels are class names (``classes``). Every file is checked -- unknown ids, unknown
    labels, duplicate ids -- before anything else happens."""
    import io

    import pandas as pd

    if not files:
        raise ValueError("consensus: no annotator files (CSV `id,label`, one per annotator)")
    row_of = {int(i): r for r, i in enumerate(ids)}
    class_of = {str(c): i for i, c in enumerate(classes)}
    names, columns = [], []
    for name, text in sorted(files.items()):
        try:
            table = pd.read_csv(io.StringIO(text), dtype={"label": str})
        except Exception as exc:  # pandas raises several types for malformed CSV
            raise ValueError(f"consensus: annotator file {name!r} is not a readable CSV: {exc}") from exc
        if list(table.columns[:2]) != ["id", "label"]:
            raise ValueError(f"consensus: annotator file {name!r} must have columns id,label; "
                             f"got {list(table.columns)}")
        if not pd.api.types.is_integer_dtype(table["id"]):
            raise ValueError(f"consensus: annotator file {name!r}: ids must be integers")
        unknown = [int(i) for i in table["id"] if int(i) not in row_of]
        if unknown:
            raise ValueError(f"consensus: annotator file {name!r} has {len(unknown)} id(s) not in the dataset, "
                             f"first: {unknown[:5]}")
        duplicated = table["id"][table["id"].duplicated()].tolist()
        if duplicated:
            raise ValueError(f"consensus: annotator file {name!r} labels id(s) {duplicated[:5]} more than once")
        bad = sorted({str(v) for v in table["label"] if str(v) not in class_of})
        if bad:
            raise ValueError(f"consensus: annotator file {name!r} has label(s) {bad[:5]} that are not classes "
                             f"{classes}")
        column = np.full(len(ids), MISSING, np.int64)
        column[[row_of[int(i)] for i in table["id"]]] = [class_of[str(v)] for v in table["label"]]
        names.append(name)
        columns.append(column)
    return names, np.stack(columns, axis=1)


def annotator_files(folder: str | None, context) -> dict[str, str]:
    """name -> CSV text of every ``*.csv`` in ``folder`` (a local folder) or, without one, in
    ``<data path>/annotations/`` of the run's data version (read through DVC at its revision)."""
    if folder:
        path = Path(folder)
        if not path.is_dir():
            raise FileNotFoundError(f"consensus: annotations folder {folder} does not exist")
        return {f.stem: f.read_text() for f in sorted(path.glob("*.csv"))}
    if context is None:
        raise ValueError("consensus: give `annotations` (a folder of annotator CSVs) or run it on a data version")
    from distillery.components.core.datasets import dvc_filesystem

    data = context.data
    fs = dvc_filesystem(str(data["repo"]), data.get("rev"))
    where = f"{data['path']}/annotations"
    if not fs.isdir(where):
        raise FileNotFoundError(f"consensus: no {where}/ in {data['repo']} "
                                f"at revision {data.get('rev') or 'working tree'}; "
                                "add one CSV `id,label` per annotator there, or pass `annotations`")
    files = {}
    for entry in sorted(fs.ls(where, detail=False)):
        if entry.endswith(".csv"):
            with fs.open(entry, "r") as fh:
                files[PurePosixPath(entry).stem] = fh.read()
    return files


# -- the curation step -----------------------------------------------------------------------------

def consensus(data: LabelledData, *, seed: int = 0, context=None, annotations: str | None = None,
              iterations: int = 100, block_size: int = 1500) -> CurationResult:
    """Replace labels by the robust consensus of the annotator files (items nobody annotated keep
    their label); log each annotator's reliability."""
    files = annotator_files(annotations, context)
    names, table = read_annotator_files(files, data.ids, [str(c) for c in data.meta["classes"]])
    covered = (table != MISSING).any(axis=1)
    if not covered.any():
        raise ValueError("consensus: the annotator files label none of the dataset's items")
    result = robust_consensus(table[covered], data.num_classes, seed, iterations, block_size=block_size)
    labels = data.labels.copy()
    labels[covered] = result.labels
    vote = majority_vote(table[covered], data.num_classes)
    reliability = [{"annotator": n, "items_labelled": int((table[:, t] != MISSING).sum()),
                    "agreement_with_consensus": float(result.agreement[t]), "l1_residual": float(result.residual[t])}
                   for t, n in enumerate(names)]
    stats = {"annotators": len(names), "items_annotated": int(covered.sum()),
             "labels_changed": int((labels != data.labels).sum()),
             "consensus_vs_majority_vote_disagree": int((vote != result.labels).sum()),
             "label_profiles": result.profiles, "blocks": result.blocks,
             **{f"agreement_{r['annotator']}": r["agreement_with_consensus"] for r in reliability}}
    curated = LabelledData(data.features, labels, data.ids, data.meta)
    return CurationResult(curated, stats, {"annotator_reliability.json": {"annotators": reliability},
                                           "annotator_reliability.png": reliability_figure(reliability)})


def reliability_figure(reliability: list[dict]):
    from distillery.components.core.plots import pyplot

    plt = pyplot()
    names = [r["annotator"] for r in reliability]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    axes[0].bar(names, [r["agreement_with_consensus"] for r in reliability])
    axes[0].set_ylim(0, 1)
    axes[0].set_title("agreement with consensus")
    axes[1].bar(names, [r["l1_residual"] for r in reliability], color="tab:orange")
    axes[1].set_title("l1 residual |M_t - HH^T| per pair")
    for ax in axes:
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig
