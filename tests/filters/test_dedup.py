"""Dedup kernels: normalization, shingles, MinHash, bands, edges, components; and the
in-process near-dup removal on the labelled benchmark of ../shared/data/corpus_with_dups."""

import gzip
import json

import numpy as np
import pytest

from curamix.filters.dedup import (
    band_keys,
    connected_components,
    dedup_decisions,
    exact_key,
    jaccard,
    jaccard_pairs,
    minhash_dedup,
    minhash_permutations,
    minhash_signatures,
    normalize,
    optimal_bands,
    shingle_hashes,
    shingle_sets,
    star_edges,
    universal_hash,
)
from tests.conftest import score_near_dups


def test_normalize_and_exact_keys():
    assert normalize("  Ｈｅｌｌｏ\tWORLD \n") == "hello world"
    assert exact_key("Hello  World") == exact_key("hello world\n") != exact_key("hello worlds")
    assert normalize("A  B", lowercase=False, collapse_whitespace=False) == "A  B"


def test_word_shingles_and_short_documents():
    h, d = shingle_hashes(["one two three four five six", "one two", "", "one, two!"], n=5)
    assert np.bincount(d, minlength=4).tolist() == [2, 1, 1, 1]
    # Punctuation separates words: "one, two!" has the same single shingle as "one two".
    assert h[d == 1][0] == h[d == 3][0]
    # Equal shingles wherever they occur.
    h2, _d2 = shingle_hashes(["zero one two three four five"], n=5)
    assert h2[1] == h[0]
    with pytest.raises(ValueError, match="n-gram size must be >= 1, got 0"):
        shingle_hashes(["x"], n=0)
    _hc, dc = shingle_hashes(["abcd", "ab"], n=3, unit="char")
    assert np.bincount(dc).tolist() == [2, 1]


def test_universal_hash_is_exact_modular_arithmetic():
    a, b = minhash_permutations(32, seed=7)
    x = np.random.default_rng(1).integers(0, 1 << 32, size=100, dtype=np.uint64)
    got = universal_hash(x[:, None], a[None, :], b[None, :])
    p = (1 << 61) - 1
    want = [[(int(ai) * int(xi) + int(bi)) % p for ai, bi in zip(a, b, strict=True)] for xi in x]
    assert np.array_equal(got, np.array(want, dtype=np.uint64))


def test_numba_and_numpy_kernels_agree_exactly():
    texts = [" ".join(f"w{(i * 7 + j) % 97}" for j in range(40 + i)) for i in range(30)] + ["", "x"]
    h, d = shingle_hashes(texts)
    fast = minhash_signatures(h, d, len(texts), num_perm=64, seed=3, backend="numba")
    ref = minhash_signatures(h, d, len(texts), num_perm=64, seed=3, backend="numpy")
    assert np.array_equal(fast, ref)
    # And both equal the exact modular arithmetic, shingle by shingle.
    a, b = minhash_permutations(64, seed=3)
    p = (1 << 61) - 1
    want = [
        [
            min((int(ai) * (int(x) >> 32) + int(bi)) % p for x in h[d == k])
            for ai, bi in zip(a, b, strict=True)
        ]
        for k in (0, 31)
    ]
    assert fast[[0, 31]].tolist() == want


def test_minhash_estimates_jaccard_without_bias():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(5000)]
    errs = []
    for _ in range(200):
        base = list(rng.choice(vocab, 200))
        other = base.copy()
        for k in rng.choice(200, 20, replace=False):
            other[k] = str(rng.choice(vocab))
        h, d = shingle_hashes([" ".join(base), " ".join(other)])
        sig = minhash_signatures(h, d, 2, num_perm=256)
        errs.append((sig[0] == sig[1]).mean() - jaccard(h[d == 0], h[d == 1]))
    errs = np.array(errs)
    assert abs(errs.mean()) < 0.01 and errs.std() < 0.045  # binomial sd at J~0.5, 256 perms: 0.031


def test_optimal_bands_match_datasketch():
    from datasketch.lsh import _optimal_param

    for t, p in [(0.8, 128), (0.7, 128), (0.5, 64), (0.9, 256)]:
        assert optimal_bands(t, p) == _optimal_param(t, p, 0.5, 0.5)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\], got 1.5"):
        optimal_bands(1.5, 128)


def test_band_keys_and_star_edges():
    sig = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [7, 7, 3, 4], [5, 5, 5, 5]], dtype=np.uint64)
    keys = band_keys(sig, 2, 2)
    assert keys[0, 0] == keys[1, 0] and keys[0, 1] == keys[2, 1] and keys[0, 0] != keys[3, 0]
    edges = star_edges(keys, np.array(["d", "a", "c", "b"], dtype=object))
    # bucket {0,1} -> star to "a" (index 1); bucket {0,2} -> star to "c" (index 2)
    assert sorted(map(tuple, edges.tolist())) == [(0, 1), (0, 2)]
    with pytest.raises(ValueError, match="bands x rows = 3 x 2 = 6 exceeds num_perm = 4"):
        band_keys(sig, 3, 2)


def test_connected_components_on_known_graphs():
    assert connected_components(4, np.zeros((0, 2), dtype=np.int64)).tolist() == [0, 1, 2, 3]
    chain = np.array([[3, 2], [2, 1], [5, 4]])
    assert connected_components(6, chain).tolist() == [0, 1, 1, 1, 4, 4]
    star = np.array([[i, 0] for i in range(1, 50)])
    assert set(connected_components(50, star).tolist()) == {0}


def test_shingle_sets_and_jaccard_pairs_equal_the_set_formula():
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 40, size=rng.integers(1, 30)).astype(np.uint64) for _ in range(30)]
    offsets = np.r_[0, np.cumsum([len(d) for d in docs])]
    values, new_offsets = shingle_sets(np.concatenate(docs), offsets)
    for d, doc in enumerate(docs):
        assert values[new_offsets[d] : new_offsets[d + 1]].tolist() == sorted(set(doc.tolist()))
    u, v = rng.integers(0, 30, 200), rng.integers(0, 30, 200)
    got = jaccard_pairs(u, v, (values, new_offsets))
    want = [jaccard(docs[i], docs[j]) for i, j in zip(u, v, strict=True)]
    np.testing.assert_array_equal(got, want)


def test_dedup_decisions_on_a_known_case():
    """0 and 3 share a text (exact group), 1 is 0 with one word changed, 2 is unrelated;
    documents are ranked 1 < 3 < 0 < 2 < 4, and 4 (the text of 0) is in its own scope."""
    base = " ".join(f"word{i}" for i in range(60))
    texts = [base, base.replace("word30", "other"), "unrelated words here " * 6, base, base]
    sh, doc = shingle_hashes(texts, 5)
    sig = minhash_signatures(sh, doc, len(texts))
    offsets = np.searchsorted(doc, np.arange(len(texts) + 1))
    rank = np.array([2, 0, 3, 1, 4])
    args = (sh, offsets)
    d = dedup_decisions(rank, [0, 0, 0, 0, 1], list(texts), band_keys(sig, 16, 8), *args)
    # 0 is an exact duplicate of 3 (the better rank); 3 is a near duplicate of 1, so 0 points
    # to 1 with 3's Jaccard; 4 has the same text as 3 but another scope: kept.
    assert d.ref.tolist() == [1, -1, -1, 1, -1]
    assert d.exact.tolist() == [True, False, False, False, False]
    assert 0.8 <= d.sim[3] < 1 and d.sim[0] == d.sim[3] and np.isnan(d.sim[1])
    assert d.verified_edges == 1 <= d.candidate_edges
    # Without exact dedup, 0 and 3 are near duplicates (Jaccard 1) of 1 through LSH.
    d = dedup_decisions(rank, [0, 0, 0, 0, 1], None, band_keys(sig, 16, 8), *args)
    assert d.ref.tolist() == [1, -1, -1, 1, -1] and not d.exact.any() and d.sim[0] == d.sim[3]
    # Exact only: 0 -> 3 with Jaccard 1; and a threshold above 1 word changed keeps 1 apart.
    d = dedup_decisions(rank, np.zeros(5), list(texts), None, *args)
    assert d.ref.tolist() == [3, -1, -1, -1, 3] and d.sim[0] == 1.0 and d.candidate_edges == 0
    d = dedup_decisions(rank, np.zeros(5), list(texts), band_keys(sig, 16, 8), *args, 0.99)
    assert d.ref.tolist() == [3, -1, -1, -1, 3]


def test_minhash_dedup_keeps_the_smallest_id_and_rejects_bad_parameters():
    base = " ".join(f"word{i}" for i in range(60))
    texts = [base, base.replace("word30", "other"), "completely different text " * 5, base]
    rep, sim = minhash_dedup(["b", "c", "x", "a"], texts)
    assert rep.tolist() == [3, 3, 2, 3] and sim[2] == 1.0 and 0.8 <= sim[1] < 1.0
    with pytest.raises(ValueError, match="bands x rows must equal num_perm: 10 x 10 != 128"):
        minhash_dedup(["a"], ["x"], bands=10, rows=10)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\], got 0"):
        minhash_dedup(["a"], ["x"], threshold=0)


@pytest.mark.realdata
@pytest.mark.slow
def test_near_duplicate_benchmark(shared_data, tmp_path):
    folder = shared_data / "corpus_with_dups"
    with gzip.open(folder / "mixed_20k.jsonl.gz") as fh:
        rows = [json.loads(x) for x in fh]
    with gzip.open(folder / "labels.jsonl.gz") as fh:
        labels = [json.loads(x) for x in fh]
    ids = [r["id"] for r in rows]
    rep, _ = minhash_dedup(ids, [r["text"] for r in rows])  # defaults: threshold 0.8, verified
    cluster = {i: ids[r] for i, r in zip(ids, rep, strict=True)}

    pairs = score_near_dups(
        shared_data, tmp_path, [{"id": i, "cluster": c} for i, c in cluster.items()]
    )
    removal = score_near_dups(
        shared_data, tmp_path, [{"id": i, "keep": cluster[i] == i} for i in ids]
    )
    print("pair recall by kind:", json.dumps(pairs["pair_recall_by_kind"], indent=1))
    for kind in ("exact", "whitespace", "case"):
        assert pairs["pair_recall_by_kind"][kind] >= 0.99, kind
    assert removal["precision"] >= 0.98
    clear = [
        lab for lab in labels if lab["kind"] != "original" and (lab["jaccard_w5"] or 0) >= 0.85
    ]
    found = sum(cluster[lab["id"]] == cluster[lab["original_id"]] for lab in clear)
    assert found / len(clear) >= 0.97
