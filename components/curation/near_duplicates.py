"""Near-duplicate detection by embedding distance.

Method: embedding-based de-duplication in the spirit of SemDeDup (Abbas et al., "SemDeDup:
Data-efficient learning at web-scale through semantic deduplication", 2023): items whose
embeddings lie within a cosine distance ``threshold`` of each other are near-duplicates. Here the
search is exact (faiss ``IndexFlatIP`` k-NN on L2-normalised embeddings, i.e. cosine), not
restricted to k-means clusters as in the paper: at the dataset sizes curation sees, one exact
search is cheap. Pairs within the threshold are edges of a graph; each connected component is a
group, its first row (lowest index) is kept and every later row is a near-duplicate of it.

The embeddings are the features themselves, centred per column (and, for tabular data, scaled
to unit variance, since columns have different units), reduced by a fixed Gaussian random
projection when D is large (it preserves distances up to a relative error, so a pair within a
small threshold stays within about the same threshold), then L2-normalised.
"""
from __future__ import annotations

import numpy as np

MAX_EMBEDDING_DIM = 1024  # above this many features, randomly project down to it


def embed(features: np.ndarray, kind: str, max_dim: int = MAX_EMBEDDING_DIM, seed: int = 0) -> np.ndarray:
    """``(N, D)`` features -> ``(N, min(D, max_dim))`` float32 unit rows (all-zero rows stay zero).

    Non-finite values count as 0: the suite reports them separately, and they must not poison
    the distances of the other rows.
    """
    x = np.nan_to_num(np.asarray(features, dtype=np.float64).reshape(len(features), -1),
                      nan=0.0, posinf=0.0, neginf=0.0)
    x = x - x.mean(axis=0)
    if kind == "tabular":
        std = x.std(axis=0)
        x = x / np.where(std > 0, std, 1.0)
    if x.shape[1] > max_dim:
        from sklearn.random_projection import GaussianRandomProjection

        x = GaussianRandomProjection(n_components=max_dim, random_state=seed).fit_transform(x)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def near_duplicate_of(embeddings: np.ndarray, threshold: float, neighbours: int = 10,
                      exact_groups: np.ndarray | None = None) -> np.ndarray:
    """For each row, the row it is a near-duplicate of, or -1.

    Args:
        embeddings: ``(N, E)`` L2-normalised rows (see :func:`embed`).
        threshold: cosine distance (``1 - cos``) at or below which two rows are near-duplicates.
        neighbours: nearest neighbours searched per row (exact search); a group larger than this
            is still found whole when its members chain together within the threshold.
        exact_groups: optional ``(N,)`` ids (e.g. a hash of the bytes); equal ids are duplicates
            too (rows equal to the column mean have a zero embedding and no cosine).
    Returns:
        ``(N,)`` int64: the first (lowest) row of the row's group for every later member of a
        group, -1 for the rows to keep (singletons and the first row of each group).
    """
    import faiss
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(embeddings)
    if not 0 <= threshold < 2:
        raise ValueError(f"near-duplicate threshold is a cosine distance in [0, 2), got {threshold}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(embeddings)
    cosine, found = index.search(embeddings, min(neighbours + 1, n))  # +1: a row finds itself
    rows = np.repeat(np.arange(n), found.shape[1])
    close = (found.ravel() >= 0) & (1.0 - cosine.ravel() <= threshold)
    src, dst = rows[close], found.ravel()[close]
    if exact_groups is not None:  # chain each row to the previous row with the same id
        order = np.argsort(exact_groups, kind="stable")
        same = exact_groups[order][1:] == exact_groups[order][:-1]
        src, dst = np.concatenate([src, order[1:][same]]), np.concatenate([dst, order[:-1][same]])
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    first = np.full(component.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, component, np.arange(n))
    of = first[component]
    return np.where(of == np.arange(n), -1, of)
