"""Dedup job: exact and MinHash-LSH near-duplicate removal with verified clusters and gates.

Spark glue over :mod:`curamix.filters.dedup`:

A. one task per ingest part: exact key, MinHash band keys and shingle hashes of each doc
   (``_sig/``), with the same kernels a notebook calls;
B. exact duplicates: per (scope, exact key) the best document (domain priority, then smallest
   id) is kept; near duplicates among the rest: every LSH bucket becomes a star to its best
   member, candidate edges are verified by true shingle Jaccard, connected components come
   from large-star/small-star (:mod:`curamix.pipelines.components`), the best member of each
   component is kept, and each removed doc's Jaccard to the kept one is measured;
C. decisions are written partitioned by ingest part, and one task per part writes the kept
   documents and the ledger, so the output does not depend on Spark's partitioning.

Gates: a domain losing more than ``max_removal_rate`` fails the stage (naming the domain and
its rate); components above ``max_component_size`` are listed with sample members; the share
of removed documents whose Jaccard to their kept document is below the threshold (merged
through a chain) is reported.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curamix.config import DedupConfig, PipelineConfig, config_hash
from curamix.filters.dedup import (
    band_keys,
    dedup_decisions,
    exact_key,
    minhash_signatures,
    normalize,
    optimal_bands,
    shingle_hashes,
)
from curamix.io.fs import listdir, makedirs, save_figure
from curamix.io.store import JobResult, stage_writer, write_text_atomic
from curamix.pipelines.parts import choose_engine, map_parts, read_parquet_df, write_partitioned
from curamix.pipelines.pool import Decisions, PoolStage, decisions_table

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

STAGE = "dedup"
SIG_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("domain", pa.string()),
        ("_part", pa.int64()),
        ("exact_key", pa.string()),
        ("bands", pa.list_(pa.int64())),
        ("shingles", pa.list_(pa.int64())),
    ]
)
COUNT_SCHEMA = pa.schema([("domain", pa.string()), ("kind", pa.string()), ("n", pa.int64())])
SLICE_ROWS = 2048


class DedupGateError(RuntimeError):
    """A safety gate stopped the stage (e.g. a domain would lose too much of its data)."""


def bands_rows(cfg: DedupConfig) -> tuple[int, int]:
    if cfg.bands is not None and cfg.rows is not None:
        return cfg.bands, cfg.rows
    # With verification, favour recall: exact Jaccard removes the extra candidates after.
    return optimal_bands(cfg.threshold, cfg.num_perm, *((0.05, 0.95) if cfg.verify else (0.5, 0.5)))


def check_doc_schema(parts: list[str]) -> None:
    """Raise ValueError naming the file and the missing columns unless every part has the
    document schema's ``id``, ``text`` and ``domain`` (strings)."""
    for path in parts:
        schema = pq.read_schema(path)
        missing = [c for c in ("id", "text", "domain") if c not in schema.names]
        wrong = [
            c
            for c in ("id", "text", "domain")
            if c in schema.names
            and not (
                pa.types.is_string(schema.field(c).type)
                or pa.types.is_large_string(schema.field(c).type)
            )
        ]
        if missing or wrong:
            raise ValueError(
                f"{path} does not have the document schema (id, text, domain as strings): "
                + (f"missing {missing}" if missing else "")
                + (f" wrong type for {wrong}" if wrong else "")
            )


def slices(parts: list[str], rows: int = SLICE_ROWS) -> list[str]:
    """Work units of phase A: ``path|part index|first row|row count``, at most ``rows`` rows
    each, so one big ingest part still spreads over all cores."""
    out = []
    for index, path in enumerate(parts):
        n = pq.ParquetFile(path).metadata.num_rows
        out += [f"{path}|{index}|{start}|{min(rows, n - start)}" for start in range(0, n, rows)]
    return out


def _read_rows(path: str, start: int, count: int, columns: list[str]) -> pa.Table:
    """Rows [start, start + count) of a Parquet file, reading only the row groups they span."""
    f = pq.ParquetFile(path)
    groups, first, offset = [], None, 0
    for g in range(f.metadata.num_row_groups):
        n = f.metadata.row_group(g).num_rows
        if offset + n > start and offset < start + count:
            groups.append(g)
            first = offset if first is None else first
        offset += n
    return f.read_row_groups(groups, columns=columns).slice(start - (first or 0), count)


def signature_table(payload: str, cfg: DedupConfig) -> pa.Table:
    """Phase A for one slice: exact keys, LSH band keys and shingle hashes of its documents."""
    path, part, start, count = payload.rsplit("|", 3)
    t = _read_rows(path, int(start), int(count), ["id", "text", "domain"])
    texts = t.column("text").to_pylist()
    normed = [
        normalize(
            x, nfkc=cfg.nfkc, lowercase=cfg.lowercase, collapse_whitespace=cfg.collapse_whitespace
        )
        for x in texts
    ]
    sh, doc = shingle_hashes(normed, cfg.ngram, cfg.unit, normalized=True)
    b, r = bands_rows(cfg)
    keys = band_keys(minhash_signatures(sh, doc, len(texts), cfg.num_perm, cfg.seed), b, r)
    offsets = np.searchsorted(doc, np.arange(len(texts) + 1)).astype(np.int32)
    return pa.table(
        {
            "id": t.column("id"),
            "domain": t.column("domain"),
            "_part": pa.array(np.full(len(texts), int(part), dtype=np.int64)),
            "exact_key": [exact_key(x, normalized=True) for x in normed],
            "bands": pa.FixedSizeListArray.from_arrays(keys.view(np.int64).ravel(), b).cast(
                pa.list_(pa.int64())
            ),
            "shingles": pa.ListArray.from_arrays(pa.array(offsets), pa.array(sh.view(np.int64))),
        },
        schema=SIG_SCHEMA,
    )


def _in_counts(table: pa.Table) -> pa.Table:
    domains, n = np.unique(
        np.array(table.column("domain").to_pylist(), dtype=object), return_counts=True
    )
    return pa.table(
        {"domain": domains.tolist(), "kind": ["in"] * len(n), "n": n.astype(np.int64)},
        schema=COUNT_SCHEMA,
    )


def signature_slice(payload: str, index: int, out_dir: str, cfg: DedupConfig) -> pa.Table:
    """Phase A task: :func:`signature_table` written to ``out_dir``; returns the domain counts."""
    table = signature_table(payload, cfg)
    pq.write_table(table, os.path.join(out_dir, f"part-{index:05d}.parquet"), compression="zstd")
    return _in_counts(table)


def _jaccard_fn(batches):
    """mapInArrow: Jaccard of the ``a`` and ``b`` shingle lists of each row."""
    for batch in batches:
        a, b = batch.column("a"), batch.column("b")
        out = np.empty(batch.num_rows)
        for i in range(batch.num_rows):
            x = np.unique(np.asarray(a[i].values))
            y = np.unique(np.asarray(b[i].values))
            inter = len(np.intersect1d(x, y, assume_unique=True))
            union = len(x) + len(y) - inter
            out[i] = inter / union if union else 1.0
        yield pa.RecordBatch.from_arrays(
            [batch.column("u"), batch.column("v"), pa.array(out)], names=["u", "v", "sim"]
        )


def _with_jaccard(pairs: DataFrame, sig: DataFrame) -> DataFrame:
    """(u, v, sim) for node pairs (u, v): the exact Jaccard of their shingle sets (``sig`` has
    ``_node`` and ``shingles``)."""
    from pyspark.sql import functions as F

    sh = sig.select(F.col("_node").alias("id"), "shingles")
    joined = (
        pairs.join(sh.select(F.col("id").alias("u"), F.col("shingles").alias("a")), "u")
        .join(sh.select(F.col("id").alias("v"), F.col("shingles").alias("b")), "v")
        .select("u", "v", "a", "b")
    )
    return joined.mapInArrow(_jaccard_fn, "u string, v string, sim double")


DEC_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("_part", pa.int64()),
        ("domain", pa.string()),
        ("reason", pa.string()),
        ("ref_id", pa.string()),
        ("sim", pa.float64()),
        ("ref_domain", pa.string()),
    ]
)


def _list_values(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list column, offsets starting at 0."""
    arr = col.combine_chunks()
    offsets = arr.offsets.to_numpy().astype(np.int64)
    return arr.flatten().to_numpy(), offsets - offsets[0]


def local_decisions(
    work: list[str], dc: DedupConfig, say: Callable[[str], None] = lambda _m: None
) -> tuple[pa.Table, pa.Table, int, int]:
    """The whole stage's decisions in this process (``engine: local``): phase A slice by slice
    with the same kernels as the Spark tasks, then :func:`dedup_decisions`. Returns the removed
    documents (``DEC_SCHEMA``), the per-domain input counts, and the candidate / verified edge
    counts."""
    tables = []
    for k, payload in enumerate(work):
        tables.append(signature_table(payload, dc))
        if len(work) > 4 and (k + 1) % max(1, len(work) // 4) == 0:
            say(f"dedup: signatures {k + 1}/{len(work)} slices")
    sig = pa.concat_tables(tables) if tables else SIG_SCHEMA.empty_table()
    ids = sig.column("id").to_pylist()
    domains = sig.column("domain").to_pylist()
    prio: dict[str, int] = {}
    for k, d in enumerate(dc.domain_priority):
        prio.setdefault(d, k)
    last = len(dc.domain_priority)
    order = sorted(range(len(ids)), key=lambda i: (prio.get(domains[i], last), ids[i]))
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))
    if dc.scope == "local":
        scope = np.unique(np.array(domains, dtype=object), return_inverse=True)[1]
    else:
        scope = np.zeros(len(ids), dtype=np.int64)
    b, _ = bands_rows(dc)
    band_vals, _ = _list_values(sig.column("bands"))
    shingles, offsets = _list_values(sig.column("shingles"))
    say(f"dedup: exact groups, LSH candidates and components of {len(ids)} documents (in-process)")
    d = dedup_decisions(
        rank,
        scope,
        sig.column("exact_key").to_pylist() if dc.exact else None,
        band_vals.view(np.uint64).reshape(len(ids), b) if dc.near else None,
        shingles.view(np.uint64),
        offsets,
        threshold=dc.threshold,
        verify=dc.verify,
    )
    gone = np.flatnonzero(d.ref >= 0)
    ref = d.ref[gone]
    dec = pa.table(
        {
            "id": [ids[i] for i in gone],
            "_part": sig.column("_part").combine_chunks().take(pa.array(gone, pa.int64())),
            "domain": [domains[i] for i in gone],
            "reason": ["exact_duplicate" if x else "near_duplicate" for x in d.exact[gone]],
            "ref_id": [ids[i] for i in ref],
            "sim": d.sim[gone],
            "ref_domain": [domains[i] for i in ref],
        },
        schema=DEC_SCHEMA,
    )
    return dec, _in_counts(sig), d.candidate_edges, d.verified_edges


def _summaries_local(dec: pa.Table, dc: DedupConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """Counts per (domain, reason, cross-domain, below threshold), the component-size
    histogram and the components over the size limit: what the Spark path aggregates."""
    rows = dec.to_pylist()
    agg: dict[tuple, int] = {}
    size: dict[str, int] = {}
    members: dict[str, list[str]] = {}
    for x in rows:
        k = (
            x["domain"],
            x["reason"],
            x["domain"] != x["ref_domain"],
            x["reason"] == "near_duplicate" and x["sim"] < dc.threshold,
        )
        agg[k] = agg.get(k, 0) + 1
        size[x["ref_id"]] = size.get(x["ref_id"], 1) + 1
        members.setdefault(x["ref_id"], []).append(x["id"])
    counts = [
        {"domain": k[0], "reason": k[1], "cross": k[2], "below": k[3], "count": n}
        for k, n in agg.items()
    ]
    hist: dict[int, int] = {}
    for n in size.values():
        hist[n] = hist.get(n, 0) + 1
    comp_sizes = [{"size": k, "count": hist[k]} for k in sorted(hist)]
    big = sorted((-n, r) for r, n in size.items() if n > dc.max_component_size)[:20]
    big_components = [
        {"kept": r, "size": -n, "sample_members": sorted(members[r])[:5]} for n, r in big
    ]
    return counts, comp_sizes, big_components


def _summaries_spark(dec: DataFrame, dc: DedupConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """:func:`_summaries_local` from small Spark aggregates (no collect of the decisions)."""
    from pyspark.sql import functions as F

    cross = (F.col("domain") != F.col("ref_domain")).alias("cross")
    low = ((F.col("reason") == "near_duplicate") & (F.col("sim") < dc.threshold)).alias("below")
    counts = [x.asDict() for x in dec.groupBy("domain", "reason", cross, low).count().collect()]
    sizes = dec.groupBy("ref_id").agg((F.count("*") + 1).alias("size"))
    comp_sizes = [x.asDict() for x in sizes.groupBy("size").count().orderBy("size").collect()]
    big_components = []
    if any(c["size"] > dc.max_component_size for c in comp_sizes):
        for row in (
            sizes.filter(F.col("size") > dc.max_component_size)
            .orderBy(F.desc("size"), "ref_id")
            .limit(20)
            .collect()
        ):
            sample = [
                x["id"]
                for x in dec.filter(F.col("ref_id") == row["ref_id"])
                .orderBy("id")
                .limit(5)
                .collect()
            ]
            big_components.append(
                {"kept": row["ref_id"], "size": row["size"], "sample_members": sample}
            )
    return counts, comp_sizes, big_components


class RemovedByPart:
    """``decide`` for the pool-stage writer (phase C): a part's removed documents (``id``,
    ``reason``, ``ref_id``, ``sim``) from the in-process engine's table or, on Spark, from
    the decisions written partitioned by part (``_part=<index>``); the rest are kept."""

    def __init__(self, by_part: Mapping[int, pa.Table] | None = None, folder: str | None = None):
        self.by_part, self.folder = by_part, folder
        self._cache: tuple[int, dict[str, dict[str, Any]]] | None = None

    def _removed(self, index: int) -> dict[str, dict[str, Any]]:
        if self._cache is None or self._cache[0] != index:
            table = None
            if self.by_part is not None:
                table = self.by_part.get(index)
            elif self.folder is not None:
                folder = os.path.join(self.folder, f"_part={index}")
                files = [f for f in listdir(folder) if f.endswith(".parquet")]
                if files:
                    table = pa.concat_tables(
                        pq.read_table(
                            os.path.join(folder, f), columns=["id", "reason", "ref_id", "sim"]
                        )
                        for f in files
                    )
            rows = table.to_pylist() if table is not None else []
            self._cache = (index, {r["id"]: r for r in rows})
        return self._cache[1]

    def __call__(self, index: int, docs: pa.Table, start: int) -> Decisions:
        removed = self._removed(index)
        ids = docs["id"].to_pylist()
        hit = [removed.get(i) for i in ids]
        return Decisions(
            decisions_table(
                ids,
                np.array([h is None for h in hit], dtype=bool),
                [h["reason"] if h else None for h in hit],
                [h["sim"] if h else None for h in hit],
                [h["ref_id"] if h else None for h in hit],
            )
        )


EXECUTION_ONLY = {"engine", "local_max_docs", "components", "single_task_max_edges"}
"""Settings that change how the stage runs, never its output: not part of its cache key."""


def dedup_key(cfg: PipelineConfig, inputs: Mapping[str, JobResult]) -> str:
    """The decisive config (not :data:`EXECUTION_ONLY`) and the ingest manifest."""
    assert cfg.dedup is not None
    decisive = cfg.dedup.model_dump(mode="json", exclude=EXECUTION_ONLY)
    return config_hash(STAGE, decisive, inputs["pool"].manifest_hash)


PRIO_WIDTH = 6


def _node(prio_col, id_col):
    """Node name whose string order is (domain priority, id): components keep the best one.
    The id is ``substring(node, PRIO_WIDTH + 2)``."""
    from pyspark.sql import functions as F

    return F.concat(F.lpad(prio_col.cast("string"), PRIO_WIDTH, "0"), F.lit("\u0001"), id_col)


def _node_id(col):
    from pyspark.sql import functions as F

    return F.expr(f"substring({col}, {PRIO_WIDTH + 2})")


def _timed(timings: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    t = time.perf_counter()
    out = fn()
    timings[name] = round(time.perf_counter() - t, 3)
    return out


def run_dedup(
    spark: SparkSession,
    cfg: PipelineConfig,
    inputs: Mapping[str, JobResult],
    key: str,
    say: Callable[[str], None],
) -> JobResult:
    """Remove exact and near duplicates from the run's ingested documents."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from curamix.pipelines.components import connected_components, connected_components_single_task

    assert cfg.dedup is not None
    dc = cfg.dedup
    t0 = time.perf_counter()
    ingest = inputs["pool"]
    ps = PoolStage(STAGE, cfg, ingest, key, say)  # phase C's writer; its parts are phase A's
    parts = ps.parts
    check_doc_schema(parts)
    b, r = bands_rows(dc)
    timings: dict[str, float] = {}
    with stage_writer(cfg.run_dir, STAGE, key) as w:
        sig_dir, dec_dir = str(w.scratch("_sig")), str(w.scratch("_decisions"))
        work = slices(parts)
        n_docs = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
        engine = choose_engine(dc.engine, n_docs, dc.local_max_docs)
        cached: list[Any] = []
        if engine == "local":
            say(
                f"dedup: {n_docs} documents <= dedup.local_max_docs={dc.local_max_docs}: in-process engine "
                f"({dc.num_perm} permutations, {b} bands x {r} rows, {dc.ngram}-{dc.unit} shingles)"
            )
            t = time.perf_counter()
            dec_t, seen, n_candidates, n_verified = local_decisions(work, dc, say)
            timings["decide_s"] = round(time.perf_counter() - t, 3)
            say("dedup: decisions and gates")
            agg_rows, comp_sizes, big_components = _summaries_local(dec_t, dc)
        else:
            makedirs(sig_dir)
            say(
                f"dedup: MinHash signatures of {ingest.counts.get('out', '?')} documents in {len(work)} tasks "
                f"({dc.num_perm} permutations, {b} bands x {r} rows, {dc.ngram}-{dc.unit} shingles)"
            )
            seen = _timed(
                timings,
                "signatures_s",
                lambda: map_parts(
                    spark, work, lambda i, p: signature_slice(p, i, sig_dir, dc), COUNT_SCHEMA
                ),
            )

            prio_expr = F.lit(len(dc.domain_priority))
            for k, d in reversed(list(enumerate(dc.domain_priority))):
                prio_expr = F.when(F.col("domain") == d, F.lit(k)).otherwise(prio_expr)

            raw = read_parquet_df(spark, sig_dir, SIG_SCHEMA).withColumn(
                "_node", _node(prio_expr, F.col("id"))
            )
            meta = raw.select(
                "_node",
                "id",
                "domain",
                "_part",
                "exact_key",
                "bands",
                (F.col("domain") if dc.scope == "local" else F.lit("")).alias("_scope"),
            ).cache()

            # Exact duplicates: the best document of each (scope, normalized text) group stays.
            if dc.exact:
                say("dedup: exact duplicates")
                by_key = Window.partitionBy("_scope", "exact_key").orderBy("_node")
                ex = meta.withColumn("_rep", F.first("_node").over(by_key)).cache()
                exact_pairs = ex.filter(F.col("_node") != F.col("_rep")).select("_node", "_rep")
                survivors = ex.filter(F.col("_node") == F.col("_rep"))
            else:
                exact_pairs = spark.createDataFrame([], "_node string, _rep string")
                survivors = meta
            # Near duplicates: LSH stars -> verified edges -> connected components.
            near_pairs = spark.createDataFrame([], "_node string, _rep string, sim double")
            n_candidates = n_verified = 0
            if dc.near:
                say("dedup: LSH candidate pairs")
                buckets = survivors.select(
                    "_scope", "_node", F.posexplode("bands").alias("_band", "_key")
                )
                by_bucket = Window.partitionBy("_scope", "_band", "_key")
                cand = (
                    buckets.withColumn("_center", F.min("_node").over(by_bucket))
                    .filter(F.col("_node") != F.col("_center"))
                    .select(F.col("_node").alias("u"), F.col("_center").alias("v"))
                    .distinct()
                    .cache()
                )
                n_candidates = _timed(timings, "candidates_s", cand.count)
                nodes = (
                    cand.select(F.col("u").alias("_node"))
                    .union(cand.select(F.col("v").alias("_node")))
                    .distinct()
                )
                shingles = raw.select("_node", "shingles").join(nodes, "_node", "left_semi").cache()
                if dc.verify:
                    say(f"dedup: verifying {n_candidates} candidate pairs by exact Jaccard")
                    edges = (
                        _with_jaccard(cand, shingles)
                        .filter(F.col("sim") >= dc.threshold)
                        .select("u", "v")
                        .cache()
                    )
                else:
                    edges = cand
                n_verified = _timed(timings, "verify_s", edges.count)
                single = dc.components == "single_task" or (
                    dc.components == "auto" and n_verified <= dc.single_task_max_edges
                )
                say(
                    f"dedup: connected components of {n_verified} edges ({'one task' if single else 'large-star/small-star rounds'})"
                )
                cc = connected_components_single_task if single else connected_components
                comps = cc(edges).cache()
                _timed(timings, "components_s", comps.count)
                members = comps.filter(F.col("node") != F.col("component"))
                sims = _with_jaccard(
                    members.select(F.col("node").alias("u"), F.col("component").alias("v")),
                    shingles,
                )
                near_pairs = sims.select(F.col("u").alias("_node"), F.col("v").alias("_rep"), "sim")
            # Final decisions: an exact duplicate of a near-removed document points to its kept one.
            near_pairs = near_pairs.cache()
            resolved = exact_pairs.join(
                near_pairs.select(
                    F.col("_node").alias("_rep"), F.col("_rep").alias("_final"), "sim"
                ),
                "_rep",
                "left",
            ).select(
                "_node",
                F.coalesce("_final", "_rep").alias("_rep"),
                F.coalesce("sim", F.lit(1.0)).alias("sim"),
                F.lit("exact_duplicate").alias("reason"),
            )
            dec = (
                resolved.unionByName(near_pairs.withColumn("reason", F.lit("near_duplicate")))
                .join(meta.select("_node", "id", "domain", "_part"), "_node")
                .join(
                    meta.select(F.col("_node").alias("_rep"), F.col("domain").alias("ref_domain")),
                    "_rep",
                )
                .select(
                    "id",
                    "_part",
                    "domain",
                    "reason",
                    _node_id("_rep").alias("ref_id"),
                    "sim",
                    "ref_domain",
                )
                .cache()
            )
            say("dedup: decisions and gates")
            agg_rows, comp_sizes, big_components = _summaries_spark(dec, dc)
            cached = [meta, dec, near_pairs]

        # Counts, component sizes and gates, from small aggregates.
        t = time.perf_counter()
        per_domain: dict[str, dict[str, Any]] = {}
        for row in seen.to_pylist():
            e = per_domain.setdefault(
                row["domain"],
                {"in": 0, "kept": 0, "exact_duplicate": 0, "near_duplicate": 0, "cross_domain": 0},
            )
            e["in"] += row["n"]
            e["kept"] += row["n"]
        n_in = sum(e["in"] for e in per_domain.values())
        below = 0
        for row in agg_rows:
            e = per_domain[row["domain"]]
            e[row["reason"]] += row["count"]
            e["kept"] -= row["count"]
            e["cross_domain"] += row["count"] if row["cross"] else 0
            below += row["count"] if row["below"] else 0
        n_removed = sum(e["in"] - e["kept"] for e in per_domain.values())
        for e in per_domain.values():
            e["removed"] = e["exact_duplicate"] + e["near_duplicate"]
            e["removal_rate"] = e["removed"] / max(e["in"], 1)
        timings["summaries_s"] = round(time.perf_counter() - t, 3)
        near_removed = sum(e["near_duplicate"] for e in per_domain.values())
        n_kept = n_in - n_removed
        if n_in != ingest.counts.get("out", n_in):
            raise RuntimeError(
                f"dedup read {n_in} documents, but ingest wrote {ingest.counts.get('out')}"
            )
        gates = {
            "max_removal_rate": dc.max_removal_rate,
            "domains_over_rate": {
                d: round(e["removal_rate"], 4)
                for d, e in sorted(per_domain.items())
                if e["removal_rate"] > dc.max_removal_rate
            },
            "max_component_size": dc.max_component_size,
            "components_over_size": big_components,
            "removed_below_threshold": below,
            "removed_below_threshold_share": below / near_removed if near_removed else 0.0,
        }
        manifest = {
            "config": dc.model_dump(mode="json"),
            "config_hash": config_hash(dc),
            "inputs": {"manifests": {"ingest": ingest.manifest_hash}},
            "engine": engine,
            "lsh": {
                "bands": b,
                "rows": r,
                "candidate_edges": n_candidates,
                "verified_edges": n_verified,
            },
            "counts": {
                "in": n_in,
                "kept": n_kept,
                "out": n_kept,
                "removed": n_removed,
                "quarantined": 0,
                "removed_reasons": {
                    "exact_duplicate": n_removed - near_removed,
                    "near_duplicate": near_removed,
                },
                "cross_domain_removed": sum(e["cross_domain"] for e in per_domain.values()),
                "per_domain": dict(sorted(per_domain.items())),
            },
            "component_sizes": comp_sizes,
            "gates": gates,
            "timings": timings,
            "outputs": {
                "data": "data",
                "ledger": "ledger",
                "report": "report.md",
                "plot": "component_sizes.png",
            },
        }
        t = time.perf_counter()
        _plot_sizes(comp_sizes, str(w.path("component_sizes.png")))
        w.path("report.md").write_text(_report(manifest), encoding="utf-8")
        if gates["domains_over_rate"]:
            worst = ", ".join(f"{d}: {rate:.1%}" for d, rate in gates["domains_over_rate"].items())
            kept_report = os.path.join(cfg.run_dir, f"{STAGE}-{key}.gate-failed.md")
            write_text_atomic(kept_report, w.path("report.md").read_text(encoding="utf-8"))
            raise DedupGateError(
                f"dedup would remove more than dedup.max_removal_rate={dc.max_removal_rate:.0%} of domain(s) {worst}. "
                f"See {kept_report} (largest components: templated documents?); raise dedup.max_removal_rate to accept."
            )

        timings["report_s"] = round(time.perf_counter() - t, 3)
        say("dedup: writing kept documents and the ledger")
        t = time.perf_counter()
        if engine == "local":
            cols = ["id", "reason", "ref_id", "sim"]
            by_part = {
                int(i): dec_t.filter(pc.equal(dec_t["_part"], i)).select(cols)
                for i in pc.unique(dec_t["_part"]).to_pylist()
            }
            written = ps.write(None, w, RemovedByPart(by_part=by_part))
        else:
            write_partitioned(
                dec.select("id", "_part", "reason", "ref_id", "sim"), dec_dir, "_part"
            )
            written = ps.write(spark, w, RemovedByPart(folder=dec_dir))
        timings["write_s"] = round(time.perf_counter() - t, 3)
        for d, e in per_domain.items():
            r = written.per_domain.get(d, {"kept": 0, "reasons": {}})
            got = (
                r["kept"],
                r["reasons"].get("exact_duplicate", 0),
                r["reasons"].get("near_duplicate", 0),
            )
            if got != (e["kept"], e["exact_duplicate"], e["near_duplicate"]):
                raise RuntimeError(
                    f"dedup accounting mismatch in domain {d!r}: wrote {got}, decided {e}"
                )
        for df in cached:
            df.unpersist()
        w.discard("_sig")
        w.discard("_decisions")
        timings["total_s"] = round(time.perf_counter() - t0, 3)
        result = w.commit(json.loads(json.dumps(manifest, default=float)))
    say(
        f"dedup: kept {n_kept} of {n_in} documents ({n_removed} duplicates removed) -> {result.path}"
    )
    return result


def _plot_sizes(sizes: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if sizes:
        ax.bar([s["size"] for s in sizes], [s["count"] for s in sizes], width=0.8)
        ax.set_yscale("log")
        if max(s["size"] for s in sizes) > 50:
            ax.set_xscale("log")
    ax.set_xlabel("near-duplicate component size (documents)")
    ax.set_ylabel("components")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def _report(m: dict[str, Any]) -> str:
    c, g = m["counts"], m["gates"]
    lines = [
        "# Dedup report",
        "",
        f"{c['removed']} of {c['in']} documents removed: {c['removed_reasons']['exact_duplicate']} exact, "
        f"{c['removed_reasons']['near_duplicate']} near duplicates (scope: {m['config']['scope']}, threshold "
        f"{m['config']['threshold']}, {m['lsh']['bands']} bands x {m['lsh']['rows']} rows). "
        f"{c['cross_domain_removed']} removed documents duplicate a document of another domain.",
        "",
        f"LSH: {m['lsh']['candidate_edges']} candidate edges, "
        + (
            f"{m['lsh']['verified_edges']} verified (Jaccard >= {m['config']['threshold']})."
            if m["config"]["verify"]
            else "verification off (all kept)."
        ),
        "",
        "| domain | in | kept | exact | near | removal rate |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for d, e in c["per_domain"].items():
        flag = " **over the gate**" if d in g["domains_over_rate"] else ""
        lines.append(
            f"| {d} | {e['in']} | {e['kept']} | {e['exact_duplicate']} | {e['near_duplicate']} | {e['removal_rate']:.3f}{flag} |"
        )
    lines += ["", "## Gates", ""]
    lines.append(
        f"- removal-rate ceiling {g['max_removal_rate']:.0%}: "
        + ("passed" if not g["domains_over_rate"] else f"FAILED for {g['domains_over_rate']}")
    )
    lines.append(
        f"- components over {g['max_component_size']} documents: {len(g['components_over_size'])}"
    )
    for comp in g["components_over_size"]:
        lines.append(
            f"  - {comp['size']} docs, kept {comp['kept']}, e.g. {', '.join(comp['sample_members'])}"
        )
    lines.append(
        f"- removed documents whose Jaccard to the kept one is below the threshold (merged through a chain): "
        f"{g['removed_below_threshold']} ({g['removed_below_threshold_share']:.1%})"
    )
    lines += ["", "## Component sizes", "", "| size | components |", "|---:|---:|"]
    lines += [f"| {s['size']} | {s['count']} |" for s in m["component_sizes"]]
    lines += ["", "![component sizes](component_sizes.png)", ""]
    return "\n".join(lines)
