"""FAISS indices, the memory gate (host and GPU), the GPU switch, spherical k-means and
k-center greedy. The CPU tests pin ``gpu="off"``; the GPU path has its own tests (marked
``gpu("faiss")``: run where FAISS sees a GPU, deselected elsewhere) and, for the decisions that
need no device, tests that fake one."""

import json

import numpy as np
import pytest

from curamix.config import IndexConfig
from curamix.embeddings import index as ix
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

SCORE_ATOL = 1e-4
"""GPU vs CPU inner products of unit vectors (dim 32), per score: both fp32 (FAISS's GPU
GEMMs disallow reduced-precision reductions), only the summation order differs (worst case
~32 x 6e-8 = 2e-6); a TF32 or fp16 slip (~1e-3) would fail."""
SAME_INDEX_RECALL_MIN = 0.99
"""Top-10 overlap of GPU and CPU searches of the same index: equal sets except for near ties
(on these vectors the 10th and 11th neighbours are >= 6e-5 apart, 30x SCORE_ATOL)."""
TRAINED_RECALL_SLACK = 0.05
"""An IVF / IVF-PQ index trained on the GPU against one trained on the CPU: recall@10 against
the exact neighbours, at most this much lower. Training on the GPU changes the k-means float
order (like another seed); over 8 CPU seeds recall@10 spans 0.03 (IVF ~0.80, IVF-PQ ~0.61
at nprobe 16)."""


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


def _recall(got: np.ndarray, want: np.ndarray) -> float:
    """Mean share of each row of ``want`` (positions) found in the same row of ``got``."""
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want, strict=True)]))


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "ivfpq"])
def test_saved_index_reloads_to_identical_results(vecs, kind, tmp_path):
    cfg = IndexConfig(kind=kind, pq_m=8, nprobe=4, gpu="off")
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
    cpu = IndexConfig(gpu="off")
    vi = VectorIndex.build(vecs[:200], cfg=cpu)
    q = vecs[200:220]
    scores, pos = vi.search(q, 5)
    brute = q @ vecs[:200].T
    np.testing.assert_array_equal(pos, np.argsort(-brute, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(scores, np.sort(brute, axis=1)[:, ::-1][:, :5], atol=1e-5)
    assert vi.ids[:3].tolist() == ["0", "1", "2"]
    small = VectorIndex.build(vecs[:3], cfg=cpu)
    s, p = small.search(vecs[:1], 5)
    assert p[0, 3:].tolist() == [-1, -1] and np.isneginf(s[0, 3:]).all()
    assert small.search(vecs[:0], 2)[1].shape == (0, 2)


def test_ivf_with_every_list_probed_is_exact(vecs):
    vi = VectorIndex.build(vecs, cfg=IndexConfig(kind="ivf", nlist=8, nprobe=8, gpu="off"))
    exact = VectorIndex.build(vecs, cfg=IndexConfig(gpu="off"))
    np.testing.assert_array_equal(vi.search(vecs[:30], 5)[1], exact.search(vecs[:30], 5)[1])
    assert vi.meta["nlist"] == 8 and vi.meta["nprobe"] == 8


def test_default_nlist_and_kind():
    assert default_nlist(1_000_000) == 4000  # 4 sqrt(n)
    assert default_nlist(10_000) == 256  # capped: >= 39 training points per list
    assert default_nlist(10) == 1
    cfg = IndexConfig(flat_max=1000, max_memory_gb=100, gpu="off")
    assert choose_kind(1000, 384, cfg) == "flat"
    assert choose_kind(1001, 384, cfg) == "ivf"
    n = 10_000_000  # IVF needs ~15.4 GB here, IVF-PQ ~0.4 GB
    assert choose_kind(n, 384, cfg.model_copy(update={"max_memory_gb": 5})) == "ivfpq"
    assert choose_kind(5, 384, IndexConfig(kind="hnsw")) == "hnsw"
    flat = estimate_index_bytes(1000, 384, cfg)
    assert flat == 1000 * 384 * 4
    assert estimate_index_bytes(n, 384, cfg.model_copy(update={"kind": "ivfpq"})) < n * 384


def test_memory_gate_refuses_before_allocating(vecs):
    cfg = IndexConfig(kind="flat", max_memory_gb=1e-4, gpu="off")  # 100 kB of host memory
    with pytest.raises(IndexTooLargeError) as err:
        check_fits(1_000_000_000, 384, cfg)  # 1.5 TB: refused without touching memory
    msg = str(err.value)
    assert msg.startswith("a flat index of 1000000000 x 384 vectors needs about 1.54e+03 GB")
    assert "over the limit of 0.0001 GB (index.max_memory_gb=0.0001)" in msg
    assert "use index.kind=ivfpq (about" in msg and "a larger index.max_memory_gb" in msg
    assert isinstance(err.value, MemoryError)
    with pytest.raises(IndexTooLargeError, match=r"an ivfpq index .* use a smaller index.pq_m"):
        check_fits(1_000_000_000, 384, cfg.model_copy(update={"kind": "auto"}))  # -> ivfpq
    with pytest.raises(IndexTooLargeError, match="a flat index of 3000 x 32 vectors"):
        VectorIndex.build(vecs, cfg=cfg.model_copy(update={"max_memory_gb": 1e-5}))
    assert check_fits(3000, 32, IndexConfig(gpu="off")) == 3000 * 32 * 4
    avail = available_memory_bytes()
    with open("/proc/meminfo") as fh:
        kb = next(int(x.split()[1]) for x in fh if x.startswith("MemAvailable:"))
    assert avail > 0 and abs(avail - kb * 1024) < 0.5 * kb * 1024


def test_gpu_on_without_a_gpu_is_a_clear_error(vecs, monkeypatch):
    monkeypatch.setattr(ix, "faiss_gpus", lambda: 0)  # what a faiss-cpu build reports
    with pytest.raises(GPUUnavailableError, match=r"gpu='on' but FAISS sees no GPU"):
        VectorIndex.build(vecs, cfg=IndexConfig(gpu="on"))
    with pytest.raises(GPUUnavailableError):
        spherical_kmeans(vecs, 4, gpu="on")
    assert not VectorIndex.build(vecs[:10], cfg=IndexConfig(gpu="auto")).on_gpu
    assert ix.gpu_setting("auto") == "off" and ix.gpu_setting("on") == "on"  # keys: no raise


def _fake_gpu(monkeypatch, free: int, total: int = 80 * 10**9) -> list[str]:
    """FAISS sees a GPU with ``free`` bytes free; host memory must not be asked. Returns the
    log of the memory readings taken."""
    calls: list[str] = []

    def gpu_memory(device: int = 0) -> tuple[int, int]:
        calls.append(f"gpu{device}")
        return free, total

    def host_memory() -> int:
        raise AssertionError("host memory consulted for a GPU index")

    monkeypatch.setattr(ix, "faiss_gpus", lambda: 1)
    monkeypatch.setattr(ix, "gpu_memory_bytes", gpu_memory)
    monkeypatch.setattr(ix, "available_memory_bytes", host_memory)
    monkeypatch.setattr(ix, "_GPU_RES", [])  # no FAISS resources yet: scratch still to come
    return calls


def test_gpu_index_checks_gpu_memory_not_host_memory(vecs, monkeypatch):
    free = 3 * 10**9  # 80% = 2.4 GB, less 1.5 GiB of FAISS scratch = ~0.79 GB usable
    usable = int(0.8 * free) - 3 * 2**29
    calls = _fake_gpu(monkeypatch, free)
    flat = IndexConfig(kind="flat")
    fits = usable // (4 * 384)
    assert check_fits(fits, 384, flat) == fits * 384 * 4 and calls == ["gpu0"]
    with pytest.raises(IndexTooLargeError) as err:
        check_fits(fits + 1, 384, flat)
    msg = str(err.value)
    need = (fits + 1) * 384 * 4
    assert msg.startswith(f"a flat index of {fits + 1} x 384 vectors needs about ")
    assert f"({need:,} bytes) of GPU memory, over the limit of" in msg
    assert "(3,000,000,000 bytes) free on GPU 0, less 1.61 GB of FAISS scratch memory" in msg
    assert "use index.gpu=off to build it in host memory" in msg
    assert "max_memory_gb" not in msg  # not the limit here, so not a remedy
    # The kind that auto picks follows the GPU's room: for 500k vectors IVF (~1.05 GB) does
    # not fit, IVF-PQ (~0.58 GB) does; the same config on the host (100 GB) keeps IVF.
    auto = IndexConfig(flat_max=1000, max_memory_gb=100)
    assert choose_kind(500_000, 384, auto) == "ivfpq"
    assert check_fits(500_000, 384, auto) == estimate_index_bytes(500_000, 384, auto)
    assert choose_kind(500_000, 384, auto, gpu=False) == "ivf"
    # index.max_memory_gb still caps a GPU index, and then it is the named limit.
    with pytest.raises(
        IndexTooLargeError, match=r"limit of 1e-06 GB \(index.max_memory_gb=1e-06\)"
    ):
        check_fits(1000, 384, IndexConfig(kind="flat", max_memory_gb=1e-6))
    # The build refuses before anything reaches the GPU.
    monkeypatch.setattr(ix, "_to_gpu", lambda index: pytest.fail("moved to the GPU"))
    big = IndexConfig(kind="flat", max_memory_gb=1e-6)
    with pytest.raises(IndexTooLargeError, match="of GPU memory"):
        VectorIndex.build(vecs, cfg=big)
    # FAISS's resources, once created, are already out of the free memory: no scratch again.
    monkeypatch.setattr(ix, "_GPU_RES", [object()])
    assert ix.memory_budget(flat, gpu=True).limit == int(0.8 * free)


def test_cpu_and_hnsw_indices_check_host_memory_even_with_a_gpu(vecs, monkeypatch):
    _fake_gpu(monkeypatch, free=0)  # a full GPU: anything that asked it would be refused
    monkeypatch.setattr(ix, "available_memory_bytes", lambda: 10**12)
    assert check_fits(3000, 32, IndexConfig(gpu="off")) == 3000 * 32 * 4
    assert check_fits(3000, 32, IndexConfig(kind="hnsw")) > 3000 * 32 * 4  # never on the GPU
    with pytest.raises(IndexTooLargeError, match="of GPU memory"):
        check_fits(3000, 32, IndexConfig())  # auto: FAISS sees the (full) GPU


def test_free_gpu_memory_unknown(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"cannot tell the free GPU memory.*index.gpu=off"):
        ix.gpu_memory_bytes()
    monkeypatch.setattr(ix, "faiss_gpus", lambda: 1)  # faiss-gpu next to a CPU build of torch
    with pytest.raises(RuntimeError, match="cannot tell the free GPU memory"):
        check_fits(10, 32, IndexConfig(kind="flat"))
    # An explicit ceiling is enough to go on with.
    assert check_fits(10, 32, IndexConfig(kind="flat", max_memory_gb=1)) == 10 * 32 * 4


def test_build_errors_name_the_setting(vecs):
    with pytest.raises(ValueError, match="pq_m=5 must divide the dimension 32"):
        VectorIndex.build(vecs, cfg=IndexConfig(kind="ivfpq", pq_m=5))
    with pytest.raises(ValueError, match="needs at least 256 vectors"):
        VectorIndex.build(vecs[:100], cfg=IndexConfig(kind="ivfpq", pq_m=8))
    with pytest.raises(ValueError, match="nlist=50 needs at least 50 vectors"):
        VectorIndex.build(vecs[:20], cfg=IndexConfig(kind="ivf", nlist=50))
    with pytest.raises(ValueError, match="2 ids for 3 vectors"):
        VectorIndex.build(vecs[:3], ["a", "b"])


@pytest.mark.parametrize("gpu", ["off", pytest.param("on", marks=pytest.mark.gpu("faiss"))])
def test_spherical_kmeans_fixed_point_and_determinism(gpu):
    """The same properties, and bit-for-bit determinism, on each device."""
    x, labels = _clusters(k=8, per=60)
    c, a, cos = spherical_kmeans(x, 4, niter=20, seed=3, gpu=gpu)
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
    c2, a2, cos2 = spherical_kmeans(x, 4, niter=20, seed=3, gpu=gpu)
    np.testing.assert_array_equal(c, c2)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(cos, cos2)
    _, a8, _ = spherical_kmeans(x, 8, niter=20, seed=3, gpu=gpu)
    assert a8.max() < 8 and (np.bincount(a8, minlength=8) > 0).all()
    with pytest.raises(ValueError, match=r"k must be between 1 and the number of vectors \(480\)"):
        spherical_kmeans(x, 481, gpu=gpu)


@pytest.mark.gpu("faiss")
def test_spherical_kmeans_on_the_gpu_agrees_with_the_cpu():
    """The seeded initialisation is drawn on the host and the centroids are updated there, so
    only the assignment search runs on the GPU: on well separated clusters (the best and the
    second-best centroid are >= 0.17 apart in cosine at the end) both devices take the same
    path."""
    x, _ = _clusters(k=8, per=60)
    c_cpu, a_cpu, cos_cpu = spherical_kmeans(x, 4, niter=20, seed=3, gpu="off")
    c_gpu, a_gpu, cos_gpu = spherical_kmeans(x, 4, niter=20, seed=3, gpu="on")
    np.testing.assert_array_equal(a_gpu, a_cpu)
    np.testing.assert_allclose(c_gpu, c_cpu, rtol=0, atol=SCORE_ATOL)
    np.testing.assert_allclose(cos_gpu, cos_cpu, rtol=0, atol=SCORE_ATOL)


def _exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


@pytest.mark.gpu("faiss")
@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq"])
def test_gpu_search_of_a_cpu_index_agrees(vecs, kind, tmp_path):
    """One index (trained on the CPU), searched on the CPU and, loaded onto the GPU, there:
    the same neighbours up to near ties, the same scores within SCORE_ATOL; the GPU search is
    deterministic."""
    cpu = VectorIndex.build(vecs, cfg=IndexConfig(kind=kind, pq_m=8, nprobe=16, gpu="off"), seed=1)
    cpu.save(tmp_path / "ix")
    gpu = VectorIndex.load(tmp_path / "ix", gpu="on")
    assert gpu.on_gpu and not cpu.on_gpu and (gpu.kind, gpu.ntotal) == (kind, 3000)
    q = vecs[:200]
    s_cpu, p_cpu = cpu.search(q, 10)
    s_gpu, p_gpu = gpu.search(q, 10)
    assert _recall(p_gpu, p_cpu) >= SAME_INDEX_RECALL_MIN
    np.testing.assert_allclose(s_gpu, s_cpu, rtol=0, atol=SCORE_ATOL)
    s2, p2 = gpu.search(q, 10)  # deterministic on the GPU: the same search, bit for bit
    np.testing.assert_array_equal(p2, p_gpu)
    np.testing.assert_array_equal(s2, s_gpu)
    if kind == "flat":  # exact on the GPU too
        assert _recall(p_gpu, _exact_top(vecs, q, 10)) >= SAME_INDEX_RECALL_MIN
        brute = -np.sort(-(q @ vecs.T), axis=1)[:, :10]
        np.testing.assert_allclose(s_gpu, brute, rtol=0, atol=SCORE_ATOL)


@pytest.mark.gpu("faiss")
@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq"])
def test_index_built_on_the_gpu_matches_the_cpu_build(vecs, kind, tmp_path):
    """Built (trained and filled) on the GPU: the same settings as a CPU build, each vector
    finds itself first as on the CPU, recall within TRAINED_RECALL_SLACK of the CPU build's;
    saved in CPU form, it answers the same on the CPU."""
    cfg = IndexConfig(kind=kind, pq_m=8, nprobe=16)
    gpu = VectorIndex.build(vecs, cfg=cfg.model_copy(update={"gpu": "on"}), seed=1)
    cpu = VectorIndex.build(vecs, cfg=cfg.model_copy(update={"gpu": "off"}), seed=1)
    assert gpu.on_gpu and not cpu.on_gpu and gpu.meta == cpu.meta  # nlist, nprobe, n_train
    assert "gpu" in repr(gpu)
    q = vecs[:200]
    exact = _exact_top(vecs, q, 10)
    s_gpu, p_gpu = gpu.search(q, 10)
    hit = (p_gpu[:, 0] == np.arange(200)).mean()
    assert hit == 1.0 if kind != "ivfpq" else hit >= 0.8
    if kind == "flat":
        assert _recall(p_gpu, exact) >= SAME_INDEX_RECALL_MIN
    else:
        want = _recall(cpu.search(q, 10)[1], exact) - TRAINED_RECALL_SLACK
        assert _recall(p_gpu, exact) >= want
    gpu.save(tmp_path / "ix")
    back = VectorIndex.load(tmp_path / "ix")
    assert not back.on_gpu and back.kind == kind and back.meta == gpu.meta
    s_back, p_back = back.search(q, 10)
    assert _recall(p_back, p_gpu) >= SAME_INDEX_RECALL_MIN
    np.testing.assert_allclose(s_back, s_gpu, rtol=0, atol=SCORE_ATOL)


@pytest.mark.gpu("faiss")
def test_gpu_memory_is_read_and_gates_a_real_gpu_build(vecs):
    free, total = ix.gpu_memory_bytes()
    assert 0 < free <= total
    budget = ix.memory_budget(IndexConfig(), gpu=True)
    assert budget.on_gpu and 0 < budget.limit < free and "free on GPU 0" in budget.source
    # auto on a machine where FAISS sees the GPU: the GPU's budget, and the index goes there
    assert VectorIndex.build(vecs, cfg=IndexConfig()).on_gpu
    with pytest.raises(IndexTooLargeError, match="of GPU memory"):
        check_fits(free, 1024, IndexConfig(kind="flat"))  # 4 KB x free bytes: never fits


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
