"""Ingest: raw files -> the Parquet document store, with every bad record quarantined.

Spark glue over :func:`curamix.io.records.read_unit`: one task per read unit reads its files
in ``mapInArrow``; the job then sets aside records whose id was already seen (the first
occurrence by file path and record number is kept), writes documents, quarantine and ledger,
and checks for every file that records read = records ingested + records quarantined.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from curamix.config import PipelineConfig, config_hash
from curamix.io.inputs import expand_inputs
from curamix.io.records import PARSED_SCHEMA, STATS_REASON, ReadUnit, read_unit
from curamix.io.store import JobResult, load_completed, stage_writer
from curamix.schema import DOC_SCHEMA, LEDGER_SCHEMA, QUARANTINE_SCHEMA, Decision, QuarantineReason

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

STAGE = "ingest"


class AccountingError(RuntimeError):
    """Records read from a file do not equal records ingested plus quarantined."""


def _read_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        for unit_json in batch.column("unit").to_pylist():
            yield from read_unit(ReadUnit.from_json(unit_json))


def ingest_key(cfg: PipelineConfig, fingerprints: list[dict]) -> str:
    """Stage key: the ingest config and the fingerprints of its input files."""
    return config_hash(STAGE, cfg.ingest, fingerprints)


def _write(
    df: DataFrame, path: str, schema: pa.Schema, n_rows: int, rows_per_file: int, order: list[str]
) -> None:
    """Write ``df`` sorted by ``order`` in ceil(n_rows / rows_per_file) files; an empty
    dataset still gets one readable file with ``schema``."""
    if n_rows == 0:
        import os

        os.makedirs(path, exist_ok=True)
        pq.write_table(schema.empty_table(), f"{path}/part-00000.parquet")
        return
    n_files = max(1, math.ceil(n_rows / rows_per_file))
    df.select(*schema.names).repartitionByRange(n_files, *order).sortWithinPartitions(
        *order
    ).write.parquet(path)


def run_ingest(
    spark: SparkSession,
    cfg: PipelineConfig,
    on_step: Callable[[str], None] | None = None,
) -> JobResult:
    """Ingest ``cfg.ingest.inputs`` into ``cfg.run_dir``; skipped when already completed."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    if cfg.ingest is None:
        raise ValueError("run_ingest needs an 'ingest:' section in the config")
    say = on_step or (lambda _msg: None)
    t0 = time.perf_counter()
    expanded = expand_inputs(cfg.ingest)
    key = ingest_key(cfg, expanded.fingerprints)
    done = load_completed(cfg.run_dir, STAGE, key)
    if done is not None:
        say(f"ingest: skipped, already complete at {done.path}")
        return done

    timings: dict[str, float] = {}
    with stage_writer(cfg.run_dir, STAGE, key) as w:
        say(f"ingest: reading {len(expanded.fingerprints)} files in {len(expanded.units)} tasks")
        t = time.perf_counter()
        units = spark.sparkContext.parallelize(
            [(u.to_json(),) for u in expanded.units], numSlices=len(expanded.units)
        ).toDF("unit string")
        parsed_path = str(w.path("_parsed"))
        units.mapInArrow(_read_partition, from_arrow_schema(PARSED_SCHEMA)).write.parquet(
            parsed_path
        )
        timings["read_s"] = time.perf_counter() - t

        say("ingest: checking ids and writing documents, quarantine and ledger")
        t = time.perf_counter()
        p = spark.read.parquet(parsed_path)
        stats = {
            r["source"]: r["record"]
            for r in p.filter(F.col("reason") == STATS_REASON).select("source", "record").collect()
        }
        docs_all = p.filter(F.col("reason").isNull())
        by_id = Window.partitionBy("id").orderBy("source", "record")
        ranked = docs_all.withColumn("_rn", F.row_number().over(by_id)).withColumn(
            "_first",
            F.concat(
                F.first("source").over(by_id),
                F.lit(":"),
                F.first("record").over(by_id).cast("string"),
            ),
        )
        dup_records = ranked.filter(F.col("_rn") > 1).select("source", "record").distinct()
        is_dup = ranked.join(
            dup_records.withColumn("_dup", F.lit(True)), ["source", "record"], "left"
        )
        is_dup = is_dup.cache()
        docs = is_dup.filter(F.col("_dup").isNull())
        dups = is_dup.filter(F.col("_dup")).select(
            F.concat("source", F.lit("#"), F.col("record").cast("string"), F.lit(":"), "id").alias(
                "id"
            ),
            "source",
            "record",
            F.lit(str(QuarantineReason.DUPLICATE_ID)).alias("reason"),
            F.concat(F.lit("id "), "id", F.lit(" was first seen at "), "_first").alias("detail"),
            F.to_json(F.struct("id", "text", "domain", "meta")).alias("raw"),
            "domain",
            F.col("id").alias("ref_id"),
        )
        bad = p.filter(F.col("reason").isNotNull() & (F.col("reason") != STATS_REASON)).select(
            "id",
            "source",
            "record",
            "reason",
            "detail",
            "raw",
            "domain",
            F.lit(None).cast("string").alias("ref_id"),
        )
        quarantine = bad.unionByName(dups).cache()

        n_docs = docs.count()
        n_quarantine_rows = quarantine.count()
        rows_per_file = cfg.ingest.rows_per_file
        _write(docs, str(w.path("data")), DOC_SCHEMA, n_docs, rows_per_file, ["id"])
        q_schema = QUARANTINE_SCHEMA.append(pa.field("domain", pa.string()))
        _write(
            quarantine,
            str(w.path("quarantine")),
            q_schema,
            n_quarantine_rows,
            rows_per_file,
            ["source", "record"],
        )
        ledger = docs.select(
            "id",
            F.lit(STAGE).alias("stage"),
            F.lit(str(Decision.KEPT)).alias("decision"),
            F.lit(None).cast("string").alias("reason"),
            F.lit(None).cast("double").alias("score"),
            F.lit(None).cast("string").alias("ref_id"),
        ).unionByName(
            quarantine.select(
                "id",
                F.lit(STAGE).alias("stage"),
                F.lit(str(Decision.QUARANTINED)).alias("decision"),
                "reason",
                F.lit(None).cast("double").alias("score"),
                "ref_id",
            )
        )
        _write(
            ledger,
            str(w.path("ledger")),
            LEDGER_SCHEMA,
            n_docs + n_quarantine_rows,
            rows_per_file,
            ["id"],
        )
        timings["write_s"] = time.perf_counter() - t

        counts = _counts(docs, quarantine, stats)
        is_dup.unpersist()
        quarantine.unpersist()
        import shutil

        shutil.rmtree(parsed_path)
        timings["total_s"] = time.perf_counter() - t0
        manifest: dict[str, Any] = {
            "config": cfg.ingest.model_dump(mode="json"),
            "config_hash": config_hash(cfg.ingest),
            "inputs": {"files": expanded.fingerprints, "manifests": {}},
            "ignored_files": expanded.ignored_files,
            "counts": counts,
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "spark": {"master": spark.sparkContext.master, "version": spark.version},
            "outputs": {"data": "data", "ledger": "ledger", "quarantine": "quarantine"},
        }
        result = w.commit(manifest)
    say(
        f"ingest: {counts['kept']} records ingested as {counts['out']} documents, "
        f"{counts['quarantined']} quarantined, from {counts['in']} records -> {result.path}"
    )
    return result


def _counts(docs: DataFrame, quarantine: DataFrame, stats: dict[str, int]) -> dict[str, Any]:
    """Per-file, per-domain and per-reason counts; raises AccountingError when a file's
    records read differ from its records ingested plus quarantined."""
    from pyspark.sql import functions as F

    per_file_docs = {
        r["source"]: (r["records"], r["rows"])
        for r in docs.groupBy("source")
        .agg(F.countDistinct("record").alias("records"), F.count("*").alias("rows"))
        .collect()
    }
    per_file_q = {
        r["source"]: r["records"]
        for r in quarantine.groupBy("source")
        .agg(F.countDistinct("record").alias("records"))
        .collect()
    }
    per_file: dict[str, dict[str, int]] = {}
    bad = []
    for source in sorted(set(stats) | set(per_file_docs) | set(per_file_q)):
        kept, rows = per_file_docs.get(source, (0, 0))
        q = per_file_q.get(source, 0)
        read = stats.get(source, -1)
        per_file[source] = {"records": read, "ingested": kept, "quarantined": q, "rows": rows}
        if read != kept + q:
            bad.append(f"{source}: read {read}, ingested {kept} + quarantined {q}")
    if bad:
        raise AccountingError("ingest lost track of records:\n  " + "\n  ".join(bad))

    per_domain: dict[str, dict[str, int]] = {}
    for r in (
        docs.groupBy("domain")
        .agg(F.countDistinct("source", "record").alias("records"), F.count("*").alias("rows"))
        .collect()
    ):
        d = per_domain.setdefault(r["domain"], {"in": 0, "out": 0, "kept": 0, "quarantined": 0})
        d["kept"] += r["records"]
        d["in"] += r["records"]
        d["out"] += r["rows"]
    for r in (
        quarantine.groupBy("domain")
        .agg(F.countDistinct("source", "record").alias("records"))
        .collect()
    ):
        d = per_domain.setdefault(
            r["domain"] or "", {"in": 0, "out": 0, "kept": 0, "quarantined": 0}
        )
        d["quarantined"] += r["records"]
        d["in"] += r["records"]
    reasons = {
        r["reason"]: r["records"]
        for r in quarantine.groupBy("reason")
        .agg(F.countDistinct("source", "record").alias("records"))
        .collect()
    }
    kept = sum(v["ingested"] for v in per_file.values())
    quarantined = sum(v["quarantined"] for v in per_file.values())
    return {
        "in": kept + quarantined,
        "kept": kept,
        "removed": 0,
        "quarantined": quarantined,
        "out": sum(v["rows"] for v in per_file.values()),
        "per_domain": dict(sorted(per_domain.items())),
        "per_file": per_file,
        "quarantine_reasons": dict(sorted(reasons.items())),
    }
