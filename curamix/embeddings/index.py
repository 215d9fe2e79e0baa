"""FAISS indices over embeddings, spherical k-means and k-center greedy.

All the FAISS use of curamix goes through this module (Johnson, Douze & Jégou 2019,
"Billion-scale similarity search with GPUs", arXiv:1702.08734):

- :class:`VectorIndex`: Flat (exact inner product), IVF-Flat, IVF-PQ or HNSW (Malkov &
  Yashunin 2018, arXiv:1603.09320) over float32 vectors, with string ids, saved as
  ``faiss.write_index`` + Parquet ids + JSON meta (no pickle), on the GPU when FAISS sees one.
- :func:`check_fits`: the index's memory estimate against a ceiling, checked before anything
  is allocated: host memory for a CPU index, the free memory of GPU 0 for a GPU one.
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
from dataclasses import dataclass
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
"""Default ceiling: this share of the available memory (host, or free GPU memory)."""
INDEX_FILE, IDS_FILE, META_FILE = "index.faiss", "ids.parquet", "meta.json"
GIB = 1 << 30
FAISS_GPU_SCRATCH = ((4 * GIB, GIB // 2), (8 * GIB, GIB), (None, 3 * GIB // 2))
"""The temporary memory a ``faiss.StandardGpuResources`` reserves on a GPU of at most this
much total memory (faiss/gpu/StandardGpuResources.cpp: 512 MiB up to 4 GiB, 1 GiB up to
8 GiB, 1.5 GiB above). It comes out of the free GPU memory before the index."""


class IndexTooLargeError(MemoryError):
    """An index whose estimated size exceeds the memory ceiling; nothing was allocated."""


class GPUUnavailableError(RuntimeError):
    """``gpu: on`` was asked for and FAISS sees no GPU."""


# --- memory -----------------------------------------------------------------------------------


def available_memory_bytes() -> int:
    """Available host memory: psutil when importable, else ``MemAvailable`` of /proc/meminfo."""
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


def gpu_memory_bytes(device: int = 0) -> tuple[int, int]:
    """``(free, total)`` bytes of CUDA device ``device`` (``torch.cuda.mem_get_info``).

    Raises ``RuntimeError`` when torch sees no CUDA device (a CPU build of torch next to
    faiss-gpu): the free GPU memory cannot be told then.
    """
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is None or not torch.cuda.is_available():
        raise RuntimeError(
            "cannot tell the free GPU memory (torch sees no CUDA device); set "
            "index.max_memory_gb, or index.gpu=off to build the index in host memory"
        )
    free, total = torch.cuda.mem_get_info(device)
    return int(free), int(total)


def faiss_scratch_bytes(total: int) -> int:
    """GPU memory FAISS's resources reserve for scratch space on a GPU of ``total`` bytes
    (:data:`FAISS_GPU_SCRATCH`); 0 once this process's resources exist (already allocated,
    so already out of the free memory)."""
    if _GPU_RES:
        return 0
    for cap, scratch in FAISS_GPU_SCRATCH:
        if cap is None or total <= cap:
            return scratch
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class MemoryBudget:
    """What an index may take: ``limit`` bytes of host or GPU memory (``on_gpu``); ``source``
    says where the limit comes from, for error messages."""

    limit: int
    source: str
    on_gpu: bool


def memory_budget(cfg: IndexConfig, gpu: bool = False) -> MemoryBudget:
    """The memory ceiling of an index of ``cfg``.

    On the host: ``cfg.max_memory_gb`` (GB = 1e9 bytes), else 80% of the available memory.
    On the GPU (``gpu=True``): 80% of the free memory of GPU 0 less FAISS's scratch space
    (:func:`faiss_scratch_bytes`), and at most ``cfg.max_memory_gb`` when set; host memory is
    not consulted. When the free GPU memory cannot be told, ``cfg.max_memory_gb`` alone
    (a ``RuntimeError`` without it).
    """
    cap = None
    if cfg.max_memory_gb is not None:
        cap = MemoryBudget(
            int(cfg.max_memory_gb * 1e9), f"index.max_memory_gb={cfg.max_memory_gb}", gpu
        )
    if not gpu:
        if cap is not None:
            return cap
        avail = available_memory_bytes()
        return MemoryBudget(
            int(MEMORY_SHARE * avail), f"{MEMORY_SHARE:.0%} of the {_gb(avail)} available", False
        )
    try:
        free, total = gpu_memory_bytes(0)
    except RuntimeError:
        if cap is not None:
            return cap
        raise
    scratch = faiss_scratch_bytes(total)
    usable = MemoryBudget(
        max(0, int(MEMORY_SHARE * free) - scratch),
        f"{MEMORY_SHARE:.0%} of the {_gb(free)} ({free:,} bytes) free on GPU 0, less "
        f"{_gb(scratch)} of FAISS scratch memory",
        True,
    )
    return cap if cap is not None and cap.limit <= usable.limit else usable


def memory_limit_bytes(cfg: IndexConfig, gpu: bool = False) -> int:
    """The ceiling of :func:`memory_budget` in bytes."""
    return memory_budget(cfg, gpu).limit


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


def _auto_kind(n: int, dim: int, cfg: IndexConfig, limit: int) -> str:
    if _bytes_for("ivf", n, dim, cfg) <= limit or dim % cfg.pq_m:
        return "ivf"
    return "ivfpq"


def choose_kind(n: int, dim: int, cfg: IndexConfig, gpu: bool | None = None) -> str:
    """The index kind for ``n`` vectors: ``cfg.kind``, or for ``auto`` Flat up to
    ``cfg.flat_max`` vectors, IVF above, IVF-PQ when IVF would not fit the memory ceiling
    (of the GPU when the index goes there: ``gpu``, default :func:`builds_on_gpu`)."""
    if cfg.kind != "auto":
        return cfg.kind
    if n <= cfg.flat_max:
        return "flat"
    on_gpu = builds_on_gpu(cfg) if gpu is None else bool(gpu)
    return _auto_kind(n, dim, cfg, memory_budget(cfg, on_gpu).limit)


def estimate_index_bytes(n: int, dim: int, cfg: IndexConfig, gpu: bool | None = None) -> int:
    """Estimated memory of the index :func:`choose_kind` picks (vectors or codes, ids,
    links, centroids, the training sample copy); a GPU index takes about the same."""
    return _bytes_for(choose_kind(n, dim, cfg, gpu), n, dim, cfg)


def _gb(b: float) -> str:
    return f"{b / 1e9:.3g} GB"


@dataclass(frozen=True)
class IndexPlan:
    """The index :meth:`VectorIndex.build` makes for ``n`` vectors: its ``kind``, whether it
    goes to the GPU (``on_gpu``) and its estimated size ``need`` in bytes."""

    kind: str
    on_gpu: bool
    need: int


def plan_index(n: int, dim: int, cfg: IndexConfig, gpu: bool | None = None) -> IndexPlan:
    """The kind, device and size of an index of ``n`` x ``dim`` vectors, after the memory
    gate: :class:`IndexTooLargeError` before any allocation when the estimate exceeds the
    ceiling of :func:`memory_budget` (the free GPU memory when the index goes there, host
    memory otherwise; one reading of it decides both the kind and the gate).

    ``gpu`` defaults to :func:`builds_on_gpu` (which raises :class:`GPUUnavailableError` for
    ``gpu: on`` without a GPU).
    """
    on_gpu = builds_on_gpu(cfg) if gpu is None else bool(gpu)
    budget = memory_budget(cfg, on_gpu)
    kind = cfg.kind
    if kind == "auto":
        kind = "flat" if n <= cfg.flat_max else _auto_kind(n, dim, cfg, budget.limit)
    need = _bytes_for(kind, n, dim, cfg)
    if need > budget.limit:
        raise IndexTooLargeError(_too_large(kind, n, dim, need, budget, cfg))
    return IndexPlan(kind, on_gpu, need)


def _too_large(
    kind: str, n: int, dim: int, need: int, budget: MemoryBudget, cfg: IndexConfig
) -> str:
    article = "an" if kind.startswith("i") else "a"
    hint = ["index.gpu=off to build it in host memory"] if budget.on_gpu else []
    if kind != "ivfpq":
        pq = _bytes_for("ivfpq", n, dim, cfg) if dim % cfg.pq_m == 0 else None
        hint.append("index.kind=ivfpq" + (f" (about {_gb(pq)})" if pq is not None else ""))
    else:
        hint.append("a smaller index.pq_m")
    if not budget.on_gpu or cfg.max_memory_gb is not None:
        hint.append("a larger index.max_memory_gb")
    hint.append("embed.sample to embed fewer documents")
    size = f"{_gb(need)} ({need:,} bytes) of GPU memory" if budget.on_gpu else _gb(need)
    return (
        f"{article} {kind} index of {n} x {dim} vectors needs about {size}, over the limit of "
        f"{_gb(budget.limit)} ({budget.source}); use " + ", or ".join(hint)
    )


def check_fits(n: int, dim: int, cfg: IndexConfig, gpu: bool | None = None) -> int:
    """The estimate in bytes; raises :class:`IndexTooLargeError` (before any allocation) when
    it exceeds the memory ceiling (:func:`memory_budget`): ``cfg.max_memory_gb`` or 80% of
    the available host memory, or for an index that goes to the GPU 80% of the free GPU
    memory less FAISS's scratch space."""
    return plan_index(n, dim, cfg, gpu).need


# --- GPU --------------------------------------------------------------------------------------


def faiss_gpus() -> int:
    """GPUs FAISS can use (0 for a faiss-cpu build)."""
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    if get is None or not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(get())


def builds_on_gpu(cfg: IndexConfig) -> bool:
    """Whether :meth:`VectorIndex.build` puts an index of ``cfg`` on the GPU: :func:`use_gpu`
    of ``cfg.gpu``, never for HNSW (no FAISS GPU version; ``gpu: on`` with HNSW is an error
    of ``build``)."""
    return cfg.kind != "hnsw" and use_gpu(cfg.gpu)


def gpu_setting(gpu: str | bool, kind: str = "auto") -> str:
    """``gpu`` resolved for a cache key: ``"on"`` or ``"off"``. ``auto`` is ``"on"`` when FAISS
    sees a GPU (and ``kind`` is not HNSW); ``on`` stays ``"on"`` even without one (never
    raises: building is what fails)."""
    if gpu is True or gpu == "on":
        return "on"
    if gpu is False or gpu == "off":
        return "off"
    if gpu == "auto":
        return "on" if kind != "hnsw" and faiss_gpus() > 0 else "off"
    raise ValueError(f"gpu must be 'auto', 'on' or 'off', got {gpu!r}")


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

        The memory estimate is checked first (:func:`check_fits`; on the GPU against its free
        memory, see :func:`memory_budget`). IVF trains on the vectors
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
        gpu = use_gpu(cfg.gpu)
        if cfg.kind == "hnsw" and gpu:
            if cfg.gpu == "on":
                raise GPUUnavailableError(
                    "index.kind=hnsw has no FAISS GPU version; use gpu='auto' or 'off', or "
                    "kind flat/ivf/ivfpq"
                )
            gpu = False
        kind = plan_index(n, dim, cfg, gpu).kind  # the memory gate of that device, first
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

        from curamix.io.fs import is_remote, upload_folder

        if is_remote(folder):  # built here, then written object by object
            import tempfile

            with tempfile.TemporaryDirectory(prefix="curamix-index-") as d:
                upload_folder(self.save(Path(d) / "index"), folder)
            return folder  # type: ignore[return-value]
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

        from curamix.io.fs import as_path, is_remote, write_bytes

        if is_remote(folder):  # FAISS reads files: fetch the three objects first
            import tempfile

            with tempfile.TemporaryDirectory(prefix="curamix-index-") as d:
                for name in (INDEX_FILE, IDS_FILE, META_FILE):
                    src = as_path(folder) / name
                    if not src.is_file():
                        raise FileNotFoundError(f"{folder} is not a saved VectorIndex: no {name}")
                    write_bytes(Path(d) / name, src.read_bytes())
                return cls.load(d, gpu=gpu)
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
