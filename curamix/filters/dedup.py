"""Deduplication kernels: normalization, exact keys, shingles, MinHash, LSH banding,
candidate verification and connected components.

Plain numpy functions; the Spark dedup job and the tests call them. MinHash follows Broder
(1997); the band/row choice follows datasketch's weighted false-positive/false-negative
integral; shingles are word n-grams (default 5) of the normalized text, as in datatrove and
text-dedup.

Three kernels are numba (compiled on first use, ``cache=True``), each kept because it is
measured faster than the best library way to the identical result (``bench/numba_kernels.py``,
2026-12-03, 2-core VM, one thread, ``corpus_with_dups/mixed_20k``: 20,000 documents, 3.83M
word 5-gram shingles, 128 permutations): MinHash signatures 0.69 s vs 4.70 s for the numpy
kernel :func:`_minhash_numpy` (6.9x; datasketch's ``update_batch``, with its own arithmetic,
14.9 s); sorted unique shingle sets 0.18 s vs 1.39 s for a numpy ``lexsort`` over (document,
hash) (7.9x); exact Jaccard of pairs 0.77 us per LSH candidate pair vs 64 us with numpy
(gather both sets, ``lexsort``, count equal neighbours; 82x) and 1.6 us vs 109 us on 20,000
random pairs (68x). Compiling all three on a fresh machine takes about 3.5 s, once.

References
----------
Broder. "On the resemblance and containment of documents." SEQUENCES 1997.
Leskovec, Rajaraman, Ullman. "Mining of Massive Datasets", ch. 3 (LSH banding).
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from curamix.selectors.dsir import _fast_token_hashes, _mix64

MERSENNE_61 = np.uint64((1 << 61) - 1)
_WS = re.compile(r"\s+")


def normalize(
    text: str, *, nfkc: bool = True, lowercase: bool = True, collapse_whitespace: bool = True
) -> str:
    """NFKC, lowercase and whitespace collapsed (each optional): the text dedup compares."""
    if nfkc:
        text = unicodedata.normalize("NFKC", text)
    if lowercase:
        text = text.lower()
    if collapse_whitespace:
        text = _WS.sub(" ", text).strip()
    return text


def exact_key(text: str, *, normalized: bool = False, **norm: bool) -> str:
    """128-bit BLAKE2b hex digest of the normalized text: equal keys = exact duplicates.
    ``normalized=True``: ``text`` is already the output of :func:`normalize`."""
    t = text if normalized else normalize(text, **norm)
    return hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def shingle_hashes(
    texts: Sequence[str],
    n: int = 5,
    unit: Literal["word", "char"] = "word",
    *,
    normalized: bool = False,
    **norm: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of the n-gram shingles of each normalized text, with the document of each.

    Word shingles are n consecutive ``\\w+`` tokens; char shingles n consecutive code points.
    A text shorter than n units gets one shingle of all its units, and a text with none gets the
    shingle of the empty string, so no document is ever without a signature.
    """
    if n < 1:
        raise ValueError(f"n-gram size must be >= 1, got {n}")
    if unit not in ("word", "char"):
        raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
    normed = list(texts) if normalized else [normalize(t, **norm) for t in texts]
    if unit == "word":
        h, doc = _fast_token_hashes(normed, words_only=True)
    else:
        parts = [
            np.frombuffer(t.encode("utf-32-le", "surrogatepass"), dtype=np.uint32) for t in normed
        ]
        cps = np.concatenate(parts) if parts else np.zeros(0, np.uint32)
        h = _mix64(cps.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(1))
        doc = np.repeat(np.arange(len(normed), dtype=np.int64), [len(p) for p in parts])
    n_docs = len(texts)
    n_units = np.bincount(doc, minlength=n_docs)
    total = len(h)
    acc = h
    orders = [acc]
    with np.errstate(over="ignore"):
        for order in range(2, n + 1):
            acc = _mix64(
                acc[:-1] * np.uint64(0x9E3779B97F4A7C15) + h[order - 1 :] + np.uint64(order)
            )
            orders.append(acc)
    # Full n-gram shingles where all n units lie in one document.
    full = orders[n - 1]
    valid = doc[: total - n + 1] == doc[n - 1 :] if total >= n else np.zeros(0, dtype=bool)
    out_h, out_d = [full[valid]], [doc[: total - n + 1][valid]]
    # Short documents: one shingle of all their units (the order-k hash at their first unit).
    short = np.flatnonzero((n_units > 0) & (n_units < n))
    if len(short):
        first = np.searchsorted(doc, short)
        k = n_units[short]
        out_h.append(
            np.array(
                [orders[kk - 1][f] for kk, f in zip(k.tolist(), first.tolist(), strict=True)],
                dtype=np.uint64,
            )
        )
        out_d.append(short)
    empty = np.flatnonzero(n_units == 0)
    if len(empty):
        out_h.append(np.full(len(empty), np.uint64(0x5EED0E4D7E00E4D7), dtype=np.uint64))
        out_d.append(empty)
    hh, dd = np.concatenate(out_h), np.concatenate(out_d)
    order = np.argsort(dd, kind="stable")
    return hh[order], dd[order]


def minhash_permutations(num_perm: int = 128, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (a, b) of ``num_perm`` universal hashes ``(a x + b) mod (2^61 - 1)``,
    a uniform in [1, p) and b in [0, p)."""
    if num_perm < 1:
        raise ValueError(f"num_perm must be >= 1, got {num_perm}")
    rng = np.random.default_rng(seed)
    p = int(MERSENNE_61)
    a = rng.integers(1, p, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, p, size=num_perm, dtype=np.uint64)
    return a, b


_LOW29 = np.uint64((1 << 29) - 1)
_LOW32 = np.uint64((1 << 32) - 1)


def _reduce61(y: np.ndarray) -> np.ndarray:
    """y mod (2^61 - 1) for y < 2^64, using 2^61 = 1 (mod p); result in [0, p]."""
    return (y & MERSENNE_61) + (y >> np.uint64(61))


def universal_hash(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a x + b) mod (2^61 - 1)`` for 32-bit ``x`` (column) and 61-bit ``a``, ``b`` (row),
    exactly, in uint64: a = a1 2^32 + a0, and a1 x 2^32 is folded with 2^61 = 1 (mod p)."""
    a0, a1 = a & _LOW32, a >> np.uint64(32)
    with np.errstate(over="ignore"):
        lo = _reduce61(x * a0)  # x a0 < 2^64
        t = x * a1  # < 2^61
        mid = (t >> np.uint64(29)) + ((t & _LOW29) << np.uint64(32))  # = t 2^32 (mod p), < 2^62
        y = _reduce61(_reduce61(lo + mid) + b)
    return np.where(y >= MERSENNE_61, y - MERSENNE_61, y)


def _minhash_numpy(x, doc, a, b, sig, block: int = 512) -> None:
    """Reference kernel in numpy. Small blocks keep the (block, num_perm) temporaries in
    cache: 3x faster than 32k-row blocks."""
    for s in range(0, len(x), block):
        xs, ds = x[s : s + block], doc[s : s + block]
        y = universal_hash(xs[:, None], a[None, :], b[None, :])
        starts = np.flatnonzero(np.r_[True, ds[1:] != ds[:-1]])
        d = ds[starts]  # distinct: each document's shingles are contiguous
        sig[d] = np.minimum(sig[d], np.minimum.reduceat(y, starts, axis=0))


def _minhash_numba_impl(x, doc, a, b, sig):  # pragma: no cover - compiled by numba
    """The same arithmetic as :func:`universal_hash`, fused into one loop (6.9x numpy, see the
    module docstring)."""
    m61 = np.uint64(0x1FFFFFFFFFFFFFFF)
    low32 = np.uint64(0xFFFFFFFF)
    low29 = np.uint64(0x1FFFFFFF)
    s61, s32, s29 = np.uint64(61), np.uint64(32), np.uint64(29)
    for i in range(x.shape[0]):
        xi, d = x[i], doc[i]
        for j in range(a.shape[0]):
            lo = xi * (a[j] & low32)
            lo = (lo & m61) + (lo >> s61)
            t = xi * (a[j] >> s32)
            y = lo + (t >> s29) + ((t & low29) << s32)
            y = (y & m61) + (y >> s61)
            y = y + b[j]
            y = (y & m61) + (y >> s61)
            if y >= m61:
                y -= m61
            if y < sig[d, j]:
                sig[d, j] = y


@functools.cache
def _minhash_numba():
    """The compiled kernel, or None without numba; compiled on first use, not at import."""
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency; numpy is the fallback
        return None
    return numba.njit(cache=True, nogil=True)(_minhash_numba_impl)


def minhash_signatures(
    shingles: np.ndarray,
    doc: np.ndarray,
    n_docs: int,
    num_perm: int = 128,
    seed: int = 1,
    backend: Literal["auto", "numba", "numpy"] = "auto",
) -> np.ndarray:
    """(n_docs, num_perm) uint64 MinHash signatures from :func:`shingle_hashes` output
    (shingles grouped by document, every document present). The hash of shingle value ``x``
    (its top 32 bits) under permutation ``j`` is ``(a_j x + b_j) mod (2^61 - 1)``, computed
    exactly; ``numba`` and ``numpy`` give identical signatures."""
    a, b = minhash_permutations(num_perm, seed)
    x = np.ascontiguousarray(shingles >> np.uint64(32), dtype=np.uint64)  # 32-bit values
    d = np.ascontiguousarray(doc, dtype=np.int64)
    sig = np.full((n_docs, num_perm), np.iinfo(np.uint64).max, dtype=np.uint64)
    kernel = _minhash_numba() if backend != "numpy" else None
    if backend == "numba" and kernel is None:
        raise ImportError("backend='numba' needs the numba package")
    if kernel is not None:
        kernel(x, d, a, b, sig)
    else:
        _minhash_numpy(x, d, a, b, sig)
    return sig


def _integrate(f, a: float, b: float, steps: int = 200) -> float:
    xs = np.linspace(a, b, steps + 1)
    ys = f(xs)
    return float(np.sum((ys[1:] + ys[:-1]) * np.diff(xs)) / 2)


@functools.lru_cache(maxsize=64)
def optimal_bands(
    threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5
) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimizing the weighted false-positive
    (Jaccard below ``threshold`` hashed together) and false-negative probability mass, as
    datasketch's ``_optimal_param`` does."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    best, best_err = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = _integrate(lambda s, b=b, r=r: 1 - (1 - s**r) ** b, 0.0, threshold)
            fn = _integrate(lambda s, b=b, r=r: 1 - (1 - (1 - s**r) ** b), threshold, 1.0)
            err = fp * fp_weight + fn * fn_weight
            if err < best_err:
                best, best_err = (b, r), err
    return best


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n_docs, bands) uint64 keys: documents sharing a key in a band are candidates."""
    n, p = signatures.shape
    if bands * rows > p:
        raise ValueError(f"bands x rows = {bands} x {rows} = {bands * rows} exceeds num_perm = {p}")
    keys = np.zeros((n, bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(bands):
            acc = np.full(n, np.uint64(j + 1), dtype=np.uint64)
            for c in signatures[:, j * rows : (j + 1) * rows].T:
                acc = _mix64(acc * np.uint64(0x9E3779B97F4A7C15) + c)
            keys[:, j] = acc
    return keys


def star_edges(keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Candidate edges (i, j) as index pairs: in every (band, key) bucket, each member to the
    member with the smallest id (a star, never all pairs)."""
    _n, bands = keys.shape
    rank = np.argsort(np.argsort(ids, kind="stable"), kind="stable")  # smaller id -> smaller rank
    edges = []
    for j in range(bands):
        order = np.lexsort((rank, keys[:, j]))
        k = keys[order, j]
        new = np.r_[True, k[1:] != k[:-1]]
        head = order[np.flatnonzero(new)][np.cumsum(new) - 1]
        pair = np.stack([order, head], axis=1)
        edges.append(pair[pair[:, 0] != pair[:, 1]])
    e = np.concatenate(edges) if edges else np.zeros((0, 2), dtype=np.int64)
    return np.unique(e, axis=0)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two shingle-hash sets."""
    ua, ub = np.unique(a), np.unique(b)
    inter = len(np.intersect1d(ua, ub, assume_unique=True))
    union = len(ua) + len(ub) - inter
    return inter / union if union else 1.0


def connected_components(n: int, edges: np.ndarray) -> np.ndarray:
    """Component label of each of ``n`` nodes: the smallest node index in its component."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components as cc

    if len(edges) == 0:
        return np.arange(n)
    g = sp.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, labels = cc(g, directed=False)
    first = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n))
    return first[labels]


def verify_edges(
    edges: np.ndarray, shingles: np.ndarray, doc: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate edges whose true shingle-set Jaccard is >= ``threshold``, with their Jaccard."""
    if len(edges) == 0:
        return edges, np.zeros(0)
    offsets = np.searchsorted(doc, np.arange(doc.max() + 2))
    sims = jaccard_pairs(edges[:, 0], edges[:, 1], shingle_sets(shingles, offsets))
    keep = sims >= threshold
    return edges[keep], sims[keep]


def minhash_dedup(
    ids: Sequence[str],
    texts: Sequence[str],
    threshold: float = 0.8,
    num_perm: int = 128,
    n: int = 5,
    bands: int | None = None,
    rows: int | None = None,
    verify: bool = True,
    seed: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """In-process near-duplicate removal: (component representative index, Jaccard to it) for
    every document. A document is kept when it is its own representative (the smallest id of
    its component); the others duplicate their representative."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if (bands is None) != (rows is None):
        raise ValueError(f"give both bands and rows or neither (got bands={bands}, rows={rows})")
    if bands is None:
        # With verification, favour recall: exact Jaccard removes the extra candidates after.
        bands, rows = optimal_bands(threshold, num_perm, *((0.05, 0.95) if verify else (0.5, 0.5)))
    elif bands * rows != num_perm:
        raise ValueError(f"bands x rows must equal num_perm: {bands} x {rows} != {num_perm}")
    sh, doc = shingle_hashes(texts, n)
    sig = minhash_signatures(sh, doc, len(texts), num_perm, seed)
    id_arr = np.asarray(ids, dtype=object)
    edges = star_edges(band_keys(sig, bands, rows), id_arr)
    sims = np.ones(len(edges))
    if verify:
        edges, sims = verify_edges(edges, sh, doc, threshold)
    # Representatives: the smallest id of each component.
    order = np.argsort(id_arr, kind="stable")
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))
    labels = connected_components(len(ids), rank[edges] if len(edges) else edges)  # in rank space
    rep = order[labels[rank]]
    sim = np.ones(len(ids))
    if len(edges):
        best = {}
        for (i, j), s in zip(edges.tolist(), sims.tolist(), strict=True):
            for a, b_ in ((i, j), (j, i)):
                if b_ == rep[a]:
                    best[a] = max(best.get(a, 0.0), s)
        for a, s in best.items():
            sim[a] = s
    return rep, sim


# --- the whole decision in one process: exact groups, LSH stars, verification, components ---


def _sorted_unique_csr_impl(values, offsets):  # pragma: no cover - compiled by numba
    """Each document's shingle hashes sorted and deduplicated, as a new CSR pair."""
    out = np.empty_like(values)
    new = np.zeros_like(offsets)
    k = 0
    for d in range(offsets.shape[0] - 1):
        s = np.sort(values[offsets[d] : offsets[d + 1]])
        for i in range(s.shape[0]):
            if i == 0 or s[i] != s[i - 1]:
                out[k] = s[i]
                k += 1
        new[d + 1] = k
    return out[:k], new


def _jaccard_pairs_impl(u, v, values, offsets):  # pragma: no cover - compiled by numba
    """Jaccard of the sorted-unique sets of documents u[i] and v[i] (a merge per pair)."""
    out = np.empty(u.shape[0])
    for i in range(u.shape[0]):
        a0, a1 = offsets[u[i]], offsets[u[i] + 1]
        b0, b1 = offsets[v[i]], offsets[v[i] + 1]
        inter = 0
        while a0 < a1 and b0 < b1:
            if values[a0] == values[b0]:
                inter += 1
                a0 += 1
                b0 += 1
            elif values[a0] < values[b0]:
                a0 += 1
            else:
                b0 += 1
        union = (offsets[u[i] + 1] - offsets[u[i]]) + (offsets[v[i] + 1] - offsets[v[i]]) - inter
        out[i] = inter / union if union > 0 else 1.0
    return out


@functools.cache
def _set_kernels():
    """(sorted_unique_csr, jaccard_pairs) compiled by numba, or the plain Python versions."""
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency
        return _sorted_unique_csr_impl, _jaccard_pairs_impl
    jit = numba.njit(cache=True, nogil=True)
    return jit(_sorted_unique_csr_impl), jit(_jaccard_pairs_impl)


def shingle_sets(values: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, deduplicated shingle hashes per document (CSR: ``values[offsets[d]:offsets[d+1]]``
    are document d's)."""
    csr, _ = _set_kernels()
    return csr(
        np.ascontiguousarray(values, dtype=np.uint64), np.ascontiguousarray(offsets, np.int64)
    )


def jaccard_pairs(u: np.ndarray, v: np.ndarray, sets: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Exact Jaccard of documents ``u[i]`` and ``v[i]`` from :func:`shingle_sets` output."""
    _, jac = _set_kernels()
    values, offsets = sets
    return jac(
        np.ascontiguousarray(u, dtype=np.int64),
        np.ascontiguousarray(v, dtype=np.int64),
        values,
        offsets,
    )


@dataclass
class DedupDecisions:
    """What :func:`dedup_decisions` decided for each of n documents."""

    ref: np.ndarray
    """Index of the kept document each document duplicates; -1 for kept documents."""
    sim: np.ndarray
    """Jaccard to ``ref`` (1.0 for exact duplicates of a kept document); NaN when kept."""
    exact: np.ndarray
    """True where the document was removed as an exact duplicate."""
    candidate_edges: int
    verified_edges: int


def dedup_decisions(
    rank: np.ndarray,
    scope: np.ndarray,
    exact_keys: Sequence[str] | None,
    bands: np.ndarray | None,
    shingles: np.ndarray,
    offsets: np.ndarray,
    threshold: float = 0.8,
    verify: bool = True,
) -> DedupDecisions:
    """Exact and near-duplicate decisions for n documents in one process: the same rules as
    the Spark job (:mod:`curamix.pipelines.dedup`), so both give the same output.

    ``rank``: a permutation of 0..n-1, lower = preferred (domain priority, then id);
    ``scope``: int group of each document (all 0 for global scope; duplicates are only looked
    for within a group); ``exact_keys``: normalized-text keys, or None to skip exact dedup;
    ``bands``: (n, bands) LSH keys from :func:`band_keys`, or None to skip near dedup;
    ``shingles``/``offsets``: each document's shingle hashes (CSR).

    In each (scope, exact key) group the best document stays. Among those, each LSH bucket
    (scope, band, key) is a star to its best member; edges whose exact Jaccard is below
    ``threshold`` are dropped (``verify``); in each connected component the best member stays
    and every other member gets its Jaccard to it. An exact duplicate of a document removed as
    a near duplicate points to that document's kept one.
    """
    n = len(rank)
    rank = np.asarray(rank, dtype=np.int64)
    by_rank = np.empty(n, dtype=np.int64)
    by_rank[rank] = np.arange(n)
    scope = np.asarray(scope, dtype=np.int64)
    ref = np.full(n, -1, dtype=np.int64)
    sim = np.full(n, np.nan)
    exact = np.zeros(n, dtype=bool)
    survivor = np.ones(n, dtype=bool)
    if exact_keys is not None and n:
        _, group = np.unique(
            np.array([f"{s}\x00{k}" for s, k in zip(scope.tolist(), exact_keys, strict=True)]),
            return_inverse=True,
        )
        best = np.full(group.max() + 1, n, dtype=np.int64)
        np.minimum.at(best, group, rank)
        rep = by_rank[best[group]]
        exact = rep != np.arange(n)
        survivor = ~exact
        ref[exact] = rep[exact]
        sim[exact] = 1.0
    n_cand = n_ver = 0
    if bands is not None and n:
        s_idx = np.flatnonzero(survivor)
        s_rank, s_scope = rank[s_idx], scope[s_idx]
        edges = []
        for j in range(bands.shape[1]):
            key = bands[s_idx, j]
            order = np.lexsort((s_rank, key, s_scope))
            k, sc = key[order], s_scope[order]
            new = np.r_[True, (k[1:] != k[:-1]) | (sc[1:] != sc[:-1])]
            head = order[np.flatnonzero(new)][np.cumsum(new) - 1]
            pair = np.stack([s_rank[order], s_rank[head]], axis=1)
            edges.append(pair[pair[:, 0] != pair[:, 1]])
        e = np.unique(np.concatenate(edges), axis=0) if edges else np.zeros((0, 2), np.int64)
        n_cand = len(e)
        sets = shingle_sets(shingles, offsets)
        if verify and len(e):
            e = e[jaccard_pairs(by_rank[e[:, 0]], by_rank[e[:, 1]], sets) >= threshold]
        n_ver = len(e)
        root = connected_components(n, e)  # in rank space: the best rank of each component
        near = np.flatnonzero(root[rank] != rank)  # documents (by index) not their root
        near = near[survivor[near]]
        ref[near] = by_rank[root[rank[near]]]
        sim[near] = jaccard_pairs(near, ref[near], sets)
        # Exact duplicates of a near-removed document point to its kept one.
        hop = exact & (ref >= 0)
        hop[hop] = ~exact[ref[hop]] & (ref[ref[hop]] >= 0)
        sim[hop] = sim[ref[hop]]
        ref[hop] = ref[ref[hop]]
    return DedupDecisions(
        ref=ref, sim=sim, exact=exact, candidate_edges=n_cand, verified_edges=n_ver
    )
