"""DSIR: data selection with importance resampling over hashed n-gram features.

Plain kernels (tokenize, hashed n-gram counts of a batch as a sparse matrix, log-importance
weights, Gumbel top-k with per-document noise from (seed, id)) and a small estimator,
:class:`DSIRSelector`, that a notebook, the Spark job and the tests all share.

Three hash modes, all on the reference's tokens (lowercased WordPunct runs):

- ``fast`` (the default): the reference's buckets, ``int(sha256(gram).hexdigest(), 16) %
  num_buckets``, without its cost. Tokens are found on the code points of the text in numpy,
  every n-gram gets a 64-bit hash (vectorized polynomial hash, n-gram hashes derived
  arithmetically), and a per-process table maps that hash to the n-gram's sha256 bucket; only
  n-grams not seen before are hashed, by a numba SHA-256 of their UTF-8 bytes. Equal to the
  reference's buckets on every n-gram of ../shared/data (17.7M n-grams, 1.9M distinct).
- ``sha256``: the reference's string path (Python tokens, hashlib, memoized), the plain
  ground truth the tests hold ``fast`` to.
- ``hash64``: the 64-bit hashes reduced to buckets directly, no table; fastest and flat in
  memory, but its collisions are not the reference's (at 10k buckets about 6% of a 20%
  selection moves, as with any other hash).

numba is kept for the two kernels of the ``fast`` mode because it is measured faster than the
library way of computing the same buckets (``bench/numba_kernels.py``, 2026-12-03, 2-core VM,
one thread, the corpus's 43,693 documents in the DSIR job's batches of 2,048, orders 1-2,
identical outputs checked): SHA-256 of the 1.94M distinct n-grams 0.53 us each vs 2.19 us
with ``hashlib.sha256`` on the same bytes (4.1x); the n-gram-hash -> bucket table 42 ns per
lookup (17.7M) vs 144 ns for a sorted numpy table (``np.unique`` + ``searchsorted`` +
``np.insert``, 3.4x) and 901 ns for a dict (21x); ``batch_grams`` over the corpus 5.5 s vs
8.9 s with hashlib and the numpy table (1.6x). A fresh machine compiles the two kernels once
(about 2.3 s; ``cache=True`` keeps the machine code for later processes).

References
----------
Xie, Santurkar, Ma, Liang. "Data Selection for Language Models via Importance Resampling."
NeurIPS 2023. arXiv:2302.03169. Reference code: github.com/p-lambda/dsir (PyPI data-selection).
"""

from __future__ import annotations

import functools
import hashlib
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from typing import Literal

import numpy as np
import regex
import scipy.sparse as sp

WORDPUNCT_PATTERN = r"\w+|[^\w\s]+"
"""NLTK's ``WordPunctTokenizer`` pattern, the reference's default tokenizer."""
WORDPUNCT = regex.compile(WORDPUNCT_PATTERN, regex.UNICODE | regex.MULTILINE | regex.DOTALL)
r"""As NLTK compiles it: with the ``regex`` module, whose Unicode ``\w`` differs from ``re``'s
(subscript and superscript digits are not word characters)."""
_WORDPUNCT_ASCII = re.compile(WORDPUNCT_PATTERN)
_INFO_SEPARATORS = re.compile("[\x1c-\x1f]")  # whitespace to ``re``, not to ``regex``
EPS = 1e-8
"""The reference's smoothing inside the logs of ``log_diff``."""
HashMode = Literal["fast", "sha256", "hash64"]
HASH_MODES: tuple[str, ...] = ("fast", "sha256", "hash64")
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_CACHE_LIMIT = 4_000_000


def _check_hash_mode(hash_mode: str) -> None:
    if hash_mode not in HASH_MODES:
        raise ValueError(f"hash_mode must be one of {', '.join(HASH_MODES)}, got {hash_mode!r}")


def tokenize(text: str) -> list[str]:
    """Lowercase, then split into word and punctuation runs, exactly as the reference does
    (``WordPunctTokenizer``); ASCII text takes the faster ``re`` engine, which agrees there."""
    low = text.lower()
    if low.isascii() and not _INFO_SEPARATORS.search(low):
        return _WORDPUNCT_ASCII.findall(low)
    return WORDPUNCT.findall(low)


def hash_buckets(gram: str, num_buckets: int = 10_000) -> int:
    """The reference's bucket of one n-gram: ``int(sha256(gram), 16) % num_buckets``."""
    return int(hashlib.sha256(gram.encode("utf-8")).hexdigest(), 16) % num_buckets


class _Sha256Buckets:
    """Memoized :func:`hash_buckets` for words and space-joined n-grams."""

    def __init__(self, num_buckets: int):
        self.num_buckets = num_buckets
        self.cache: dict[str, int] = {}

    def __call__(self, grams: list[str]) -> np.ndarray:
        cache, nb = self.cache, self.num_buckets
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        for g in set(grams).difference(cache):
            cache[g] = hash_buckets(g, nb)
        return np.fromiter(map(cache.__getitem__, grams), dtype=np.int64, count=len(grams))


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer: a bijective mix of 64-bit integers (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


_SHA256_K = np.array(
    [
        0x428A2F98, 0x71374491, 0xB5C0FBCF, 0xE9B5DBA5, 0x3956C25B, 0x59F111F1, 0x923F82A4,
        0xAB1C5ED5, 0xD807AA98, 0x12835B01, 0x243185BE, 0x550C7DC3, 0x72BE5D74, 0x80DEB1FE,
        0x9BDC06A7, 0xC19BF174, 0xE49B69C1, 0xEFBE4786, 0x0FC19DC6, 0x240CA1CC, 0x2DE92C6F,
        0x4A7484AA, 0x5CB0A9DC, 0x76F988DA, 0x983E5152, 0xA831C66D, 0xB00327C8, 0xBF597FC7,
        0xC6E00BF3, 0xD5A79147, 0x06CA6351, 0x14292967, 0x27B70A85, 0x2E1B2138, 0x4D2C6DFC,
        0x53380D13, 0x650A7354, 0x766A0ABB, 0x81C2C92E, 0x92722C85, 0xA2BFE8A1, 0xA81A664B,
        0xC24B8B70, 0xC76C51A3, 0xD192E819, 0xD6990624, 0xF40E3585, 0x106AA070, 0x19A4C116,
        0x1E376C08, 0x2748774C, 0x34B0BCB5, 0x391C0CB3, 0x4ED8AA4A, 0x5B9CCA4F, 0x682E6FF3,
        0x748F82EE, 0x78A5636F, 0x84C87814, 0x8CC70208, 0x90BEFFFA, 0xA4506CEB, 0xBEF9A3F7,
        0xC67178F2,
    ],
    dtype=np.int64,
)  # fmt: skip
_SHA256_H0 = np.array(
    [
        0x6A09E667,
        0xBB67AE85,
        0x3C6EF372,
        0xA54FF53A,
        0x510E527F,
        0x9B05688C,
        0x1F83D9AB,
        0x5BE0CD19,
    ],
    dtype=np.int64,
)


def _sha256_buckets_impl(
    buf, tok_start, tok_end, first, order, num_buckets, k, h0, out
):  # pragma: no cover - numba
    """``int(sha256(gram), 16) % num_buckets`` for n-grams given as runs of tokens: n-gram m is
    tokens ``first[m] .. first[m] + order - 1`` (byte spans into ``buf``, UTF-8) joined by one
    space, exactly the string the reference hashes. FIPS 180-4 SHA-256 on 32-bit words held
    in int64 (every sum masked), then the 256-bit digest reduced modulo ``num_buckets`` word
    by word, big-endian."""
    mask = 0xFFFFFFFF
    w = np.empty(64, dtype=np.int64)
    hs = np.empty(8, dtype=np.int64)
    msg = np.empty(256, dtype=np.uint8)
    for m in range(first.shape[0]):
        i = first[m]
        n = order - 1
        for t in range(i, i + order):
            n += tok_end[t] - tok_start[t]
        total = ((n + 8) // 64 + 1) * 64
        if total > msg.shape[0]:
            msg = np.empty(2 * total, dtype=np.uint8)
        p = 0
        for t in range(i, i + order):
            if t > i:
                msg[p] = 32
                p += 1
            for q in range(tok_start[t], tok_end[t]):
                msg[p] = buf[q]
                p += 1
        msg[p] = 0x80
        p += 1
        while p < total - 8:
            msg[p] = 0
            p += 1
        bits = n * 8
        for q in range(8):
            msg[total - 1 - q] = (bits >> (8 * q)) & 0xFF
        for q in range(8):
            hs[q] = h0[q]
        for blk in range(0, total, 64):
            for t in range(16):
                j = blk + 4 * t
                w[t] = (
                    (np.int64(msg[j]) << 24)
                    | (np.int64(msg[j + 1]) << 16)
                    | (np.int64(msg[j + 2]) << 8)
                    | np.int64(msg[j + 3])
                )
            for t in range(16, 64):
                x, y = w[t - 15], w[t - 2]
                s0 = (((x >> 7) | (x << 25)) ^ ((x >> 18) | (x << 14)) ^ (x >> 3)) & mask
                s1 = (((y >> 17) | (y << 15)) ^ ((y >> 19) | (y << 13)) ^ (y >> 10)) & mask
                w[t] = (w[t - 16] + s0 + w[t - 7] + s1) & mask
            a, b, c, d, e, f, g, h = hs[0], hs[1], hs[2], hs[3], hs[4], hs[5], hs[6], hs[7]
            for t in range(64):
                s1 = (
                    ((e >> 6) | (e << 26)) ^ ((e >> 11) | (e << 21)) ^ ((e >> 25) | (e << 7))
                ) & mask
                ch = (e & f) ^ (~e & g)
                t1 = (h + s1 + ch + k[t] + w[t]) & mask
                s0 = (
                    ((a >> 2) | (a << 30)) ^ ((a >> 13) | (a << 19)) ^ ((a >> 22) | (a << 10))
                ) & mask
                maj = (a & b) ^ (a & c) ^ (b & c)
                h, g, f, e = g, f, e, (d + t1) & mask
                d, c, b, a = c, b, a, (t1 + s0 + maj) & mask
            hs[0] = (hs[0] + a) & mask
            hs[1] = (hs[1] + b) & mask
            hs[2] = (hs[2] + c) & mask
            hs[3] = (hs[3] + d) & mask
            hs[4] = (hs[4] + e) & mask
            hs[5] = (hs[5] + f) & mask
            hs[6] = (hs[6] + g) & mask
            hs[7] = (hs[7] + h) & mask
        r = 0
        for q in range(8):
            r = ((r << 32) | hs[q]) % num_buckets
        out[m] = r


def _table_lookup_impl(keys, tkeys, tvals, out, new_pos, shift):  # pragma: no cover - numba
    """Open-addressing lookup-or-insert of 64-bit keys (0 = empty slot). ``out[i]`` gets the
    stored bucket, or ``-1 - slot`` for a key inserted now (bucket still to compute); the
    positions in ``keys`` of the inserted keys go to ``new_pos``. Returns how many."""
    cap_mask = tkeys.shape[0] - 1
    n_new = 0
    for i in range(keys.shape[0]):
        key = keys[i]
        slot = np.int64((key * np.uint64(0x9E3779B97F4A7C15)) >> shift)
        while True:
            tk = tkeys[slot]
            if tk == key:
                v = tvals[slot]
                out[i] = v if v >= 0 else -1 - slot
                break
            if tk == 0:
                tkeys[slot] = key
                tvals[slot] = -1
                out[i] = -1 - slot
                new_pos[n_new] = i
                n_new += 1
                break
            slot = (slot + 1) & cap_mask
    return n_new


@functools.cache
def _sha256_kernels():
    """(SHA-256 bucket kernel, table lookup-or-insert kernel), compiled by numba on first use."""
    import numba

    jit = numba.njit(cache=True, nogil=True)
    return jit(_sha256_buckets_impl), jit(_table_lookup_impl)


_TABLE_CHUNK = 1 << 20
_TABLE_LIMIT = (1 << 23) - _TABLE_CHUNK
"""N-grams a :class:`_BucketTable` holds before it starts over: at most 2^24 slots of 12
bytes (about 200 MB)."""


class _BucketTable:
    """The reference's sha256 bucket of every n-gram seen so far in this process, keyed by
    the n-gram's 64-bit hash (open addressing, numba). Only n-grams not seen before are
    hashed with SHA-256, so the cost follows the vocabulary, not the text; the buckets equal
    the reference's unless two different n-grams share a 64-bit hash (about 1e-7 for the
    corpus's 2M distinct n-grams), in which case the later one takes the earlier's bucket."""

    def __init__(self, num_buckets: int, capacity: int = 1 << 16):
        if not 0 < num_buckets < 1 << 31:
            raise ValueError(f"num_buckets must be in [1, 2^31), got {num_buckets}")
        self.num_buckets = num_buckets
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        self.keys = np.zeros(capacity, dtype=np.uint64)
        self.vals = np.full(capacity, -1, dtype=np.int32)
        self.size = 0

    def _shift(self, capacity: int) -> np.uint64:
        return np.uint64(64 - (capacity.bit_length() - 1))

    def _reserve(self, n: int) -> None:
        if self.size + n > _TABLE_LIMIT:
            self._alloc(len(self.keys))
        cap = len(self.keys)
        while 2 * (self.size + n) > cap:
            cap *= 2
        if cap != len(self.keys):  # grow: re-insert the stored keys into a larger table
            live = np.flatnonzero(self.keys)
            keys, vals = np.zeros(cap, dtype=np.uint64), np.full(cap, -1, dtype=np.int32)
            slot = np.empty(len(live), dtype=np.int64)
            _sha256_kernels()[1](self.keys[live], keys, vals, slot, slot.copy(), self._shift(cap))
            vals[-1 - slot] = self.vals[live]
            self.keys, self.vals = keys, vals

    def buckets(
        self,
        keys: np.ndarray,
        first: np.ndarray,
        order: int,
        tok_start: np.ndarray,
        tok_end: np.ndarray,
        buf: np.ndarray,
    ) -> np.ndarray:
        """Bucket of each n-gram: ``keys`` its 64-bit hash, ``first`` its first token (the
        tokens' byte spans into the UTF-8 ``buf``), ``order`` its number of tokens."""
        sha, lookup = _sha256_kernels()
        keys = np.where(keys == 0, np.uint64(1), keys)  # 0 marks an empty slot
        out = np.empty(len(keys), dtype=np.int64)
        for s in range(0, len(keys), _TABLE_CHUNK):
            ks = keys[s : s + _TABLE_CHUNK]
            self._reserve(len(ks))
            o = out[s : s + _TABLE_CHUNK]
            new_pos = np.empty(len(ks), dtype=np.int64)
            n_new = lookup(ks, self.keys, self.vals, o, new_pos, self._shift(len(self.keys)))
            if n_new:
                new_pos = new_pos[:n_new]
                b = np.empty(n_new, dtype=np.int64)
                f = np.ascontiguousarray(first[s : s + _TABLE_CHUNK][new_pos])
                sha(buf, tok_start, tok_end, f, order, self.num_buckets, _SHA256_K, _SHA256_H0, b)
                self.vals[-1 - o[new_pos]] = b
                self.size += n_new
                pending = o < 0
                o[pending] = self.vals[-1 - o[pending]]
        return out


_TABLES: dict[int, _BucketTable] = {}


def _table(num_buckets: int) -> _BucketTable:
    if num_buckets not in _TABLES:
        _TABLES[num_buckets] = _BucketTable(num_buckets)
    return _TABLES[num_buckets]


_HASHERS: dict[tuple[str, int], _Sha256Buckets] = {}


def _hasher(mode: HashMode, num_buckets: int) -> _Sha256Buckets:
    key = (mode, num_buckets)
    if key not in _HASHERS:
        _HASHERS[key] = _Sha256Buckets(num_buckets)
    return _HASHERS[key]


_WORD = regex.compile(r"\w", regex.UNICODE)
_SPACE = regex.compile(r"\s", regex.UNICODE)
_CP_CLASS: dict[int, int] = {}


def _cp_class(cp: int) -> int:
    """0 space, 1 word, 2 punctuation: a code point's class under the reference's regex engine."""
    c = _CP_CLASS.get(cp)
    if c is None:
        ch = chr(cp)
        c = _CP_CLASS[cp] = 1 if _WORD.fullmatch(ch) else (0 if _SPACE.fullmatch(ch) else 2)
    return c


_B = 0x100000001B3  # odd, so invertible mod 2^64
_POW = np.ones(1, dtype=np.uint64)
_IPOW = np.ones(1, dtype=np.uint64)
_BMP_CLASS: np.ndarray | None = None


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """B^k and B^-k mod 2^64 for k < n (cached, grown on demand)."""
    global _POW, _IPOW
    if len(_POW) < n:
        size = n
        pw = np.full(size, _B, dtype=np.uint64)
        ipw = np.full(size, pow(_B, -1, 1 << 64), dtype=np.uint64)
        pw[0] = ipw[0] = 1
        with np.errstate(over="ignore"):
            _POW = np.cumprod(pw, dtype=np.uint64)
            _IPOW = np.cumprod(ipw, dtype=np.uint64)
    return _POW[:n], _IPOW[:n]


def _classes(cps: np.ndarray) -> np.ndarray:
    """Class of every code point: one table lookup in the Basic Multilingual Plane."""
    global _BMP_CLASS
    if _BMP_CLASS is None:
        _BMP_CLASS = np.array(
            [_cp_class(c) if not 0xD800 <= c < 0xE000 else 2 for c in range(0x10000)], dtype=np.int8
        )
    out = _BMP_CLASS[np.minimum(cps, 0xFFFF)]
    astral = np.flatnonzero(cps > 0xFFFF)
    if len(astral):
        out[astral] = [_cp_class(int(cp)) for cp in cps[astral]]
    return out


_GROUP_CODEPOINTS = 1 << 22
"""Code points hashed together: the power tables hold this many entries (32 MB each)."""


def _fast_token_hashes(
    texts: Sequence[str], words_only: bool = False, spans: bool = False
) -> tuple[np.ndarray, ...]:
    """(64-bit token hashes in document order, document of each token) for the fast modes;
    documents are hashed in groups of at most ``_GROUP_CODEPOINTS`` code points. With
    ``words_only``, punctuation separates tokens like whitespace (tokens are ``\\w+``). With
    ``spans``, also each token's byte start and end in the UTF-8 of the lowercased documents
    joined by newlines, and those bytes."""
    parts: list[tuple[np.ndarray, ...]] = []
    i, n, nbytes = 0, len(texts), 0
    while i < n:
        j, size = i, 0
        while j < n and (j == i or size + len(texts[j]) + 1 <= _GROUP_CODEPOINTS):
            size += len(texts[j]) + 1
            j += 1
        g = _group_token_hashes(texts[i:j], words_only, spans)
        if spans:
            g = (g[0], g[1] + i, g[2] + nbytes, g[3] + nbytes, g[4])
            nbytes += len(g[4]) + 1
        else:
            g = (g[0], g[1] + i)
        parts.append(g)
        i = j
    if not parts:
        return _group_token_hashes([], words_only, spans)
    out = tuple(np.concatenate([p[k] for p in parts]) for k in range(2 if not spans else 4))
    if spans:  # one newline between groups keeps the byte offsets above
        sep = np.full(1, 10, dtype=np.uint8)
        bufs = [x for p in parts for x in (p[4], sep)][:-1]
        out = (*out, np.concatenate(bufs))
    return out


def _group_token_hashes(
    texts: Sequence[str], words_only: bool = False, spans: bool = False
) -> tuple[np.ndarray, ...]:
    """(64-bit token hashes in document order, document of each token) for the fast modes,
    plus with ``spans`` the tokens' UTF-8 byte spans and the bytes (see
    :func:`_fast_token_hashes`).

    Tokens are the maximal runs of word or of punctuation code points of the lowercased text,
    which is exactly what ``\\w+|[^\\w\\s]+`` finds. A token's hash is its polynomial
    ``sum cp_j B^j`` (mod 2^64) from one prefix sum over the batch, shifted to start at j=0 by
    B's inverse, then mixed with the length. All in numpy, with no Python per token."""
    n = len(texts)
    lows = [t.lower() for t in texts]
    joined = "\n".join(lows)
    cps = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    empty: tuple[np.ndarray, ...] = (np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64))
    if spans:
        empty += (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8))
    if len(cps) == 0:
        return empty
    c = _classes(cps)
    if words_only:
        c = np.where(c == 2, np.int8(0), c)
    change = np.empty(len(c), dtype=bool)
    change[0] = True
    np.not_equal(c[1:], c[:-1], out=change[1:])
    run_starts = np.flatnonzero(change)
    run_ends = np.append(run_starts[1:], len(c))
    keep = c[run_starts] != 0
    starts, ends = run_starts[keep], run_ends[keep]
    if len(starts) == 0:
        return empty
    pw, ipw = _powers(max(len(cps), _GROUP_CODEPOINTS))
    pw, ipw = pw[: len(cps)], ipw[: len(cps)]
    with np.errstate(over="ignore"):
        prefix = np.cumsum(cps.astype(np.uint64) * pw, dtype=np.uint64)
        before = np.where(starts > 0, prefix[np.maximum(starts - 1, 0)], np.uint64(0))
        poly = (prefix[ends - 1] - before) * ipw[starts]
        lengths = (ends - starts).astype(np.uint64)
        h = _mix64(poly ^ (lengths * np.uint64(0xD6E8FEB86659FD93)))
    doc_start = np.cumsum([0] + [len(s) + 1 for s in lows[:-1]])
    per_doc = np.diff(np.append(np.searchsorted(starts, doc_start), len(starts)))
    doc = np.repeat(np.arange(n, dtype=np.int64), per_doc)
    if not spans:
        return h, doc
    blen = 1 + (cps >= 0x80).astype(np.int64) + (cps >= 0x800) + (cps >= 0x10000)
    boff = np.zeros(len(cps) + 1, dtype=np.int64)
    np.cumsum(blen, out=boff[1:])
    buf = np.frombuffer(joined.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    return h, doc, boff[starts], boff[ends], buf


def _to_buckets(h: np.ndarray, num_buckets: int) -> np.ndarray:
    """Map 64-bit hashes to [0, num_buckets) by multiply-shift on the high 32 bits (Lemire's
    fast range reduction): uniform like a modulo, without 64-bit division."""
    return (((h >> np.uint64(32)) * np.uint64(num_buckets)) >> np.uint64(32)).astype(np.int64)


class Grams:
    """The n-grams of a batch, flattened: ``buckets[i]`` belongs to row ``row[i]``.

    A row is a document, or a chunk of one with ``chunk_tokens``; ``row_doc`` maps rows to
    documents and ``n_tokens`` holds each document's token count."""

    __slots__ = ("buckets", "n_rows", "n_tokens", "row", "row_doc")

    def __init__(
        self,
        buckets: np.ndarray,
        row: np.ndarray,
        n_rows: int,
        row_doc: np.ndarray,
        n_tokens: np.ndarray,
    ):
        self.buckets, self.row, self.n_rows, self.row_doc, self.n_tokens = (
            buckets,
            row,
            n_rows,
            row_doc,
            n_tokens,
        )

    def counts(self, num_buckets: int) -> sp.csr_matrix:
        m = sp.csr_matrix(
            (np.ones(len(self.buckets), dtype=np.int64), (self.row, self.buckets)),
            shape=(self.n_rows, num_buckets),
        )
        m.sum_duplicates()
        return m


def batch_grams(
    texts: Sequence[str],
    num_buckets: int = 10_000,
    ngrams: int = 2,
    hash_mode: HashMode = "fast",
    chunk_tokens: int | None = None,
) -> Grams:
    """Bucket ids of every n-gram (orders 1..``ngrams``) of a batch of texts; n-grams never
    cross a document (or chunk) boundary."""
    _check_hash_mode(hash_mode)
    n = len(texts)
    if hash_mode == "fast":
        h, doc_of_tok, tok_start, tok_end, buf = _fast_token_hashes(texts, spans=True)
    elif hash_mode == "hash64":
        h, doc_of_tok = _fast_token_hashes(texts)
    if hash_mode == "sha256":
        toks = [tokenize(t) for t in texts]
        n_tokens = np.fromiter(map(len, toks), dtype=np.int64, count=n)
        flat = list(chain.from_iterable(toks))
    else:
        n_tokens = np.bincount(doc_of_tok, minlength=n).astype(np.int64)
        flat = []
    total = int(n_tokens.sum())
    if chunk_tokens:
        starts = (
            np.concatenate([[0], np.cumsum(n_tokens)[:-1]]).astype(np.int64)
            if n
            else np.zeros(0, np.int64)
        )
        pos = np.arange(total, dtype=np.int64) - np.repeat(starts, n_tokens)
        n_chunks = np.maximum(
            -(-n_tokens // chunk_tokens), 1
        )  # an empty doc still has one (empty) row
        first_row = (
            np.concatenate([[0], np.cumsum(n_chunks)[:-1]]).astype(np.int64)
            if n
            else np.zeros(0, np.int64)
        )
        seg = np.repeat(first_row, n_tokens) + pos // chunk_tokens
        row_doc = np.repeat(np.arange(n, dtype=np.int64), n_chunks)
        n_rows = int(n_chunks.sum())
    else:
        seg = np.repeat(np.arange(n, dtype=np.int64), n_tokens)
        row_doc = np.arange(n, dtype=np.int64)
        n_rows = n
    buckets, rows = [], []
    if hash_mode != "sha256":
        table = _table(num_buckets) if hash_mode == "fast" else None

        def to_buckets(keys: np.ndarray, order: int, first: np.ndarray) -> np.ndarray:
            if table is None:
                return _to_buckets(keys, num_buckets)
            return table.buckets(keys, first, order, tok_start, tok_end, buf)

        buckets.append(to_buckets(h, 1, np.arange(total, dtype=np.int64)))
        rows.append(seg)
        acc = h
        with np.errstate(over="ignore"):
            for order in range(2, ngrams + 1):
                acc = _mix64(
                    acc[:-1] * np.uint64(0x9E3779B97F4A7C15) + h[order - 1 :] + np.uint64(order)
                )
                valid = seg[: total - order + 1] == seg[order - 1 :]
                first = np.flatnonzero(valid)
                buckets.append(to_buckets(acc[first], order, first))
                rows.append(seg[first])
    else:
        hasher = _hasher("sha256", num_buckets)
        buckets.append(hasher(flat))
        rows.append(seg)
        for order in range(2, ngrams + 1):
            valid = seg[: total - order + 1] == seg[order - 1 :]
            if order == 2:
                grams = [
                    f"{a} {b}" for a, b, v in zip(flat, flat[1:], valid.tolist(), strict=False) if v
                ]
            else:
                grams = [" ".join(flat[i : i + order]) for i in np.nonzero(valid)[0]]
            buckets.append(hasher(grams))
            rows.append(seg[: total - order + 1][valid])
    return Grams(np.concatenate(buckets), np.concatenate(rows), n_rows, row_doc, n_tokens)


def ngram_counts(
    texts: Sequence[str],
    num_buckets: int = 10_000,
    ngrams: int = 2,
    hash_mode: HashMode = "fast",
    chunk_tokens: int | None = None,
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Hashed n-gram counts of a batch of texts.

    Returns ``(counts, n_tokens, row_doc)``: ``counts`` is a sparse (rows, num_buckets) int
    matrix with one row per text, or, with ``chunk_tokens``, one row per chunk of at most that
    many tokens; ``n_tokens`` the token count of each text; ``row_doc`` the text of each row.
    """
    g = batch_grams(texts, num_buckets, ngrams, hash_mode, chunk_tokens)
    return g.counts(num_buckets), g.n_tokens, g.row_doc


def total_counts(
    texts: Iterable[str],
    num_buckets: int = 10_000,
    ngrams: int = 2,
    hash_mode: HashMode = "fast",
    max_tokens: int | None = None,
    batch_size: int = 2048,
) -> np.ndarray:
    """Summed n-gram bucket counts of ``texts`` (a 1-D int64 vector).

    With ``max_tokens``, stops after the first document that brings the n-gram count above it
    (the reference's ``num_tokens_to_fit`` rule)."""
    total = np.zeros(num_buckets, dtype=np.int64)
    seen = 0
    batch: list[str] = []

    def flush() -> bool:
        nonlocal total, seen
        if not batch:
            return False
        g = batch_grams(batch, num_buckets, ngrams, hash_mode)
        batch.clear()
        if max_tokens is not None:
            per_doc = np.bincount(g.row, minlength=g.n_rows)
            over = np.nonzero(seen + np.cumsum(per_doc) > max_tokens)[0]
            if len(over):
                total += np.bincount(g.buckets[g.row <= over[0]], minlength=num_buckets)
                return True
            seen += len(g.buckets)
        total += np.bincount(g.buckets, minlength=num_buckets)
        return False

    for text in texts:
        batch.append(text)
        if len(batch) >= batch_size and flush():
            return total
    flush()
    return total


def example_length(counts_row_sums: np.ndarray, ngrams: int = 2) -> np.ndarray:
    """The reference's example length from n-gram count sums: ``(sum + n(n-1)/2) // n``
    (the token count, for documents of at least ``ngrams`` tokens)."""
    return (counts_row_sums + ngrams * (ngrams - 1) // 2) // ngrams


def log_importance(
    raw_counts: np.ndarray, target_counts: np.ndarray, laplace: float = 0.0
) -> np.ndarray:
    """``log(p_tgt + 1e-8) - log(p_raw + 1e-8)`` from bucket counts.

    ``target_counts`` may be 2-D (one row per target); ``laplace`` is added to every target
    bucket before normalizing. Raises ValueError for empty inputs; warns when target buckets
    are empty without smoothing (their weight falls to log(1e-8) - log(p_raw)).
    """
    raw = np.asarray(raw_counts, dtype=np.float64)
    tgt = np.atleast_2d(np.asarray(target_counts, dtype=np.float64))
    if laplace < 0:
        raise ValueError(f"laplace must be >= 0, got {laplace}")
    if raw.sum() <= 0:
        raise ValueError("the raw data has no n-grams: nothing to estimate p_raw from")
    empty = np.nonzero(tgt.sum(axis=1) <= 0)[0]
    if len(empty):
        raise ValueError(
            f"target {empty.tolist()} has no n-grams after tokenization: nothing to estimate p_target from"
        )
    tgt = tgt + laplace
    if laplace == 0:
        unseen = float((raw / raw.sum())[(tgt == 0).any(axis=0)].sum())
        if unseen > 0.01:
            warnings.warn(
                f"{unseen:.1%} of the raw n-grams fall in buckets the target never uses and laplace=0: "
                "documents made of them get weights near log(1e-8); set laplace > 0 to smooth",
                stacklevel=2,
            )
    p_raw = raw / raw.sum()
    p_tgt = tgt / tgt.sum(axis=1, keepdims=True)
    out = np.log(p_tgt + EPS) - np.log(p_raw + EPS)
    return out[0] if np.ndim(target_counts) == 1 else out


def gumbel_from_ids(ids: Sequence[str], seed: int) -> np.ndarray:
    """Gumbel(0, 1) noise per document from a hash of (seed, id): the same for a document
    whatever the order or partitioning it is scored in."""
    out = np.empty(len(ids), dtype=np.float64)
    prefix = f"{int(seed)}\x00".encode()
    for i, doc_id in enumerate(ids):
        h = int.from_bytes(
            hashlib.blake2b(prefix + str(doc_id).encode("utf-8"), digest_size=8).digest(), "little"
        )
        out[i] = (h >> 11) * (1.0 / (1 << 53))
    u = np.clip(out, 1e-300, 1.0 - 2**-53)  # (h >> 11) / 2^53 is in [0, 1); keep it open
    return -np.log(-np.log(u))


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """``sum p log((p + 1e-8) / (q + 1e-8))`` of two count or probability vectors."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * (np.log(p + EPS) - np.log(q + EPS))))


def kl_reduction(
    target_counts: np.ndarray, raw_counts: np.ndarray, selected_counts: np.ndarray
) -> float:
    """DSIR's proxy metric: ``mean_t [KL(p_t || q_raw) - KL(p_t || q_selected)]``."""
    tgt = np.atleast_2d(target_counts)
    return float(
        np.mean([kl_divergence(t, raw_counts) - kl_divergence(t, selected_counts) for t in tgt])
    )


class DSIRSelector:
    """Importance resampling toward a target distribution of hashed n-grams.

    Parameters
    ----------
    num_buckets, ngrams : hashed feature space (reference defaults 10,000 and 2).
    hash_mode : ``"fast"`` (default) or ``"sha256"`` (bit-compatible with the reference).
    laplace : pseudo-count added to every target bucket (reference: 0).
    min_example_length : documents with fewer tokens are masked out of selection (100).
    num_tokens_to_fit : n-grams of raw data used to fit ``p_raw``: ``"auto"`` (100k x
        num_buckets, the reference's rule), ``"all"``, or a number.
    length_normalize : divide each log weight by the document's token count.
    chunk_tokens : score long documents as the mean log weight of chunks of this many tokens.
    separate_targets : with several named targets, one ``log_diff`` per target and quotas by
        target token share (or ``target_proportions``).

    Attributes (after ``fit``): ``raw_counts_``, ``target_counts_`` (n_targets, B),
    ``log_diff_`` (B,) or (n_targets, B), ``target_names_``, ``target_proportions_``.

    Examples
    --------
    >>> sel = DSIRSelector(min_example_length=0).fit(["the cat sat"], ["a dog ran", "the cat sat down"])
    >>> scores = sel.score_samples(["the cat", "a dog"])
    >>> sel.select(scores, 1, ids=["x", "y"], random_state=0).tolist()  # doctest: +SKIP
    """

    def __init__(
        self,
        num_buckets: int = 10_000,
        ngrams: int = 2,
        hash_mode: HashMode = "fast",
        laplace: float = 0.0,
        min_example_length: int = 100,
        num_tokens_to_fit: int | Literal["auto", "all"] = "auto",
        length_normalize: bool = False,
        chunk_tokens: int | None = None,
        separate_targets: bool = False,
        target_proportions: Sequence[float] | None = None,
    ):
        self.num_buckets = num_buckets
        self.ngrams = ngrams
        self.hash_mode = hash_mode
        self.laplace = laplace
        self.min_example_length = min_example_length
        self.num_tokens_to_fit = num_tokens_to_fit
        self.length_normalize = length_normalize
        self.chunk_tokens = chunk_tokens
        self.separate_targets = separate_targets
        self.target_proportions = target_proportions

    # -- parameters
    def _check_params(self) -> None:
        if not isinstance(self.num_buckets, int) or not 1 <= self.num_buckets < 2**31:
            raise ValueError(f"num_buckets must be an int in 1..2**31-1, got {self.num_buckets!r}")
        if not isinstance(self.ngrams, int) or self.ngrams < 1:
            raise ValueError(f"ngrams must be a positive int, got {self.ngrams!r}")
        _check_hash_mode(self.hash_mode)
        if self.chunk_tokens is not None and self.chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1 or None, got {self.chunk_tokens!r}")

    def _max_raw_tokens(self) -> int | None:
        n = self.num_tokens_to_fit
        if n == "auto":
            return 100_000 * self.num_buckets
        if n == "all":
            return None
        if isinstance(n, int) and n > 0:
            return n
        raise ValueError(f"num_tokens_to_fit must be 'auto', 'all' or a positive int, got {n!r}")

    def counts(self, texts: Iterable[str], max_tokens: int | None = None) -> np.ndarray:
        """Summed bucket counts of ``texts`` with this selector's featurization."""
        return total_counts(texts, self.num_buckets, self.ngrams, self.hash_mode, max_tokens)

    # -- fitting
    def fit(
        self, target: Sequence[str] | Mapping[str, Sequence[str]], raw: Iterable[str]
    ) -> DSIRSelector:
        """Estimate ``p_target`` from ``target`` (texts, or name -> texts) and ``p_raw`` from
        ``raw`` (up to ``num_tokens_to_fit`` n-grams)."""
        self._check_params()
        named = dict(target) if isinstance(target, Mapping) else {"target": list(target)}
        if not named or any(len(v) == 0 for v in named.values()):
            raise ValueError(
                f"target is empty: got { ({k: len(v) for k, v in named.items()} or 'no targets') }"
            )
        tgt = np.stack([self.counts(texts) for texts in named.values()])
        raw_counts = self.counts(raw, self._max_raw_tokens())
        return self.fit_counts(tgt, raw_counts, list(named))

    def fit_counts(
        self,
        target_counts: np.ndarray,
        raw_counts: np.ndarray,
        target_names: Sequence[str] | None = None,
    ) -> DSIRSelector:
        """Fit from precomputed bucket counts (what the Spark job aggregates)."""
        self._check_params()
        tgt = np.atleast_2d(np.asarray(target_counts, dtype=np.int64))
        names = (
            list(target_names)
            if target_names is not None
            else [f"target{i}" for i in range(len(tgt))]
        )
        if len(names) != len(tgt):
            raise ValueError(f"{len(names)} target names for {len(tgt)} target count vectors")
        self.target_names_ = names
        self.raw_counts_ = np.asarray(raw_counts, dtype=np.int64)
        self.target_counts_ = tgt
        if self.separate_targets and len(tgt) > 1:
            self.log_diff_ = log_importance(self.raw_counts_, tgt, self.laplace)
            props = np.asarray(
                self.target_proportions if self.target_proportions is not None else tgt.sum(axis=1),
                dtype=np.float64,
            )
            if props.shape != (len(tgt),) or (props < 0).any() or props.sum() <= 0:
                raise ValueError(
                    f"target_proportions must be {len(tgt)} non-negative numbers, got {self.target_proportions!r}"
                )
            self.target_proportions_ = props / props.sum()
        else:
            self.log_diff_ = log_importance(self.raw_counts_, tgt.sum(axis=0), self.laplace)
            self.target_proportions_ = np.ones(1)
        return self

    # -- scoring
    def _check_fitted(self) -> None:
        if not hasattr(self, "log_diff_"):
            raise RuntimeError("this DSIRSelector is not fitted yet: call fit(target, raw) first")

    def score_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(log weights, example lengths) of a batch; log weights are (n,) or, with separate
        targets, (n, n_targets)."""
        self._check_fitted()
        g = batch_grams(texts, self.num_buckets, self.ngrams, self.hash_mode, self.chunk_tokens)
        ld = np.atleast_2d(self.log_diff_)
        n = len(texts)
        rows = np.stack(
            [
                np.bincount(g.row, weights=ld[t][g.buckets], minlength=g.n_rows)
                for t in range(len(ld))
            ],
            axis=1,
        )
        if self.chunk_tokens:
            per_doc = np.bincount(g.row_doc, minlength=n).astype(np.float64)
            scores = np.stack(
                [np.bincount(g.row_doc, weights=rows[:, t], minlength=n) for t in range(len(ld))],
                axis=1,
            )
            scores /= np.maximum(per_doc, 1)[:, None]
        else:
            scores = rows
        lengths = example_length(np.bincount(g.row_doc[g.row], minlength=n), self.ngrams)
        if self.length_normalize:
            scores = scores / np.maximum(g.n_tokens, 1)[:, None]
        out = scores[:, 0] if np.ndim(self.log_diff_) == 1 else scores
        return out, lengths

    def score_samples(self, docs: Sequence[str], batch_size: int = 1024) -> np.ndarray:
        """Log importance weight of each document (not length-normalized unless asked)."""
        parts = [
            self.score_batch(docs[i : i + batch_size])[0] for i in range(0, len(docs), batch_size)
        ]
        if not parts:
            return np.zeros((0,) if np.ndim(self.log_diff_) == 1 else (0, len(self.log_diff_)))
        return np.concatenate(parts)

    def lengths(self, docs: Sequence[str], batch_size: int = 1024) -> np.ndarray:
        """The reference's example length (tokens) of each document."""
        return np.concatenate(
            [self.score_batch(docs[i : i + batch_size])[1] for i in range(0, len(docs), batch_size)]
        )

    # -- selection
    def select(
        self,
        scores: np.ndarray,
        k: int,
        *,
        ids: Sequence[str] | None = None,
        random_state: int | None = 0,
        top_k: bool = False,
        lengths: np.ndarray | None = None,
    ) -> np.ndarray:
        """Indices of ``k`` documents sampled without replacement with probability ∝ weight
        (Gumbel top-k), or the ``k`` highest with ``top_k=True``.

        Noise comes from a hash of (``random_state``, id) when ``ids`` are given (stable under
        any order or partitioning), else from ``numpy.random.default_rng(random_state)``.
        Documents shorter than ``min_example_length`` (``lengths``) are never selected.
        With separate targets, quotas follow ``target_proportions_`` and no document is
        chosen twice. Returned indices are sorted.
        """
        self._check_fitted()
        scores = np.asarray(scores, dtype=np.float64)
        n = len(scores)
        if not isinstance(k, int | np.integer) or k <= 0:
            raise ValueError(f"k must be a positive int, got {k!r}")
        mask = (
            np.ones(n, dtype=bool)
            if lengths is None
            else np.asarray(lengths) >= self.min_example_length
        )
        if k > int(mask.sum()):
            raise ValueError(
                f"k={k} is larger than the {int(mask.sum())} selectable documents (of {n}; the rest are shorter than min_example_length={self.min_example_length})"
            )
        if np.isnan(scores).any():
            raise ValueError("scores contain NaN")
        if ids is not None and len(ids) != n:
            raise ValueError(f"{len(ids)} ids for {n} scores")
        s2 = scores[:, None] if scores.ndim == 1 else scores
        quotas = [int(k * p) for p in self.target_proportions_] if s2.shape[1] > 1 else [k]
        quotas[-1] += k - sum(quotas)
        chosen = np.zeros(n, dtype=bool)
        for t, q in enumerate(quotas):
            if q == 0:
                continue
            key = s2[:, t].copy()
            if not top_k:
                noise = (
                    gumbel_from_ids(ids, (random_state or 0) * 1_000_003 + t)
                    if ids is not None
                    else np.random.default_rng(
                        None if random_state is None else [random_state, t]
                    ).gumbel(size=n)
                )
                key += noise
            key[~mask | chosen] = -np.inf
            # Top q by key; ties broken by index for determinism.
            order = np.lexsort((np.arange(n), -key))[:q]
            chosen[order] = True
        return np.nonzero(chosen)[0]

    def kl_reduction(
        self, selected_docs: Sequence[str] | None = None, selected_counts: np.ndarray | None = None
    ) -> float:
        """KL reduction of a selection (texts or their summed counts) against the fitted raw data."""
        self._check_fitted()
        if selected_counts is None:
            if selected_docs is None:
                raise ValueError("give selected_docs or selected_counts")
            selected_counts = self.counts(selected_docs)
        return kl_reduction(self.target_counts_, self.raw_counts_, selected_counts)
