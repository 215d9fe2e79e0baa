"""Ingest throughput: curamix (Spark) vs datatrove vs Hugging Face datasets, same files, one run.

    .venv/bin/python bench/bench_ingest.py [--data ../shared/data/corpus] [--workers 2]

Each tool reads the same JSONL.gz files and writes Parquet. curamix also checks every record
(quarantine, duplicate ids, accounting) and writes a ledger, which the peers do not do.
Prints docs/s per tool and the ratio curamix / peer. Spark start-up is timed separately.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa


def bench_curamix(
    files: list[str], out: Path, workers: int, repeats: int
) -> tuple[float, list[float], int]:
    from curamix.config import build_config
    from curamix.pipelines.ingest import run_ingest
    from curamix.pipelines.session import get_spark

    t = time.perf_counter()
    cfg = build_config(
        {
            "run_dir": str(out),
            "spark": {"master": f"local[{workers}]"},
            "ingest": {"inputs": [{"path": f} for f in files]},
        },
        use_env=False,
    )
    spark = get_spark(cfg.spark)
    spark.range(1).count()
    startup = time.perf_counter() - t
    times = []
    for k in range(repeats):
        cfg_k = cfg.model_copy(update={"run_dir": str(out / f"r{k}")})
        t = time.perf_counter()
        res = run_ingest(spark, cfg_k)
        times.append(time.perf_counter() - t)
    return startup, times, res.counts["out"]


_DT_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("metadata", pa.string())])


def _dt_adapter(self, doc) -> dict:
    return {"id": doc.id, "text": doc.text, "metadata": json.dumps(doc.metadata, default=str)}


def bench_datatrove(files: list[str], out: Path, workers: int) -> tuple[float, int]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import ParquetWriter

    folder = str(Path(files[0]).parent)
    names = [Path(f).name for f in files]
    t = time.perf_counter()
    ex = LocalPipelineExecutor(
        pipeline=[
            JsonlReader(folder, glob_pattern="*.jsonl.gz", text_key="text", id_key="id"),
            # Metadata as a JSON string under a fixed schema, as curamix stores its meta column
            # (records of one file carry differently shaped metadata).
            ParquetWriter(
                str(out / "data"), adapter=_dt_adapter, schema=_DT_SCHEMA, compression="zstd"
            ),
        ],
        tasks=len(names),
        workers=workers,
        logging_dir=str(out / "logs"),
    )
    ex.run()
    import pyarrow.parquet as pq

    n = sum(pq.read_metadata(f).num_rows for f in glob.glob(str(out / "data" / "*.parquet")))
    return time.perf_counter() - t, n


def bench_hf(files: list[str], out: Path, workers: int) -> tuple[float, int, str]:
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets

    t = time.perf_counter()
    try:
        ds = datasets.load_dataset(
            "json", data_files=files, split="train", cache_dir=str(out / "cache"), num_proc=workers
        )
        ds.to_parquet(str(out / "data.parquet"))
        return time.perf_counter() - t, ds.num_rows, "one dataset"
    except datasets.exceptions.DatasetGenerationError as err:
        # The files' records differ in shape (web has a nested meta object), which one
        # dataset cannot hold: load and write each file on its own instead.
        note = f"all files at once failed ({type(err.__cause__ or err).__name__}); per file"
    t = time.perf_counter()
    n = 0
    for i, f in enumerate(files):
        ds = datasets.load_dataset(
            "json", data_files=[f], split="train", cache_dir=str(out / "cache")
        )
        ds.to_parquet(str(out / f"data-{i}.parquet"))
        n += ds.num_rows
    return time.perf_counter() - t, n, note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "corpus")
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="runs per tool; the best is reported")
    args = ap.parse_args()
    files = sorted(glob.glob(os.path.join(args.data, "*.jsonl.gz")))
    if not files:
        raise SystemExit(f"no .jsonl.gz files in {args.data}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        startup, cm_times, n_cm = bench_curamix(files, tmp / "curamix", args.workers, args.repeats)
        t_cm = min(cm_times)
        dt = [
            bench_datatrove(files, tmp / f"datatrove{k}", args.workers) for k in range(args.repeats)
        ]
        t_dt, n_dt = min(x[0] for x in dt), dt[0][1]
        hf = [bench_hf(files, tmp / f"hf{k}", args.workers) for k in range(args.repeats)]
        t_hf, n_hf, hf_note = min(x[0] for x in hf), hf[0][1], hf[0][2]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"machine: {platform.node()} {os.cpu_count()} cores, python {platform.python_version()}, workers={args.workers}, best of {args.repeats}"
    )
    print(f"data: {len(files)} files from {args.data}")
    print(f"{'tool':<22}{'docs':>8}{'seconds':>10}{'docs/s':>10}{'curamix/peer':>14}")
    print(
        f"{'curamix (Spark)':<22}{n_cm:>8}{t_cm:>10.1f}{n_cm / t_cm:>10.0f}{'':>14}   (+{startup:.1f}s Spark start)"
    )
    for name, t, n, note in [("datatrove", t_dt, n_dt, ""), ("hf datasets", t_hf, n_hf, hf_note)]:
        print(f"{name:<22}{n:>8}{t:>10.1f}{n / t:>10.0f}{(n_cm / t_cm) / (n / t):>13.2f}x   {note}")


if __name__ == "__main__":
    main()
