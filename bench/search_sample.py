"""The mixture search's data: the whole pool read into the driver vs the token-budgeted sample.

On ../shared/data/corpus (43,693 documents, 11 domains, 45 MB of text) written as Parquet
parts, for each seed, in a fresh process each (peak RSS from ``getrusage``):

- ``whole``: what the search did before: every text into the driver
  (:func:`curamix.proxy.data.read_domain_texts`), the tokenizer on ``tokenizer_sample`` of them,
  every domain tokenized (:func:`curamix.proxy.data.tokenize_domains`);
- ``sample``: :func:`curamix.mixers.search.read_pool_sample` with the search's defaults
  (``sample_margin`` 1.5, ``total_tokens`` 409,600, ``eval_tokens`` 16,384: 517,390 tokens per
  domain), part by part in the process (``engine: local``, the same shards as on Spark);

and the sample's estimate of each domain's whole-pool train tokens (what ``natural`` weighs and
``Mixture.domain_tokens`` records) against the exact count (the whole pool tokenized with the
sample's tokenizer and split by the same rule): relative error per domain, and the L1 distance
between the natural mixtures the two give.

    .venv/bin/python bench/search_sample.py [--seeds 0 1 2] [--parts 8] [--copies 1] [--out F]

``--copies 4`` writes the corpus four times (the copies' ids suffixed): the whole pool's cost
grows with it, the sample's does not.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "corpus"


def write_pool(out: Path, n_parts: int, copies: int = 1) -> Path:
    """The corpus (``copies`` times, the copies' ids suffixed ``#c``) as ``n_parts`` Parquet
    parts (id, domain, text), documents dealt round-robin."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = out / "data"
    if data.is_dir():
        return data
    rows: list[dict[str, str]] = []
    for f in sorted(CORPUS.glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            docs = [json.loads(line) for line in fh]
        for c in range(copies):
            rows += [
                {
                    "id": r["id"] + (f"#{c}" if c else ""),
                    "domain": f.name.split(".")[0],
                    "text": r["text"],
                }
                for r in docs
            ]
    data.mkdir(parents=True)
    for k in range(n_parts):
        pq.write_table(pa.Table.from_pylist(rows[k::n_parts]), data / f"part-{k:05d}.parquet")
    (out / "manifest.json").write_text("{}")
    return data


def child(mode: str, pool: str, seed: int, work: str) -> dict:
    """One measurement in this process: wall time and peak RSS of reading the search's data."""
    from curamix.config import MixtureSearchConfig
    from curamix.io.store import JobResult

    cfg = MixtureSearchConfig(engine="local")
    t0 = time.perf_counter()
    if mode == "whole":
        from curamix.proxy.data import read_domain_texts, tokenize_domains
        from curamix.proxy.tokenizer import load_or_train_tokenizer

        texts = read_domain_texts(Path(pool) / "data")
        tok = load_or_train_tokenizer(
            Path(work) / "tok.json", texts, cfg.vocab_size, random_state=seed
        )
        train, _ = tokenize_domains(tok, texts, None, cfg.val_fraction, seed)
        out = {"train_tokens": {d: len(v) for d, v in train.items()}}
    else:
        from curamix.mixers.search import read_pool_sample

        res = JobResult("select", Path(pool), {}, skipped=True)
        tok, sample = read_pool_sample(work, cfg, res, seed, Path(work) / "tok.json")
        out = {"domains": sample.domains, "need": sample.need}
        # the exact whole-pool train tokens, with the sample's tokenizer (not timed)
        wall = time.perf_counter() - t0
        from curamix.proxy.data import read_domain_texts, tokenize_domains

        train, _ = tokenize_domains(
            tok, read_domain_texts(Path(pool) / "data"), None, cfg.val_fraction, seed
        )
        out["exact_train_tokens"] = {d: len(v) for d, v in train.items()}
        out["wall_s"] = wall
        out["peak_rss_mb"] = None  # the exact count above reads the whole pool: see below
        return out
    out["wall_s"] = time.perf_counter() - t0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def child_rss(pool: str, seed: int, work: str) -> float:
    """Peak RSS (MB) of the sample alone (a process that does nothing else)."""
    from curamix.config import MixtureSearchConfig
    from curamix.io.store import JobResult
    from curamix.mixers.search import read_pool_sample

    cfg = MixtureSearchConfig(engine="local")
    res = JobResult("select", Path(pool), {}, skipped=True)
    read_pool_sample(work, cfg, res, seed, Path(work) / "tok.json")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--parts", type=int, default=8)
    ap.add_argument("--copies", type=int, default=1, help="the corpus this many times over")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        mode, pool, seed, work = a.child
        if mode == "rss":
            print(json.dumps({"peak_rss_mb": child_rss(pool, int(seed), work)}))
        else:
            print(json.dumps(child(mode, pool, int(seed), work)))
        return
    import numpy as np

    root = a.work or Path(tempfile.mkdtemp(prefix="search-sample-"))
    pool = root / "pool"
    write_pool(pool, a.parts, a.copies)
    rows = []
    for seed in a.seeds:
        r: dict = {"seed": seed}
        for mode in ("whole", "sample"):
            work = root / f"{mode}-{seed}"
            work.mkdir(parents=True, exist_ok=True)
            r[mode] = run_child([mode, str(pool), str(seed), str(work)])
        rss_work = root / f"rss-{seed}"
        rss_work.mkdir(parents=True, exist_ok=True)
        r["sample"]["peak_rss_mb"] = run_child(["rss", str(pool), str(seed), str(rss_work)])[
            "peak_rss_mb"
        ]
        dom = r["sample"]["domains"]
        exact = r["sample"]["exact_train_tokens"]
        est = {d: e["pool_train_tokens"] for d, e in dom.items()}
        r["rel_err"] = {d: est[d] / exact[d] - 1 for d in exact}
        nat = {d: v / sum(exact.values()) for d, v in exact.items()}
        nat_est = {d: v / sum(est.values()) for d, v in est.items()}
        r["natural_l1"] = sum(abs(nat[d] - nat_est[d]) for d in nat)
        r["sample_tokens"] = sum(e["train_tokens"] + e["val_tokens"] for e in dom.values())
        r["pool_tokens"] = sum(exact.values())
        r["covered"] = sorted(d for d, e in dom.items() if e["covered"])
        rows.append(r)
        print(
            f"seed {seed}: whole {r['whole']['wall_s']:.1f} s, {r['whole']['peak_rss_mb']:.0f} MB; "
            f"sample {r['sample']['wall_s']:.1f} s, {r['sample']['peak_rss_mb']:.0f} MB; "
            f"sample tokens {r['sample_tokens']:,} of {r['pool_tokens']:,} train tokens; "
            f"max |rel err| {max(abs(x) for x in r['rel_err'].values()):.3f}; "
            f"natural L1 {r['natural_l1']:.4f}",
            flush=True,
        )

    def ms(xs: list[float]) -> str:
        return f"{np.mean(xs):.3g} +- {np.std(xs, ddof=1) if len(xs) > 1 else 0:.2g}"

    summary = {
        "whole_wall_s": ms([r["whole"]["wall_s"] for r in rows]),
        "whole_peak_rss_mb": ms([r["whole"]["peak_rss_mb"] for r in rows]),
        "sample_wall_s": ms([r["sample"]["wall_s"] for r in rows]),
        "sample_peak_rss_mb": ms([r["sample"]["peak_rss_mb"] for r in rows]),
        "abs_rel_err_uncovered": ms(
            [abs(x) for r in rows for d, x in r["rel_err"].items() if d not in r["covered"]]
        ),
        "natural_l1": ms([r["natural_l1"] for r in rows]),
    }
    print(json.dumps(summary, indent=1))
    if a.out:
        a.out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1, default=str))


if __name__ == "__main__":
    main()
