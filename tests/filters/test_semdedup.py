"""SemDeDup kernels: planted near-duplicates removed exactly, refs to kept twins, the
reference's ordering, blocked = unblocked, one-pass removal curve monotone in eps; the
assignment to sampled centroids (as spherical k-means assigns, the same numbers in any block)."""

import numpy as np
import pytest

from curamix.filters.semdedup import (
    assign_to_centroids,
    cluster_order,
    decide,
    kmeans_train_size,
    max_cos_to_earlier,
    removal_counts,
    removal_curve,
    semdedup,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _reference_max(vectors, assign, cos, keep):
    """The reference's computation, cluster by cluster: full similarity matrix of the sorted
    cluster, diagonal zeroed, upper triangle, column max (facebookresearch/SemDeDup)."""
    out = np.zeros(len(vectors), dtype=np.float32)
    for c in np.unique(assign):
        idx = np.flatnonzero(assign == c)
        dist = 1 - cos[idx]
        # sorted(..., key=dist, reverse=keep_hard): Python's sort is stable
        order = sorted(range(len(idx)), key=lambda i: dist[i], reverse=keep == "far")
        members = idx[order]
        sim = vectors[members] @ vectors[members].T
        np.fill_diagonal(sim, 0.0)
        out[members] = np.triu(sim, k=1).max(axis=0)
    return out


@pytest.fixture(scope="module")
def planted():
    """400 random unit vectors in 64 dims (pairwise cosines below ~0.7) in 5 clusters, plus
    30 near copies (cosine > 0.99 to their original)."""
    rng = np.random.default_rng(0)
    base = _unit(rng.normal(size=(400, 64)))
    src = rng.choice(400, size=30, replace=False)
    copies = _unit(base[src] + 0.05 * rng.normal(size=(30, 64)) / 8)
    x = np.concatenate([base, copies])
    assign = np.concatenate([rng.integers(0, 5, size=400), np.zeros(30, dtype=np.int64)])
    assign[400:] = assign[src]  # a copy sits in its original's cluster
    cos = rng.uniform(0.2, 0.9, size=430).astype(np.float32)
    return x, assign, cos, src


def test_planted_near_duplicates_removed_exactly(planted):
    x, assign, cos, src = planted
    assert (np.einsum("ij,ij->i", x[400:], x[src]) > 0.99).all()
    res = semdedup(x, assign, cos, eps=0.05)
    pairs = {frozenset((int(s), 400 + i)) for i, s in enumerate(src)}
    removed = set(np.flatnonzero(res.removed).tolist())
    assert len(removed) == 30
    # exactly one of each planted pair, and it points to the other one, which is kept
    for p in pairs:
        a, b = sorted(p)
        assert len(p & removed) == 1
        (gone,) = p & removed
        twin = a if gone == b else b
        assert res.ref[gone] == twin and not res.removed[twin]
        assert res.max_cos[gone] > 0.99
    assert (res.ref[~res.removed] == -1).all()
    # which twin goes follows the order: the one nearer the centroid (keep="far")
    for i, s in enumerate(src):
        gone = 400 + i if res.removed[400 + i] else int(s)
        kept = int(s) if gone == 400 + i else 400 + i
        assert (cos[gone], gone) > (cos[kept], kept)
    near = semdedup(x, assign, cos, eps=0.05, keep="near")
    for i, s in enumerate(src):
        gone = 400 + i if near.removed[400 + i] else int(s)
        kept = int(s) if gone == 400 + i else 400 + i
        assert (-cos[gone], gone) > (-cos[kept], kept)


def test_matches_the_reference_computation(planted):
    x, assign, cos, _ = planted
    for keep in ("far", "near"):
        mc, _ = max_cos_to_earlier(x, assign, cos, keep=keep)
        ref = _reference_max(x, assign, cos, keep)
        # the reference's zeroed triangle clips negative maxima to 0
        np.testing.assert_allclose(np.maximum(mc, 0), ref, atol=1e-6)


def test_blocked_equals_one_block(planted):
    x, assign, cos, _ = planted
    full = max_cos_to_earlier(x, assign, cos, block=10_000)
    for block in (1, 7, 64):
        mc, nn = max_cos_to_earlier(x, assign, cos, block=block)
        np.testing.assert_allclose(mc, full[0], atol=1e-6)
        assert (nn == full[1]).all()


def test_chains_resolve_to_a_kept_document():
    """a, b, c in this order with cos(a,b)=0.970, cos(b,c)=0.976, cos(a,c)=0.894: b goes for a;
    c's closest earlier document is b (removed), so c's kept twin is a. The reference rule
    removes c (its max cosine to any earlier document exceeds 0.95) although no KEPT document
    is that close: documented in the module."""
    a, b, c = _unit(np.array([[1, 0, 0], [1, 0.25, 0], [1, 0.5, 0]], dtype=np.float64))
    far = _unit(np.array([0, 0, 1.0]))
    x = np.stack([c, far, a, b])
    cos = np.array([0.1, 0.5, 0.3, 0.2], dtype=np.float32)  # "near": a (0.3), b, c; far first
    res = semdedup(x, np.zeros(4, dtype=np.int64), cos, eps=0.05, keep="near")
    order = cluster_order(np.zeros(4), cos, "near")
    assert order.tolist() == [1, 2, 3, 0]
    assert res.removed.tolist() == [True, False, False, True]
    assert res.ref.tolist() == [2, -1, -1, 2]
    _, nn = max_cos_to_earlier(x, np.zeros(4, dtype=np.int64), cos, keep="near")
    assert nn[0] == 3  # c's nearest earlier document is b ...
    assert abs(float(x[0] @ x[2]) - 0.894) < 1e-3  # ... and a is only 0.894 away


def test_long_chain_and_exact_copies():
    # 50 documents drifting by small steps: each is removed for its predecessor; all point
    # to the first one, which is kept.
    angles = np.linspace(0, 0.5, 50)
    x = _unit(np.stack([np.cos(angles), np.sin(angles)], axis=1))
    cos = np.linspace(0.9, 0.1, 50).astype(np.float32)  # keep="far": last is first
    res = semdedup(x, np.zeros(50, dtype=np.int64), cos, eps=0.01)
    assert res.removed.sum() == 49 and not res.removed[49]
    assert (res.ref[:49] == 49).all()
    # exact copies: all but the first of the order go, whatever eps
    y = np.repeat(_unit(np.ones((1, 8))), 5, axis=0)
    r = semdedup(y, np.zeros(5, dtype=np.int64), np.zeros(5, dtype=np.float32), eps=1e-6)
    assert r.removed.tolist() == [False, True, True, True, True] and (r.ref[1:] == 0).all()


def test_clusters_are_separate():
    # identical vectors in different clusters are never compared
    y = np.repeat(_unit(np.ones((1, 8))), 4, axis=0)
    res = semdedup(y, np.array([0, 1, 2, 3]), np.zeros(4, dtype=np.float32), eps=0.5)
    assert not res.removed.any()
    empty = semdedup(np.zeros((0, 8), np.float32), np.zeros(0, int), np.zeros(0), eps=0.1)
    assert empty.removed.shape == (0,)


def test_removal_curve_one_pass_and_monotone(planted):
    x, assign, cos, _ = planted
    eps_list = [0.0005, 0.001, 0.005, 0.05, 0.1, 0.3, 0.6, 0.7]
    curve = removal_curve(x, assign, cos, eps_list)
    assert curve == sorted(curve) and curve[0] < curve[2] == curve[3] == 30 < curve[-1]
    for e, n in zip(eps_list, curve, strict=True):
        assert semdedup(x, assign, cos, eps=e).removed.sum() == n
        # refs always point to kept documents, at every eps
        r = semdedup(x, assign, cos, eps=e)
        assert not r.removed[r.ref[r.removed]].any()
    mc, nn = max_cos_to_earlier(x, assign, cos)
    assert removal_counts(mc, eps_list) == curve
    assert decide(mc, nn, 0.05).removed.sum() == 30


def test_bad_arguments():
    x = _unit(np.ones((3, 4)))
    with pytest.raises(ValueError, match="eps"):
        semdedup(x, np.zeros(3, int), np.zeros(3), eps=1.5)
    with pytest.raises(ValueError, match="shape"):
        semdedup(x, np.zeros(2, int), np.zeros(3), eps=0.1)
    with pytest.raises(ValueError, match="keep"):
        semdedup(x, np.zeros(3, int), np.zeros(3), eps=0.1, keep="hard")


def test_assignment_is_spherical_kmeans_and_the_same_in_any_block(planted):
    from curamix.embeddings.index import spherical_kmeans

    x = planted[0]
    c, a_km, cos_km = spherical_kmeans(x, 6, niter=10, seed=0, gpu="off")
    a, cos = assign_to_centroids(x, c, block=64)
    assert (a == a_km).all()  # the clusters spherical k-means gives its own training set
    np.testing.assert_allclose(cos, cos_km, atol=1e-6)
    # a row's numbers do not depend on the rows around it; exact copies get equal cosines
    for lo, hi in ((0, 1), (5, 70), (100, 101), (399, 430)):
        a2, cos2 = assign_to_centroids(x[lo:hi], c, block=7)
        assert (a2 == a[lo:hi]).all() and (cos2 == cos[lo:hi]).all()
    twins = np.concatenate([x[:3], x[:3]])
    _, ct = assign_to_centroids(twins, c, block=4)
    assert (ct[:3] == ct[3:]).all()
    assert assign_to_centroids(np.zeros((2, 64)), c)[1].tolist() == [0.0, 0.0]  # zero vector
    with pytest.raises(ValueError, match="same dimension"):
        assign_to_centroids(x, c[:, :10])


def test_kmeans_train_size():
    assert kmeans_train_size(10_000, 10) == 2560  # 256 per cluster, FAISS's most
    assert kmeans_train_size(1000, 10) == 1000  # the whole pool when smaller
    assert kmeans_train_size(10_000, 10, sample=5) == 10  # at least one per cluster
    assert kmeans_train_size(10_000, 10, sample=400) == 400
