"""Embedding job: sentence embeddings of the pool, and a FAISS index over them.

Spark glue over :mod:`curamix.embeddings.embed` and :mod:`curamix.embeddings.index`. One Spark
task per part of the pool (decontam's, dedup's or ingest's output, whichever runs before
embed) loads the model once per executor process (:func:`load_model` caches it) and encodes
the part's documents; the output does not depend on the number of workers. The driver then
builds one FAISS index over all vectors (memory checked first) and saves it under ``index/``.

Output folder ``embed-<key>/``::

    embeddings/part-XXXXX.parquet   id, domain, n_words, vector (fixed_size_list<float32>[dim])
    index/                          VectorIndex.save: index.faiss, ids.parquet, meta.json
    ledger/part-XXXXX.parquet       every input document: kept; reason not_sampled when
                                    ``sample`` left it out (embed removes nothing)
    manifest.json, report.md

``sample``: the documents whose keys ``(hash(seed, id), id)`` are the ``sample`` smallest
(hash = the first 63 bits of blake2b), found with a first pass over the ids; the choice depends
only on the ids and the seed, never on the partitioning.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curamix.config import EmbedConfig, PipelineConfig, config_hash
from curamix.io.fs import makedirs, tree_size
from curamix.io.store import JobResult, part_files, stage_writer
from curamix.pipelines.parts import (
    SampleKey,
    in_sample,
    map_parts,
    spark_sample_cutoff,
)
from curamix.schema import LEDGER_SCHEMA

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

STAGE = "embed"
NOT_SAMPLED = "not_sampled"
EMBEDDINGS, INDEX, LEDGER = "embeddings", "index", "ledger"
CHUNK = 4096
"""Documents per ``encode`` call inside a task (bounds the texts and vectors held at once)."""

PART_SCHEMA = pa.schema(
    [
        ("domain", pa.string()),
        ("n_in", pa.int64()),
        ("n_embedded", pa.int64()),
        ("dim", pa.int64()),
        ("encode_s", pa.float64()),
        ("device", pa.string()),
    ]
)
"""A part's result: one row per domain with its counts; ``encode_s`` on the first row only."""


def embeddings_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("domain", pa.string(), nullable=False),
            pa.field("n_words", pa.int64(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
        ]
    )


def embed_key(cfg: PipelineConfig, inputs: Mapping[str, JobResult]) -> str:
    """Stage key: the embed section, the pool's manifest hash, and the seed when sampling.

    The registry's key (:mod:`curamix.pipelines.registry`) calls this with the section's
    ``device: auto`` and ``index.gpu: auto`` resolved to this machine's devices, so CPU and GPU
    outputs never share a key; :func:`run_embed` checks that the tasks ran on that device."""
    ec = _section(cfg)
    seed = cfg.seed if ec.sample is not None else None
    return config_hash(STAGE, ec, inputs["pool"].manifest_hash, seed)


def _section(cfg: PipelineConfig) -> EmbedConfig:
    if cfg.embed is None:
        raise ValueError("the embed stage needs an 'embed:' section in the config")
    return cfg.embed


# --- the seeded sample ------------------------------------------------------------------------


# --- one part ---------------------------------------------------------------------------------


def _threads_per_task(spark: SparkSession) -> int:
    """Torch CPU threads per task: the cores Spark gives each task (all local cores split
    between the task slots in local mode, ``spark.task.cpus`` on a cluster)."""
    sc = spark.sparkContext
    if sc.master.startswith("local"):
        return max(1, (os.cpu_count() or 1) // max(1, sc.defaultParallelism))
    return max(1, int(sc.getConf().get("spark.task.cpus", "1")))


def embed_part(
    path: str,
    index: int,
    out_dir: str,
    ec: EmbedConfig,
    seed: int,
    cutoff: SampleKey | None,
    threads: int | None = None,
) -> pa.Table:
    """One pool part: embed its sampled documents, write its embeddings and its ledger; return
    its per-domain counts."""
    from curamix.embeddings.embed import encode, load_model, model_dim

    docs = pq.read_table(path, columns=["id", "text", "domain", "n_words"])
    ids, domains = docs["id"].to_pylist(), docs["domain"].to_pylist()
    mask = in_sample(ids, seed, cutoff)
    chosen = docs.filter(pa.array(mask))
    model = load_model(ec.model, device=ec.device, max_seq_length=ec.max_seq_length, fp16=ec.fp16)
    device = str(model.device)
    if threads is not None and device == "cpu":
        import torch

        torch.set_num_threads(threads)
    dim = model_dim(model)
    t = time.perf_counter()
    texts = chosen["text"].to_pylist()
    chunks = [
        encode(model, texts[lo : lo + CHUNK], batch_size=ec.batch_size)
        for lo in range(0, len(texts), CHUNK)
    ]
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
    encode_s = time.perf_counter() - t
    schema = embeddings_schema(dim)
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    table = pa.table(
        {
            "id": chosen["id"],
            "domain": chosen["domain"],
            "n_words": chosen["n_words"].cast(pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
        },
        schema=schema,
    )
    pq.write_table(
        table, os.path.join(out_dir, EMBEDDINGS, f"part-{index:05d}.parquet"), compression="zstd"
    )
    ledger = pa.table(
        {
            "id": ids,
            "stage": [STAGE] * len(ids),
            "decision": ["kept"] * len(ids),
            "reason": [None if m else NOT_SAMPLED for m in mask],
            "score": [None] * len(ids),
            "ref_id": [None] * len(ids),
        },
        schema=LEDGER_SCHEMA,
    )
    pq.write_table(
        ledger, os.path.join(out_dir, LEDGER, f"part-{index:05d}.parquet"), compression="zstd"
    )
    counts: dict[str, list[int]] = {}
    for d, m in zip(domains, mask, strict=True):
        e = counts.setdefault(d, [0, 0])
        e[0] += 1
        e[1] += int(m)
    rows = [
        {
            "domain": d,
            "n_in": n_in,
            "n_embedded": n_emb,
            "dim": dim,
            "encode_s": encode_s if k == 0 else 0.0,
            "device": device,
        }
        for k, (d, (n_in, n_emb)) in enumerate(sorted(counts.items()))
    ]
    if not rows:  # an empty part still reports its dimension and device
        empty = {"domain": None, "n_in": 0, "n_embedded": 0, "dim": dim}
        rows = [{**empty, "encode_s": encode_s, "device": device}]
    return pa.Table.from_pylist(rows, schema=PART_SCHEMA)


# --- reading the output -----------------------------------------------------------------------


@dataclass(frozen=True)
class Embeddings:
    """Embedded documents, sorted by id: ``ids`` (str), ``domains`` (str), ``n_words`` (int64)
    and ``vectors`` (float32 (n, dim), L2-normalized rows)."""

    ids: np.ndarray
    domains: np.ndarray
    n_words: np.ndarray
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def read_embeddings_table(folder: str | os.PathLike) -> pa.Table:
    """All ``part-*.parquet`` files of an embeddings folder as one table (part order)."""
    tables = [pq.read_table(p) for p in part_files(folder)]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def table_to_embeddings(table: pa.Table, ids: Collection[str] | None = None) -> Embeddings:
    """Rows of an embeddings table, optionally only ``ids`` (ids not embedded are absent),
    sorted by id."""
    if ids is not None:
        table = table.filter(pc.is_in(table["id"], value_set=pa.array(list(ids), pa.string())))
    table = table.take(pc.sort_indices(table, sort_keys=[("id", "ascending")]))
    vec = table["vector"].combine_chunks()
    dim = vec.type.list_size
    values = vec.flatten().to_numpy(zero_copy_only=False)
    return Embeddings(
        ids=np.asarray(table["id"].to_pylist(), dtype=str),
        domains=np.asarray(table["domain"].to_pylist(), dtype=str),
        n_words=table["n_words"].to_numpy().astype(np.int64),
        vectors=np.ascontiguousarray(values.reshape(len(table), dim), dtype=np.float32),
    )


def load_embeddings(result: JobResult, ids: Collection[str] | None = None) -> Embeddings:
    """The embed stage's vectors (all, or only ``ids``), sorted by id."""
    return table_to_embeddings(read_embeddings_table(result.path / EMBEDDINGS), ids)


def load_index(result: JobResult, gpu: str = "off") -> Any:
    """The embed stage's saved :class:`~curamix.embeddings.index.VectorIndex` (positions are
    into the rows of :func:`load_embeddings`, sorted by id)."""
    from curamix.embeddings.index import VectorIndex

    return VectorIndex.load(result.path / INDEX, gpu=gpu)


# --- the job ----------------------------------------------------------------------------------


def run_embed(
    spark: SparkSession,
    cfg: PipelineConfig,
    inputs: Mapping[str, JobResult],
    key: str,
    say: Callable[[str], None],
) -> JobResult:
    """Embed the pool's documents (or a seeded sample), and index them with FAISS."""
    from curamix.device import device_name
    from curamix.embeddings.embed import check_model_available
    from curamix.embeddings.index import VectorIndex, plan_index, use_gpu

    ec = _section(cfg)
    t0 = time.perf_counter()
    pool = inputs["pool"]
    source = pool.stage
    # Fail fast, before any task runs: the model must be there, and gpu: on needs a GPU.
    model_path = check_model_available(ec.model)
    use_gpu(ec.index.gpu)
    parts = part_files(pool.data_path)
    n_pool = pool.counts.get("out")
    timings: dict[str, float] = {}
    cutoff: SampleKey | None = None
    if ec.sample is not None and (n_pool is None or ec.sample < n_pool):
        t = time.perf_counter()
        cutoff = spark_sample_cutoff(spark, parts, cfg.seed, ec.sample)
        timings["sample_s"] = round(time.perf_counter() - t, 3)
    say(
        f"embed: {n_pool if n_pool is not None else '?'} documents of {source} in "
        f"{len(parts)} tasks with {ec.model}"
        + (f" (sample of {ec.sample}, seed {cfg.seed})" if cutoff is not None else "")
    )
    with stage_writer(cfg.run_dir, STAGE, key) as w:
        for sub in (EMBEDDINGS, LEDGER):
            makedirs(w.path(sub))
        out_dir, seed, threads = str(w.tmp), cfg.seed, _threads_per_task(spark)
        t = time.perf_counter()
        res = map_parts(
            spark,
            parts,
            lambda i, p: embed_part(p, i, out_dir, ec, seed, cutoff, threads),
            PART_SCHEMA,
        ).to_pylist()
        timings["embed_s"] = round(time.perf_counter() - t, 3)
        timings["encode_task_s"] = round(sum(r["encode_s"] for r in res), 3)
        dims, devices = {r["dim"] for r in res}, sorted({r["device"] for r in res})
        if len(dims) != 1:
            raise RuntimeError(f"embed: tasks disagree on the embedding dimension: {dims}")
        dim = dims.pop()
        # The stage key names the device `device: auto` resolves to on the driver; tasks that
        # ran elsewhere (a cluster whose executors have GPUs the driver lacks) would store
        # their vectors under the wrong key.
        want = device_name(ec.device).split(":")[0]
        if {d.split(":")[0] for d in devices} != {want}:
            raise RuntimeError(
                f"embed: the tasks ran on {devices}, but the stage key was computed for "
                f"{want!r} (embed.device={ec.device} resolved on the driver); set embed.device "
                "to the executors' device (cpu or cuda) so the key names it"
            )
        half = bool(ec.fp16 and want == "cuda")
        per_domain: dict[str, dict[str, int]] = {}
        for r in res:
            if r["domain"] is not None:
                e = per_domain.setdefault(r["domain"], {"in": 0, "embedded": 0})
                e["in"] += r["n_in"]
                e["embedded"] += r["n_embedded"]
        n_in = sum(e["in"] for e in per_domain.values())
        n_emb = sum(e["embedded"] for e in per_domain.values())
        if n_pool is not None and n_in != n_pool:
            raise RuntimeError(f"embed read {n_in} documents, but {source} wrote {n_pool}")
        expected = n_in if cutoff is None else min(n_in, ec.sample or n_in)
        n_ledger = sum(pq.ParquetFile(f).metadata.num_rows for f in part_files(w.path(LEDGER)))
        if (n_ledger, n_emb) != (n_in, expected):
            raise RuntimeError(
                f"embed accounting mismatch: {n_in} in, {n_emb} embedded (expected {expected}), "
                f"but the ledger has {n_ledger} rows"
            )
        docs_per_s = n_emb / timings["embed_s"] if timings["embed_s"] > 0 else 0.0
        say(f"embed: {n_emb} documents embedded ({dim} dims, {docs_per_s:.1f} docs/s)")

        index_info: dict[str, Any] | None = None
        if n_emb:
            t = time.perf_counter()
            plan = plan_index(n_emb, dim, ec.index)  # the memory gate, before reading vectors
            estimate = plan.need
            say(
                f"embed: building a {plan.kind} index of {n_emb} vectors in "
                f"{'GPU' if plan.on_gpu else 'host'} memory (~{estimate / 1e6:.1f} MB)"
            )
            emb = table_to_embeddings(read_embeddings_table(w.path(EMBEDDINGS)))
            vi = VectorIndex.build(emb.vectors, emb.ids, cfg=ec.index, seed=0)
            vi.save(w.path(INDEX))
            del emb
            size = tree_size(w.path(INDEX))
            index_info = {
                "kind": vi.kind,
                "metric": vi.metric,
                "ntotal": vi.ntotal,
                "on_gpu": vi.on_gpu,
                "estimate_bytes": estimate,
                "file_bytes": size,
                **vi.meta,
            }
            timings["index_s"] = round(time.perf_counter() - t, 3)
        timings["total_s"] = round(time.perf_counter() - t0, 3)
        manifest = {
            "config": ec.model_dump(mode="json"),
            "config_hash": config_hash(ec),
            "seed": cfg.seed if cutoff is not None else None,
            "inputs": {"manifests": {source: pool.manifest_hash}},
            "model": ec.model,
            "model_path": model_path,
            "dim": dim,
            "device": devices[0] if len(devices) == 1 else devices,
            "precision": "fp16" if half else "fp32",
            "counts": {
                "in": n_in,
                "embedded": n_emb,
                "not_sampled": n_in - n_emb,
                "kept": n_in,
                "removed": 0,
                "per_domain": dict(sorted(per_domain.items())),
            },
            "docs_per_s": round(docs_per_s, 2),
            "index": index_info,
            "timings": timings,
            "outputs": {
                "embeddings": EMBEDDINGS,
                "index": INDEX if index_info else None,
                "ledger": LEDGER,
                "report": "report.md",
            },
        }
        w.path("report.md").write_text(_report(manifest), encoding="utf-8")
        result = w.commit(json.loads(json.dumps(manifest, default=float)))
    say(f"embed: done -> {result.path}")
    return result


def _report(m: dict[str, Any]) -> str:
    c, ix, cf = m["counts"], m["index"], m["config"]
    lines = [
        "# Embedding report",
        "",
        f"{c['embedded']} of {c['in']} documents embedded with `{m['model']}` "
        f"({m['dim']} dimensions, max {cf['max_seq_length']} tokens, device {m['device']}, "
        f"{m['precision']})"
        + (f"; a seeded sample of {cf['sample']} (seed {m['seed']})" if c["not_sampled"] else "")
        + f". Throughput: {m['docs_per_s']} docs/s over {m['timings']['embed_s']} s.",
        "",
    ]
    if ix:
        extra = ", ".join(f"{k} {ix[k]}" for k in ("nlist", "nprobe", "hnsw_m") if k in ix)
        lines.append(
            f"Index: {ix['kind']} ({ix['metric']}) over {ix['ntotal']} vectors, "
            f"{ix['file_bytes'] / 1e6:.2f} MB on disk (estimate {ix['estimate_bytes'] / 1e6:.2f} "
            f"MB in memory)" + (f", {extra}" if extra else "") + "."
        )
    else:
        lines.append("Index: none (no documents embedded).")
    lines += ["", "| domain | in | embedded |", "|---|---:|---:|"]
    for d, e in c["per_domain"].items():
        lines.append(f"| {d} | {e['in']} | {e['embedded']} |")
    lines.append("")
    return "\n".join(lines)
