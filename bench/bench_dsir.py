"""DSIR fit + score throughput: data-selection (reference) vs curamix, same corpus, one run.

    .venv/bin/python bench/bench_dsir.py [--data ../shared/data/corpus] [--scale 10] [--reference-at-scale]

Raw = every document of the corpus, target = wiki + books (as in the parity test). Timed:
fitting both n-gram distributions and computing every document's log weight. The reference
runs with num_proc=2 on JSONL; curamix runs in-process (one core) in fast, hash64 and sha256
modes, and as the Spark stage (local[2], on the ingested Parquet; ingest not timed) in fast
and hash64 modes. Fast mode starts with an empty n-gram table in every timed run. ``--scale N``
repeats the corpus N times (ids made unique) to show scaling (the repeats add no new
n-grams, so fast mode's table is warm after the first copy); the reference joins that run
only with ``--reference-at-scale`` (about 50 s per corpus copy).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path


def load(data: str) -> tuple[list[str], list[str]]:
    texts, domains = [], []
    for f in sorted(Path(data).glob("*.jsonl.gz")):
        with gzip.open(f) as fh:
            rows = [json.loads(x) for x in fh]
        texts += [r["text"] for r in rows]
        domains += [f.name.removesuffix(".jsonl.gz")] * len(rows)
    return texts, domains


def write_jsonl(folder: Path, texts: list[str], domains: list[str], copies: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for d in sorted(set(domains)):
        p = folder / f"{d}.jsonl"
        with open(p, "w") as fh:
            for c in range(copies):
                for i, (t, x) in enumerate(zip(texts, domains, strict=True)):
                    if x == d:
                        fh.write(json.dumps({"id": f"{d}/{c}/{i}", "text": t}) + "\n")
        paths.append(str(p))
    return paths


def bench_reference(paths: list[str], cache: Path) -> float:
    from data_selection import HashedNgramDSIR

    targets = [p for p in paths if Path(p).stem in ("wiki", "books")]
    t = time.perf_counter()
    ref = HashedNgramDSIR(paths, targets, str(cache), num_proc=2)
    ref.fit_importance_estimator(num_tokens_to_fit="auto")
    ref.compute_importance_weights()
    return time.perf_counter() - t


def bench_inprocess(texts: list[str], domains: list[str], mode: str) -> float:
    from curamix.selectors import dsir
    from curamix.selectors.dsir import DSIRSelector

    dsir._TABLES.clear()  # fast mode starts cold: every distinct n-gram is hashed again
    target = [t for t, d in zip(texts, domains, strict=True) if d in ("wiki", "books")]
    t = time.perf_counter()
    sel = DSIRSelector(hash_mode=mode).fit(target, texts)
    sel.score_samples(texts, batch_size=4096)
    return time.perf_counter() - t


def bench_spark(folder: Path, run_dir: Path, mode: str = "fast") -> tuple[float, int]:
    from curamix.config import build_config
    from curamix.pipelines.ingest import run_ingest
    from curamix.pipelines.session import get_spark
    from curamix.runner import run_stage

    cfg = build_config(
        {
            "run_dir": str(run_dir),
            "spark": {"master": "local[2]"},
            "stages": ["ingest", "dsir"],
            "ingest": {"inputs": [{"path": str(folder)}]},
            "dsir": {"target_domains": ["wiki", "books"], "hash_mode": mode},
        },
        use_env=False,
    )
    spark = get_spark(cfg.spark)
    ingest = run_ingest(spark, cfg)
    # Warm the Python workers once (as a long-running session would be), then time.
    warm = cfg.model_copy(update={"dsir": cfg.dsir.model_copy(update={"num_buckets": 10_001})})
    run_stage(spark, warm, "dsir", upstream={"ingest": ingest})
    t = time.perf_counter()
    res = run_stage(spark, cfg, "dsir", upstream={"ingest": ingest})
    return time.perf_counter() - t, res.counts["in"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "corpus")
    )
    ap.add_argument(
        "--scale", type=int, default=10, help="also run on N copies of the corpus (0: skip)"
    )
    ap.add_argument("--reference-at-scale", action="store_true")
    args = ap.parse_args()
    texts, domains = load(args.data)
    tmp = Path(tempfile.mkdtemp(prefix="bench-dsir-"))
    rows = []
    try:
        for copies in [1] + ([args.scale] if args.scale > 1 else []):
            n = len(texts) * copies
            folder = tmp / f"x{copies}"
            paths = write_jsonl(folder, texts, domains, copies)
            many_t, many_d = texts * copies, domains * copies
            ref = (
                bench_reference(paths, tmp / f"cache{copies}")
                if copies == 1 or args.reference_at_scale
                else None
            )
            times = {
                "curamix in-process, fast, 1 core": bench_inprocess(many_t, many_d, "fast"),
                "curamix in-process, hash64, 1 core": bench_inprocess(many_t, many_d, "hash64"),
            }
            if copies == 1:
                times["curamix in-process, sha256, 1 core"] = bench_inprocess(
                    many_t, many_d, "sha256"
                )
            for mode in ("fast", "hash64"):
                spark_s, n_spark = bench_spark(folder, tmp / f"run{copies}-{mode}", mode)
                assert n_spark == n
                times[f"curamix Spark local[2], {mode}"] = spark_s
            rows.append((n, ref, times))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"machine: {platform.node()} {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"{'docs':>8} {'tool':<36}{'seconds':>9}{'docs/s':>10}{'vs reference':>14}")
    for n, ref, times in rows:
        ref_rate = n / ref if ref else None
        for name, t in [("data-selection 1.0.3 (num_proc=2)", ref), *times.items()]:
            if t is None:
                continue
            ratio = f"{(n / t) / ref_rate:.1f}x" if ref_rate and name.startswith("curamix") else ""
            print(f"{n:>8} {name:<36}{t:>9.1f}{n / t:>10.0f}{ratio:>14}")


if __name__ == "__main__":
    main()
