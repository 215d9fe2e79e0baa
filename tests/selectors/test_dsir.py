"""DSIR kernels and selector: reference values, parity with data-selection, selection laws."""

import gzip
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from curamix.selectors.dsir import (
    DSIRSelector,
    gumbel_from_ids,
    hash_buckets,
    kl_reduction,
    log_importance,
    ngram_counts,
    tokenize,
    total_counts,
)


def test_reference_values():
    assert hash_buckets("alice") == 6720
    assert hash_buckets("alice went") == 114
    counts, n_tokens, _ = ngram_counts(["Alice went to the store"], hash_mode="sha256")
    assert counts.sum() == 9 and n_tokens.tolist() == [5]
    assert counts[0, 6720] >= 1 and counts[0, 114] >= 1


def test_tokenizer_is_wordpunct():
    from nltk.tokenize import WordPunctTokenizer

    for text in [
        "Don't stop -- it's 3.5% (really)! Ça va? naïve_test",
        "x'₃⁴₅'y H₂O",
        "a\x1cb\x1fc",
        "KELVIN \u212a",
    ]:
        assert tokenize(text) == WordPunctTokenizer().tokenize(text.lower()), text


@pytest.mark.parametrize(
    "text", ["", "one", "a b", "Alice went to the store, didn't she? Ça va — 3.5% ok!!", "x " * 50]
)
def test_sha256_features_equal_the_reference(text):
    from data_selection.hashed_ngram_dsir import get_ngram_counts

    mine, _, _ = ngram_counts([text], hash_mode="sha256")
    assert np.array_equal(mine.toarray()[0], get_ngram_counts(text))


def test_batches_do_not_leak_ngrams_across_documents():
    together, _, _ = ngram_counts(["a b", "c d"], hash_mode="sha256")
    apart = np.vstack([ngram_counts([t], hash_mode="sha256")[0].toarray() for t in ["a b", "c d"]])
    assert np.array_equal(together.toarray(), apart)
    fast, _, _ = ngram_counts(["a b", "c d", ""], hash_mode="fast")
    assert fast.sum(axis=1).ravel().tolist() == [[3, 3, 0]]


@pytest.mark.parametrize(
    "text",
    [
        "Hello world, it's me é",
        "x'₃⁴₅'y H₂O — “quoted” naïve_test",
        "a\x1cb\x1fc KELVIN \u212a İstanbul",
        "",
        "   ",
        "日本語。です",
        "emoji 😀😀 ok 𝔘𝔫𝔦",
    ],
)
def test_fast_tokens_are_wordpunct_tokens(text):
    from nltk.tokenize import WordPunctTokenizer

    from curamix.selectors.dsir import batch_grams

    g = batch_grams([text], hash_mode="fast", ngrams=1)
    assert g.n_tokens.tolist() == [len(WordPunctTokenizer().tokenize(text.lower()))]


def test_fast_token_hash_does_not_depend_on_position():
    from curamix.selectors.dsir import _fast_token_hashes

    h1, _ = _fast_token_hashes(["naïve test"])
    h2, _ = _fast_token_hashes(["a naïve test!", "x " * 700 + "naïve"])
    assert h1[0] == h2[1] and h1[1] == h2[2] and h1[0] == h2[-1]


TRICKY = [
    "Alice went to the store",
    "x'₃⁴₅'y H₂O — “quoted” naïve_test",
    "a\x1cb\x1fc KELVIN \u212a İstanbul ǅ straße",
    "",
    "日本語。です emoji 😀😀 ok 𝔘𝔫𝔦",
    "long " + "é" * 40 + " " + "x" * 130 + " tail!!",  # n-grams over 1, 2 and 4 SHA blocks
    "a\nb\tc\n\nd",
]


@pytest.mark.parametrize(("ngrams", "chunk_tokens"), [(1, None), (2, None), (3, 2)])
def test_fast_buckets_are_the_references_sha256_buckets(ngrams, chunk_tokens, monkeypatch):
    import curamix.selectors.dsir as dsir_mod

    def counts(mode: str, texts: list[str]) -> np.ndarray:
        return dsir_mod.batch_grams(texts, 10_000, ngrams, mode, chunk_tokens).counts(10_000)

    texts = TRICKY + [f"doc {i} word{i % 7} w{i}" for i in range(300)]
    want = counts("sha256", texts).toarray()
    assert want.sum() > 1200
    dsir_mod._TABLES.clear()
    monkeypatch.setattr(dsir_mod, "_TABLE_CHUNK", 64)  # lookups in chunks, the table grows
    assert np.array_equal(counts("fast", texts).toarray(), want)  # cold table
    rev = counts("sha256", texts[::-1]).toarray()
    assert np.array_equal(counts("fast", texts[::-1]).toarray(), rev)  # warm table
    monkeypatch.setattr(dsir_mod, "_TABLE_LIMIT", 100)  # starts over when full
    assert np.array_equal(counts("fast", texts).toarray(), want)
    assert dsir_mod._TABLES[10_000].size <= 100
    monkeypatch.setattr(dsir_mod, "_GROUP_CODEPOINTS", 200)  # byte spans across groups
    assert np.array_equal(counts("fast", texts).toarray(), want)
    dsir_mod._TABLES.clear()


def test_fast_mode_takes_lone_surrogates():
    # Python strings may hold them (json.loads("\\ud800")); hashlib's UTF-8 would raise.
    c, n_tokens, _ = ngram_counts(["ab \ud800 cd"], num_buckets=100)
    assert n_tokens.tolist() == [3] and c.sum() == 5


@pytest.mark.parametrize("mode", ["fast", "hash64"])
def test_fast_modes_are_stable_and_spread(mode):
    c1, _, _ = ngram_counts(["the quick brown fox jumps"], num_buckets=1000, hash_mode=mode)
    c2, _, _ = ngram_counts(["the quick brown fox jumps"], num_buckets=1000, hash_mode=mode)
    assert np.array_equal(c1.toarray(), c2.toarray()) and c1.sum() == 9
    words = [f"w{i}" for i in range(20000)]
    hist = total_counts([" ".join(words)], num_buckets=100, ngrams=1, hash_mode=mode)
    assert hist.sum() == 20000
    assert hist.min() > 150 and hist.max() < 260  # uniform-ish: 200 per bucket


def test_log_importance_formula_and_bad_input():
    raw = np.array([2, 2, 0, 4])
    tgt = np.array([1, 0, 0, 1])
    with pytest.warns(UserWarning, match="never uses and laplace=0"):
        ld = log_importance(raw, tgt)
    assert np.allclose(ld, np.log(tgt / 2 + 1e-8) - np.log(raw / 8 + 1e-8))
    assert np.isfinite(ld).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        smooth = log_importance(raw, tgt, laplace=1.0)
    assert np.allclose(smooth, np.log(np.array([2, 1, 1, 2]) / 6 + 1e-8) - np.log(raw / 8 + 1e-8))
    with pytest.raises(ValueError, match="target \\[0\\] has no n-grams"):
        log_importance(raw, np.zeros(4))
    with pytest.raises(ValueError, match="raw data has no n-grams"):
        log_importance(np.zeros(4), tgt)
    with pytest.raises(ValueError, match="laplace must be >= 0, got -1"):
        log_importance(raw, tgt, laplace=-1)


def test_selector_bad_input():
    sel = DSIRSelector(min_example_length=0)
    with pytest.raises(ValueError, match="target is empty"):
        sel.fit([], ["some raw text"])
    with pytest.raises(ValueError, match="has no n-grams after tokenization"):
        sel.fit(["   ", "!!"[:0]], ["raw text here"])
    with pytest.raises(RuntimeError, match="not fitted"):
        sel.score_samples(["x"])
    sel.fit(["cats and dogs"], ["cats", "dogs", "birds and bees", "fish"])
    scores = sel.score_samples(["cats", "dogs", "birds", "fish"])
    for k in (0, -1):
        with pytest.raises(ValueError, match=f"k must be a positive int, got {k}"):
            sel.select(scores, k)
    with pytest.raises(ValueError, match="k=5 is larger than the 4 selectable"):
        sel.select(scores, 5)
    with pytest.raises(ValueError, match="hash_mode must be"):
        DSIRSelector(hash_mode="md5").fit(["a"], ["b"])
    with pytest.raises(ValueError, match="num_tokens_to_fit must be"):
        DSIRSelector(num_tokens_to_fit=-3).fit(["a"], ["b"])


def test_short_documents_are_masked():
    sel = DSIRSelector(min_example_length=3).fit(["a b c d"], ["a b c d", "e f"])
    scores, lengths = sel.score_batch(["a b c d", "a b", "a b c"])
    assert lengths.tolist() == [4, 2, 3]
    with pytest.raises(ValueError, match="larger than the 2 selectable"):
        sel.select(scores, 3, lengths=lengths)
    assert sel.select(scores, 2, lengths=lengths, top_k=True).tolist() == [0, 2]


def test_gumbel_noise_depends_on_seed_and_id_only():
    ids = [f"doc{i}" for i in range(1000)]
    a = gumbel_from_ids(ids, 7)
    assert np.array_equal(a[::-1], gumbel_from_ids(ids[::-1], 7))
    assert not np.array_equal(a, gumbel_from_ids(ids, 8))
    # Gumbel(0,1): mean is the Euler-Mascheroni constant, variance pi^2/6.
    big = gumbel_from_ids([str(i) for i in range(200_000)], 1)
    assert abs(big.mean() - 0.5772) < 0.01 and abs(big.var() - np.pi**2 / 6) < 0.03


def test_sampling_frequencies_grow_with_weight():
    """Gumbel top-k samples without replacement with probability increasing in the weight."""
    sel = DSIRSelector(min_example_length=0).fit(["a"], ["a", "b"])
    scores = np.log(np.array([1.0, 2.0, 4.0, 8.0, 16.0]))
    ids = [f"d{i}" for i in range(5)]
    freq = np.zeros(5)
    for seed in range(3000):
        freq[sel.select(scores, 1, ids=ids, random_state=seed)] += 1
    p = freq / freq.sum()
    assert np.all(np.diff(p) > 0)
    assert np.allclose(p, np.exp(scores) / np.exp(scores).sum(), atol=0.03)  # k=1: exactly softmax
    picks = {tuple(sel.select(scores, 2, ids=ids, random_state=s)) for s in range(20)}
    assert len(picks) > 1  # different seeds, different samples
    assert (
        sel.select(scores, 2, ids=ids, random_state=5).tolist()
        == sel.select(scores, 2, ids=ids, random_state=5).tolist()
    )


def test_separate_targets_quota_by_token_share():
    target = {"math": ["one plus one is two"] * 3, "poem": ["roses are red violets are blue"]}
    raw = [
        "one plus two",
        "roses red",
        "is two",
        "violets blue",
        "cats",
        "dogs and cats",
        "red blue",
    ] * 5
    sel = DSIRSelector(min_example_length=0, separate_targets=True).fit(target, raw)
    assert sel.log_diff_.shape == (2, 10_000)
    tokens = np.array([15, 6])  # 5 words x 3 docs vs 6 words
    assert np.allclose(sel.target_proportions_, (2 * tokens - [3, 1]) / (2 * tokens - [3, 1]).sum())
    scores = sel.score_samples(raw)
    chosen = sel.select(scores, 10, random_state=0)
    assert len(chosen) == 10 and len(set(chosen.tolist())) == 10


def test_chunking_and_length_normalization():
    sel = DSIRSelector(min_example_length=0, chunk_tokens=4).fit(
        ["a b c d"], ["a b c d", "x y z w"]
    )
    plain = DSIRSelector(min_example_length=0).fit(["a b c d"], ["a b c d", "x y z w"])
    long_doc = "a b c d " * 10
    chunked = sel.score_samples([long_doc, "a b c d"])
    assert np.isclose(chunked[0], chunked[1])  # mean over chunks does not grow with length
    raw_scores = plain.score_samples([long_doc, "a b c d"])
    assert raw_scores[0] > 5 * raw_scores[1]  # the reference's score grows with length
    norm = DSIRSelector(min_example_length=0, length_normalize=True).fit(
        ["a b c d"], ["a b c d", "x y z w"]
    )
    s = norm.score_samples([long_doc, "a b c d"])
    assert abs(s[0] - s[1]) < 0.3 * abs(s[1])


def test_kl_reduction_positive_toward_target():
    tgt = np.array([10, 10, 0, 0])
    raw = np.array([5, 5, 5, 5])
    assert kl_reduction(tgt, raw, np.array([9, 9, 1, 1])) > 0
    assert kl_reduction(tgt, raw, np.array([1, 1, 9, 9])) < 0


def _corpus(shared_data: Path) -> tuple[list[str], list[str], list[str]]:
    texts, domains, ids = [], [], []
    for f in sorted((shared_data / "corpus").glob("*.jsonl.gz")):
        with gzip.open(f) as fh:
            rows = [json.loads(line) for line in fh]
        for r in rows:
            texts.append(r["text"])
            ids.append(r["id"])
            domains.append(f.name.removesuffix(".jsonl.gz"))
    return texts, domains, ids


@pytest.fixture(scope="module")
def corpus(shared_data):
    return _corpus(shared_data)


@pytest.mark.realdata
@pytest.mark.slow
def test_parity_with_data_selection_on_the_real_corpus(corpus, tmp_path):
    """Every log weight within 1e-5 relative of the reference, same top-k selection."""
    from data_selection import HashedNgramDSIR

    texts, domains, _ = corpus
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    paths = []
    for d in sorted(set(domains)):
        p = raw_dir / f"{d}.jsonl"
        p.write_text(
            "".join(
                json.dumps({"text": t}) + "\n"
                for t, x in zip(texts, domains, strict=True)
                if x == d
            )
        )
        paths.append(str(p))
    targets = [p for p in paths if Path(p).stem in ("wiki", "books")]
    # Peer quirk: once NLTK's tokenizer has run in this process its compiled TimedPattern holds
    # a sentinel object() that does not survive pickling to joblib workers ("timeout not float
    # or None"); put it back to its lazy, uncompiled state.
    from data_selection import hashed_ngram_dsir

    hashed_ngram_dsir.wpt._regexp = None
    ref = HashedNgramDSIR(paths, targets, str(tmp_path / "cache"), num_proc=2)
    ref.fit_importance_estimator(num_tokens_to_fit="auto")
    ref.compute_importance_weights()
    # Reassemble the reference's per-shard weights in corpus order.
    ref_w = {}
    for sp_ in ref._get_virtually_sharded_datasets(ref.raw_datasets):
        w = np.load(tmp_path / "cache" / "log_importance_weights" / f"{sp_['overall_idx']}.npy")
        idx = [
            i
            for i, x in enumerate(x for x in domains if x == Path(sp_["path"]).stem)
            if i % sp_["num_shards"] == sp_["shard_idx"]
        ]
        for j, i in enumerate(idx):
            ref_w[(Path(sp_["path"]).stem, i)] = w[j]
    order, seen = [], {}
    for d in domains:
        seen[d] = seen.get(d, -1) + 1
        order.append(ref_w[(d, seen[d])])
    ref_weights = np.array(order)

    by_domain = [t for t, d in zip(texts, domains, strict=True) if d in ("wiki", "books")]
    raw_in_file_order = [
        t for d in sorted(set(domains)) for t, x in zip(texts, domains, strict=True) if x == d
    ]
    sel = DSIRSelector(hash_mode="sha256").fit(by_domain, raw_in_file_order)
    assert np.allclose(sel.raw_counts_ / sel.raw_counts_.sum(), ref.raw_probs)
    scores, lengths = sel.score_batch(texts)
    assert np.allclose(scores, ref_weights, rtol=1e-5, atol=1e-9)
    k = len(texts) // 5
    mask = lengths >= 100
    ref_top = np.argpartition(-np.where(mask, ref_weights, -np.inf), k)[:k]
    mine = sel.select(scores, k, top_k=True, lengths=lengths)
    assert set(mine.tolist()) == set(ref_top.tolist())

    # Fast mode: the reference's buckets through its table, so the same weights and selection.
    fast = DSIRSelector(hash_mode="fast").fit(by_domain, raw_in_file_order)
    fscores, flengths = fast.score_batch(texts)
    assert np.array_equal(flengths, lengths)
    assert np.array_equal(fast.raw_counts_, sel.raw_counts_)
    assert np.allclose(fscores, ref_weights, rtol=1e-5, atol=1e-9)
    assert set(fast.select(fscores, k, top_k=True, lengths=flengths).tolist()) == set(mine.tolist())

    # hash64 mode: the same selection up to hash collisions. At 10k buckets collisions alone
    # move about 6% of a 20% selection: the reference algorithm with a salted sha256 (any hash
    # other than its own) keeps 0.931 of its own selection here. hash64 must do at least as well.
    h64 = DSIRSelector(hash_mode="hash64").fit(by_domain, raw_in_file_order)
    hscores, hlengths = h64.score_batch(texts)
    assert np.array_equal(hlengths, lengths)  # same tokens on every document, only hashes differ
    hsel = h64.select(hscores, k, top_k=True, lengths=hlengths)
    overlap_h64 = len(set(hsel.tolist()) & set(mine.tolist())) / k

    import curamix.selectors.dsir as dsir_mod

    salted = DSIRSelector(hash_mode="sha256")
    original = dsir_mod.hash_buckets
    try:
        dsir_mod._HASHERS.clear()
        dsir_mod.hash_buckets = lambda g, n=10_000: original("salt:" + g, n)
        salted.fit(by_domain, raw_in_file_order)
        sscores, slengths = salted.score_batch(texts)
    finally:
        dsir_mod.hash_buckets = original
        dsir_mod._HASHERS.clear()
    overlap_salted = (
        len(
            set(salted.select(sscores, k, top_k=True, lengths=slengths).tolist())
            & set(mine.tolist())
        )
        / k
    )
    assert overlap_h64 >= 0.92
    assert overlap_h64 >= overlap_salted - 0.005, (overlap_h64, overlap_salted)


@pytest.mark.realdata
@pytest.mark.slow
def test_twenty_percent_toward_wiki_and_books(corpus):
    texts, domains, ids = corpus
    target = [t for t, d in zip(texts, domains, strict=True) if d in ("wiki", "books")]
    sel = DSIRSelector().fit(target, texts)
    scores, lengths = sel.score_batch(texts)
    k = len(texts) // 5
    chosen = sel.select(scores, k, ids=ids, random_state=0, lengths=lengths)
    picked = [domains[i] for i in chosen]
    share = {d: picked.count(d) / k for d in set(domains)}
    pool = {d: domains.count(d) / len(domains) for d in set(domains)}
    assert share["books"] >= 2 * pool["books"] and share["wiki"] >= 2 * pool["wiki"]
    assert share["code"] + share["math"] < 0.02
    rng = np.random.default_rng(0)
    random_pick = rng.choice(np.nonzero(lengths >= 100)[0], k, replace=False)
    kl_sel = sel.kl_reduction([texts[i] for i in chosen])
    kl_rand = sel.kl_reduction([texts[i] for i in random_pick])
    assert kl_sel > kl_rand and kl_sel > 0
    # Another seed draws another sample of the same kind.
    other = sel.select(scores, k, ids=ids, random_state=1, lengths=lengths)
    assert 0.5 < len(set(other.tolist()) & set(chosen.tolist())) / k < 1.0
