"""Running a plain function over Parquet part files on Spark, one task per part.

The stages after ingest read the ingest output part by part. Spark only schedules: each
task runs a plain Python function on one part (with pyarrow), so results depend on the parts,
never on the number of Spark workers or how Spark would have split the files.
"""

from __future__ import annotations

import hashlib
import heapq
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

PartFn = Callable[[int, str], pa.Table]
"""(part index, payload) -> a small result table."""


def _apply(batches: Iterator[pa.RecordBatch], fn: PartFn) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        for idx, payload in zip(
            batch.column("idx").to_pylist(), batch.column("payload").to_pylist(), strict=True
        ):
            yield from fn(idx, payload).to_batches()


def choose_engine(engine: str, size: int, local_max: int) -> str:
    """``engine`` itself, or for ``auto``: ``local`` (the stage's functions in the driver
    process) when ``size`` is at most ``local_max``, where Spark's fixed cost per job outweighs
    the work, else ``spark``."""
    if engine != "auto":
        return engine
    return "local" if size <= local_max else "spark"


def map_parts(spark: SparkSession, payloads: list[str], fn: PartFn, schema: pa.Schema) -> pa.Table:
    """Run ``fn(i, payloads[i])`` for every payload as its own Spark task; concatenate results."""
    from pyspark.sql.pandas.types import from_arrow_schema

    if not payloads:
        return schema.empty_table()
    df = spark.sparkContext.parallelize(list(enumerate(payloads)), numSlices=len(payloads)).toDF(
        "idx long, payload string"
    )
    out = df.mapInArrow(lambda it: _apply(it, fn), from_arrow_schema(schema)).toArrow()
    return out.cast(schema) if out.num_rows else schema.empty_table()


def read_parquet_df(spark: SparkSession, folder: str, schema: pa.Schema) -> DataFrame:
    """A DataFrame of the ``part-*.parquet`` files of ``folder``: Spark's own reader for local
    paths, and for object-store URIs one task per file reading it with pyarrow (workers
    reach the store directly; no Hadoop connector is needed)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    from curamix.io.fs import is_remote
    from curamix.io.store import part_files

    if not is_remote(folder):
        return spark.read.schema(from_arrow_schema(schema)).parquet(os.fspath(folder))
    files = part_files(folder)

    def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq

        for batch in batches:
            for path in batch.column("path").to_pylist():
                for b in pq.ParquetFile(path).iter_batches(65_536, columns=schema.names):
                    yield from pa.Table.from_batches([b]).cast(schema).to_batches()

    rdd = spark.sparkContext.parallelize([(f,) for f in files], numSlices=len(files))
    df = rdd.toDF("path string")
    return df.mapInArrow(read, from_arrow_schema(schema))


def write_partitioned(df: DataFrame, folder: str, column: str) -> None:
    """``df.write.partitionBy(column).parquet(folder)`` (``folder/<column>=<value>/*.parquet``,
    without the column): Spark's writer for local paths; for object-store URIs the tasks
    write their rows with pyarrow, one file per task and value (no Hadoop connector)."""
    from curamix.io.fs import is_remote

    if not is_remote(folder):
        df.write.partitionBy(column).parquet(os.fspath(folder))
        return
    names = [c for c in df.columns if c != column]

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import uuid

        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        tables = [pa.Table.from_batches([b]) for b in batches]
        if tables:
            t = pa.concat_tables(tables)
            tag = uuid.uuid4().hex[:12]
            for v in pc.unique(t[column]).to_pylist():
                rows = t.filter(pc.equal(t[column], v)).select(names)
                pq.write_table(rows, f"{folder}/{column}={v}/part-{tag}.parquet")
        yield pa.RecordBatch.from_pydict({"n": [0]})

    df.repartition(column).mapInArrow(write, "n long").collect()


# --- a seeded sample of documents that does not depend on the partitioning ---------------------

SampleKey = tuple[int, str]
"""``(hash of (seed, id), id)``: the sample is the documents with the smallest keys."""
KEY_SCHEMA = pa.schema([("h", pa.int64()), ("id", pa.string())])


def sample_hash(seed: int, doc_id: str) -> int:
    """A 63-bit hash of ``(seed, id)`` (blake2b; fits Spark's and Arrow's int64)."""
    digest = hashlib.blake2b(f"{seed}\x00{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def part_keys(ids: Iterable[str], seed: int, sample: int) -> list[SampleKey]:
    """A part's ``sample + 1`` smallest ``(hash, id)`` keys, sorted: enough to find the cutoff
    and to tell whether the whole pool exceeds the sample."""
    return heapq.nsmallest(sample + 1, ((sample_hash(seed, i), i) for i in ids))


def cutoff_from_keys(keys: Iterable[SampleKey], sample: int) -> SampleKey | None:
    """The largest key kept by a sample of ``sample`` documents, given every part's
    :func:`part_keys`; ``None`` when the sample covers every document."""
    merged = heapq.nsmallest(sample + 1, keys)
    return merged[sample - 1] if len(merged) > sample else None


def sample_cutoff(parts_ids: Iterable[Iterable[str]], seed: int, sample: int) -> SampleKey | None:
    """:func:`cutoff_from_keys` over any split of the ids into parts; the result does not
    depend on the split. A document is in the sample iff its key <= the cutoff."""
    return cutoff_from_keys((k for ids in parts_ids for k in part_keys(ids, seed, sample)), sample)


def in_sample(ids: Sequence[str], seed: int, cutoff: SampleKey | None) -> np.ndarray:
    """Boolean mask of the ids inside the sample that ``cutoff`` bounds (all when ``None``)."""
    if cutoff is None:
        return np.ones(len(ids), dtype=bool)
    return np.fromiter(((sample_hash(seed, i), i) <= cutoff for i in ids), bool, len(ids))


def _part_keys(path: str, seed: int, sample: int) -> pa.Table:
    import pyarrow.parquet as pq

    keys = part_keys(pq.read_table(path, columns=["id"])["id"].to_pylist(), seed, sample)
    return pa.table({"h": [h for h, _ in keys], "id": [i for _, i in keys]}, schema=KEY_SCHEMA)


def spark_sample_cutoff(
    spark: SparkSession, parts: list[str], seed: int, sample: int
) -> SampleKey | None:
    """:func:`sample_cutoff` over the ``id`` column of Parquet parts, one Spark task per part
    (each returns at most ``sample + 1`` keys)."""
    keys = map_parts(spark, parts, lambda _i, p: _part_keys(p, seed, sample), KEY_SCHEMA)
    return cutoff_from_keys(zip(keys["h"].to_pylist(), keys["id"].to_pylist(), strict=True), sample)


def check_accounting(
    stage: str,
    out_dir: str | os.PathLike,
    source: str,
    expected_in: int | None,
    n_in: int,
    n_kept: int,
) -> None:
    """Every input document is in the stage's ``ledger/`` once and every kept one in its
    ``data/``: ``n_in`` read (``expected_in`` written by ``source``), ``n_kept`` kept; raise
    ``RuntimeError`` naming the numbers otherwise."""
    import pyarrow.parquet as pq

    if expected_in is not None and n_in != expected_in:
        raise RuntimeError(f"{stage} read {n_in} documents, but {source} wrote {expected_in}")
    from curamix.io.store import part_files

    rows = {
        sub: sum(
            pq.ParquetFile(f).metadata.num_rows
            for f in part_files(os.path.join(os.fspath(out_dir), sub))
        )
        for sub in ("ledger", "data")
    }
    if (rows["ledger"], rows["data"]) != (n_in, n_kept):
        raise RuntimeError(
            f"{stage} accounting mismatch: {n_in} in, {n_kept} kept, but the ledger has "
            f"{rows['ledger']} rows and data {rows['data']} documents"
        )
