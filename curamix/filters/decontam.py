"""Benchmark decontamination kernels: word n-gram overlap between documents and test sets.

The check of GPT-3 (Brown et al. 2020, appendix C) and Llama 2 (Touvron et al. 2023, sec. A.6):
a document is contaminated when it shares a word 13-gram with a benchmark test item, after
both are normalised the same way. Plain Python/numpy; the Spark ``decontam`` job, notebooks
and tests call these same functions.

Normalisation (:func:`words`)
    Unicode NFKC, lowercase, then the words are the maximal runs of ``\\w`` characters
    (letters, digits, underscore, in any script). Everything else (punctuation, symbols,
    whitespace of any length) only separates words, so ``"Answer: B. 4"`` and
    ``"answer b 4"`` give the same words, and ``x+y`` gives ``x y``.

N-grams (:func:`ngram_hashes`)
    Every window of ``n`` consecutive words (default 13). A text with fewer than ``n`` but at
    least ``min_words`` words (default 8) is one n-gram of all its words ("short item"); a text
    with fewer than ``min_words`` words has no n-gram (it can neither contaminate nor be
    flagged). On the document side, windows of every short-item length present in the index
    are also looked up, so a short benchmark item is found when a document contains it.

Hashes
    A word's hash is the first 8 bytes of its BLAKE2b digest; a window's hash folds its word
    hashes with the SplitMix64 finaliser and mixes in the window length, so hashes are the
    same in every process and on every machine (no Python ``hash()``) and k-grams of different
    lengths never share a hash by construction. Collisions (2^-64 per pair) are ignored.

Template n-grams
    Windows with fewer than ``min_content_words`` (default 3) words of two or more letters are
    not indexed: in a multiple-choice rendering the answer block (``"a 2 b 1 3 c 2 3 d 2 5
    answer c 2"``) is such a window and matches unrelated numeric option lists.
    A benchmark's rendering template can make the same 13-gram occur in many unrelated items
    (e.g. ``"... a 0 b 1 c 2 d 3 answer"``). N-grams found in more than ``max_item_frequency``
    test items are dropped from the index (Llama 2 likewise ignores over-frequent n-grams).

References
----------
Brown et al. "Language Models are Few-Shot Learners." NeurIPS 2020, arXiv:2005.14165 (app. C).
Touvron et al. "Llama 2: Open Foundation and Fine-Tuned Chat Models." arXiv:2307.09288 (A.6).
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import regex

from curamix.selectors.dsir import _mix64

_WORD = regex.compile(r"\w+", regex.UNICODE)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def words(text: str) -> list[str]:
    """The normalised words of ``text``: NFKC, lowercase, runs of ``\\w`` characters."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def _word_hashes(ws: Sequence[str], cache: dict[str, int]) -> np.ndarray:
    out = np.empty(len(ws), dtype=np.uint64)
    for i, w in enumerate(ws):
        h = cache.get(w)
        if h is None:
            h = int.from_bytes(
                hashlib.blake2b(w.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                "little",
            )
            cache[w] = h
        out[i] = h
    return out


def window_hashes(word_hashes: np.ndarray, k: int) -> np.ndarray:
    """Hashes of every window of ``k`` consecutive words (``len - k + 1`` of them, or none)."""
    m = len(word_hashes) - k + 1
    if m <= 0 or k < 1:
        return np.zeros(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        acc = np.full(m, np.uint64(k), dtype=np.uint64)
        for j in range(k):
            acc = _mix64(acc * _GOLDEN + word_hashes[j : j + m])
    return acc


def ngram_hashes(
    text: str, n: int = 13, min_words: int = 8, cache: dict[str, int] | None = None
) -> np.ndarray:
    """The n-gram hashes of one text (see the module docstring for the short-text rule)."""
    _check(n, min_words)
    ws = words(text)
    if len(ws) < min_words:
        return np.zeros(0, dtype=np.uint64)
    h = _word_hashes(ws, {} if cache is None else cache)
    return window_hashes(h, min(n, len(ws)))


def _check(n: int, min_words: int) -> None:
    if n < 1:
        raise ValueError(f"ngram must be >= 1, got {n}")
    if not 1 <= min_words <= n:
        raise ValueError(f"min_words must be in [1, ngram={n}], got {min_words}")


@dataclass
class ContaminationIndex:
    """N-gram hash -> first benchmark item (in input order) holding it, as two sorted arrays
    (compact to broadcast, vectorised to look up)."""

    n: int
    min_words: int
    hashes: np.ndarray
    """Sorted unique uint64 n-gram hashes."""
    item: np.ndarray
    """int64 position in ``item_ids`` of the first item holding each hash."""
    item_ids: list[str]
    benchmarks: list[str]
    """Benchmark name of each item (``""`` when not given)."""
    short_lengths: tuple[int, ...] = ()
    """Lengths (< n) of the short items in the index: document windows of these lengths are
    looked up too."""
    n_dropped: int = 0
    """Distinct n-grams dropped for occurring in more than ``max_item_frequency`` items."""
    n_low_content: int = 0
    """Item windows not indexed for having fewer than ``min_content_words`` content words."""

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_items_indexed(self) -> int:
        """Items with at least one n-gram in the index."""
        return len(np.unique(self.item))

    def as_dict(self) -> dict[int, str]:
        """``{ngram hash: item id}`` (for inspection; lookups use the arrays)."""
        return {
            int(h): self.item_ids[i]
            for h, i in zip(self.hashes.tolist(), self.item.tolist(), strict=True)
        }

    def lookup(self, hashes: np.ndarray) -> np.ndarray:
        """Item position of each hash, -1 where it is not in the index."""
        if not len(self.hashes) or not len(hashes):
            return np.full(len(hashes), -1, dtype=np.int64)
        pos = np.searchsorted(self.hashes, hashes)
        pos[pos == len(self.hashes)] = 0
        return np.where(self.hashes[pos] == hashes, self.item[pos], -1)


def content_mask(ws: Sequence[str]) -> np.ndarray:
    """True for a "content" word: at least two letters (not a number, not a lone letter such
    as an option label ``a``-``d``)."""
    return np.fromiter((sum(c.isalpha() for c in w) >= 2 for w in ws), dtype=bool, count=len(ws))


def build_index(
    items: Iterable[tuple[str, str] | tuple[str, str, str]],
    n: int = 13,
    min_words: int = 8,
    max_item_frequency: int | None = 10,
    min_content_words: int = 3,
) -> ContaminationIndex:
    """Index the n-grams of benchmark test items.

    Parameters
    ----------
    items
        ``(item id, text)`` or ``(item id, text, benchmark)``; an n-gram keeps the id of the
        first item (in this order) that holds it.
    n, min_words
        Window length and the shortest text that gets an n-gram (module docstring).
    max_item_frequency
        N-grams present in more than this many distinct items are template text and are
        dropped (``None`` keeps all).
    min_content_words
        N-grams with fewer content words (:func:`content_mask`) are not indexed: a run of
        numbers and option letters such as ``"2 b 1 3 c 2 3 d 2 5 answer c 2"`` (the answer
        block of a multiple-choice rendering) is not evidence of a shared item.

    Returns
    -------
    ContaminationIndex
        Empty input gives an empty index (nothing is ever flagged).
    """
    _check(n, min_words)
    if not 0 <= min_content_words <= n:
        raise ValueError(f"min_content_words must be in [0, ngram={n}], got {min_content_words}")
    if max_item_frequency is not None and max_item_frequency < 1:
        raise ValueError(f"max_item_frequency must be >= 1 or None, got {max_item_frequency}")
    cache: dict[str, int] = {}
    all_h: list[np.ndarray] = []
    all_i: list[np.ndarray] = []
    short: set[int] = set()
    ids: list[str] = []
    bench: list[str] = []
    n_low = 0
    for item in items:
        pos = len(ids)
        ids.append(item[0])
        bench.append(item[2] if len(item) > 2 else "")  # type: ignore[misc]
        ws = words(item[1])
        if len(ws) < min_words:
            continue
        k = min(n, len(ws))
        if k < n:
            short.add(k)
        hashes = window_hashes(_word_hashes(ws, cache), k)
        if min_content_words:
            c = np.concatenate([[0], np.cumsum(content_mask(ws))])
            ok = (c[k:] - c[:-k]) >= min_content_words
            n_low += int((~ok).sum())
            hashes = hashes[ok]
        hashes = np.unique(hashes)
        all_h.append(hashes)
        all_i.append(np.full(len(hashes), pos, dtype=np.int64))
    h = np.concatenate(all_h) if all_h else np.zeros(0, dtype=np.uint64)
    it = np.concatenate(all_i) if all_i else np.zeros(0, dtype=np.int64)
    order = np.lexsort((it, h))  # by hash, then item position: the first item comes first
    h, it = h[order], it[order]
    starts = np.flatnonzero(np.r_[True, h[1:] != h[:-1]]) if len(h) else np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, len(h)])  # distinct items per hash (hashes unique per item)
    keep = (
        counts <= max_item_frequency
        if max_item_frequency is not None
        else np.ones(len(starts), dtype=bool)
    )
    return ContaminationIndex(
        n=n,
        min_words=min_words,
        hashes=h[starts][keep],
        item=it[starts][keep],
        item_ids=ids,
        benchmarks=bench,
        short_lengths=tuple(sorted(short)),
        n_dropped=int((~keep).sum()),
        n_low_content=n_low,
    )


@dataclass(frozen=True)
class Contamination:
    """What :func:`find_contamination` found in one document."""

    ref_id: str | None
    """The benchmark item of the document's first matched n-gram (None: clean)."""
    n_matches: int
    """Matched windows (n-grams, plus windows equal to a short item)."""
    fraction: float
    """``min(1, n_matches / n_windows)`` with ``n_windows = max(1, n_words - n + 1)``: the
    share of the document's n-grams that are in the index."""


def find_contamination(
    texts: Sequence[str], index: ContaminationIndex, cache: dict[str, int] | None = None
) -> list[Contamination]:
    """Per document: matched item id, number of matched n-grams, fraction matched.

    The matched item is the one of the earliest matched window in the document (n-gram windows
    before short-item windows at the same position). Documents with fewer than
    ``index.min_words`` words are never flagged.
    """
    cache = {} if cache is None else cache
    n = index.n
    out = []
    for text in texts:
        ws = words(text)
        if len(ws) < index.min_words or not len(index.hashes):
            out.append(Contamination(None, 0, 0.0))
            continue
        h = _word_hashes(ws, cache)
        first = min(n, len(ws))
        best: tuple[int, int, int] | None = None
        n_matches = 0
        for rank, k in enumerate((first, *index.short_lengths)):
            if k > len(ws) or (rank > 0 and k == first):
                continue
            found = index.lookup(window_hashes(h, k))
            hit = np.flatnonzero(found >= 0)
            n_matches += len(hit)
            if len(hit) and (best is None or (int(hit[0]), rank) < best[:2]):
                best = (int(hit[0]), rank, int(found[hit[0]]))
        n_windows = max(1, len(ws) - n + 1)
        out.append(
            Contamination(
                index.item_ids[best[2]] if best else None,
                n_matches,
                min(1.0, n_matches / n_windows),
            )
        )
    return out
