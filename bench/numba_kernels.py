"""Each numba kernel of curamix against the best library alternative that gives the same result.

    .venv/bin/python bench/numba_kernels.py [--data ../shared/data] [--repeat 3] [--dsir-docs N]

The rule (docs/benchmarks.md): a kernel stays in numba only where it is measured faster than
the library way of computing the same thing. Every alternative here is checked to give
identical output before it is timed. Times are the best of ``--repeat`` runs after one warm-up
call (numba compiles on first use; ``cache=True`` keeps the machine code, so the first call of
a later process only loads it: that load time is printed too). One process, one thread.

DSIR (``curamix.selectors.dsir``), fast hash mode, on the corpus (43,693 docs) in the DSIR
job's batches of 2,048 documents, unigrams and bigrams:

- ``sha256``: the reference's bucket ``int(sha256(gram), 16) % num_buckets`` of every distinct
  n-gram, numba SHA-256 over the tokens' UTF-8 bytes vs ``hashlib.sha256`` on the same bytes
  (one Python call per n-gram; ``int.from_bytes`` on the digest).
- ``table``: the per-process table from the n-gram's 64-bit hash to its bucket (lookup, and
  insert of n-grams not seen before), numba open addressing vs a sorted numpy table
  (``np.unique`` + ``searchsorted`` + ``np.insert``) vs a Python dict; SHA-256 excluded.
- ``batch_grams``: the whole featurization with the numba kernels vs with hashlib + the best
  table alternative, as the DSIR job calls it.

Dedup (``curamix.filters.dedup``), on ``corpus_with_dups/mixed_20k.jsonl.gz`` (20,000 docs),
word 5-gram shingles, 128 permutations, the stage's defaults:

- ``minhash``: the exact ``(a x + b) mod (2^61 - 1)`` signatures, numba fused loop vs numpy
  (``_minhash_numpy``, blocks of 512 shingles); datasketch's ``MinHash.update_batch`` (its own
  arithmetic, not identical, one object per document) for scale.
- ``shingle_sets``: each document's shingle hashes sorted and deduplicated (CSR), numba
  per-document sort vs numpy ``lexsort`` over (document, hash).
- ``jaccard_pairs``: exact Jaccard of candidate pairs, numba merge vs numpy (gather both
  sets of every pair, ``lexsort``, count equal neighbours); on the LSH candidate edges of the
  set and on 20,000 random pairs.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")


FIRST: dict[str, float] = {}
"""Seconds of the first call of each numba kernel in this process: compilation, or loading
the machine code from numba's on-disk cache when an earlier process compiled it."""


def best_of(
    fn: Callable[[], object], repeat: int, first: str | None = None
) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()  # warm-up (compilation, caches)
    if first:
        FIRST[first] = time.perf_counter() - t
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return min(ts), out


def read_texts(path: Path, limit: int | None = None) -> list[str]:
    texts = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            texts.append(json.loads(line)["text"])
            if limit and len(texts) >= limit:
                break
    return texts


def row(name: str, what: str, seconds: float, n: int, unit: str, base: float | None) -> None:
    """One table row; ``base`` is the numba kernel's time (the ratio is this row's / numba's)."""
    per = seconds / max(n, 1) * 1e9
    ratio = f"{seconds / base:.1f}x" if base else ""
    print(f"| {name} | {what} | {seconds:.3f} | {per:,.1f} ns/{unit} | {ratio} |", flush=True)


# --------------------------------------------------------------------------- DSIR alternatives
def sha_hashlib(buf, tok_start, tok_end, first, order, num_buckets) -> np.ndarray:
    """The reference's buckets of the n-grams starting at tokens ``first`` with hashlib."""
    b = buf.tobytes()
    ts, te = tok_start.tolist(), tok_end.tolist()
    sha, frm = hashlib.sha256, int.from_bytes
    if order == 1:
        it = (frm(sha(b[ts[i] : te[i]]).digest(), "big") % num_buckets for i in first.tolist())
    elif order == 2:
        it = (
            frm(sha(b[ts[i] : te[i]] + b" " + b[ts[i + 1] : te[i + 1]]).digest(), "big")
            % num_buckets
            for i in first.tolist()
        )
    else:
        it = (
            frm(sha(b" ".join(b[ts[t] : te[t]] for t in range(i, i + order))).digest(), "big")
            % num_buckets
            for i in first.tolist()
        )
    return np.fromiter(it, dtype=np.int64, count=len(first))


class SortedTable:
    """The bucket table as sorted numpy arrays: same answers as dsir._BucketTable (a key's
    bucket is the one of the first n-gram seen with it)."""

    def __init__(self, num_buckets: int, sha: Callable):
        self.num_buckets, self.sha = num_buckets, sha
        self.keys = np.zeros(0, np.uint64)
        self.vals = np.zeros(0, np.int64)

    def buckets(self, keys, first, order, tok_start, tok_end, buf) -> np.ndarray:
        keys = np.where(keys == 0, np.uint64(1), keys)
        uk, idx, inv = np.unique(keys, return_index=True, return_inverse=True)
        pos = np.searchsorted(self.keys, uk)
        found = pos < len(self.keys)
        found[found] = self.keys[pos[found]] == uk[found]
        vals = np.empty(len(uk), np.int64)
        vals[found] = self.vals[pos[found]]
        new = np.flatnonzero(~found)
        if len(new):
            vals[new] = self.sha(buf, tok_start, tok_end, first[idx[new]], order, self.num_buckets)
            self.keys = np.insert(self.keys, pos[new], uk[new])
            self.vals = np.insert(self.vals, pos[new], vals[new])
        return vals[inv]


class DictTable:
    """The bucket table as a Python dict."""

    def __init__(self, num_buckets: int, sha: Callable):
        self.num_buckets, self.sha, self.d = num_buckets, sha, {}

    def buckets(self, keys, first, order, tok_start, tok_end, buf) -> np.ndarray:
        keys = np.where(keys == 0, np.uint64(1), keys)
        d = self.d
        kl = keys.tolist()
        new_pos, seen = [], set()
        for i, k in enumerate(kl):
            if k not in d and k not in seen:
                seen.add(k)
                new_pos.append(i)
        if new_pos:
            p = np.asarray(new_pos, np.int64)
            b = self.sha(buf, tok_start, tok_end, first[p], order, self.num_buckets)
            d.update(zip((kl[i] for i in new_pos), b.tolist(), strict=True))
        return np.fromiter(map(d.__getitem__, kl), dtype=np.int64, count=len(kl))


def dsir_inputs(texts: list[str], batch: int, ngrams: int = 2):
    """Per batch and order: (keys, first, order, tok_start, tok_end, buf), as batch_grams
    hands them to the table."""
    from curamix.selectors.dsir import _fast_token_hashes, _mix64

    calls = []
    for s in range(0, len(texts), batch):
        h, doc, ts, te, buf = _fast_token_hashes(texts[s : s + batch], spans=True)
        total = len(h)
        calls.append((h, np.arange(total, dtype=np.int64), 1, ts, te, buf))
        acc = h
        with np.errstate(over="ignore"):
            for order in range(2, ngrams + 1):
                acc = _mix64(
                    acc[:-1] * np.uint64(0x9E3779B97F4A7C15) + h[order - 1 :] + np.uint64(order)
                )
                first = np.flatnonzero(doc[: total - order + 1] == doc[order - 1 :])
                calls.append((acc[first], first, order, ts, te, buf))
    return calls


def bench_dsir(data: Path, repeat: int, limit: int | None, batch: int = 2048) -> None:
    from curamix.selectors import dsir

    nb = 10_000
    texts = []
    for f in sorted((data / "corpus").glob("*.jsonl.gz")):
        texts += read_texts(f)
    if limit:
        texts = texts[:limit]
    calls = dsir_inputs(texts, batch)
    n_grams = sum(len(c[0]) for c in calls)
    print(f"\nDSIR: {len(texts):,} docs, {n_grams:,} n-grams (orders 1-2) in {len(calls)} calls")

    # The distinct n-grams, each with its first occurrence, per call (what the SHA kernel sees
    # on a cold table when the calls share no n-gram: an upper bound of its work).
    distinct = []
    seen: set[int] = set()
    for keys, first, order, ts, te, buf in calls:
        k = np.where(keys == 0, np.uint64(1), keys)
        _, idx = np.unique(k, return_index=True)
        idx = np.sort(idx)
        mask = np.fromiter((x not in seen for x in k[idx].tolist()), bool, count=len(idx))
        idx = idx[mask]
        seen.update(k[idx].tolist())
        distinct.append((np.ascontiguousarray(first[idx]), order, ts, te, buf))
    n_distinct = sum(len(d[0]) for d in distinct)

    sha_nb, lookup_nb = dsir._sha256_kernels()
    for name, kernel, args in (
        ("dsir sha256", sha_nb, (np.zeros(1, np.uint8), *[np.zeros(1, np.int64)] * 3, 1, 7,
                                 dsir._SHA256_K, dsir._SHA256_H0, np.empty(1, np.int64))),
        ("dsir table", lookup_nb, (np.ones(1, np.uint64), np.zeros(8, np.uint64),
                                   np.full(8, -1, np.int32), np.empty(1, np.int64),
                                   np.empty(1, np.int64), np.uint64(61))),
    ):  # fmt: skip
        t = time.perf_counter()
        kernel(*args)
        FIRST[name] = time.perf_counter() - t

    def run_sha_numba():
        out = []
        for first, order, ts, te, buf in distinct:
            b = np.empty(len(first), np.int64)
            sha_nb(buf, ts, te, first, order, nb, dsir._SHA256_K, dsir._SHA256_H0, b)
            out.append(b)
        return np.concatenate(out)

    def run_sha_hashlib():
        return np.concatenate(
            [sha_hashlib(buf, ts, te, first, order, nb) for first, order, ts, te, buf in distinct]
        )

    print("\n| kernel | implementation | seconds | per item | numba speed-up |")
    print("|---|---|---:|---:|---:|")
    t_nb, a = best_of(run_sha_numba, repeat)
    t_hl, b = best_of(run_sha_hashlib, repeat)
    assert np.array_equal(a, b), "numba and hashlib SHA-256 buckets differ"
    row("dsir sha256", f"numba ({n_distinct:,} distinct n-grams)", t_nb, n_distinct, "n-gram", None)
    row("dsir sha256", "hashlib.sha256", t_hl, n_distinct, "n-gram", t_nb)

    # Table: lookups and inserts only (a SHA stand-in that costs nothing).
    def zero_sha(buf, ts, te, first, order, num_buckets):
        return first.astype(np.int64) % num_buckets

    def run_table_numba():
        tab = dsir._BucketTable(nb)

        def free_sha(buf, ts, te, f, order, num_buckets, k, h0, out):
            out[:] = f % num_buckets

        out = []
        orig = dsir._sha256_kernels
        dsir._sha256_kernels = lambda: (free_sha, lookup_nb)
        try:
            for keys, first, order, ts, te, buf in calls:
                out.append(tab.buckets(keys, first, order, ts, te, buf))
        finally:
            dsir._sha256_kernels = orig
        return np.concatenate(out)

    def run_table(cls):
        def go():
            tab = cls(nb, zero_sha)
            return np.concatenate([tab.buckets(*c) for c in calls])

        return go

    t_tn, a = best_of(run_table_numba, repeat)
    t_ts, b = best_of(run_table(SortedTable), repeat)
    t_td, c = best_of(run_table(DictTable), repeat)
    assert np.array_equal(a, b) and np.array_equal(a, c), "bucket tables disagree"
    row("dsir table", f"numba open addressing ({n_grams:,} lookups)", t_tn, n_grams, "lookup", None)
    row(
        "dsir table", "numpy sorted (unique + searchsorted + insert)", t_ts, n_grams, "lookup", t_tn
    )
    row("dsir table", "Python dict", t_td, n_grams, "lookup", t_tn)

    # The whole featurization, as the DSIR job runs it (a cold table each run).
    def run_batch_grams():
        dsir._TABLES.clear()
        return np.concatenate(
            [
                dsir.batch_grams(texts[s : s + batch], nb, 2, "fast").buckets
                for s in range(0, len(texts), batch)
            ]
        )

    best_alt = SortedTable if t_ts <= t_td else DictTable

    def run_batch_grams_alt():
        orig = dsir._table
        tab = best_alt(nb, sha_hashlib)
        dsir._table = lambda num_buckets: tab
        try:
            return run_batch_grams()
        finally:
            dsir._table = orig

    t_bn, a = best_of(run_batch_grams, repeat)
    t_ba, b = best_of(run_batch_grams_alt, repeat)
    assert np.array_equal(a, b), "batch_grams differs with the library kernels"
    row("dsir batch_grams", "numba SHA-256 + numba table", t_bn, len(texts), "doc", None)
    row("dsir batch_grams", f"hashlib + {best_alt.__name__}", t_ba, len(texts), "doc", t_bn)


# --------------------------------------------------------------------------- dedup alternatives
def sorted_unique_csr_numpy(values: np.ndarray, offsets: np.ndarray):
    n = len(offsets) - 1
    doc = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
    order = np.lexsort((values, doc))
    v, d = values[order], doc[order]
    keep = np.ones(len(v), dtype=bool)
    if len(v):
        keep[1:] = (v[1:] != v[:-1]) | (d[1:] != d[:-1])
    new = np.zeros_like(offsets)
    np.cumsum(np.bincount(d[keep], minlength=n), out=new[1:])
    return v[keep], new


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + l)`` for every (s, l)."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    ends = np.cumsum(lengths)
    return np.arange(total, dtype=np.int64) + np.repeat(starts - (ends - lengths), lengths)


def jaccard_pairs_numpy(u, v, values, offsets) -> np.ndarray:
    lu, lv = offsets[u + 1] - offsets[u], offsets[v + 1] - offsets[v]
    m = len(u)
    pair = np.concatenate([np.repeat(np.arange(m), lu), np.repeat(np.arange(m), lv)])
    vals = values[np.concatenate([_ranges(offsets[u], lu), _ranges(offsets[v], lv)])]
    order = np.lexsort((vals, pair))
    p, x = pair[order], vals[order]
    same = (p[1:] == p[:-1]) & (x[1:] == x[:-1])
    inter = np.bincount(p[1:][same], minlength=m)
    union = lu + lv - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def bench_dedup(data: Path, repeat: int, limit: int | None) -> None:
    from curamix.filters import dedup

    texts = read_texts(data / "corpus_with_dups" / "mixed_20k.jsonl.gz", limit)
    sh, doc = dedup.shingle_hashes(texts, 5)
    n_docs, num_perm = len(texts), 128
    print(f"\nDedup: {n_docs:,} docs, {len(sh):,} word 5-gram shingles, {num_perm} permutations")
    t = time.perf_counter()
    dedup.minhash_signatures(sh[:1], doc[:1], 1, 2, backend="numba")
    FIRST["dedup minhash"] = time.perf_counter() - t
    t = time.perf_counter()
    tiny = dedup.shingle_sets(sh[:2], np.array([0, 2]))
    FIRST["dedup shingle_sets"] = time.perf_counter() - t
    t = time.perf_counter()
    dedup.jaccard_pairs(np.zeros(1, np.int64), np.zeros(1, np.int64), tiny)
    FIRST["dedup jaccard_pairs"] = time.perf_counter() - t
    print("\n| kernel | implementation | seconds | per item | numba speed-up |")
    print("|---|---|---:|---:|---:|")

    def sig(backend):
        return lambda: dedup.minhash_signatures(sh, doc, n_docs, num_perm, 1, backend=backend)

    t_n, a = best_of(sig("numba"), repeat)
    t_p, b = best_of(sig("numpy"), repeat)
    assert np.array_equal(a, b), "numba and numpy signatures differ"
    n_ops = len(sh) * num_perm
    row("dedup minhash", f"numba ({len(sh):,} shingles x {num_perm})", t_n, n_ops, "hash", None)
    row("dedup minhash", "numpy (_minhash_numpy, blocks of 512)", t_p, n_ops, "hash", t_n)
    try:
        from datasketch import MinHash

        x32 = (sh >> np.uint64(32)).astype(np.uint32)
        starts = np.searchsorted(doc, np.arange(n_docs + 1))

        def ds():
            out = []
            for i in range(n_docs):
                m = MinHash(num_perm=num_perm, seed=1)
                m.update_batch(x32[starts[i] : starts[i + 1]].view(f"S{4}"))
                out.append(m.hashvalues)
            return out

        t = time.perf_counter()
        ds()  # once: it is slow
        t_d = time.perf_counter() - t
        row("dedup minhash", "datasketch update_batch (not identical)", t_d, n_ops, "hash", t_n)
    except ImportError:
        pass

    offsets = np.searchsorted(doc, np.arange(n_docs + 1))
    t_n, a = best_of(lambda: dedup.shingle_sets(sh, offsets), repeat)
    t_p, b = best_of(lambda: sorted_unique_csr_numpy(sh, offsets), repeat)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]), "shingle sets differ"
    row(
        "dedup shingle_sets", f"numba per-doc sort ({len(sh):,} hashes)", t_n, len(sh), "hash", None
    )
    row("dedup shingle_sets", "numpy lexsort (doc, hash)", t_p, len(sh), "hash", t_n)

    sets = a
    sigs = dedup.minhash_signatures(sh, doc, n_docs, num_perm, 1)
    bands, rows_ = dedup.optimal_bands(0.8, num_perm, 0.05, 0.95)
    edges = dedup.star_edges(dedup.band_keys(sigs, bands, rows_), np.arange(n_docs))
    rng = np.random.default_rng(0)
    rand = rng.integers(0, n_docs, size=(20_000, 2))
    for name, e in (("LSH candidate edges", edges), ("random pairs", rand)):
        u, v = np.ascontiguousarray(e[:, 0]), np.ascontiguousarray(e[:, 1])
        t_n, a = best_of(lambda u=u, v=v: dedup.jaccard_pairs(u, v, sets), repeat)
        t_p, b = best_of(lambda u=u, v=v: jaccard_pairs_numpy(u, v, *sets), repeat)
        assert np.array_equal(a, b), "Jaccard values differ"
        row("dedup jaccard_pairs", f"numba merge ({len(e):,} {name})", t_n, len(e), "pair", None)
        row("dedup jaccard_pairs", "numpy gather + lexsort", t_p, len(e), "pair", t_n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data"
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dsir-docs", type=int, default=None, help="cap the DSIR corpus")
    ap.add_argument("--dedup-docs", type=int, default=None, help="cap the dedup set")
    ap.add_argument("--only", choices=["dsir", "dedup"], default=None)
    args = ap.parse_args()
    import numba

    print(
        f"{time.strftime('%Y-%m-%d')} {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}"
    )
    if args.only in (None, "dsir"):
        bench_dsir(args.data, args.repeat, args.dsir_docs)
    if args.only in (None, "dedup"):
        bench_dedup(args.data, args.repeat, args.dedup_docs)
    print("\nnumba first call in this process (compilation, or a load from its on-disk cache):")
    print(", ".join(f"{k} {v:.2f} s" for k, v in FIRST.items()))


if __name__ == "__main__":
    main()
