"""FAISS indices, the memory gate, the GPU switch, spherical k-means and k-center greedy."""

import json

import numpy as np
import pytest

from curamix.config import IndexConfig
from curamix.embeddings.index import (
    GPUUnavailableError,
    IndexTooLargeError,
    VectorIndex,
    available_memory_bytes,
    check_fits,
    choose_kind,
    default_nlist,
    estimate_index_bytes,
    kcenter_greedy,
    spherical_kmeans,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def vecs() -> np.ndarray:
    return _unit(np.random.default_rng(0).standard_normal((3000, 32)))


def _clusters(k: int, per: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``k`` tight, well separated clusters of unit vectors, and the true labels."""
    rng = np.random.default_rng(seed)
    centers = _unit(rng.standard_normal((k, dim)))
    labels = np.repeat(np.arange(k), per)
    x = centers[labels] + 0.02 * rng.standard_normal((k * per, dim))
    return _unit(x), labels


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "ivfpq"])
def test_saved_index_reloads_to_identical_results(vecs, kind, tmp_path):
    cfg = IndexConfig(kind=kind, pq_m=8, nprobe=4)
    ids = [f"d{k}" for k in range(len(vecs))]
    vi = VectorIndex.build(vecs, ids, cfg=cfg, seed=1)
    assert (vi.kind, vi.ntotal, vi.dim, vi.on_gpu) == (kind, 3000, 32, False)
    scores, pos = vi.search(vecs[:50], 10)
    assert scores.dtype == np.float32 and pos.dtype == np.int64 and pos.shape == (50, 10)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    # Each vector finds itself first (exact for flat; the approximate kinds get nearly all).
    hit = (pos[:, 0] == np.arange(50)).mean()
    assert hit == 1.0 if kind != "ivfpq" else hit >= 0.8
    folder = tmp_path / "ix"
    vi.save(folder)
    vi.save(folder)  # replacing an existing folder works, and leaves no temporary folders
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]
    assert sorted(p.name for p in folder.iterdir()) == ["ids.parquet", "index.faiss", "meta.json"]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["kind"] == kind and meta["ntotal"] == 3000
    back = VectorIndex.load(folder)
    assert back.kind == kind and back.ids.tolist() == ids
    s2, p2 = back.search(vecs[:50], 10)
    np.testing.assert_array_equal(p2, pos)
    np.testing.assert_array_equal(s2, scores)


def test_flat_is_exact_and_missing_neighbours_are_marked(vecs):
    vi = VectorIndex.build(vecs[:200])
    q = vecs[200:220]
    scores, pos = vi.search(q, 5)
    brute = q @ vecs[:200].T
    np.testing.assert_array_equal(pos, np.argsort(-brute, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(scores, np.sort(brute, axis=1)[:, ::-1][:, :5], atol=1e-5)
    assert vi.ids[:3].tolist() == ["0", "1", "2"]
    small = VectorIndex.build(vecs[:3])
    s, p = small.search(vecs[:1], 5)
    assert p[0, 3:].tolist() == [-1, -1] and np.isneginf(s[0, 3:]).all()
    assert small.search(vecs[:0], 2)[1].shape == (0, 2)


def test_ivf_with_every_list_probed_is_exact(vecs):
    vi = VectorIndex.build(vecs, cfg=IndexConfig(kind="ivf", nlist=8, nprobe=8))
    exact = VectorIndex.build(vecs)
    np.testing.assert_array_equal(vi.search(vecs[:30], 5)[1], exact.search(vecs[:30], 5)[1])
    assert vi.meta["nlist"] == 8 and vi.meta["nprobe"] == 8


def test_default_nlist_and_kind():
    assert default_nlist(1_000_000) == 4000  # 4 sqrt(n)
    assert default_nlist(10_000) == 256  # capped: >= 39 training points per list
    assert default_nlist(10) == 1
    cfg = IndexConfig(flat_max=1000, max_memory_gb=100)
    assert choose_kind(1000, 384, cfg) == "flat"
    assert choose_kind(1001, 384, cfg) == "ivf"
    n = 10_000_000  # IVF needs ~15.4 GB here, IVF-PQ ~0.4 GB
    assert choose_kind(n, 384, cfg.model_copy(update={"max_memory_gb": 5})) == "ivfpq"
    assert choose_kind(5, 384, IndexConfig(kind="hnsw")) == "hnsw"
    flat = estimate_index_bytes(1000, 384, cfg)
    assert flat == 1000 * 384 * 4
    assert estimate_index_bytes(n, 384, cfg.model_copy(update={"kind": "ivfpq"})) < n * 384


def test_memory_gate_refuses_before_allocating(vecs):
    cfg = IndexConfig(kind="flat", max_memory_gb=1e-4)  # 100 kB
    with pytest.raises(IndexTooLargeError) as err:
        check_fits(1_000_000_000, 384, cfg)  # 1.5 TB: refused without touching memory
    msg = str(err.value)
    assert msg.startswith("a flat index of 1000000000 x 384 vectors needs about 1.54e+03 GB")
    assert "over the limit of 0.0001 GB (index.max_memory_gb=0.0001)" in msg
    assert "use index.kind=ivfpq (about" in msg and "a larger index.max_memory_gb" in msg
    assert isinstance(err.value, MemoryError)
    with pytest.raises(IndexTooLargeError, match=r"an ivfpq index .* use a smaller index.pq_m"):
        check_fits(1_000_000_000, 384, IndexConfig(max_memory_gb=1e-4))  # auto falls to ivfpq
    with pytest.raises(IndexTooLargeError, match="a flat index of 3000 x 32 vectors"):
        VectorIndex.build(vecs, cfg=IndexConfig(max_memory_gb=1e-5))
    assert check_fits(3000, 32, IndexConfig()) == 3000 * 32 * 4
    avail = available_memory_bytes()
    with open("/proc/meminfo") as fh:
        kb = next(int(x.split()[1]) for x in fh if x.startswith("MemAvailable:"))
    assert avail > 0 and abs(avail - kb * 1024) < 0.5 * kb * 1024


def test_gpu_on_without_a_gpu_is_a_clear_error(vecs):
    import faiss

    if faiss.get_num_gpus() > 0:
        pytest.fail("this test expects a machine without a GPU visible to FAISS")
    with pytest.raises(GPUUnavailableError, match=r"gpu='on' but FAISS sees no GPU"):
        VectorIndex.build(vecs, cfg=IndexConfig(gpu="on"))
    with pytest.raises(GPUUnavailableError):
        spherical_kmeans(vecs, 4, gpu="on")
    assert not VectorIndex.build(vecs[:10], cfg=IndexConfig(gpu="auto")).on_gpu


def test_build_errors_name_the_setting(vecs):
    with pytest.raises(ValueError, match="pq_m=5 must divide the dimension 32"):
        VectorIndex.build(vecs, cfg=IndexConfig(kind="ivfpq", pq_m=5))
    with pytest.raises(ValueError, match="needs at least 256 vectors"):
        VectorIndex.build(vecs[:100], cfg=IndexConfig(kind="ivfpq", pq_m=8))
    with pytest.raises(ValueError, match="nlist=50 needs at least 50 vectors"):
        VectorIndex.build(vecs[:20], cfg=IndexConfig(kind="ivf", nlist=50))
    with pytest.raises(ValueError, match="2 ids for 3 vectors"):
        VectorIndex.build(vecs[:3], ["a", "b"])


def test_spherical_kmeans_fixed_point_and_determinism():
    x, labels = _clusters(k=8, per=60)
    c, a, cos = spherical_kmeans(x, 4, niter=20, seed=3)
    assert c.shape == (4, 16) and a.dtype == np.int64 and cos.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-5)
    # Each point goes to its most similar centroid, and cos is that similarity.
    np.testing.assert_array_equal(a, np.argmax(x @ c.T, axis=1))
    np.testing.assert_allclose(cos, np.einsum("ij,ij->i", x, c[a]), atol=1e-5)
    # Converged Lloyd: each centroid is the normalized mean of its members, none is empty.
    assert sorted(set(a.tolist())) == [0, 1, 2, 3]
    for j in range(4):
        m = x[a == j].mean(0)
        np.testing.assert_allclose(c[j], m / np.linalg.norm(m), atol=1e-4)
    # Tight, well separated clusters are never split between centroids.
    assert all(len(set(a[labels == t].tolist())) == 1 for t in range(8))
    c2, a2, cos2 = spherical_kmeans(x, 4, niter=20, seed=3)
    np.testing.assert_array_equal(c, c2)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(cos, cos2)
    _, a8, _ = spherical_kmeans(x, 8, niter=20, seed=3)
    assert a8.max() < 8 and (np.bincount(a8, minlength=8) > 0).all()
    with pytest.raises(ValueError, match=r"k must be between 1 and the number of vectors \(480\)"):
        spherical_kmeans(x, 481)


def _naive_kcenter(x: np.ndarray, k: int, start: int) -> list[int]:
    chosen = [start]
    while len(chosen) < k:
        d = ((x[:, None, :] - x[None, chosen, :]) ** 2).sum(-1).min(1)
        d[chosen] = -1
        chosen.append(int(np.argmax(d)))
    return chosen


def test_kcenter_greedy_matches_the_definition_and_covers_clusters(vecs):
    x, labels = _clusters(k=10, per=30)
    sel = kcenter_greedy(x, 10, seed=5)
    assert sel.dtype == np.int64 and len(set(sel.tolist())) == 10
    assert sorted(labels[sel].tolist()) == list(range(10))  # one point per cluster first
    np.testing.assert_array_equal(sel, kcenter_greedy(x, 10, seed=5))  # deterministic
    assert kcenter_greedy(x, 1, seed=6)[0] != sel[0] or kcenter_greedy(x, 1, seed=7)[0] != sel[0]
    small = vecs[:300].astype(np.float64)
    got = kcenter_greedy(small, 25, start=17)
    assert got.tolist() == _naive_kcenter(small, 25, 17)
    assert got[0] == 17


def test_kcenter_greedy_with_duplicates_and_errors():
    x = np.repeat(np.eye(3, dtype=np.float32), 2, axis=0)  # each point twice
    sel = kcenter_greedy(x, 6, start=0)
    assert sorted(sel.tolist()) == list(range(6))  # never the same point twice
    assert sorted((x[sel[:3]] @ np.arange(3)).tolist()) == [0, 1, 2]  # distinct points first
    with pytest.raises(ValueError, match="k must be between 1"):
        kcenter_greedy(x, 7)
    with pytest.raises(ValueError, match="start must be a position"):
        kcenter_greedy(x, 2, start=6)
