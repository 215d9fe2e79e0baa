"""Ingest: raw files -> the Parquet document store, with every bad record quarantined.

Thin Spark glue over plain functions. Spark schedules the work; Python workers stream the
data, so text never crosses into the JVM:

A. :func:`ingest_unit`, one task per read unit: stream the unit's files through
   :func:`curamix.io.records.read_unit` into ``data/part-<unit>.parquet`` (documents, in file
   order), ``quarantine/part-<unit>.parquet`` and a small ``_ids`` side file; return counts.
B. Spark reads only the ``_ids`` columns to find ids seen more than once. The first occurrence
   (by file path, then record number) is kept; every other record holding that id is set
   aside as ``duplicate_id`` (all chunks of a split record go together).
C. :func:`finish_unit`, one task per unit: move those records from data to quarantine and write
   ``ledger/part-<unit>.parquet`` (one row per record: kept or quarantined).

The driver then checks, for every file, records read = ingested + quarantined.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curamix.config import PipelineConfig, config_hash
from curamix.io.fs import is_remote, makedirs
from curamix.io.inputs import expand_inputs
from curamix.io.records import STATS_REASON, ReadUnit, read_unit
from curamix.io.store import JobResult, load_completed, stage_writer
from curamix.pipelines.parts import choose_engine, read_parquet_df
from curamix.schema import DOC_SCHEMA, LEDGER_SCHEMA, QUARANTINE_SCHEMA, Decision, QuarantineReason

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

STAGE = "ingest"
KEPT = str(Decision.KEPT)
MAX_DUPLICATE_ID_ROWS = 5_000_000
"""Above this many records with a repeated id, the id field is almost surely the wrong one."""

Q_SCHEMA = QUARANTINE_SCHEMA.append(pa.field("domain", pa.string())).append(
    pa.field("ref_id", pa.string())
)
"""Quarantine files: the quarantine schema plus the record's domain and, for duplicates, the kept id."""
IDS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("record", pa.int64()),
        ("domain", pa.string()),
        ("unit", pa.int64()),
        ("pos", pa.int64()),
    ]
)
COUNTS_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("domain", pa.string()),
        ("kind", pa.string()),
        ("records", pa.int64()),
        ("rows", pa.int64()),
    ]
)
"""Per (file, domain, kind) counts; ``kind`` is ``kept``, a quarantine reason, or the stats
reason (``records`` = records the reader saw in the file)."""
PART_ROW_GROUP = 50_000


class AccountingError(RuntimeError):
    """Records read from a file do not equal records ingested plus quarantined."""


class QuarantineRateError(ValueError):
    """A file quarantined more of its records than ``ingest.max_quarantine_rate`` allows."""


def check_quarantine_rate(per_file: dict[str, dict[str, int]], limit: float | None) -> None:
    """Raise :class:`QuarantineRateError` naming each file whose quarantined share of records
    is above ``limit`` (``None``: no limit)."""
    if limit is None:
        return
    over = {
        src: v["quarantined"] / v["records"]
        for src, v in sorted(per_file.items())
        if v["records"] and v["quarantined"] / v["records"] > limit
    }
    if over:
        worst = "; ".join(
            f"{src}: {per_file[src]['quarantined']} of {per_file[src]['records']} records "
            f"({rate:.1%})"
            for src, rate in over.items()
        )
        raise QuarantineRateError(
            f"ingest quarantined more than ingest.max_quarantine_rate={limit:.1%} of the "
            f"records of {worst}; see the quarantine reasons with `curamix status`, fix the "
            "input, or raise ingest.max_quarantine_rate"
        )


class DuplicateIdError(ValueError):
    """Too many records share ids: the configured id field does not hold unique ids."""


def part_name(unit_index: int) -> str:
    return f"part-{unit_index:05d}.parquet"


def _counts_table(counts: dict[tuple[str, str, str], list[Any]]) -> pa.Table:
    rows = [
        {
            "source": s,
            "domain": d,
            "kind": k,
            "records": len(recs) if isinstance(recs, set) else recs,
            "rows": n,
        }
        for (s, d, k), (recs, n) in counts.items()
    ]
    return pa.Table.from_pylist(rows, schema=COUNTS_SCHEMA)


def ingest_unit(
    unit: ReadUnit, unit_index: int, out_dir: str, ids_dir: str | None = None
) -> pa.Table:
    """Phase A for one read unit: write its documents and quarantine under ``out_dir`` and its
    id side file under ``ids_dir`` (default ``out_dir/_ids``); return its counts
    (:data:`COUNTS_SCHEMA`)."""
    name = part_name(unit_index)
    ids_dir = ids_dir or os.path.join(out_dir, "_ids")
    for sub in ("data", "quarantine"):
        makedirs(os.path.join(out_dir, sub))
    makedirs(ids_dir)
    writers = {
        "data": pq.ParquetWriter(
            os.path.join(out_dir, "data", name), DOC_SCHEMA, compression="zstd"
        ),
        "quarantine": pq.ParquetWriter(
            os.path.join(out_dir, "quarantine", name), Q_SCHEMA, compression="zstd"
        ),
        "_ids": pq.ParquetWriter(os.path.join(ids_dir, name), IDS_SCHEMA, compression="zstd"),
    }
    # (source, domain, kind) -> [set of records or count, rows]
    counts: dict[tuple[str, str, str], list[Any]] = defaultdict(lambda: [set(), 0])
    pos = 0
    try:
        for batch in read_unit(unit, batch_rows=4096):
            t = pa.Table.from_batches([batch])
            reason = t["reason"]
            is_doc = pc.is_null(reason)
            is_stats = pc.fill_null(pc.equal(reason, STATS_REASON), False)
            docs = t.filter(is_doc)
            bad = t.filter(pc.and_(pc.invert(is_doc), pc.invert(is_stats)))
            stats = t.filter(is_stats)
            if docs.num_rows:
                writers["data"].write_table(
                    docs.select(DOC_SCHEMA.names).cast(DOC_SCHEMA), row_group_size=PART_ROW_GROUP
                )
                n = docs.num_rows
                ids = docs.select(["id", "source", "record", "domain"]).append_column(
                    "unit", pa.array([unit_index] * n, pa.int64())
                )
                writers["_ids"].write_table(
                    ids.append_column("pos", pa.array(range(pos, pos + n), pa.int64()))
                )
                pos += n
                for s, d, r in zip(
                    docs["source"].to_pylist(),
                    docs["domain"].to_pylist(),
                    docs["record"].to_pylist(),
                    strict=True,
                ):
                    c = counts[(s, d, KEPT)]
                    c[0].add(r)
                    c[1] += 1
            if bad.num_rows:
                qt = bad.select([n for n in Q_SCHEMA.names if n != "ref_id"]).append_column(
                    "ref_id", pa.nulls(bad.num_rows, pa.string())
                )
                writers["quarantine"].write_table(qt.cast(Q_SCHEMA))
                for s, d, k, r in zip(
                    bad["source"].to_pylist(),
                    bad["domain"].to_pylist(),
                    bad["reason"].to_pylist(),
                    bad["record"].to_pylist(),
                    strict=True,
                ):
                    c = counts[(s, d, k)]
                    c[0].add(r)
                    c[1] += 1
            for s, d, r in zip(
                stats["source"].to_pylist(),
                stats["domain"].to_pylist(),
                stats["record"].to_pylist(),
                strict=True,
            ):
                counts[(s, d, STATS_REASON)] = [r, 0]
    finally:
        for w in writers.values():
            w.close()
    return _counts_table(counts)


def finish_unit(unit_index: int, out_dir: str, dup_rows: list[dict[str, Any]]) -> pa.Table:
    """Phase C for one unit: move ``dup_rows`` (dicts with ``pos``, ``first`` and ``ref_id``)
    from data to quarantine as ``duplicate_id``, then write the unit's ledger. Returns the
    count changes (:data:`COUNTS_SCHEMA`, negative ``kept`` and positive ``duplicate_id``)."""
    name = part_name(unit_index)
    data_path = os.path.join(out_dir, "data", name)
    q_path = os.path.join(out_dir, "quarantine", name)
    delta: dict[tuple[str, str, str], list[Any]] = {}
    if dup_rows:
        docs = pq.read_table(data_path)
        by_pos = {r["pos"]: r for r in dup_rows}
        mask = pa.array([i in by_pos for i in range(docs.num_rows)])
        moved = docs.filter(mask).to_pylist()
        kept = docs.filter(pc.invert(mask))
        q_rows = []
        for row, info in zip(moved, (by_pos[p] for p in sorted(by_pos)), strict=True):
            q_rows.append(
                {
                    "id": f"{row['source']}#{info['record']}:{row['id']}",
                    "source": row["source"],
                    "record": info["record"],
                    "reason": str(QuarantineReason.DUPLICATE_ID),
                    "detail": f"id {row['id']} was first seen at {info['first']}",
                    "raw": json.dumps(
                        {k: row[k] for k in ("id", "text", "domain", "meta")}, ensure_ascii=False
                    ),
                    "domain": row["domain"],
                    "ref_id": row["id"],
                }
            )
            for kind, sign in ((KEPT, -1), (str(QuarantineReason.DUPLICATE_ID), 1)):
                c = delta.setdefault((row["source"], row["domain"], kind), [set(), 0])
                c[0].add(info["record"])
                c[1] += sign
        quarantine = pa.concat_tables(
            [pq.read_table(q_path), pa.Table.from_pylist(q_rows, schema=Q_SCHEMA)]
        )
        _replace_parquet(kept, data_path)
        _replace_parquet(quarantine, q_path)
    ids = pq.read_table(data_path, columns=["id"])["id"]
    q = pq.read_table(q_path, columns=["id", "reason", "ref_id"])
    n, m = len(ids), q.num_rows
    ledger = pa.table(
        {
            "id": pa.concat_arrays([ids.combine_chunks(), q["id"].combine_chunks()])
            if n + m
            else pa.array([], pa.string()),
            "stage": pa.array([STAGE] * (n + m), pa.string()),
            "decision": pa.array([KEPT] * n + [str(Decision.QUARANTINED)] * m, pa.string()),
            "reason": pa.concat_arrays([pa.nulls(n, pa.string()), q["reason"].combine_chunks()]),
            "score": pa.nulls(n + m, pa.float64()),
            "ref_id": pa.concat_arrays([pa.nulls(n, pa.string()), q["ref_id"].combine_chunks()]),
        },
        schema=LEDGER_SCHEMA,
    )
    makedirs(os.path.join(out_dir, "ledger"))
    pq.write_table(ledger, os.path.join(out_dir, "ledger", name), compression="zstd")
    # Deltas: kept loses records and rows, duplicate_id gains them.
    rows = []
    for (s, d, k), (recs, nrows) in delta.items():
        sign = -1 if k == KEPT else 1
        rows.append(
            {"source": s, "domain": d, "kind": k, "records": sign * len(recs), "rows": nrows}
        )
    return pa.Table.from_pylist(rows, schema=COUNTS_SCHEMA)


def _replace_parquet(table: pa.Table, path: str) -> None:
    if is_remote(path):  # one PUT replaces the object whole
        pq.write_table(table, path, compression="zstd", row_group_size=PART_ROW_GROUP)
        return
    tmp = path + ".tmp"
    pq.write_table(table, tmp, compression="zstd", row_group_size=PART_ROW_GROUP)
    os.replace(tmp, path)


def _phase_a(
    batches: Iterator[pa.RecordBatch], out_dir: str, ids_dir: str
) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        for idx, unit_json in zip(
            batch.column("idx").to_pylist(), batch.column("unit").to_pylist(), strict=True
        ):
            unit = ReadUnit.from_json(unit_json)
            yield from ingest_unit(unit, idx, out_dir, ids_dir).to_batches()


def _phase_c(batches: Iterator[pa.RecordBatch], out_dir: str) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        for idx, dups in zip(
            batch.column("idx").to_pylist(), batch.column("dups").to_pylist(), strict=True
        ):
            yield from finish_unit(idx, out_dir, json.loads(dups)).to_batches()


EXECUTION_ONLY = {"engine", "local_max_bytes", "max_quarantine_rate"}
"""Settings that change how the stage runs, never its output: not part of its cache key."""


def ingest_key(cfg: PipelineConfig, inputs: Mapping[str, JobResult] | None = None) -> str:
    """Stage key: the ingest config and the fingerprints of its input files (ingest reads no
    stage: ``inputs`` is empty)."""
    assert cfg.ingest is not None
    decisive = cfg.ingest.model_dump(mode="json", exclude=EXECUTION_ONLY)
    return config_hash(STAGE, decisive, expand_inputs(cfg.ingest).fingerprints)


def _check_duplicate_rows(n: int) -> None:
    if n > MAX_DUPLICATE_ID_ROWS:
        raise DuplicateIdError(
            f"more than {MAX_DUPLICATE_ID_ROWS} records reuse an id seen earlier: the id field does not "
            "hold unique ids. Set `id_field: null` on the input to give every record a content-and-source hash id."
        )


def _find_duplicate_ids_local(ids_path: str) -> dict[int, list[dict[str, Any]]]:
    """:func:`_find_duplicate_ids` in this process (``engine: local``)."""
    ids = pq.read_table(ids_path, schema=IDS_SCHEMA)
    vc = pc.value_counts(ids["id"])
    repeated = pc.filter(vc.field("values"), pc.greater(vc.field("counts"), 1))
    if len(repeated) == 0:
        return {}
    holders: dict[str, set[tuple[str, int]]] = defaultdict(set)
    cand = ids.filter(pc.is_in(ids["id"], value_set=repeated))
    for i, s, r in zip(
        cand["id"].to_pylist(), cand["source"].to_pylist(), cand["record"].to_pylist(), strict=True
    ):
        holders[i].add((s, r))
    first_of: dict[tuple[str, int], tuple[str, int]] = {}
    for recs in holders.values():
        ordered = sorted(recs)
        for rec in ordered[1:]:
            first_of[rec] = min(first_of.get(rec, ordered[0]), ordered[0])
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    n = 0
    for s, r, unit, pos in zip(
        ids["source"].to_pylist(),
        ids["record"].to_pylist(),
        ids["unit"].to_pylist(),
        ids["pos"].to_pylist(),
        strict=True,
    ):
        first = first_of.get((s, r))
        if first is not None:
            out[unit].append({"pos": pos, "record": r, "first": f"{first[0]}:{first[1]}"})
            n += 1
    _check_duplicate_rows(n)
    return out


def _find_duplicate_ids(spark: SparkSession, ids_path: str) -> dict[int, list[dict[str, Any]]]:
    """Rows to set aside as duplicate_id, by unit: every record (all its rows) that holds an
    id already held by an earlier record, ordered by (source, record)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ids = read_parquet_df(spark, ids_path, IDS_SCHEMA)
    repeated = ids.groupBy("id").count().filter(F.col("count") > 1).select("id").cache()
    if repeated.isEmpty():  # the common case: one job, and done
        repeated.unpersist()
        return {}
    cand = ids.join(F.broadcast(repeated) if repeated.count() < 1_000_000 else repeated, "id")
    by_id = Window.partitionBy("id").orderBy("source", "record")
    ranked = cand.withColumn("_rank", F.dense_rank().over(by_id)).withColumn(
        "first",
        F.concat(
            F.first("source").over(by_id), F.lit(":"), F.first("record").over(by_id).cast("string")
        ),
    )
    dup_records = (
        ranked.filter(F.col("_rank") > 1)
        .select("source", "record", "first")
        .dropDuplicates(["source", "record"])
    )
    rows = ids.join(dup_records, ["source", "record"]).select("unit", "pos", "record", "first")
    collected = rows.limit(MAX_DUPLICATE_ID_ROWS + 1).collect()
    repeated.unpersist()
    _check_duplicate_rows(len(collected))
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in collected:
        out[r["unit"]].append({"pos": r["pos"], "record": r["record"], "first": r["first"]})
    return out


def run_ingest(
    spark: SparkSession,
    cfg: PipelineConfig,
    on_step: Callable[[str], None] | None = None,
) -> JobResult:
    """Ingest ``cfg.ingest.inputs`` into ``cfg.run_dir``; skipped when already completed."""
    if cfg.ingest is None:
        raise ValueError("run_ingest needs an 'ingest:' section in the config")
    say = on_step or (lambda _msg: None)
    key = ingest_key(cfg)
    done = load_completed(cfg.run_dir, STAGE, key)
    if done is not None:
        say(f"ingest: skipped, already complete at {done.path}")
        return done
    return write_ingest(spark, cfg, {}, key, say)


def write_ingest(
    spark: SparkSession,
    cfg: PipelineConfig,
    inputs: Mapping[str, JobResult],
    key: str,
    say: Callable[[str], None],
) -> JobResult:
    """Ingest into the stage folder of ``key`` (the registry's runner; :func:`run_ingest`
    checks for a finished output first)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    assert cfg.ingest is not None
    t0 = time.perf_counter()
    expanded = expand_inputs(cfg.ingest)
    timings: dict[str, float] = {}
    counts_schema = from_arrow_schema(COUNTS_SCHEMA)
    with stage_writer(cfg.run_dir, STAGE, key) as w:
        out_dir = str(w.tmp)
        n_units = len(expanded.units)
        size = sum(f["size"] for f in expanded.fingerprints)
        engine = choose_engine(cfg.ingest.engine, size, cfg.ingest.local_max_bytes)
        ids_path = str(w.scratch("_ids"))
        if engine == "local":
            where = f"in this process ({size / 2**20:.1f} MiB <= ingest.local_max_bytes)"

            def read() -> pa.Table:
                parts = [COUNTS_SCHEMA.empty_table()]
                for i, u in enumerate(expanded.units):
                    parts.append(ingest_unit(u, i, out_dir, ids_path))
                    if n_units > 4 and (i + 1) % max(1, n_units // 4) == 0:
                        say(f"ingest: {i + 1}/{n_units} read units")
                return pa.concat_tables(parts)

            def find_dups() -> dict[int, list[dict[str, Any]]]:
                return _find_duplicate_ids_local(ids_path) if n_units else {}

            def finish(dups: dict[int, list[dict[str, Any]]]) -> pa.Table:
                return pa.concat_tables(
                    [COUNTS_SCHEMA.empty_table()]
                    + [finish_unit(i, out_dir, dups.get(i, [])) for i in range(n_units)]
                )
        else:
            where = f"in {n_units} Spark tasks"

            def read() -> pa.Table:
                units = spark.sparkContext.parallelize(
                    [(i, u.to_json()) for i, u in enumerate(expanded.units)], numSlices=n_units
                ).toDF("idx long, unit string")
                run = units.mapInArrow(lambda it: _phase_a(it, out_dir, ids_path), counts_schema)
                return run.toArrow()

            def find_dups() -> dict[int, list[dict[str, Any]]]:
                return _find_duplicate_ids(spark, ids_path)

            def finish(dups: dict[int, list[dict[str, Any]]]) -> pa.Table:
                tasks = spark.sparkContext.parallelize(
                    [(i, json.dumps(dups.get(i, []))) for i in range(n_units)],
                    numSlices=max(1, min(n_units, 4 * spark.sparkContext.defaultParallelism)),
                ).toDF("idx long, dups string")
                return tasks.mapInArrow(lambda it: _phase_c(it, out_dir), counts_schema).toArrow()

        say(f"ingest: reading {len(expanded.fingerprints)} files {where}")
        t = time.perf_counter()
        counts = read()
        timings["read_s"] = time.perf_counter() - t

        say("ingest: checking ids across files")
        t = time.perf_counter()
        dups = find_dups()
        timings["duplicate_ids_s"] = time.perf_counter() - t

        say("ingest: writing the ledger")
        t = time.perf_counter()
        deltas = finish(dups)
        timings["ledger_s"] = time.perf_counter() - t

        w.discard("_ids")
        summary = summarize_counts(pa.concat_tables([counts, deltas]))
        check_quarantine_rate(summary["per_file"], cfg.ingest.max_quarantine_rate)
        timings["total_s"] = time.perf_counter() - t0
        manifest: dict[str, Any] = {
            "config": cfg.ingest.model_dump(mode="json"),
            "config_hash": config_hash(cfg.ingest),
            "inputs": {"files": expanded.fingerprints, "manifests": {}},
            "ignored_files": expanded.ignored_files,
            "counts": summary,
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "engine": engine,
            "spark": {"master": spark.sparkContext.master, "version": spark.version}
            if engine == "spark"
            else None,
            "outputs": {"data": "data", "ledger": "ledger", "quarantine": "quarantine"},
        }
        result = w.commit(manifest)
    say(
        f"ingest: {summary['kept']} records ingested as {summary['out']} documents, "
        f"{summary['quarantined']} quarantined, from {summary['in']} records -> {result.path}"
    )
    return result


def summarize_counts(counts: pa.Table) -> dict[str, Any]:
    """Per-file, per-domain and per-reason record counts from the tasks' count rows; raises
    AccountingError when a file's records read differ from its records ingested plus
    quarantined."""
    per_file: dict[str, dict[str, int]] = defaultdict(
        lambda: {"records": 0, "ingested": 0, "quarantined": 0, "rows": 0}
    )
    per_domain: dict[str, dict[str, int]] = defaultdict(
        lambda: {"in": 0, "out": 0, "kept": 0, "quarantined": 0}
    )
    reasons: dict[str, int] = defaultdict(int)
    for r in counts.to_pylist():
        f, d = per_file[r["source"]], r["domain"] or ""
        if r["kind"] == STATS_REASON:
            f["records"] += r["records"]
        elif r["kind"] == KEPT:
            f["ingested"] += r["records"]
            f["rows"] += r["rows"]
            per_domain[d]["kept"] += r["records"]
            per_domain[d]["in"] += r["records"]
            per_domain[d]["out"] += r["rows"]
        else:
            f["quarantined"] += r["records"]
            per_domain[d]["quarantined"] += r["records"]
            per_domain[d]["in"] += r["records"]
            reasons[r["kind"]] += r["records"]
    bad = [
        f"{src}: read {v['records']}, ingested {v['ingested']} + quarantined {v['quarantined']}"
        for src, v in per_file.items()
        if v["records"] != v["ingested"] + v["quarantined"]
    ]
    if bad:
        raise AccountingError("ingest lost track of records:\n  " + "\n  ".join(sorted(bad)))
    kept = sum(v["ingested"] for v in per_file.values())
    quarantined = sum(v["quarantined"] for v in per_file.values())
    return {
        "in": kept + quarantined,
        "kept": kept,
        "removed": 0,
        "quarantined": quarantined,
        "out": sum(v["rows"] for v in per_file.values()),
        "per_domain": {k: per_domain[k] for k in sorted(per_domain)},
        "per_file": {k: per_file[k] for k in sorted(per_file)},
        "quarantine_reasons": dict(sorted((k, v) for k, v in reasons.items() if v)),
    }
