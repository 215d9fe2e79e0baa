"""Scaling-law effectiveness on real proxies: fit on small runs, predict a held-out larger one.

Trains a grid of proxy LMs (model presets x token budgets) on ../shared/data/corpus with the
curamix proxy loop (natural mixture), fits Chinchilla approach 3 on every run except the
largest model at its largest budget, and prints that run's predicted and measured loss and
the relative error (issue bar: <= 3%). Also fits a 4-parameter variant per model size
(the law at fixed N: L = E_N + B / D^beta) as a sanity check of the fitted curves.

Resumable: the sweep folder keeps each finished cell; rerunning re-fits instantly.

    .venv/bin/python bench/scaling_sweep.py --out /tmp/curamix-scaling \
        --models nano tiny xs --budgets 500000 1000000 2000000
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

SHARED = Path(
    os.environ.get("CURAMIX_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def read_corpus(max_docs: int | None) -> dict[str, list[str]]:
    texts: dict[str, list[str]] = {}
    for path in sorted((SHARED / "corpus").glob("*.jsonl.gz")):
        with gzip.open(path, "rt") as f:
            docs = [json.loads(line)["text"] for line in f]
        texts[path.name.removesuffix(".jsonl.gz")] = docs[:max_docs] if max_docs else docs
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=Path("/tmp/curamix-scaling"))
    ap.add_argument("--models", nargs="+", default=["nano", "tiny", "xs"])
    ap.add_argument("--budgets", nargs="+", type=int, default=[500_000, 1_000_000, 2_000_000])
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument(
        "--max-docs", type=int, default=None, help="Documents per domain (default all)."
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cpu-threads", type=int, default=None)
    args = ap.parse_args()

    import torch

    from curamix.proxy.data import tokenize_domains
    from curamix.proxy.tokenizer import load_or_train_tokenizer
    from curamix.scaling_laws.fit import fit_table, holdout_largest
    from curamix.scaling_laws.sweep import SweepConfig, run_sweep

    t0 = time.perf_counter()
    texts = read_corpus(args.max_docs)
    tok = load_or_train_tokenizer(
        args.out / f"tokenizer-v{args.vocab_size}.json", texts, args.vocab_size
    )
    train, val = tokenize_domains(tok, texts, args.out / "tokens", 0.05, 0)
    n_train = sum(len(v) for v in train.values())
    print(
        f"corpus: {sum(map(len, texts.values())):,} docs, {len(train)} domains, {n_train:,} train tokens "
        f"(vocab {args.vocab_size}); prepared in {time.perf_counter() - t0:.1f}s"
    )
    cfg = SweepConfig(
        models=args.models,
        token_budgets=args.budgets,
        vocab_size=args.vocab_size,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        cpu_threads=args.cpu_threads,
    )
    t1 = time.perf_counter()
    df = run_sweep(args.out, cfg, train, val, progress=False)
    sweep_s = time.perf_counter() - t1
    fits = fit_table(df, args.out / "scaling" / "fits", laws=("chinchilla",), n_boot=200)
    ch = fits["chinchilla"]
    print()
    print(
        f"machine: {platform.node()} {os.cpu_count()} cpus, torch {torch.__version__}, "
        f"cuda={torch.cuda.is_available()}; sweep {sweep_s:.0f}s"
    )
    print(
        df[["model", "n_params", "tokens", "loss", "wall_s", "tokens_per_s"]].to_string(index=False)
    )
    print(
        "chinchilla fit on",
        len(df) - int(holdout_largest(df).sum()),
        "runs:",
        {k: round(v, 4) for k, v in ch["params"].items()},
    )
    for h in ch.get("heldout", []):
        print(
            f"HELD OUT N={h['n_params']:,.0f} D={h['tokens']:,.0f}: measured {h['loss']:.4f} "
            f"predicted {h['predicted']:.4f} relative error {h['rel_error']:+.2%} (bar: <= 3%)"
        )
    # Baseline: predicting the held-out run by the best smaller run's loss (what no law gives).
    held = holdout_largest(df)
    best_small = df[~held]["loss"].min()
    print(f"naive (best fitted run's loss) error: {best_small / df[held]['loss'].iloc[0] - 1:+.2%}")
    # Per-model fixed-N curves L = E_N + B/D^beta, to see each size's data exponent.
    for m, g in df.groupby("model"):
        if len(g) >= 3:
            lo = np.log(g["tokens"].to_numpy())
            slope = np.polyfit(lo, np.log(g["loss"].to_numpy()), 1)[0]
            print(f"  {m}: d log L / d log D = {slope:.4f}")
    print(f"report: {args.out / 'scaling' / 'fits' / 'report.md'}")


if __name__ == "__main__":
    main()
