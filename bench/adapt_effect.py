"""Effect of Adapt-infty (issue 21, part 3): does a proxy trained on Adapt-infty's 10% of the
pool reach a lower held-out loss than one trained on a random selection of the same words?

    .venv/bin/python bench/adapt_effect.py --smoke        # ~2-4 min on 2 CPUs
    .venv/bin/python bench/adapt_effect.py                # whole corpus
    .venv/bin/python bench/adapt_effect.py [--data ../shared/data] [--per-domain 0] [--seeds 3] \
        [--tokens 1000000] [--model tiny] [--jobs 2] [--out /tmp/adapt.json]

Setup (on ../shared/data; every choice fixed before looking at the held-out losses):

- Pool: every corpus document (``--per-domain N``: a seeded N per domain) minus ``--pool-val``
  seeded documents held out for the general validation loss. Tokens are whitespace words.
- Held-out targets: ``--eval-texts`` seeded texts of GSM8K test, MMLU test and ARC (easy +
  challenge) test, as in bench/rds_effect.py. Adapt-infty is not targeted: it sees no task
  text; the pool validation loss is what an untargeted selection should help, the target
  losses say whether coverage helps downstream-like text.
- Adapt-infty (the stage's kernels and defaults): a ``--rep-model`` proxy LM and its BPE
  tokenizer trained on ``--rep-sample`` seeded pool documents for ``--rep-tokens`` tokens
  (:func:`curamix.proxy.perplexity.reference_proxy`, what ``adapt`` does); every pool
  document's gradient over the last block projected to ``--proj-dim`` and its log-perplexity,
  EL2N and GraNd (:func:`curamix.selectors.adapt.gradient_features`); ``--clusters``
  MiniBatchKMeans clusters; budget = ``--keep`` of the pool's DOCUMENTS (the stage's unit);
  each cluster's share by CCS over its highest-entropy scorer. Conditions: ``Adapt`` (the
  defaults: reference entropy window, no pruning), ``Adapt+prune`` (pruned to
  ``--prune`` of the pool first), ``Adapt zscore`` (``entropy_window: zscore``). Each seed
  draws its own selection (k-means, CCS draws and trim seeded with the seed).
- Random: seeded pool documents until the words of that seed's ``Adapt`` selection.
- Proxy: :func:`curamix.proxy.train.train_proxy` per condition and seed (through
  bench/quality_effect.py's ``run_one``), one BPE tokenizer for all conditions, the same
  preset and number of training tokens everywhere (``--tokens``, lowered to the smallest
  selection so nothing repeats).
- Score: mean next-token loss on the held-out pool documents and on each task's texts (the
  target is the mean of the three); paired differences vs random per seed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
# bench/quality_effect.py: the one-selection proxy run, the log and the JSONL reader
from quality_effect import T0, log, read_jsonl, run_one

TASKS = ("gsm8k", "mmlu", "arc")
SMOKE = {
    "per_domain": 60,
    "pool_val": 60,
    "eval_texts": 60,
    "rep_sample": 400,
    "rep_tokens": 32_768,
    "rep_vocab": 512,
    "rep_seq_len": 64,
    "proj_dim": 64,
    "clusters": 5,
    "tokens": 40_960,
    "model": "nano",
    "vocab": 512,
    "seq_len": 64,
    "tokenizer_chars": 400_000,
}
"""``--smoke``: a small slice and tiny proxies, to check the whole path in a few minutes."""


def pick(rows: list, n: int, key: list[int]) -> list:
    idx = np.random.default_rng(key).permutation(len(rows))
    return [rows[i] for i in np.sort(idx[: min(n, len(rows))])]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--smoke", action="store_true", help="small slice, tiny proxies")
    ap.add_argument("--per-domain", type=int, default=0, help="docs per domain; 0 = all")
    ap.add_argument("--pool-val", type=int, default=400, help="pool docs held out for val")
    ap.add_argument("--eval-texts", type=int, default=400, help="per task")
    ap.add_argument("--keep", type=float, default=0.1, help="selected fraction of the documents")
    ap.add_argument("--prune", type=float, default=0.5, help="Adapt+prune: pool share kept")
    ap.add_argument("--clusters", type=int, default=10)
    ap.add_argument("--proj-dim", type=int, default=256)
    ap.add_argument("--rep-model", default="nano", help="Adapt proxy preset (the stage's)")
    ap.add_argument("--rep-sample", type=int, default=2000)
    ap.add_argument("--rep-tokens", type=int, default=300_000)
    ap.add_argument("--rep-vocab", type=int, default=1024)
    ap.add_argument("--rep-seq-len", type=int, default=128)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=1_000_000, help="training tokens per run")
    ap.add_argument("--model", default="tiny", help="evaluation proxy preset")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--tokenizer-chars", type=int, default=3_000_000)
    ap.add_argument("--sel-seed", type=int, default=0, help="samples, splits, the Adapt proxy")
    ap.add_argument("--jobs", type=int, default=2, help="proxy runs in parallel (processes)")
    ap.add_argument("--cpu-threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--out", type=Path, default=None, help="write all numbers as JSON")
    args = ap.parse_args()
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)

    from curamix.proxy.perplexity import reference_proxy
    from curamix.proxy.tokenizer import encode_stream, eos_id, tokenizer_sample, train_tokenizer
    from curamix.selectors.adapt import AdaptSelector, gradient_features

    data = Path(args.data)
    ss = args.sel_seed

    # -- pool and held-out texts ---------------------------------------------------------------
    texts: list[str] = []
    dom: list[str] = []
    for f in sorted((data / "corpus").glob("*.jsonl.gz")):
        rows = read_jsonl(f)
        if args.per_domain:
            rows = pick(rows, args.per_domain, [ss, len(dom)])
        texts += [r["text"] for r in rows]
        dom += [f.name.removesuffix(".jsonl.gz")] * len(rows)
    held = np.zeros(len(texts), bool)
    held[np.random.default_rng(ss).choice(len(texts), args.pool_val, replace=False)] = True
    pool_val_texts = [t for t, h in zip(texts, held, strict=True) if h]
    texts = [t for t, h in zip(texts, held, strict=True) if not h]
    domains = np.array([d for d, h in zip(dom, held, strict=True) if not h])
    words = np.array([len(t.split()) for t in texts], dtype=np.float64)
    n, total_words = len(texts), words.sum()
    names = sorted(set(domains))
    pool_share = {d: words[domains == d].sum() / total_words for d in names}
    tgt = data / "targets"
    arc = [
        r["text"]
        for b in ("arc_easy_test", "arc_challenge_test")
        for r in read_jsonl(tgt / f"{b}.jsonl.gz")
    ]
    eval_texts = {
        "gsm8k": pick(
            [r["text"] for r in read_jsonl(tgt / "gsm8k_test.jsonl.gz")], args.eval_texts, [ss, 2]
        ),
        "mmlu": pick(
            [r["text"] for r in read_jsonl(tgt / "mmlu_test.jsonl.gz")], args.eval_texts, [ss, 3]
        ),
        "arc": pick(arc, args.eval_texts, [ss, 9]),
    }
    log(
        f"pool: {n:,} docs, {total_words:,.0f} words, {len(names)} domains"
        f"{f' ({args.per_domain} per domain)' if args.per_domain else ' (whole corpus)'}; "
        f"{args.pool_val} held out; budget {args.keep:.0%} of the documents"
    )

    # -- Adapt-infty: proxy, features (once), selections (per seed) ----------------------------
    stats: dict[str, Any] = {}
    t = time.perf_counter()
    rep_idx = np.sort(
        np.random.default_rng([ss, 4]).choice(n, min(args.rep_sample, n), replace=False)
    )
    rep_model, rep_tok = reference_proxy(
        [texts[i] for i in rep_idx],
        model=args.rep_model,
        vocab_size=args.rep_vocab,
        seq_len=args.rep_seq_len,
        total_tokens=args.rep_tokens,
        random_state=ss,
        device="cpu",
    )
    stats["proxy_s"] = time.perf_counter() - t
    t = time.perf_counter()
    feats = gradient_features(rep_model, rep_tok, texts, proj_dim=args.proj_dim, seed=ss)
    stats["features_s"] = time.perf_counter() - t
    ok = np.flatnonzero(feats.n_tokens >= 2)
    scores = {k: v[ok] for k, v in feats.scores().items()}
    budget = max(1, int(args.keep * n))
    log(
        f"Adapt proxy {stats['proxy_s']:.0f}s; features of {n:,} docs {stats['features_s']:.0f}s "
        f"({len(ok):,} scorable); budget {budget:,} documents"
    )
    variants = {
        "Adapt": {"prune": None, "window": "reference"},
        "Adapt+prune": {"prune": max(budget, int(args.prune * len(ok))), "window": "reference"},
        "Adapt zscore": {"prune": None, "window": "zscore"},
    }
    seeds = list(range(args.seeds))
    per_seed: dict[tuple[str, int], np.ndarray] = {}
    scorer_use: dict[str, dict[str, int]] = {c: {} for c in variants}
    for s in seeds:
        for c, v in variants.items():
            sel = AdaptSelector(
                n_clusters=args.clusters, entropy_window=v["window"], random_state=s
            ).fit(feats.vectors[ok])
            order = None if v["prune"] is None else sel.prune(v["prune"]).positions
            res = sel.select(scores, budget, order)
            per_seed[c, s] = np.sort(ok[res.positions])
            for name in res.scorer:
                if name:
                    scorer_use[c][name] = scorer_use[c].get(name, 0) + 1
        o = np.random.default_rng([s, 7]).permutation(n)
        want = words[per_seed["Adapt", s]].sum()
        k = int(np.searchsorted(np.cumsum(words[o]), want - 1e-9)) + 1
        per_seed["random", s] = np.sort(o[:k])
    stats["scorers_chosen"] = scorer_use
    conds = [*variants, "random"]
    log(
        "selections (docs, seed 0): "
        + ", ".join(f"{c} {len(per_seed[c, 0]):,}" for c in conds)
        + f"; scorers chosen over seeds: {scorer_use}"
    )

    def summary(idx: np.ndarray) -> dict[str, Any]:
        w = words[idx].sum()
        return {
            "docs": int(idx.size),
            "words": float(w),
            "word_frac": float(w / total_words),
            "share": {d: float(words[idx][domains[idx] == d].sum() / w) for d in names},
        }

    sel_info = {c: [summary(per_seed[c, s]) for s in seeds] for c in conds}

    # -- tokenizer and streams -----------------------------------------------------------------
    by_domain = {d: [texts[i] for i in np.flatnonzero(domains == d)] for d in names}
    tok = train_tokenizer(tokenizer_sample(by_domain, args.tokenizer_chars, ss), args.vocab)
    vocab = tok.get_vocab_size()
    union = np.unique(np.concatenate(list(per_seed.values())))
    encoded: dict[int, np.ndarray] = {}
    todo = [int(i) for i in union]
    for j in range(0, len(todo), 2048):
        chunk = todo[j : j + 2048]
        for i, e in zip(chunk, tok.encode_batch([texts[i] for i in chunk]), strict=True):
            encoded[i] = np.asarray(e.ids, dtype=np.uint16)
    eos = np.array([eos_id(tok)], dtype=np.uint16)

    def stream(idx: np.ndarray, seed: int) -> np.ndarray:
        o = np.random.default_rng([seed, 5]).permutation(idx)
        return np.concatenate([x for i in o for x in (encoded[int(i)], eos)])

    streams = {key: stream(v, key[1]) for key, v in per_seed.items()}
    val = {k: encode_stream(tok, ts) for k, ts in eval_texts.items()}
    val["pool_val"] = encode_stream(tok, pool_val_texts)
    per_step = args.batch_size * args.seq_len
    tokens = min(args.tokens, min(len(v) for v in streams.values()) - 1) // per_step * per_step
    log(
        f"tokenizer vocab {vocab}; streams "
        + ", ".join(f"{c} {np.mean([len(streams[c, s]) for s in seeds]):,.0f}" for c in conds)
        + f" tokens; training {tokens:,} tokens per run"
    )
    p = {
        "model": args.model, "vocab": vocab, "seq_len": args.seq_len,
        "batch_size": args.batch_size, "tokens": tokens, "lr": args.lr,
        "eval_tokens": max(len(v) for v in val.values()), "threads": args.cpu_threads,
    }  # fmt: skip

    # -- proxies -------------------------------------------------------------------------------
    runs: list[dict[str, Any]] = []
    log(f"training {len(streams)} proxies ({args.model}), {args.jobs} jobs")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn")) as ex:
        futs = [
            ex.submit(run_one, c, s, streams[c, s], val, p, TASKS) for s in seeds for c in conds
        ]
        for f in futs:
            r = f.result()
            runs.append(r)
            log(
                f"  {r['condition']:12s} seed {r['seed']}: pool val {r['pool_val']:.4f}, target "
                f"{r['target']:.4f} ("
                + ", ".join(f"{k} {r['tests'][k]:.4f}" for k in TASKS)
                + f"), {r['epochs']:.2f} epochs"
            )

    # -- report --------------------------------------------------------------------------------
    def ms(x: list[float]) -> str:
        a = np.asarray(x)
        return f"{a.mean():.4f} ± {a.std(ddof=1) if a.size > 1 else 0.0:.4f}"

    base = {r["seed"]: r for r in runs if r["condition"] == "random"}
    print(
        f"\n{len(seeds)} seeds; {args.model} proxy ({runs[0]['n_params_non_embedding']:,} "
        f"non-embedding params), vocab {vocab}, seq {args.seq_len}, {tokens:,} training tokens "
        f"per run; loss = mean next-token loss (nats), lower is better; ± = std over seeds\n"
    )
    print(
        "| condition | pool val | Δ pool val vs random | target (mean of 3) | Δ target vs random "
        "| gsm8k | mmlu | arc | docs | words (% of pool) | top domains (word share) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for c in conds:
        rs = sorted((r for r in runs if r["condition"] == c), key=lambda r: r["seed"])
        info = sel_info[c]
        share = {d: np.mean([i["share"][d] for i in info]) for d in names}
        top = ", ".join(f"{d} {v:.0%}" for d, v in sorted(share.items(), key=lambda kv: -kv[1])[:3])
        d_val = (
            "-" if c == "random" else ms([r["pool_val"] - base[r["seed"]]["pool_val"] for r in rs])
        )
        d_tgt = "-" if c == "random" else ms([r["target"] - base[r["seed"]]["target"] for r in rs])
        print(
            f"| {c} | {ms([r['pool_val'] for r in rs])} | {d_val} | {ms([r['target'] for r in rs])} "
            f"| {d_tgt} | "
            + " | ".join(ms([r["tests"][k] for r in rs]) for k in TASKS)
            + f" | {np.mean([i['docs'] for i in info]):,.0f} "
            f"| {np.mean([i['words'] for i in info]):,.0f} "
            f"({np.mean([i['word_frac'] for i in info]):.1%}) | {top} |"
        )
    print("\n| domain | pool | " + " | ".join(conds) + " |")
    print("|---|---:|" + "---:|" * len(conds))
    for d in names:
        cells = [f"{np.mean([i['share'][d] for i in sel_info[c]]):.1%}" for c in conds]
        print(f"| {d} | {pool_share[d]:.1%} | " + " | ".join(cells) + " |")
    print(f"\nAdapt: {json.dumps(stats)}")
    total = time.perf_counter() - T0
    print(
        f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()} ({os.cpu_count()} CPUs), Python "
        f"{platform.python_version()}; {'smoke; ' if args.smoke else ''}total {total:.0f}s"
    )
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "proxy": p,
                    "runs": runs,
                    "selections": sel_info,
                    "pool_share": pool_share,
                    "stats": stats,
                    "wall_s": total,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
