"""FAISS indices over embeddings, spherical k-means and k-center greedy.

All the FAISS use of curamix goes through this module (Johnson, Douze & Jégou 2019,
"Billion-scale similarity search with GPUs", arXiv:1702.08734):

- :class:`VectorIndex`: Flat (exact inner product), IVF-Flat, IVF-PQ or HNSW (Malkov &
  Yashunin 2018, arXiv:1603.09320) over float32 vectors, with string ids, saved as
  ``faiss.write_index`` + Parquet ids + JSON meta (no pickle), on the GPU when FAISS sees one.
- :func:`check_fits`: the index's memory estimate against a ceiling, checked before anything
  is allocated.
- :func:`spherical_kmeans`: ``faiss.Kmeans(spherical=True)``, the clustering of SemDeDup
  (Abbas et al. 2023, arXiv:2303.09540) and SSL prototypes (Sorscher et al. 2022,
  arXiv:2206.14486).
- :func:`kcenter_greedy`: the coverage coreset of Sener & Savarese 2018 (arXiv:1708.00489).

faiss is imported inside the functions that need it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from curamix.config import IndexConfig

if TYPE_CHECKING:
    import faiss

KINDS = ("flat", "ivf", "ivfpq", "hnsw")
MIN_POINTS_PER_LIST = 39
"""FAISS warns below 39 training points per centroid; the default ``nlist`` respects it."""
TRAIN_POINTS_PER_LIST = 64
MIN_TRAIN_POINTS = 1 << 14
PQ_NBITS = 8
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 64
MEMORY_SHARE = 0.8
"""Default ceiling: this share of the available memory."""
INDEX_FILE, IDS_FILE, META_FILE = "index.faiss", "ids.parquet", "meta.json"


class IndexTooLargeError(MemoryError):
    """An index whose estimated size exceeds the memory ceiling; nothing was allocated."""


class GPUUnavailableError(RuntimeError):
    """``gpu: on`` was asked for and FAISS sees no GPU."""


# --- memory -----------------------------------------------------------------------------------


def available_memory_bytes() -> int:
    """Available memory: psutil when importable, else ``MemAvailable`` of /proc/meminfo."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    raise RuntimeError(
        "cannot tell the available memory (no psutil, no /proc/meminfo); set index.max_memory_gb"
    )


def memory_limit_bytes(cfg: IndexConfig) -> int:
    """``cfg.max_memory_gb`` (GB = 1e9 bytes), else 80% of the available memory."""
    if cfg.max_memory_gb is not None:
        return int(cfg.max_memory_gb * 1e9)
    return int(MEMORY_SHARE * available_memory_bytes())


def default_nlist(n: int) -> int:
    """IVF lists: ~4 sqrt(n), capped so each list gets >= 39 training points (at least 1)."""
    return max(1, min(round(4 * math.sqrt(max(n, 1))), n // MIN_POINTS_PER_LIST))


def train_size(n: int, nlist: int) -> int:
    """IVF training vectors: 64 per list (at least 16,384, for the PQ codebooks), at most n."""
    return min(n, max(TRAIN_POINTS_PER_LIST * nlist, MIN_TRAIN_POINTS))


def _nlist(n: int, cfg: IndexConfig) -> int:
    return cfg.nlist if cfg.nlist is not None else default_nlist(n)


def _bytes_for(kind: str, n: int, dim: int, cfg: IndexConfig) -> int:
    vec = 4 * dim
    if kind == "flat":
        return n * vec
    if kind == "hnsw":
        # vectors + level-0 links (2M) + upper levels (~M / (M - 1) more on average)
        return n * vec + int(n * cfg.hnsw_m * 2 * 4 * 1.1) + n * 8
    nlist = _nlist(n, cfg)
    n_train = train_size(n, nlist)
    train = n_train * vec if n_train < n else 0  # the training sample's copy
    if kind == "ivf":
        return n * (vec + 8) + nlist * vec + train
    if kind == "ivfpq":
        codebooks = (1 << PQ_NBITS) * vec
        residuals = n_train * vec  # IVF-PQ trains its codebooks on residuals
        return n * (cfg.pq_m * PQ_NBITS // 8 + 8) + nlist * vec + codebooks + train + residuals
    raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")


def choose_kind(n: int, dim: int, cfg: IndexConfig) -> str:
    """The index kind for ``n`` vectors: ``cfg.kind``, or for ``auto`` Flat up to
    ``cfg.flat_max`` vectors, IVF above, IVF-PQ when IVF would not fit the memory ceiling."""
    if cfg.kind != "auto":
        return cfg.kind
    if n <= cfg.flat_max:
        return "flat"
    if _bytes_for("ivf", n, dim, cfg) <= memory_limit_bytes(cfg) or dim % cfg.pq_m:
        return "ivf"
    return "ivfpq"


def estimate_index_bytes(n: int, dim: int, cfg: IndexConfig) -> int:
    """Estimated host memory of the index :func:`choose_kind` picks (vectors or codes, ids,
    links, centroids, the training sample copy)."""
    return _bytes_for(choose_kind(n, dim, cfg), n, dim, cfg)


def _gb(b: float) -> str:
    return f"{b / 1e9:.3g} GB"


def check_fits(n: int, dim: int, cfg: IndexConfig) -> int:
    """The estimate in bytes; raises :class:`IndexTooLargeError` (before any allocation) when
    it exceeds ``cfg.max_memory_gb`` or 80% of the available memory."""
    kind = choose_kind(n, dim, cfg)
    need = _bytes_for(kind, n, dim, cfg)
    limit = memory_limit_bytes(cfg)
    if need > limit:
        source = (
            f"index.max_memory_gb={cfg.max_memory_gb}"
            if cfg.max_memory_gb is not None
            else f"{MEMORY_SHARE:.0%} of the {_gb(available_memory_bytes())} available"
        )
        hint = []
        if kind != "ivfpq":
            pq = _bytes_for("ivfpq", n, dim, cfg) if dim % cfg.pq_m == 0 else None
            hint.append("index.kind=ivfpq" + (f" (about {_gb(pq)})" if pq is not None else ""))
        else:
            hint.append("a smaller index.pq_m")
        hint += ["a larger index.max_memory_gb", "embed.sample to embed fewer documents"]
        raise IndexTooLargeError(
            f"{'an' if kind.startswith('i') else 'a'} {kind} index of {n} x {dim} vectors needs about {_gb(need)}, over the limit of "
            f"{_gb(limit)} ({source}); use " + ", or ".join(hint)
        )
    return need


# --- GPU --------------------------------------------------------------------------------------


def faiss_gpus() -> int:
    """GPUs FAISS can use (0 for a faiss-cpu build)."""
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    if get is None or not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(get())


def use_gpu(gpu: str | bool) -> bool:
    """``auto``: whether FAISS sees a GPU; ``on``/True: it must; ``off``/False: never."""
    if gpu is True or gpu == "on":
        if faiss_gpus() == 0:
            raise GPUUnavailableError(
                "gpu='on' but FAISS sees no GPU (a faiss-cpu build, or no CUDA device); "
                "use gpu='auto' or 'off'"
            )
        return True
    if gpu is False or gpu == "off":
        return False
    if gpu == "auto":
        return faiss_gpus() > 0
    raise ValueError(f"gpu must be 'auto', 'on' or 'off', got {gpu!r}")


_GPU_RES: list[Any] = []


def _to_gpu(index: faiss.Index) -> faiss.Index:
    import faiss

    if not _GPU_RES:
        _GPU_RES.append(faiss.StandardGpuResources())
    return faiss.index_cpu_to_gpu(_GPU_RES[0], 0, index)


# --- the index --------------------------------------------------------------------------------


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array (n, dim), got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


class VectorIndex:
    """A FAISS index over float32 vectors with string ids.

    Build with :meth:`build`; ``search`` returns scores (inner product for ``metric='ip'``,
    squared L2 for ``'l2'``) and positions into the build order. Attributes: ``ids``,
    ``kind``, ``metric``, ``ntotal``, ``dim``, ``on_gpu``.
    """

    def __init__(
        self,
        index: faiss.Index,
        ids: np.ndarray,
        kind: str,
        metric: str,
        on_gpu: bool = False,
        meta: dict[str, Any] | None = None,
    ):
        self.index = index
        self.ids = ids
        self.kind = kind
        self.metric = metric
        self.on_gpu = on_gpu
        self.meta = dict(meta or {})

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __repr__(self) -> str:
        where = "gpu" if self.on_gpu else "cpu"
        return f"VectorIndex(kind={self.kind!r}, ntotal={self.ntotal}, dim={self.dim}, {where})"

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: Sequence[str] | None = None,
        cfg: IndexConfig | None = None,
        metric: str = "ip",
        seed: int = 0,
    ) -> VectorIndex:
        """Build an index of ``vectors`` (n, dim); ``ids`` default to the positions as strings.

        The memory estimate is checked first (:func:`check_fits`). IVF trains on the vectors
        with ``seed``; ``nlist`` defaults to :func:`default_nlist`. IVF-PQ needs ``pq_m`` to
        divide ``dim`` and at least 256 vectors. HNSW: ``M = hnsw_m``, efConstruction 80.
        """
        import faiss

        cfg = cfg or IndexConfig()
        x = _as_matrix(vectors, "vectors")
        n, dim = x.shape
        if dim == 0:
            raise ValueError("vectors have dimension 0")
        if metric not in ("ip", "l2"):
            raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}")
        ids_arr = (
            np.arange(n).astype(str)
            if ids is None
            else np.asarray([str(i) for i in ids], dtype=str)
        )
        if len(ids_arr) != n:
            raise ValueError(f"got {len(ids_arr)} ids for {n} vectors")
        check_fits(n, dim, cfg)
        kind = choose_kind(n, dim, cfg)
        gpu = use_gpu(cfg.gpu)
        if kind == "hnsw" and gpu:
            if cfg.gpu == "on":
                raise GPUUnavailableError(
                    "index.kind=hnsw has no FAISS GPU version; use gpu='auto' or 'off', or "
                    "kind flat/ivf/ivfpq"
                )
            gpu = False
        mt = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        meta: dict[str, Any] = {"seed": seed}
        if kind == "flat":
            index = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, mt)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            index.hnsw.efSearch = HNSW_EF_SEARCH
            meta.update(hnsw_m=cfg.hnsw_m, ef_search=HNSW_EF_SEARCH)
        else:
            nlist = _nlist(n, cfg)
            if n < nlist:
                raise ValueError(
                    f"an {kind} index with nlist={nlist} needs at least {nlist} vectors to "
                    f"train, got {n}; lower index.nlist or use index.kind=flat"
                )
            quantizer = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
            if kind == "ivf":
                index = faiss.IndexIVFFlat(quantizer, dim, nlist, mt)
            else:
                if dim % cfg.pq_m:
                    raise ValueError(
                        f"index.pq_m={cfg.pq_m} must divide the dimension {dim} for ivfpq"
                    )
                if n < (1 << PQ_NBITS):
                    raise ValueError(
                        f"an ivfpq index needs at least {1 << PQ_NBITS} vectors to train its "
                        f"codebooks, got {n}; use index.kind=flat or ivf"
                    )
                index = faiss.IndexIVFPQ(quantizer, dim, nlist, cfg.pq_m, PQ_NBITS, mt)
                index.pq.cp.seed = seed
            index.cp.seed = seed
            index.nprobe = min(cfg.nprobe, nlist)
            index.own_fields = True  # keep the quantizer alive with the index
            quantizer.this.disown()
            meta.update(nlist=nlist, nprobe=int(index.nprobe))
        if gpu:
            index = _to_gpu(index)
            if kind in ("ivf", "ivfpq"):
                index.nprobe = meta["nprobe"]
        if kind in ("ivf", "ivfpq") and n:
            n_train = train_size(n, meta["nlist"])
            if n_train < n:  # a seeded sample, in position order
                rng = np.random.default_rng(seed)
                sample = np.sort(rng.choice(n, size=n_train, replace=False))
                index.train(x[sample])
            else:
                index.train(x)
            meta["n_train"] = n_train
        if n:
            index.add(x)
        return cls(index, ids_arr, kind, metric, on_gpu=gpu, meta=meta)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best vectors for each query: ``(scores float32 (m, k), positions int64
        (m, k))``, best first; position -1 (score -inf for ip, +inf for l2) where fewer than
        ``k`` are found."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = _as_matrix(queries, "queries")
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {q.shape[1]}, the index {self.dim}")
        if q.shape[0] == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(HNSW_EF_SEARCH, k)
        scores, pos = self.index.search(q, k)
        scores = np.asarray(scores, dtype=np.float32)
        pos = np.asarray(pos, dtype=np.int64)
        missing = pos < 0
        if missing.any():
            scores[missing] = -np.inf if self.metric == "ip" else np.inf
        return scores, pos

    def cpu_index(self) -> faiss.Index:
        """The index on the host (a copy when it lives on the GPU)."""
        import faiss

        return faiss.index_gpu_to_cpu(self.index) if self.on_gpu else self.index

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``index.faiss``, ``ids.parquet`` and ``meta.json`` to ``folder`` atomically
        (a temporary sibling folder renamed into place; an existing folder is replaced)."""
        import faiss
        import pyarrow as pa
        import pyarrow.parquet as pq

        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            faiss.write_index(self.cpu_index(), str(tmp / INDEX_FILE))
            pq.write_table(
                pa.table({"id": pa.array(self.ids.tolist(), pa.string())}), tmp / IDS_FILE
            )
            meta = {
                "kind": self.kind,
                "metric": self.metric,
                "dim": self.dim,
                "ntotal": self.ntotal,
                "faiss_version": faiss.__version__,
                **self.meta,
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            old = None
            if folder.exists():
                old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(folder, old)
            os.replace(tmp, folder)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, gpu: str | bool = "off") -> VectorIndex:
        """An index written by :meth:`save` (on the host unless ``gpu`` says otherwise)."""
        import faiss
        import pyarrow.parquet as pq

        folder = Path(folder)
        for name in (INDEX_FILE, IDS_FILE, META_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} is not a saved VectorIndex: no {name}")
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        index = faiss.read_index(str(folder / INDEX_FILE))
        ids = np.asarray(pq.read_table(folder / IDS_FILE)["id"].to_pylist(), dtype=str)
        if len(ids) != index.ntotal:
            raise ValueError(f"{folder}: {len(ids)} ids for an index of {index.ntotal} vectors")
        kind, metric = meta.pop("kind"), meta.pop("metric")
        for k in ("dim", "ntotal", "faiss_version"):
            meta.pop(k, None)
        if kind in ("ivf", "ivfpq") and "nprobe" in meta:
            index.nprobe = int(meta["nprobe"])
        if kind == "hnsw":
            index.hnsw.efSearch = int(meta.get("ef_search", HNSW_EF_SEARCH))
        on_gpu = kind != "hnsw" and use_gpu(gpu)
        if on_gpu:
            index = _to_gpu(index)
            if "nprobe" in meta:
                index.nprobe = int(meta["nprobe"])
        return cls(index, ids, kind, metric, on_gpu=on_gpu, meta=meta)


# --- clustering and coverage ------------------------------------------------------------------


def spherical_kmeans(
    vectors: np.ndarray, k: int, niter: int = 20, seed: int = 0, gpu: str | bool = "auto"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spherical k-means with ``faiss.Kmeans(spherical=True)``.

    Parameters
    ----------
    vectors : (n, dim) array
        Rows are usually L2-normalized embeddings.
    k : int
        Clusters, ``1 <= k <= n``.
    niter, seed : int
        Lloyd iterations and the seed of FAISS's initialization (and its subsampling to
        256 points per centroid when ``n > 256 k``).
    gpu : {"auto", "on", "off"}

    Returns
    -------
    centroids : float32 (k, dim), L2-normalized
    assign : int64 (n,), the centroid with the largest cosine (lowest index on ties)
    cos_to_centroid : float32 (n,), that cosine (0 for an all-zero vector)

    References
    ----------
    Abbas et al. 2023, SemDeDup, arXiv:2303.09540; Sorscher et al. 2022, arXiv:2206.14486.
    """
    import faiss

    x = _as_matrix(vectors, "vectors")
    n, dim = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of vectors ({n}), got k={k}")
    km = faiss.Kmeans(dim, k, niter=niter, seed=seed, spherical=True, gpu=use_gpu(gpu))
    km.train(x)
    c = np.ascontiguousarray(km.centroids, dtype=np.float32)
    c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    flat = faiss.IndexFlatIP(dim)
    flat.add(c)
    ip, a = flat.search(x, 1)
    norms = np.linalg.norm(x, axis=1)
    cos = np.divide(ip[:, 0], norms, out=np.zeros(n, np.float32), where=norms > 0)
    return c, a[:, 0].astype(np.int64), cos.astype(np.float32)


KCENTER_BLOCK = 1 << 16


def update_min_dist(x: np.ndarray, sq: np.ndarray, c: int, min_d: np.ndarray) -> int:
    """One k-center step: ``min_d = min(min_d, ||x - x[c]||^2)`` in place (float32 blocks of
    65,536 rows, one matrix-vector product each); returns the position of the new maximum."""
    center, csq = x[c], sq[c]
    best, best_pos = -np.inf, -1
    for lo in range(0, len(x), KCENTER_BLOCK):
        hi = min(lo + KCENTER_BLOCK, len(x))
        d = x[lo:hi] @ center
        d *= -2.0
        d += sq[lo:hi]
        d += csq
        blk = min_d[lo:hi]
        np.minimum(blk, d, out=blk)
        i = int(np.argmax(blk))
        if blk[i] > best:
            best, best_pos = float(blk[i]), lo + i
    return best_pos


CHOSEN = np.float32(-1.0)


def kcenter_greedy(
    vectors: np.ndarray, k: int, seed: int = 0, start: int | None = None
) -> np.ndarray:
    """k-center greedy: ``k`` positions that cover the vectors (Euclidean distance).

    Start from ``start`` (default: a point drawn with ``seed``), then repeatedly add the point
    farthest from the chosen set, updating each point's distance to its nearest chosen center
    with one float32 matrix-vector product per new center, in blocks of 65,536 rows. O(n k dim)
    time, O(n) extra memory. Ties go to the lowest position; a point is never chosen twice
    (with duplicates, the next unchosen copy is taken once all distances are 0).

    Returns
    -------
    int64 (k,) positions in the order chosen.

    References
    ----------
    Sener & Savarese 2018, "Active Learning for Convolutional Neural Networks: A Core-Set
    Approach", arXiv:1708.00489 (Algorithm 1).
    """
    x = _as_matrix(vectors, "vectors")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of vectors ({n}), got k={k}")
    if start is None:
        start = int(np.random.default_rng(seed).integers(n))
    if not 0 <= start < n:
        raise ValueError(f"start must be a position in [0, {n}), got {start}")
    sq = np.einsum("ij,ij->i", x, x)
    min_d = np.full(n, np.inf, dtype=np.float32)
    chosen = np.empty(k, dtype=np.int64)
    c = start
    for j in range(k):
        chosen[j] = c
        best_pos = update_min_dist(x, sq, c, min_d)
        min_d[c] = CHOSEN  # chosen: never the farthest again (rounding leaves others > -1)
        if best_pos == c:  # every other point is a duplicate of a chosen one
            best_pos = int(np.argmax(min_d))
        c = best_pos
    return chosen
