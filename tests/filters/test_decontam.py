"""Decontamination kernels: normalisation, n-gram hashes, index, contamination lookup."""

import numpy as np
import pytest

from curamix.filters.decontam import build_index, find_contamination, ngram_hashes, words

ITEM = (
    "The quick brown fox jumps over the lazy dog while seven tired farmers "
    "watch the sunrise from their porch daily"
)  # 20 words -> 8 13-grams


def _index(items, **kw):
    return build_index(items, **kw)


def test_normalisation_lowercases_and_splits_on_punctuation():
    assert words("Answer: B.  4\n(x+y)") == ["answer", "b", "4", "x", "y"]
    assert words("ＡＢＣ déjà-vu") == ["abc", "déjà", "vu"]  # NFKC, letters of any script


def test_hashes_are_stable_and_length_aware():
    h = ngram_hashes(ITEM)
    assert len(h) == 8 and h.dtype == np.uint64
    assert np.array_equal(h, ngram_hashes(ITEM.upper().replace(" ", " ,  ")))
    # A short text is one n-gram of all its words; too short gives none.
    assert len(ngram_hashes("one two three four five six seven eight nine")) == 1
    assert len(ngram_hashes("one two three four five six seven")) == 0
    # Fixed value: no per-process salt (Python's hash() would change between runs).
    assert int(ngram_hashes(ITEM)[0]) == int(ngram_hashes(ITEM, cache={})[0])


def test_exact_containment_and_punctuation_case_changes_match():
    idx = _index([("b/1", ITEM), ("b/2", "something entirely different " * 5)])
    doc = "Intro text here. " + ITEM.upper().replace(" fox", ", FOX!") + " and more words after."
    (r,) = find_contamination([doc], idx)
    assert r.ref_id == "b/1" and r.n_matches == 8
    n_windows = len(words(doc)) - 13 + 1
    assert r.fraction == pytest.approx(8 / n_windows)
    (clean,) = find_contamination(["nothing to see here at all " * 4], idx)
    assert clean.ref_id is None and clean.n_matches == 0 and clean.fraction == 0.0


def test_one_changed_word_breaks_the_13grams_that_cover_it():
    idx = _index([("b/1", ITEM)])
    w = ITEM.split()
    w[7] = "sleepy"  # word 8 of 20: every 13-gram (starts 0..7) covers it
    (r,) = find_contamination([" ".join(w)], idx)
    assert r.ref_id is None and r.n_matches == 0
    w = ITEM.split()
    w[19] = "garden"  # the last word: only the last 13-gram covers it
    (r,) = find_contamination([" ".join(w)], idx)
    assert r.ref_id == "b/1" and r.n_matches == 7


def test_short_items_match_when_contained_and_too_short_items_never():
    short = "what is the sum of the first ten primes"  # 9 words
    tiny = "what is two plus two"  # 5 < min_words
    idx = _index([("s/1", short), ("s/2", tiny)])
    assert idx.short_lengths == (9,)
    doc = "Homework: What is the sum of the first ten primes? Show all your work carefully."
    (r,) = find_contamination([doc], idx)
    assert r.ref_id == "s/1" and r.n_matches == 1
    (r,) = find_contamination(["Quiz: what is two plus two? think about it slowly now"], idx)
    assert r.ref_id is None


def test_first_item_wins_and_template_ngrams_are_dropped():
    idx = _index([("a/1", ITEM), ("a/2", ITEM + " again")])
    assert set(idx.as_dict().values()) == {"a/1", "a/2"}  # a/2 only owns its extra 13-gram
    (r,) = find_contamination([ITEM], idx)
    assert r.ref_id == "a/1"
    # The same 13-gram in more than max_item_frequency items is template text.
    items = [(f"t/{k}", f"{ITEM} item {k}") for k in range(4)]
    assert find_contamination([ITEM], _index(items, max_item_frequency=3))[0].ref_id is None
    assert find_contamination([ITEM], _index(items, max_item_frequency=4))[0].ref_id == "t/0"
    # Answer blocks (numbers and option letters) are not indexed.
    block = "question text\nA. 2\nB. 1 3\nC. 2 3\nD. 2 5\nAnswer: C. 2 3"
    idx = _index([("m/1", block)])
    assert idx.n_low_content > 0
    assert find_contamination(["options a 2 b 1 3 c 2 3 d 2 5 answer c 2 3"], idx)[0].ref_id is None


def test_bad_parameters_and_empty_index():
    with pytest.raises(ValueError, match="min_words"):
        build_index([], n=13, min_words=14)
    with pytest.raises(ValueError, match="ngram"):
        ngram_hashes("x", n=0)
    with pytest.raises(ValueError, match="max_item_frequency"):
        build_index([], max_item_frequency=0)
    empty = build_index([])
    assert empty.n_items == 0 and find_contamination([ITEM], empty)[0].ref_id is None
