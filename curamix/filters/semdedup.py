"""SemDeDup: semantic deduplication of embedded documents within k-means clusters.

Plain numpy kernels that the Spark stage, notebooks and tests share. Inputs are L2-normalized
vectors, each document's cluster (``assign``) and its cosine to the cluster centroid, as
:func:`curamix.embeddings.index.spherical_kmeans` returns them.

The rule follows the reference code (facebookresearch/SemDeDup ``semdedup.py`` and
``clustering/sort_clusters.py``): inside each cluster the documents are ordered by distance to
the centroid (``keep="far"``: farthest first, the reference's default ``keep_hard``;
``"near"``: nearest first), and document ``j`` is removed when its largest cosine to ANY
EARLIER document of the order exceeds ``1 - eps`` (the column maximum of the upper-triangular
similarity matrix). Earlier documents count whether they are kept or removed themselves, as
in the reference code; the paper's prose ("an earlier kept item") would keep a document
whose only close twin was itself removed. With the reference rule each document's decision
depends on one number, its max cosine to earlier documents, so the removals for every
``eps`` come from one pass (:func:`removal_counts`) and grow monotonically with ``eps``.

The max cosine is computed one cluster at a time with blocked matrix products: at most
``block x block`` similarities are held at once, whatever the cluster size. The clusters are
independent, so the Spark stage runs this same kernel one task per cluster; the centroids come
from a k-means trained on a sample (:func:`kmeans_train_size`) and every document joins its
nearest one (:func:`assign_to_centroids`).

References
----------
Abbas, Tirumala, Simig, Ganguli, Morcos. "SemDeDup: Data-efficient learning at web-scale
through semantic deduplication." 2023. arXiv:2303.09540.
Reference code: github.com/facebookresearch/SemDeDup.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np

Keep = Literal["far", "near"]
BLOCK = 2048
"""Rows and columns of one similarity block (2048 x 2048 float32 = 16 MiB)."""


class SemDedupResult(NamedTuple):
    """Per-document outcome of :func:`semdedup` (all arrays of length n, input order)."""

    removed: np.ndarray
    """bool: the document is a semantic duplicate of an earlier one of its cluster."""
    ref: np.ndarray
    """int64: position of the KEPT document it duplicates (chains resolved), -1 when kept."""
    max_cos: np.ndarray
    """float32: largest cosine to an earlier document of its cluster (0 for the first)."""


def _check(vectors: np.ndarray, assign: np.ndarray, cos_to_centroid: np.ndarray) -> None:
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-D (n, dim), got shape {vectors.shape}")
    n = vectors.shape[0]
    if assign.shape != (n,) or cos_to_centroid.shape != (n,):
        raise ValueError(
            f"assign {assign.shape} and cos_to_centroid {cos_to_centroid.shape} must have "
            f"shape ({n},) like the {n} vectors"
        )


def cluster_order(
    assign: np.ndarray, cos_to_centroid: np.ndarray, keep: Keep = "far"
) -> np.ndarray:
    """Positions in processing order: by cluster, then by distance to the centroid (``far``:
    farthest first, ``near``: nearest first), ties by position."""
    if keep not in ("far", "near"):
        raise ValueError(f"keep must be 'far' or 'near', got {keep!r}")
    cos = np.asarray(cos_to_centroid, dtype=np.float64)
    key = cos if keep == "far" else -cos  # farthest first = smallest cosine first
    return np.lexsort((np.arange(len(cos)), key, np.asarray(assign)))


def _max_to_earlier(x: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """For rows of ``x`` (one cluster, in order): max cosine to an earlier row and its index
    (-1 and 0.0 for the first row). Ties go to the earliest row."""
    m = x.shape[0]
    best = np.full(m, -np.inf, dtype=np.float32)
    arg = np.full(m, -1, dtype=np.int64)
    for r0 in range(0, m, block):
        r1 = min(r0 + block, m)
        rows = x[r0:r1]
        for c0 in range(0, r1 - 1, block):  # only columns that can be earlier than a row
            c1 = min(c0 + block, r1)
            sim = rows @ x[c0:c1].T
            if c1 > r0:  # the block touches the diagonal: hide columns at or after the row
                ri = np.arange(r0, r1)[:, None]
                ci = np.arange(c0, c1)[None, :]
                sim = np.where(ci < ri, sim, -np.inf)
            j = sim.argmax(axis=1)
            v = sim[np.arange(r1 - r0), j]
            better = v > best[r0:r1]  # strict: earlier column blocks win ties
            best[r0:r1] = np.where(better, v, best[r0:r1])
            arg[r0:r1] = np.where(better, c0 + j, arg[r0:r1])
    first = arg < 0
    best[first] = 0.0
    return best, arg


def max_cos_to_earlier(
    vectors: np.ndarray,
    assign: np.ndarray,
    cos_to_centroid: np.ndarray,
    keep: Keep = "far",
    block: int = BLOCK,
) -> tuple[np.ndarray, np.ndarray]:
    """Each document's largest cosine to an earlier document of its cluster and that
    document's position.

    Returns
    -------
    max_cos : float32 (n,)
        0.0 for the first document of each cluster (as the reference's zeroed triangle).
    nearest : int64 (n,)
        Position (input order) of the earlier document reaching ``max_cos``; -1 for the
        first of a cluster. Ties go to the document earliest in the order.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    assign = np.asarray(assign)
    _check(x, assign, np.asarray(cos_to_centroid))
    if block < 1:
        raise ValueError(f"block must be at least 1, got {block}")
    n = x.shape[0]
    max_cos = np.zeros(n, dtype=np.float32)
    nearest = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return max_cos, nearest
    order = cluster_order(assign, cos_to_centroid, keep)
    a = assign[order]
    bounds = np.concatenate([[0], np.flatnonzero(a[1:] != a[:-1]) + 1, [n]])
    for s, e in itertools.pairwise(bounds.tolist()):
        if e - s < 2:
            continue
        members = order[s:e]
        best, arg = _max_to_earlier(x[members], block)
        max_cos[members] = best
        nearest[members] = np.where(arg >= 0, members[np.maximum(arg, 0)], -1)
    return max_cos, nearest


def decide(max_cos: np.ndarray, nearest: np.ndarray, eps: float) -> SemDedupResult:
    """Removals at ``eps`` from :func:`max_cos_to_earlier`'s output, with each removed
    document's reference resolved to a kept one (a removed twin's own kept twin, and so on;
    pointer doubling, so long chains take log(length) steps)."""
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    removed = (max_cos.astype(np.float64) > 1.0 - eps) & (nearest >= 0)
    ref = np.where(removed, nearest, -1).astype(np.int64)
    r = np.flatnonzero(removed)
    while r.size:
        nxt = ref[r]
        hop = removed[nxt]
        if not hop.any():
            break
        ref[r[hop]] = ref[nxt[hop]]  # a removed document always points earlier: terminates
    return SemDedupResult(removed, ref, max_cos)


def semdedup(
    vectors: np.ndarray,
    assign: np.ndarray,
    cos_to_centroid: np.ndarray,
    eps: float,
    keep: Keep = "far",
    block: int = BLOCK,
) -> SemDedupResult:
    """SemDeDup (Abbas et al. 2023) inside the given clusters.

    Parameters
    ----------
    vectors : (n, dim) L2-normalized embeddings.
    assign : (n,) cluster of each document (for a per-domain scope, pass a label combining
        domain and cluster).
    cos_to_centroid : (n,) cosine of each document to its cluster's centroid.
    eps : remove a document whose cosine to an earlier one exceeds ``1 - eps``.
    keep : ``far`` (reference default) keeps documents far from the centroid first.
    block : similarity block size; bounds memory for big clusters.

    Edge cases: single-document clusters and empty input remove nothing; ties in distance
    to the centroid are ordered by position; exact copies (cosine 1) are always removed
    except the first of the order.
    """
    mc, nn = max_cos_to_earlier(vectors, assign, cos_to_centroid, keep, block)
    return decide(mc, nn, eps)


KMEANS_POINTS_PER_CLUSTER = 256
"""Training points per centroid of the sampled k-means: FAISS's ``max_points_per_centroid``,
the most its k-means trains on (it subsamples a larger set itself)."""


def kmeans_train_size(n: int, k: int, sample: int | None = None) -> int:
    """Documents the centroids of ``k`` clusters over ``n`` documents are trained on:
    ``sample``, by default ``KMEANS_POINTS_PER_CLUSTER * k``; at least ``k``, at most ``n``."""
    want = KMEANS_POINTS_PER_CLUSTER * k if sample is None else int(sample)
    return min(n, max(k, want))


def assign_to_centroids(
    vectors: np.ndarray, centroids: np.ndarray, block: int = BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """Each vector's cluster: the centroid with the largest inner product (the lowest index on
    ties) and the vector's cosine to it (inner product / its norm, 0 for a zero vector), as
    :func:`curamix.embeddings.index.spherical_kmeans` returns them. The products with every
    centroid are matrix products of ``block`` rows (the same blocks for the same rows, wherever
    they run); the cosine to the chosen centroid is then summed row by row, so it depends on
    the vector alone: exact copies get the same cosine and keep their id order in a cluster
    (a matrix product's last bit can depend on the other rows of the block).

    Returns ``assign`` (int64) and ``cos_to_centroid`` (float32)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    if x.ndim != 2 or c.ndim != 2 or x.shape[1] != c.shape[1]:
        raise ValueError(
            f"vectors {x.shape} and centroids {c.shape} must be 2-D with the same dimension"
        )
    if len(c) == 0:
        raise ValueError("no centroids to assign the vectors to")
    assign = np.zeros(len(x), dtype=np.int64)
    cos = np.zeros(len(x), dtype=np.float32)
    for lo in range(0, len(x), block):
        rows = x[lo : lo + block]
        a = (rows @ c.T).argmax(axis=1)
        ip = (rows * c[a]).sum(axis=1, dtype=np.float32)
        norms = np.sqrt((rows * rows).sum(axis=1, dtype=np.float32))
        assign[lo : lo + block] = a
        cos[lo : lo + block] = np.divide(ip, norms, out=np.zeros_like(ip), where=norms > 0)
    return assign, cos


def removal_counts(max_cos: np.ndarray, eps_list: Sequence[float]) -> list[int]:
    """Number of documents removed at each ``eps`` (from one :func:`max_cos_to_earlier`)."""
    mc = np.asarray(max_cos, dtype=np.float64)
    for e in eps_list:
        if not 0 < e < 1:
            raise ValueError(f"eps values must be in (0, 1), got {e}")
    return [int(np.count_nonzero(mc > 1.0 - e)) for e in eps_list]


def removal_curve(
    vectors: np.ndarray,
    assign: np.ndarray,
    cos_to_centroid: np.ndarray,
    eps_list: Sequence[float],
    keep: Keep = "far",
    block: int = BLOCK,
) -> list[int]:
    """Removal count for each ``eps`` of ``eps_list`` in ONE pass over the clusters: each
    document's max cosine to earlier documents is computed once and thresholded per eps.
    Non-decreasing in ``eps``."""
    mc, _ = max_cos_to_earlier(vectors, assign, cos_to_centroid, keep, block)
    return removal_counts(mc, eps_list)
