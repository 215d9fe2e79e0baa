"""BETR kernels: the compute rule, rank scores (max vs mean, FAISS vs brute force), labels and
balancing, the hashed text classifier (learning, save/load without pickle), the token-share
threshold, and bad input."""

import os

import numpy as np
import pytest

from curamix.selectors import betr
from curamix.selectors.betr import (
    HashedTextClassifier,
    balance_classes,
    binary_metrics,
    f_opt_percent,
    hash_unit,
    keep_fraction,
    label_top,
    rank_scores,
    rank_values,
    token_share_threshold,
)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# --- the compute rule ------------------------------------------------------------------------


def test_f_opt_values():
    # 4e-5 * C^0.25 percent: 4.0% at 1e20, 12.6% at 1e22 (the paper's "about 3%" / "about 10%").
    assert f_opt_percent(1e20) == pytest.approx(4.0)
    assert f_opt_percent(1e22) == pytest.approx(12.6491, rel=1e-4)
    assert 3 <= f_opt_percent(1e20) <= 5 and 10 <= f_opt_percent(1e22) <= 13
    # 100x the compute keeps sqrt(10) times the share: larger budgets filter less.
    assert f_opt_percent(1e24) / f_opt_percent(1e22) == pytest.approx(10**0.5)
    assert keep_fraction(compute=1e20) == pytest.approx(0.04)
    assert keep_fraction() == 0.1 and keep_fraction(keep_tokens=0.3) == 0.3


@pytest.mark.parametrize("bad", [0, -1e20, float("nan"), float("inf")])
def test_f_opt_rejects_bad_compute(bad):
    with pytest.raises(ValueError, match="compute_flops must be a positive"):
        f_opt_percent(bad)


def test_keep_fraction_rejects_bad_rates():
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"keep_tokens must be in \(0, 1\], got"):
            keep_fraction(keep_tokens=bad)
    with pytest.raises(ValueError, match="over 100%"):
        keep_fraction(compute=1e30)
    with pytest.raises(ValueError, match="not both"):
        keep_fraction(keep_tokens=0.1, compute=1e20)


# --- rank scores -----------------------------------------------------------------------------

# Three documents, three examples (unit vectors in the plane):
#   e0 = (1, 0):     a (1.0) > b (0.8) > c (-1)    -> a 1, b 2/3, c 1/3
#   e1 = (.6, .8):   b (.96) > a (.6)  > c (-.6)   -> b 1, a 2/3, c 1/3
#   e2 = (.8, .6):   b (1.0) > a (.8)  > c (-.8)   -> b 1, a 2/3, c 1/3
DOCS = _unit([[1, 0], [0.8, 0.6], [-1, 0]])
EXAMPLES = _unit([[1, 0], [0.6, 0.8], [0.8, 0.6]])


def test_rank_scores_max_vs_mean_by_hand():
    np.testing.assert_allclose(rank_scores(DOCS, EXAMPLES, "max"), [1, 1, 1 / 3])
    np.testing.assert_allclose(rank_scores(DOCS, EXAMPLES, "mean"), [7 / 9, 8 / 9, 1 / 3])
    # max ties a and b (each is some example's nearest document); the mean breaks the tie.
    best, mean = rank_values(DOCS, EXAMPLES)
    assert label_top(best, 0.34, tiebreak=mean).tolist() == [False, True, False]
    # Without a tiebreak the earlier document wins the tie.
    assert label_top(best, 0.34).tolist() == [True, False, False]


def test_rank_scores_equal_brute_force_in_blocks(monkeypatch):
    rng = np.random.default_rng(0)
    docs, ex = _unit(rng.normal(size=(300, 16))), _unit(rng.normal(size=(70, 16)))
    sim = ex @ docs.T
    order = np.argsort(-sim, axis=1, kind="stable")
    val = np.zeros_like(sim, dtype=np.float64)
    np.put_along_axis(val, order, 1 - np.arange(300) / 300, axis=1)
    monkeypatch.setattr(betr, "MAX_BLOCK_ENTRIES", 300 * 8)  # 8 examples per search block
    np.testing.assert_allclose(rank_scores(docs, ex, "max"), val.max(axis=0))
    np.testing.assert_allclose(rank_scores(docs, ex, "mean"), val.mean(axis=0))


def test_rank_scores_bad_input():
    with pytest.raises(ValueError, match="benchmark example set is empty"):
        rank_scores(DOCS, np.zeros((0, 2), np.float32))
    with pytest.raises(ValueError, match="no sampled documents"):
        rank_scores(np.zeros((0, 2), np.float32), EXAMPLES)
    with pytest.raises(ValueError, match="dimension mismatch"):
        rank_scores(DOCS, np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="aggregation must be 'max' or 'mean', got 'median'"):
        rank_scores(DOCS, EXAMPLES, "median")


# --- labels, balancing, hashing --------------------------------------------------------------


def test_label_top_and_balance():
    scores = np.arange(100, dtype=float)
    lab = label_top(scores, 0.1)
    assert lab.sum() == 10 and lab[90:].all()
    idx = balance_classes(lab, random_state=0)
    assert len(idx) == 20 and lab[idx].sum() == 10
    assert np.array_equal(idx, balance_classes(lab, random_state=0))  # seeded
    assert not np.array_equal(idx, balance_classes(lab, random_state=1))
    with pytest.raises(ValueError, match="positive_fraction must be in"):
        label_top(scores, 1.0)
    with pytest.raises(ValueError, match="need both classes"):
        balance_classes(np.zeros(5, bool))


def test_hash_unit_is_order_free_and_uniform():
    ids = [f"doc{i}" for i in range(20_000)]
    u = hash_unit(ids, seed=3)
    assert np.array_equal(hash_unit(ids[::-1], seed=3), u[::-1])
    assert not np.array_equal(hash_unit(ids, seed=4), u)
    assert abs(u.mean() - 0.5) < 0.01 and u.min() >= 0 and u.max() < 1


# --- classifier ------------------------------------------------------------------------------


def _toy(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    math_words = ["solve", "equation", "integer", "sum", "product", "fraction", "divide"]
    prose_words = ["garden", "evening", "river", "village", "morning", "painter", "letter"]
    shared = ["the", "a", "of", "and", "to", "in", "is", "was", "it", "for", "on", "with"]
    texts, labels = [], []
    for i in range(n):
        pos = i % 2 == 0
        own = math_words if pos else prose_words
        words = list(rng.choice(own, 6)) + list(rng.choice(shared, 10))
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(pos)
    return texts, np.asarray(labels)


def test_classifier_learns_a_separable_task_and_reloads(tmp_path):
    texts, y = _toy(400, 0)
    clf = HashedTextClassifier(num_buckets=1 << 16).fit(texts, y, random_state=0)
    test_texts, test_y = _toy(200, 1)
    m = binary_metrics(test_y, clf.decision_function(test_texts))
    assert m["accuracy"] == 1.0 and m["auc"] == 1.0
    assert np.array_equal(clf.predict(test_texts), test_y)
    # Same seed, same model.
    again = HashedTextClassifier(num_buckets=1 << 16).fit(texts, y, random_state=0)
    np.testing.assert_array_equal(again.coef_, clf.coef_)
    # save/load: identical scores, and the folder holds arrays and JSON only (no pickle).
    clf.save(tmp_path / "model")
    assert sorted(os.listdir(tmp_path / "model")) == ["classifier.json", "coef.npy"]
    back = HashedTextClassifier.load(tmp_path / "model")
    np.testing.assert_array_equal(
        back.decision_function(test_texts), clf.decision_function(test_texts)
    )
    assert back.params() == clf.params()
    assert np.array_equal(clf.score_samples(test_texts), clf.decision_function(test_texts))


def test_classifier_bad_input(tmp_path):
    texts, y = _toy(10, 0)
    with pytest.raises(ValueError, match="labels must hold both classes"):
        HashedTextClassifier(num_buckets=64).fit(texts, np.ones(10, bool))
    with pytest.raises(ValueError, match="10 texts but 9 labels"):
        HashedTextClassifier(num_buckets=64).fit(texts, y[:9])
    with pytest.raises(ValueError, match="epochs must be a positive int, got 0"):
        HashedTextClassifier(num_buckets=64, epochs=0).fit(texts, y)
    with pytest.raises(RuntimeError, match="not fitted"):
        HashedTextClassifier().decision_function(texts)


def test_binary_metrics_match_sklearn_on_ties():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.random(300) < 0.3  # imbalanced
    # Tie-heavy: 5 distinct scores (zero among them, which predicts negative), shifted by class.
    s = rng.integers(-2, 3, 300).astype(float) + (y & (rng.random(300) < 0.5))
    m = binary_metrics(y, s)
    assert m["accuracy"] == accuracy_score(y, s > 0)
    assert m["balanced_accuracy"] == balanced_accuracy_score(y, s > 0)
    assert m["auc"] == roc_auc_score(y, s)
    # What the docstring promises: the AUC counts a tied (positive, negative) pair as half.
    pos, neg = s[y][:, None], s[~y][None, :]
    assert m["auc"] == pytest.approx(((pos > neg) + 0.5 * (pos == neg)).mean(), abs=1e-12)
    # One class, or nothing: NaN where the metric is undefined, no warning or error.
    one = binary_metrics(np.ones(4, bool), np.array([1.0, -1.0, 0.0, 2.0]))
    assert one["accuracy"] == 0.5 and np.isnan(one["auc"]) and np.isnan(one["balanced_accuracy"])
    assert all(np.isnan(v) for v in binary_metrics(np.array([], bool), np.array([])).values())


# --- token-share threshold -------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.03, 0.1, 0.3, 0.9])
def test_token_share_threshold_keeps_the_requested_token_share(keep):
    rng = np.random.default_rng(7)
    n = 5_000
    n_tokens = np.maximum(1, rng.lognormal(5, 1, n)).astype(np.int64)
    # Scores correlated with length, so the token share differs from the document share.
    scores = rng.normal(size=n) + 0.3 * np.log(n_tokens)
    t = token_share_threshold(scores, n_tokens, keep)
    kept = scores >= t
    share = n_tokens[kept].sum() / n_tokens.sum()
    assert abs(share - keep) <= n_tokens.max() / n_tokens.sum()  # within one document
    assert abs(share - keep) < 0.005
    assert kept.mean() != pytest.approx(keep, abs=0.005)  # it is a token share, not a doc share


def test_token_share_threshold_edges():
    s = np.array([3.0, 2.0, 2.0, 1.0])
    w = np.array([10, 10, 10, 70])
    assert token_share_threshold(s, w, 1.0) == float("-inf")
    assert token_share_threshold(s, w, 0.1) == 3.0
    # Tied scores are kept or dropped together: 10% or 30%; 0.25 is nearer 30%.
    assert token_share_threshold(s, w, 0.25) == 2.0
    with pytest.raises(ValueError, match=r"keep_tokens must be in \(0, 1\], got 0"):
        token_share_threshold(s, w, 0)
    with pytest.raises(ValueError, match="one length"):
        token_share_threshold(s, w[:3], 0.1)
    with pytest.raises(ValueError, match="positive total"):
        token_share_threshold(s, np.zeros(4), 0.1)
