"""Coreset kernels: CCS allocation (the reference's [1, 100, 100] / 30 -> [1, 14, 15]),
strata, seeded determinism, prototype difficulty, k-center, size errors, and a linear probe
on synthetic embeddings at 90% pruning: k-center beats random where coverage matters (long
tail of domains), CCS beats hard-only prototype pruning."""

import numpy as np
import pytest

from curamix.selectors.coreset import (
    ccs_allocate,
    ccs_select,
    ccs_strata,
    kcenter_select,
    linear_probe,
    prototype_scores,
    prototype_select,
    random_select,
    select_coreset,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_ccs_allocation_reference_check():
    assert ccs_allocate([1, 100, 100], 30) == [1, 14, 15]
    # order of the strata does not matter, only their sizes (ties by index)
    assert ccs_allocate([100, 1, 100], 30) == [14, 1, 15]
    assert ccs_allocate([0, 5, 0, 5], 7) == [0, 3, 0, 4]
    assert ccs_allocate([3, 3, 3], 9) == [3, 3, 3]
    assert ccs_allocate([3, 3, 3], 0) == [0, 0, 0]
    with pytest.raises(ValueError, match="budget=10 is larger than the strata's 9"):
        ccs_allocate([3, 3, 3], 10)


def test_ccs_allocation_properties():
    rng = np.random.default_rng(0)
    for _ in range(300):
        sizes = rng.integers(0, 40, size=rng.integers(1, 12)).tolist()
        budget = int(rng.integers(0, sum(sizes) + 1))
        out = ccs_allocate(sizes, budget)
        assert sum(out) == budget  # the whole budget is spent
        assert all(0 <= o <= s for o, s in zip(out, sizes, strict=True))
        # coverage: a stratum gets less than another one only when it is full
        for i, (oi, si) in enumerate(zip(out, sizes, strict=True)):
            for j, oj in enumerate(out):
                if i != j and oi + 1 < oj:
                    assert oi == si


def test_strata_equal_width():
    s = np.array([0.0, 0.1, 0.5, 0.99, 1.0])
    assert ccs_strata(s, 10).tolist() == [0, 1, 5, 9, 9]
    assert ccs_strata(np.full(4, 2.0), 50).tolist() == [0, 0, 0, 0]


def test_ccs_select_drops_hard_and_stratifies():
    rng = np.random.default_rng(1)
    scores = rng.gamma(2.0, size=2000)  # skewed: few documents in the high strata
    sel = ccs_select(scores, 200, beta=0.3, strata=50, random_state=3)
    assert len(sel) == 200 == len(np.unique(sel))
    cut = np.sort(scores)[::-1][int(0.3 * 2000) - 1]
    assert scores[sel].max() < cut  # nothing from the dropped hardest 30%
    # the same seed gives the same coreset; another seed another one
    assert (ccs_select(scores, 200, random_state=3) == sel).all()
    assert not np.array_equal(ccs_select(scores, 200, random_state=4), sel)
    # every stratum of the kept range is represented: coverage of the score range
    rest = np.sort(np.argsort(-scores, kind="stable")[600:])
    bins = ccs_strata(scores[rest], 50)
    sizes = np.bincount(bins, minlength=50)
    want = ccs_allocate(sizes.tolist(), 200)
    got = np.bincount(ccs_strata(scores[rest], 50)[np.searchsorted(rest, sel)], minlength=50)
    assert got.tolist() == want
    assert (got[sizes > 0] > 0).all()
    # beta = 0: the hardest documents may be chosen
    assert ccs_select(scores, 200, beta=0.0, random_state=0).size == 200


def test_sizes_are_checked_first():
    with pytest.raises(ValueError, match=r"k=11 is larger than the pool \(10 documents\)"):
        random_select(10, 11)
    with pytest.raises(ValueError, match="k=11 is larger than the pool"):
        ccs_select(np.zeros(10), 11)
    with pytest.raises(ValueError, match="k=8 is larger than the 7 documents left"):
        ccs_select(np.arange(10.0), 8, beta=0.3)
    with pytest.raises(ValueError, match="k=11 is larger than the pool"):
        prototype_select(np.zeros(10), 11)
    with pytest.raises(ValueError, match="k=11 is larger than the pool"):
        kcenter_select(np.zeros((10, 3), np.float32), 11)
    with pytest.raises(ValueError, match="k=6 is larger than the pool"):
        select_coreset("random", 6, n=5)
    with pytest.raises(ValueError, match="method must be one of"):
        select_coreset("herding", 2, n=5)
    with pytest.raises(ValueError, match="NaN"):
        ccs_select(np.array([0.0, np.nan, 1.0]), 1)


def test_random_select_seeded():
    a = random_select(1000, 50, random_state=7)
    assert (a == random_select(1000, 50, random_state=7)).all()
    assert len(np.unique(a)) == 50 and (np.diff(a) > 0).all()
    assert not np.array_equal(a, random_select(1000, 50, random_state=8))


def test_prototypes_keep_hard_picks_farthest():
    rng = np.random.default_rng(0)
    centers = _unit(rng.normal(size=(4, 16)))
    x = _unit(np.repeat(centers, 50, axis=0) + 0.3 * rng.normal(size=(200, 16)))
    scores = prototype_scores(x, 4, seed=0)
    assert scores.shape == (200,) and (scores >= -1e-6).all() and (scores <= 2).all()
    hard = prototype_select(scores, 20, keep_hard=True)
    easy = prototype_select(scores, 20, keep_hard=False)
    assert set(hard.tolist()) == set(np.argsort(-scores, kind="stable")[:20].tolist())
    assert scores[hard].min() >= np.sort(scores)[-20]
    assert scores[easy].max() <= np.sort(scores)[19]
    # ties go to the smaller position
    assert prototype_select(np.array([1.0, 2.0, 2.0, 2.0]), 2).tolist() == [1, 2]
    assert (prototype_scores(x, 4, seed=0) == scores).all()  # seeded


def test_kcenter_covers_every_cluster():
    rng = np.random.default_rng(0)
    sizes = [500, 100, 20, 5, 3]
    centers = _unit(rng.normal(size=(5, 16)) * 3)
    x = _unit(
        np.concatenate([centers[c] + 0.05 * rng.normal(size=(s, 16)) for c, s in enumerate(sizes)])
    )
    label = np.repeat(np.arange(5), sizes)
    sel = kcenter_select(x, 5, random_state=0)
    assert sorted(label[sel].tolist()) == [0, 1, 2, 3, 4]
    assert (kcenter_select(x, 5, random_state=0) == sel).all()


# --------------------------------------------------------------------------- probe


def _long_tail(seed: int, junk: float = 0.0, spread: float = 0.5, zipf: float = 1.3):
    """12 classes (domains) as blobs on the unit sphere in 32 dims with Zipf sizes (1500 down
    to ~60), ``junk`` share of extra training documents pointing anywhere with a random
    label; a balanced clean test set of 40 per class."""
    rng = np.random.default_rng(seed)
    dim, n_classes, per_test = 32, 12, 40
    centers = _unit(rng.normal(size=(n_classes, dim)))
    sizes = np.maximum(8, 1500 / np.arange(1, n_classes + 1) ** zipf).astype(int)
    x, y = [], []
    for c, s in enumerate(sizes):
        x.append(_unit(centers[c] + spread * rng.normal(size=(s + per_test, dim)) / np.sqrt(dim)))
        y += [c] * (s + per_test)
    x, y = np.concatenate(x), np.array(y)
    test = np.concatenate([np.flatnonzero(y == c)[-per_test:] for c in range(n_classes)])
    train = np.setdiff1d(np.arange(len(y)), test)
    tx, ty = x[train], y[train]
    n_junk = int(junk * len(tx))
    tx = np.concatenate([tx, _unit(rng.normal(size=(n_junk, dim)))])
    ty = np.concatenate([ty, rng.integers(0, n_classes, n_junk)])
    return tx, ty, x[test], y[test]


def _probe(method: str, data, seed: int, n_clusters: int = 12) -> float:
    tx, ty, qx, qy = data
    k = len(tx) // 10  # 90% pruning
    scores = (
        prototype_scores(tx, n_clusters, seed=seed) if method in ("ccs", "prototypes") else None
    )
    sel = select_coreset(method, k, vectors=tx, scores=scores, random_state=seed)
    assert len(sel) == k
    return linear_probe(tx[sel], ty[sel], qx, qy)["balanced_accuracy"]


def test_probe_kcenter_beats_random_when_coverage_matters():
    """Long-tailed domains: a random 10% holds a handful of the rare domains' documents;
    k-center covers every region of the embedding space. Mean over 3 seeds."""
    res = {m: [] for m in ("kcenter", "random")}
    for seed in range(3):
        data = _long_tail(seed, spread=1.5)
        for m in res:
            res[m].append(_probe(m, data, seed))
    mean = {m: float(np.mean(v)) for m, v in res.items()}
    print(mean)
    assert mean["kcenter"] > mean["random"] + 0.03


def test_probe_ccs_beats_hard_only_pruning():
    """At 90% pruning, keeping only the hardest prototypes (farthest from every centroid:
    here the 20% junk documents, random direction and label) collapses; CCS drops the hardest
    30% and samples every stratum of the rest (Zheng et al.'s point about hard-only selection
    at high pruning rates). Mean over 3 seeds. Against random, CCS on these unsupervised
    prototype scores is a wash on synthetic data (within +-0.05 per seed, no consistent sign
    over 10 seeds): only the robust claim is asserted."""
    res = {m: [] for m in ("ccs", "random", "prototypes")}
    for seed in range(3):
        data = _long_tail(seed, junk=0.2, spread=2.5, zipf=0.5)
        for m in res:
            res[m].append(_probe(m, data, seed))
    mean = {m: float(np.mean(v)) for m, v in res.items()}
    print(mean)
    assert mean["ccs"] > mean["prototypes"] + 0.05
