"""Running a plain function over Parquet part files on Spark, one task per part.

The stages after ingest read the ingest output part by part. Spark only schedules: each
task runs a plain Python function on one part (with pyarrow), so results depend on the parts,
never on the number of Spark workers or how Spark would have split the files.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

PartFn = Callable[[int, str], pa.Table]
"""(part index, payload) -> a small result table."""


def part_files(folder: str | os.PathLike) -> list[str]:
    """The Parquet part files of a stage output folder, sorted."""
    files = sorted(glob.glob(os.path.join(os.fspath(folder), "part-*.parquet")))
    if not files:
        raise FileNotFoundError(f"no part-*.parquet files in {folder}")
    return files


def _apply(batches: Iterator[pa.RecordBatch], fn: PartFn) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        for idx, payload in zip(
            batch.column("idx").to_pylist(), batch.column("payload").to_pylist(), strict=True
        ):
            yield from fn(idx, payload).to_batches()


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
