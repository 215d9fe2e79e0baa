"""Adapt-infty kernels: the budget split (equal shares, small clusters give all, the rest
redistributed), the scorer with the highest histogram entropy wins, CCS gives equal counts per
bin and redistributes short bins, pruning removes planted near-duplicates first, the whole
selection equals a plain transcription of the reference's ``data_selection/adapt-inf.py`` on a
fixed random set, the per-document gradients equal autograd's, gradient clusters separate two
kinds of documents, and bad input is named."""

from __future__ import annotations

import gzip
import json
import math
import random

import numpy as np
import pytest
import torch

from curamix.selectors.adapt import (
    AdaptSelector,
    RademacherProjection,
    block_parameters,
    ccs_sample,
    choose_scorer,
    cluster_budgets,
    gradient_features,
    histogram_entropy,
    redundancy,
)
from curamix.selectors.rds import l2_normalize

# --- a plain transcription of the reference ----------------------------------------------------
#
# adymaharana/adapt-inf, data_selection/adapt-inf.py (commit d1b1b25), the functions
# assign_budget_to_cluster (score_weighted=False), get_dist_entropy, get_mwp_score,
# set_outlier_threshold, get_ccs_samples, semdedup, cluster, and the --kmeans --semdedup
# --select --mwp --ccs path of main. Kept as written except: prints and the debug sampling of
# 10 examples per cluster dropped; the global `args.n_clusters` passed in; MiniBatchKMeans
# seeded; the module-level `random` seeded by the caller; torch.argsort(stable=True) (the
# reference's unstable sort leaves ties unordered).


def ref_assign_budget_to_cluster(cluster_sizes, total_budget, n_clusters):
    smallest_cluster_size = np.min(cluster_sizes)
    if smallest_cluster_size * n_clusters >= total_budget:
        smallest_cluster_size = math.ceil(total_budget / n_clusters)
        return [smallest_cluster_size] * n_clusters
    else:
        budgets_per_bin = []
        sorted_cluster_idxs = np.argsort(cluster_sizes)
        budget_per_bin = math.ceil(total_budget / n_clusters)
        for i in range(n_clusters):
            curr_cluster_size = cluster_sizes[sorted_cluster_idxs[i]]
            if curr_cluster_size < budget_per_bin:
                budgets_per_bin.append(curr_cluster_size)
                budget_per_bin = budget_per_bin + math.ceil(
                    (budget_per_bin - curr_cluster_size) / (n_clusters - i - 1)
                )
            else:
                budgets_per_bin.append(budget_per_bin)
        budgets_per_bin = [budgets_per_bin[idx] for idx in np.argsort(sorted_cluster_idxs)]
        return budgets_per_bin


def ref_get_dist_entropy(x, nbins=50):
    x = np.nan_to_num(x)
    x_std = np.std(x)
    x = (x - np.mean(x)) / x_std
    counts = np.zeros(nbins)
    bins = np.linspace(-4 * x_std, 4 * x_std, nbins)
    for i in range(1, nbins):
        counts[i] = np.sum((x > bins[i - 1]) & (x <= bins[i]))
    epsilon = np.finfo(float).eps
    p = counts / np.sum(counts)
    p = np.where(p == 0, epsilon, p)
    p = np.nan_to_num(p)
    return -np.sum(p * np.log2(p))


def ref_get_mwp_score(scores, selected_idxs):
    entropies = []
    score_keys = list(scores.keys())
    for k in score_keys:
        entropies.append(ref_get_dist_entropy(scores[k][selected_idxs]))
    return scores[score_keys[np.argmax(entropies)]][selected_idxs]


def ref_set_outlier_threshold(scores):
    scores = np.sort(scores)
    low_thresh = scores[int(len(scores) * 0.05)]
    high_thresh = scores[int(len(scores) * 0.95)]
    return low_thresh, high_thresh


def ref_get_ccs_samples(scores, bins, budget):
    low, high = ref_set_outlier_threshold(scores)
    right = high
    remaining = budget
    budget = math.ceil(budget / bins)
    selected_idxs = []
    for i in range(bins):
        left = right - ((high - low) / bins)
        candidates = [j for j, score in enumerate(scores) if score > left and score <= right]
        if len(candidates) < budget:
            selected_idxs.extend(candidates)
            if (i + 1) < bins:
                budget = math.ceil((remaining - len(candidates)) / (bins - (i + 1)))
                remaining -= len(candidates)
        else:
            selected_idxs.extend(random.sample(candidates, k=budget))
            remaining -= budget
        right = left
    return np.array(selected_idxs)


def ref_semdedup(embeddings, cluster_labels, num_clusters, keep_samples):
    assert type(keep_samples) is int
    all_idxs = []
    cluster_sizes = [np.where(cluster_labels == i)[0].shape[0] for i in range(num_clusters)]
    keep_budget_by_cluster = ref_assign_budget_to_cluster(cluster_sizes, keep_samples, num_clusters)
    for i in range(num_clusters):
        cluster_idxs = np.where(cluster_labels == i)[0]
        cluster_i_embeddings = torch.tensor(embeddings[cluster_idxs]).type(torch.float32)
        cluster_i_embeddings = torch.nn.functional.normalize(cluster_i_embeddings, p=2, dim=-1)
        pairwise_sim_matrix = cluster_i_embeddings @ cluster_i_embeddings.T
        triu_sim_matrix = torch.triu(pairwise_sim_matrix, diagonal=1)
        M = torch.max(triu_sim_matrix, dim=0)[0]
        sorted_idxs = torch.argsort(M, stable=True)
        points_to_keep = sorted_idxs[: keep_budget_by_cluster[i]].numpy()
        points_to_keep = cluster_idxs[points_to_keep]
        all_idxs.append(points_to_keep)
    return np.concatenate(all_idxs, axis=0)


def ref_main(X_train, all_scores, n_clusters, sample_budget, data_budget, seed):
    """main(): --kmeans [--semdedup --data-budget] --select --mwp --ccs; returns the selected
    positions (into the original data) and the k-means labels."""
    from sklearn.cluster import MiniBatchKMeans

    random.seed(seed)
    X_train = np.nan_to_num(X_train)
    clf = MiniBatchKMeans(n_clusters=n_clusters, batch_size=10240, random_state=seed).fit(X_train)
    X_train_labels = clf.labels_
    labels = X_train_labels
    data = np.arange(len(X_train))
    if data_budget is not None:
        selected_idxs = ref_semdedup(X_train, X_train_labels, n_clusters, data_budget)
        all_scores = {k: v[selected_idxs] for k, v in all_scores.items()}
        X_train_labels = X_train_labels[selected_idxs]
        data = data[selected_idxs]
    selected_samples = []
    cluster_budgets_ = ref_assign_budget_to_cluster(
        [np.where(X_train_labels == i)[0].shape[0] for i in range(n_clusters)],
        sample_budget,
        n_clusters,
    )
    for i in range(n_clusters):
        cluster_idxs = np.where(X_train_labels == i)[0]
        cluster_scores = ref_get_mwp_score(all_scores, cluster_idxs)
        selected_idxs = cluster_idxs[ref_get_ccs_samples(cluster_scores, 50, cluster_budgets_[i])]
        selected_samples.extend([data[idx] for idx in selected_idxs])
    return np.asarray(selected_samples), labels


# --- budgets -----------------------------------------------------------------------------------


def test_budget_split_equally_small_clusters_give_all():
    # Every cluster can take its equal share.
    assert cluster_budgets([50, 50, 50, 50], 40) == [10, 10, 10, 10]
    # A 4-document cluster gives all; its missing 6 are spread over the 3 others (+2 each).
    assert cluster_budgets([4, 50, 50, 50], 40) == [4, 12, 12, 12]
    # Two small clusters, visited smallest first: share 10 -> 3 given, share 10 + ceil(7/4)
    # = 12 -> 7 given, share 12 + ceil(5/3) = 14 for the rest (the ceilings overshoot by 2).
    assert cluster_budgets([50, 3, 50, 7, 50], 50) == [14, 3, 14, 7, 14]
    assert cluster_budgets([5, 100, 100], 60) == [5, 28, 28]
    # An empty cluster gives nothing; the largest cluster short too (the reference divides by
    # zero there): it gives all it has.
    assert cluster_budgets([0, 10, 10], 10) == [0, 6, 6]
    assert cluster_budgets([2, 2, 3], 7) == [2, 2, 3]
    rng = np.random.default_rng(0)
    for _ in range(200):
        k = int(rng.integers(1, 12))
        sizes = rng.integers(1, 300, size=k).tolist()
        total = int(rng.integers(1, sum(sizes) + 1))
        got = cluster_budgets(sizes, total)
        assert all(0 <= g <= s for g, s in zip(got, sizes, strict=True))
        short = sum(g == x for g, x in zip(got, sizes, strict=True))  # gave all they have
        assert total <= sum(got) <= total + (k - 1) + short * max(k - 2, 0)
        try:
            want = ref_assign_budget_to_cluster(sizes, total, k)
        except ZeroDivisionError:  # the largest cluster short too: the reference fails
            continue
        assert got == want
    with pytest.raises(ValueError, match=r"must not be negative, got \[-1, 4\]"):
        cluster_budgets([-1, 4], 2)


# --- scorer choice -----------------------------------------------------------------------------


def test_histogram_entropy_by_hand_and_window():
    # z = -1 and +1 fall in two bins: one bit, whatever the window.
    assert histogram_entropy([0.0, 1.0]) == pytest.approx(1.0, abs=1e-9)
    assert histogram_entropy([0.0, 1.0], window="zscore") == pytest.approx(1.0, abs=1e-9)
    # A raw std of 0.005 makes the reference's window +-0.02 z: both values fall outside.
    assert histogram_entropy([0.0, 0.01]) == 0.0
    assert histogram_entropy([0.0, 0.01], window="zscore") == pytest.approx(1.0, abs=1e-9)
    # Four equally spaced values in four bins: two bits; a constant: no histogram.
    assert histogram_entropy([0.0, 1.0, 2.0, 3.0], window="zscore") == pytest.approx(2, abs=1e-9)
    assert histogram_entropy([3.0] * 5) == 0.0
    rng = np.random.default_rng(1)
    for scale in (0.05, 1.0, 30.0):
        x = rng.gamma(2.0, scale, size=500)
        assert histogram_entropy(x) == pytest.approx(ref_get_dist_entropy(x), abs=1e-12)


def test_the_scorer_with_the_highest_entropy_is_chosen():
    rng = np.random.default_rng(2)
    n = 2000
    spread = rng.uniform(0, 1, n)  # flat: many bins filled
    spike = np.where(rng.uniform(size=n) < 0.95, 0.0, 1.0)  # one bin (5% beyond the window)
    two = np.where(rng.uniform(size=n) < 0.5, 0.0, 1.0)  # two bins: one bit
    name, ent = choose_scorer({"log_ppl": spike, "el2n": spread, "grand": two})
    assert name == "el2n"
    assert ent["el2n"] > 5.0 and ent["grand"] == pytest.approx(1.0, abs=0.01)
    assert ent["log_ppl"] < 0.05
    # The reference's window scales with the raw std: the same flat scores times 100 land in
    # one bin of +-400 z, so the two-valued scorer wins; with the z-score window they win.
    wide = {"log_ppl": spike, "el2n": spread * 100, "grand": two}
    assert choose_scorer(wide)[0] == "grand"
    assert choose_scorer(wide, window="zscore")[0] == "el2n"
    # Ties go to the first scorer.
    assert choose_scorer({"grand": two, "el2n": two.copy()})[0] == "grand"


# --- CCS ---------------------------------------------------------------------------------------


def _bins_of(scores: np.ndarray, n_bins: int) -> np.ndarray:
    """The reference's bin of each score (0 = the highest), -1 outside (low, high]."""
    srt = np.sort(scores)
    low, high = srt[int(len(scores) * 0.05)], srt[int(len(scores) * 0.95)]
    out = np.full(len(scores), -1)
    right = high
    for i in range(n_bins):
        left = right - ((high - low) / n_bins)
        out[(scores > left) & (scores <= right)] = i
        right = left
    return out


def test_ccs_equal_counts_per_bin_and_short_bins_redistribute():
    rng = np.random.default_rng(3)
    s = rng.permutation(np.linspace(0.0, 1.0, 2001))
    bins = _bins_of(s, 10)
    got = ccs_sample(s, 50, n_bins=10, rng=random.Random(0))
    assert len(got) == len(set(got.tolist())) == 50
    assert np.bincount(bins[got], minlength=10).tolist() == [5] * 10
    assert (bins[got] >= 0).all()  # never below the 5th or above the 95th percentile
    other = ccs_sample(s, 50, n_bins=10, rng=random.Random(1))
    assert set(other.tolist()) != set(got.tolist())  # drawn at random inside each bin
    assert np.bincount(bins[other], minlength=10).tolist() == [5] * 10
    # Bin 4 (from the top) keeps 2 documents; the others move into bin 1, which leaves the
    # percentiles, hence every bin edge, where they were.
    t = s.copy()
    b4 = np.flatnonzero(bins == 4)
    b1 = np.flatnonzero(bins == 1)
    lo1, hi1 = t[b1].min(), t[b1].max()
    t[b4[2:]] = rng.uniform(lo1 + 1e-6, hi1 - 1e-6, len(b4) - 2)
    tb = _bins_of(t, 10)
    assert np.bincount(tb[tb >= 0], minlength=10)[4] == 2
    got = ccs_sample(t, 50, n_bins=10, rng=random.Random(0))
    # 4 bins x 5, then bin 4 gives its 2 and the quota becomes ceil(28 / 5) = 6.
    assert np.bincount(tb[got], minlength=10).tolist() == [5, 5, 5, 5, 2, 6, 6, 6, 6, 6]
    # The reference's ceiling: a budget below the bin count still draws one per bin.
    assert len(ccs_sample(s, 3, n_bins=10, rng=random.Random(0))) == 10
    assert len(ccs_sample([], 5)) == 0


# --- pruning -----------------------------------------------------------------------------------


def _planted(n_orig: int = 120, n_dup: int = 30, dim: int = 24, seed: int = 4):
    """Two groups of random directions; ``n_dup`` later rows copy earlier ones (+ noise)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(2, dim)) * 3
    kind = np.arange(n_orig) % 2
    x = centers[kind] + rng.normal(size=(n_orig, dim))
    src = rng.choice(n_orig, size=n_dup, replace=False)
    dups = x[src] + 0.01 * rng.normal(size=(n_dup, dim))
    return np.vstack([x, dups]).astype(np.float32), src


def test_redundancy_is_the_max_cosine_to_an_earlier_document():
    x, _ = _planted()
    labels = np.asarray([i % 3 for i in range(len(x))])
    sim, nearest = redundancy(x, labels)
    u = l2_normalize(x)
    for j in range(len(x)):
        earlier = [i for i in range(j) if labels[i] == labels[j]]
        if not earlier:
            assert sim[j] == 0 and nearest[j] == -1
            continue
        c = u[earlier] @ u[j]
        assert sim[j] == pytest.approx(max(0.0, c.max()), abs=1e-5)
        assert nearest[j] == earlier[int(np.argmax(c))]


def test_pruning_removes_the_planted_near_duplicates_first():
    x, src = _planted()
    n, n_dup = len(x), len(src)
    one = AdaptSelector(n_clusters=1, random_state=0).fit(x)
    res = one.prune(n - n_dup)
    assert sorted(res.positions.tolist()) == list(range(n - n_dup))  # exactly the copies go
    assert (res.max_sim[n - n_dup :] > 0.99).all()
    assert (res.nearest[n - n_dup :] == src).all()  # each copy points to its original
    # With clusters each one keeps its share; inside a cluster the copies go first.
    sel = AdaptSelector(n_clusters=2, random_state=0).fit(x)
    res = sel.prune(n - n_dup)
    kept = np.zeros(n, dtype=bool)
    kept[res.positions] = True
    for c in range(2):
        mine = sel.labels_ == c
        dup = mine & (np.arange(n) >= n - n_dup)
        gone = mine & ~kept
        assert gone.sum() == mine.sum() - res.cluster_budget[c] > 0
        # originals are pruned only once every copy of the cluster is gone
        assert (gone & ~dup).sum() == max(0, gone.sum() - dup.sum())


# --- the whole selection against the reference ------------------------------------------------


def _fixed_set(n: int = 3000, dim: int = 48, k: int = 6, seed: int = 5):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim)) * 2.5
    kind = rng.integers(0, k, n)
    x = l2_normalize(centers[kind] + rng.normal(size=(n, dim)))
    # Scores whose shape differs by group, so clusters choose different scorers.
    scores = {
        "log_ppl": np.where(kind % 3 == 0, rng.uniform(1, 5, n), rng.normal(3, 0.05, n)),
        "el2n": np.where(kind % 3 == 1, rng.uniform(0, 1, n), rng.exponential(0.01, n)),
        "grand": np.where(kind % 3 == 2, rng.gamma(2, 0.3, n), np.round(rng.uniform(0, 1, n))),
    }
    return x, scores


@pytest.mark.parametrize("keep", [None, 2400])
def test_selection_equals_the_reference_transcription(keep):
    x, scores = _fixed_set()
    want, labels = ref_main(x, dict(scores), 6, 700, keep, seed=11)
    sel = AdaptSelector(n_clusters=6, trim=False, random_state=11).fit(x)
    np.testing.assert_array_equal(sel.labels_, labels)
    order = None if keep is None else sel.prune(keep).positions
    got = sel.select(scores, 700, order)
    assert got.positions.tolist() == want.tolist()
    assert len(set(got.scorer)) >= 2  # the clusters did choose different scorers
    # The trim keeps a seeded subset of each cluster's draw, at most its budget.
    trimmed = AdaptSelector(n_clusters=6, trim=True, random_state=11).fit(x)
    t = trimmed.select(scores, 700, order)
    assert set(t.positions.tolist()) <= set(want.tolist())
    per = t.per_cluster(trimmed.labels_)
    drawn = got.per_cluster(sel.labels_)
    assert per.tolist() == np.minimum(drawn, got.cluster_budget).tolist()
    assert (t.sampled == drawn).all()


# --- gradients ---------------------------------------------------------------------------------

TEXTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May.",
    "Which of the following is a renewable resource? (A) coal (B) wind (C) oil (D) gas",
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n",
    "x",
    "In 1066 the Normans crossed the Channel and won the battle of Hastings, changing England.",
]


@pytest.fixture(scope="module")
def tiny():
    from curamix.proxy.model import ProxyLM, ProxyModelConfig
    from curamix.proxy.tokenizer import train_tokenizer

    tok = train_tokenizer(TEXTS * 3, vocab_size=300)
    cfg = ProxyModelConfig(vocab_size=300, d_model=32, n_layers=2, n_heads=2, seq_len=24)
    return ProxyLM(cfg, random_state=3).eval(), tok


def test_gradient_features_equal_autograd(tiny):
    from curamix.proxy.perplexity import doc_losses

    model, tok = tiny
    names = block_parameters(model, -1)
    assert names and all(n.startswith("blocks.1.") for n in names)
    f = gradient_features(model, tok, TEXTS, proj_dim=16, batch_size=4, seed=7)
    dim = sum(dict(model.named_parameters())[k].numel() for k in names)
    proj = RademacherProjection(dim, 16, seed=7)
    r = torch.cat([proj.block(b) for b in range(math.ceil(dim / proj.block_rows))]).double()
    params = dict(model.named_parameters())
    for i, text in enumerate(TEXTS):
        ids = tok.encode(text, add_special_tokens=False).ids[:25]
        assert f.n_tokens[i] == len(ids)
        if len(ids) < 2:
            assert np.isnan(f.log_ppl[i]) and not f.vectors[i].any()
            continue
        model.zero_grad()
        batch = torch.tensor([ids])
        loss = model.loss(batch)
        loss.backward()
        g = torch.cat([params[k].grad.reshape(-1) for k in names]).double()
        assert f.grand[i] == pytest.approx(float(g.norm()), rel=1e-4)
        np.testing.assert_allclose(f.vectors[i], (g @ r).numpy(), rtol=1e-3, atol=1e-6)
        assert f.log_ppl[i] == pytest.approx(float(loss.detach()), abs=1e-5)
        with torch.no_grad():
            p = torch.softmax(model(batch[:, :-1]).double(), -1)[0]
        onehot = torch.nn.functional.one_hot(batch[0, 1:], 300).double()
        assert f.el2n[i] == pytest.approx(float((p - onehot).norm(dim=-1).mean()), abs=1e-5)
    model.zero_grad()
    np.testing.assert_allclose(f.log_ppl, doc_losses(model, tok, TEXTS), atol=1e-5)
    # One at a time or in a batch with padding: the same features.
    alone = gradient_features(model, tok, TEXTS, proj_dim=16, batch_size=1, seed=7)
    np.testing.assert_allclose(alone.vectors, f.vectors, atol=1e-5)
    np.testing.assert_allclose(alone.grand, f.grand, rtol=1e-5)


def test_projection_is_seeded_and_keeps_inner_products():
    g = torch.randn(3, 5000, generator=torch.Generator().manual_seed(0))
    a = RademacherProjection(5000, 512, seed=1, block_rows=1024)
    b = RademacherProjection(5000, 512, seed=1, block_rows=1024, cache_bytes=0)
    np.testing.assert_array_equal(a(g).numpy(), b(g).numpy())
    assert not np.allclose(a(g).numpy(), RademacherProjection(5000, 512, seed=2)(g).numpy())
    pg = a(g).double()
    gd = g.double()
    rel = (pg @ pg.T - gd @ gd.T).abs().max() / (gd @ gd.T).diagonal().max()
    assert rel < 0.15


@pytest.mark.realdata
def test_gradient_clusters_separate_two_kinds_of_documents(shared_data):
    from sklearn.metrics import adjusted_rand_score

    from curamix.proxy.perplexity import reference_proxy

    docs, kind = [], []
    for k, name in enumerate(("math", "code")):
        with gzip.open(shared_data / "corpus" / f"{name}.jsonl.gz", "rt", encoding="utf-8") as fh:
            docs += [json.loads(next(fh))["text"] for _ in range(80)]
        kind += [k] * 80
    model, tok = reference_proxy(
        docs, seq_len=64, vocab_size=512, batch_size=16, total_tokens=16_384, random_state=0,
        device="cpu",
    )  # fmt: skip
    f = gradient_features(model, tok, docs, proj_dim=64, seed=0)
    # MiniBatchKMeans lands in a poor optimum for some seeds (seen: 1 in 6): the median of 5.
    ari = [
        adjusted_rand_score(
            kind, AdaptSelector(n_clusters=2, random_state=s).fit(f.vectors).labels_
        )
        for s in range(5)
    ]
    assert np.median(ari) > 0.5, ari  # chance: 0; seen 0.76


# --- bad input ---------------------------------------------------------------------------------


def test_bad_input_is_named():
    x, scores = _fixed_set(n=200)
    with pytest.raises(ValueError, match=r"n_clusters=0 must be in 1\.\.200"):
        AdaptSelector(n_clusters=0).fit(x)
    with pytest.raises(ValueError, match=r"n_clusters=201 must be in 1\.\.200"):
        AdaptSelector(n_clusters=201).fit(x)
    with pytest.raises(ValueError, match=r"unknown scorer\(s\) \['ppl'\]"):
        AdaptSelector(scorers=["ppl", "el2n"]).fit(x)
    sel = AdaptSelector(n_clusters=3, random_state=0).fit(x)
    with pytest.raises(ValueError, match=r"budget=201 must be a whole number in 1\.\.200"):
        sel.select(scores, 201)
    with pytest.raises(ValueError, match=r"keep=500 must be a whole number in 1\.\.200"):
        sel.prune(500)
    with pytest.raises(ValueError, match=r"scores lack the scorer\(s\) \['grand'\]"):
        sel.select({"log_ppl": scores["log_ppl"], "el2n": scores["el2n"]}, 10)
    with pytest.raises(ValueError, match=r"proj_dim must be >= 1, got 0"):
        RademacherProjection(100, 0)
    with pytest.raises(RuntimeError, match="not fitted"):
        AdaptSelector().select(scores, 10)


def test_bad_layer_is_named(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match=r"layer=2 is not a block of a 2-layer proxy"):
        gradient_features(model, tok, TEXTS, layer=2)
    with pytest.raises(ValueError, match=r"proj_dim must be >= 1, got 0"):
        gradient_features(model, tok, TEXTS, proj_dim=0)
