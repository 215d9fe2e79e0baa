"""BETR's effect on the domain mix: per-domain share of the kept tokens vs the pool's share,
for keep 3%, 10% and 30% of tokens, on ../shared/data toward gsm8k_train + mmlu_train.

    .venv/bin/python bench/betr_effect.py [--data ../shared/data] [--per-domain 0] \
        [--sample 2000] [--examples 1000] [--max-seq-length 128]

Runs the real stage once (ingest + betr at keep 10%, Spark local[2]); the 3% and 30% rows
reuse its classifier: their thresholds come from the same held-out documents
(``sample.parquet``) and are applied to the stage's ``scores/``, which is what the stage
would have done at those rates. ``--per-domain 0`` takes the whole corpus (43,693 docs);
``--examples`` caps each benchmark's examples (gsm8k_train has 7,473, mmlu_train 285).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--per-domain", type=int, default=0, help="documents per domain; 0 = all")
    ap.add_argument("--sample", type=int, default=2000)
    ap.add_argument("--examples", type=int, default=1000, help="per benchmark")
    ap.add_argument("--max-seq-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import numpy as np
    import pyarrow.parquet as pq

    from curamix.config import build_config
    from curamix.runner import run_pipeline
    from curamix.selectors.betr import hash_unit, token_share_threshold

    data = Path(args.data)
    tmp = Path(tempfile.mkdtemp(prefix="betr-effect-"))
    (tmp / "pool").mkdir()
    (tmp / "bench").mkdir()
    for f in sorted((data / "corpus").glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            rows = [json.loads(x) for x in fh]
        if args.per_domain:
            keys = hash_unit([r["id"] for r in rows], args.seed, "slice")
            rows = [rows[i] for i in np.argsort(keys)[: args.per_domain]]
        with open(tmp / "pool" / f.name.removesuffix(".gz"), "w", encoding="utf-8") as out:
            for r in rows:
                out.write(json.dumps({"id": r["id"], "text": r["text"]}) + "\n")
    for b in ("gsm8k_train", "mmlu_train"):
        with gzip.open(data / "targets" / f"{b}.jsonl.gz", "rt", encoding="utf-8") as fh:
            rows = [json.loads(x) for x in fh][: args.examples]
        with open(tmp / "bench" / f"{b}.jsonl", "w", encoding="utf-8") as out:
            for r in rows:
                out.write(json.dumps({"id": r["id"], "text": r["text"]}) + "\n")
    cfg = build_config(
        {
            "run_dir": str(tmp / "run"),
            "seed": args.seed,
            "stages": ["ingest", "betr"],
            "spark": {"master": "local[2]"},
            "ingest": {"inputs": [{"path": str(tmp / "pool")}]},
            "betr": {
                "benchmark_inputs": [{"path": str(tmp / "bench")}],
                "sample": args.sample,
                "keep_tokens": 0.1,
                "embed": {"max_seq_length": args.max_seq_length, "device": "cpu"},
            },
        },
        use_env=False,
    )
    t0 = time.perf_counter()
    res = run_pipeline(cfg, on_step=lambda m: print(f"{time.perf_counter() - t0:7.1f}s {m}"))
    wall = time.perf_counter() - t0
    r = res["betr"]
    b = r.manifest["betr"]
    sample = pq.read_table(r.path / "sample.parquet").to_pandas()
    held = sample[sample["heldout"]]
    scores = pq.read_table(r.path / "scores").to_pandas()
    words = scores.groupby("domain")["n_words"].sum()
    pool_share = words / words.sum()
    table = {}
    for keep in (0.03, 0.1, 0.3):
        t = token_share_threshold(held["score"].to_numpy(), held["n_words"].to_numpy(), keep)
        kept = scores[scores["score"] >= t]
        kw = kept.groupby("domain")["n_words"].sum().reindex(words.index, fill_value=0)
        table[keep] = (kw / max(kw.sum(), 1), kw.sum() / words.sum(), len(kept) / len(scores))
    h = b["classifier"]["heldout"]
    print(
        f"\n{len(scores)} docs, {int(words.sum())} words; sample {b['sample']['used']}, "
        f"examples {sum(v['examples'] for v in b['benchmarks'].values())}; held-out accuracy "
        f"{h['accuracy']:.3f} (balanced {h['balanced_accuracy']:.3f}, AUC {h['auc']:.3f}); "
        f"stage {wall:.0f}s, timings {r.manifest['timings']}"
    )
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n")
    head = "| domain | pool share | " + " | ".join(f"kept share @{k:.0%} (x pool)" for k in table)
    print(head + " |")
    print("|---|---:|" + "---:|" * len(table))
    for d in words.index:
        cells = [f"{table[k][0][d]:.1%} ({table[k][0][d] / pool_share[d]:.2f})" for k in table]
        print(f"| {d} | {pool_share[d]:.1%} | " + " | ".join(cells) + " |")
    print(
        "| kept tokens / docs | | "
        + " | ".join(f"{table[k][1]:.1%} / {table[k][2]:.1%}" for k in table)
        + " |"
    )
    print(f"\nrun folder: {tmp}")


if __name__ == "__main__":
    main()
