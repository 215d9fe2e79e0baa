"""A stage's ``data/`` and ``ledger/`` folders are plain Parquet: polars, Spark and Hugging Face
``datasets`` read them as they are and see the same rows."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curamix.config import build_config
from curamix.runner import run_pipeline
from tests.conftest import MAX_DOC_BYTES

pytestmark = pytest.mark.spark


def _polars(folder: Path) -> tuple[list[str], int]:
    import polars as pl

    df = pl.read_parquet(folder / "*.parquet")
    lazy = pl.scan_parquet(folder / "*.parquet").select(pl.len()).collect().item()
    assert lazy == df.height
    return sorted(df.get_column("id").to_list()), df.height


def _spark(spark, folder: Path) -> tuple[list[str], int]:
    df = spark.read.parquet(str(folder))
    ids = [r["id"] for r in df.select("id").collect()]
    assert df.count() == len(ids)
    return sorted(ids), len(ids)


def _datasets(folder: Path, cache: Path) -> tuple[list[str], int]:
    import datasets

    ds = datasets.load_dataset(
        "parquet",
        data_files=str(folder / "*.parquet"),
        split="train",
        cache_dir=str(cache),
    )
    return sorted(ds["id"]), ds.num_rows


def test_stage_folders_read_the_same_in_polars_spark_and_datasets(
    spark, bad_inputs, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder, expected = bad_inputs
    cfg = build_config(
        {
            "run_dir": str(tmp_path / "run"),
            "stages": ["ingest", "dedup"],
            "ingest": {
                "inputs": [{"path": str(folder)}],
                "max_doc_bytes": MAX_DOC_BYTES,
                "engine": "local",
            },
            "dedup": {"engine": "local"},
        },
        use_env=False,
    )
    res = run_pipeline(cfg, spark=spark)
    ingest, dedup = res["ingest"], res["dedup"]
    seen = {}
    for stage in (ingest, dedup):
        for sub in ("data", "ledger"):
            path = stage.path / sub
            truth = pq.read_table(path, columns=["id"])["id"].to_pylist()
            got = {
                "polars": _polars(path),
                "spark": _spark(spark, path),
                "datasets": _datasets(path, tmp_path / "hf-cache" / stage.stage / sub),
            }
            assert got["polars"] == got["spark"] == got["datasets"] == (sorted(truth), len(truth))
            seen[(stage.stage, sub)] = got["polars"]
    # What the three readers agree on is the stage's accounting: the ingest ledger holds every
    # record (kept or quarantined), its data the kept ones, which are what dedup reads.
    ids = {k: set(v[0]) for k, v in seen.items()}
    assert seen[("ingest", "data")][1] == expected["ingested"] == ingest.manifest["counts"]["out"]
    assert seen[("ingest", "ledger")][1] == expected["ingested"] + expected["quarantined"]
    assert ids[("ingest", "data")] <= ids[("ingest", "ledger")]
    assert ids[("dedup", "ledger")] == ids[("ingest", "data")]
    assert ids[("dedup", "data")] <= ids[("dedup", "ledger")]
    assert seen[("dedup", "data")][1] == dedup.manifest["counts"]["out"]
