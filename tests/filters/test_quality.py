"""Quality classifiers (DCLM fastText, FineWeb-Edu head) and Nemotron-CC buckets."""

from __future__ import annotations

import numpy as np
import pytest

from curamix.filters.langid import ModelFileError, load_fasttext, one_line
from curamix.filters.quality import (
    EmbeddingQualityHead,
    FastTextQualityClassifier,
    assign_bins,
    bucket_label,
    ensemble_buckets,
    merge_sketches,
    percentile_bins,
    quantile_sketch,
    text_like_reason,
    top_fraction_threshold,
    weighted_quantiles,
)

GOOD = "the theorem follows from the lemma by induction on the number of steps of the proof"
BAD = "click here buy now cheap deals free shipping best price limited offer subscribe"


def _docs(words: str, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    vocab = words.split()
    return [" ".join(rng.choice(vocab, size=30)) for _ in range(n)]


@pytest.fixture(scope="module")
def trained() -> FastTextQualityClassifier:
    return FastTextQualityClassifier(bucket=20_000, random_state=3).fit(
        _docs(GOOD, 200, 1), _docs(BAD, 200, 2)
    )


def test_fasttext_separates_and_is_seeded(trained):
    pos, neg = _docs(GOOD, 50, 7), _docs(BAD, 50, 8)
    s = trained.score_samples(pos + neg)
    assert s[:50].min() > 0.9 and s[50:].max() < 0.1
    again = FastTextQualityClassifier(bucket=20_000, random_state=3).fit(
        _docs(GOOD, 200, 1), _docs(BAD, 200, 2)
    )
    np.testing.assert_array_equal(again.score_samples(pos + neg), s)
    assert trained.labels_ == ["hq", "cc"] or trained.labels_ == ["cc", "hq"]
    assert trained.n_positives_ == 200 and trained.n_negatives_ == 200


def test_fasttext_bin_loads_unchanged_and_scores_as_dclm(trained, tmp_path):
    """A saved ``__label__hq`` / ``__label__cc`` model (the layout of DCLM's released .bin) is
    loaded unchanged, and the score is DCLM's ``classify_fasttext_hq_prob``."""
    path = trained.save(tmp_path / "dclm_like.bin")
    clf = FastTextQualityClassifier.load(path)
    texts = _docs(GOOD, 5, 11) + _docs(BAD, 5, 12) + ["mixed " + GOOD + "\n" + BAD]
    raw = load_fasttext(path)
    dclm = []
    for t in texts:  # DCLM: " ".join(text.strip().splitlines()); top label's prob or 1 - it
        (label,), (prob,) = raw.predict([one_line(t)], k=1)
        dclm.append(prob[0] if label[0] == "__label__hq" else 1 - prob[0])
    np.testing.assert_allclose(clf.score_samples(texts), dclm, rtol=1e-6)
    np.testing.assert_allclose(clf.score_samples(texts), trained.score_samples(texts), rtol=1e-6)


def test_fasttext_errors(trained, tmp_path):
    with pytest.raises(ValueError, match="positives hold no text"):
        FastTextQualityClassifier().fit(["  "], ["x y"])
    with pytest.raises(ValueError, match="negatives hold no text"):
        FastTextQualityClassifier().fit(["x y"], [])
    path = trained.save(tmp_path / "m.bin")
    with pytest.raises(ModelFileError, match="not 'edu'"):
        FastTextQualityClassifier.load(path, positive_label="edu")


def test_weighted_quantiles_match_brute_force():
    rng = np.random.default_rng(0)
    v, w = rng.normal(size=500), rng.integers(1, 50, size=500).astype(float)
    expanded = np.repeat(v, w.astype(int))
    expanded.sort()
    for f in (0.0, 0.1, 0.5, 0.9, 0.95, 1.0):
        k = max(int(np.ceil(f * len(expanded))) - 1, 0)
        assert weighted_quantiles(v, w, [f])[0] == expanded[k]


def test_sketch_exact_for_small_parts_and_bounded_for_large():
    rng = np.random.default_rng(1)
    small = [(rng.random(100), rng.integers(1, 9, 100).astype(float)) for _ in range(3)]
    merged = merge_sketches([quantile_sketch(v, w, points=128) for v, w in small])
    allv, allw = np.concatenate([s[0] for s in small]), np.concatenate([s[1] for s in small])
    assert top_fraction_threshold(*merged, 0.1) == top_fraction_threshold(allv, allw, 0.1)
    big = [(rng.random(20_000), rng.integers(1, 500, 20_000).astype(float)) for _ in range(4)]
    merged = merge_sketches([quantile_sketch(v, w, points=256) for v, w in big])
    allv, allw = np.concatenate([s[0] for s in big]), np.concatenate([s[1] for s in big])
    thr = top_fraction_threshold(*merged, 0.1)
    share = allw[allv >= thr].sum() / allw.sum()
    assert abs(share - 0.1) < 1 / 256 + 0.002


def test_top_fraction_keeps_a_token_share():
    v = np.arange(100, dtype=float)
    w = np.ones(100)
    w[-1] = 100  # the best document holds half the tokens
    assert top_fraction_threshold(v, w, 0.1) == 99.0
    assert top_fraction_threshold(v, np.ones(100), 0.1) == 90.0
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        top_fraction_threshold(v, w, 0.0)


def test_nemotron_bins_hold_equal_token_shares():
    rng = np.random.default_rng(2)
    v, w = rng.random(20_000), rng.integers(1, 100, 20_000).astype(float)
    edges = percentile_bins(v, w, 20)
    bins = assign_bins(v, edges)
    assert bins.min() == 0 and bins.max() == 19
    shares = np.bincount(bins, weights=w, minlength=20) / w.sum()
    assert np.abs(shares - 0.05).max() < 0.005
    a, b = np.array([0, 5, 19]), np.array([3, 2, 18])
    np.testing.assert_array_equal(ensemble_buckets([a, b]), [3, 5, 19])
    assert [bucket_label(x, [0, 10, 15, 18]) for x in (0, 9, 10, 17, 18, 19)] == [
        "q0-9",
        "q0-9",
        "q10-14",
        "q15-17",
        "q18-19",
        "q18-19",
    ]
    assert bucket_label(19, [0, 19]) == "q19"


def test_embedding_head_fits_a_linear_score():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(400, 16))
    y = np.clip(np.round(2.5 + x[:, 0] + 0.5 * x[:, 1]), 0, 5)
    head = EmbeddingQualityHead(alpha=1e-3).fit(x[:300], y[:300])
    pred = head.score_samples([], x[300:])
    assert np.corrcoef(pred, y[300:])[0, 1] > 0.9
    assert pred.min() >= 0 and pred.max() <= 5
    np.testing.assert_array_equal(head.keep(np.array([2.49, 2.5, 2.51, 3.4])), [0, 0, 1, 1])
    with pytest.raises(ValueError, match="2 distinct"):
        EmbeddingQualityHead().fit(x[:5], [1, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        EmbeddingQualityHead().fit(x[:3], [1, np.nan, 2])
    with pytest.raises(ValueError, match="vectors"):
        head.score_samples(["text"])


def test_text_like():
    assert text_like_reason("a normal line\nand another", 100, 0.05) is None
    assert text_like_reason("x" * 1_000_001, 100_000, 0.05) == (
        "not_text:longest_line=1000001>100000"
    )
    junk = bytes(range(256)).decode("latin-1") * 4
    assert text_like_reason(junk, 100_000, 0.05).startswith("not_text:control_char_frac=")
    assert text_like_reason("", 10, 0.05) == "not_text:empty"
