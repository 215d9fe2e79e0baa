"""Effect of the quality stage (issue 19, item 5): does a proxy trained on the top 10% of the
pool by a quality classifier reach a lower held-out target loss than one trained on a random
sample of the same tokens?

    .venv/bin/python bench/quality_effect.py                      # whole corpus, ~15 min, 2 CPUs
    .venv/bin/python bench/quality_effect.py --per-domain 500 --tokens 100000   # smoke test
    .venv/bin/python bench/quality_effect.py [--data ../shared/data] [--seeds 3] \
        [--tokens 1000000] [--model tiny] [--vocab 2048] [--jobs 2] [--out /tmp/qe.json]

Setup (on ../shared/data; every choice fixed before looking at the held-out losses):

- Pool: every corpus document (``--per-domain N``: a seeded N per domain) minus
  ``--pool-val`` seeded documents held out as a general validation set. Token weights are
  whitespace word counts (what the quality stage uses).
- Classifier A (DCLM recipe, our positives): fastText, ``__label__hq`` = GSM8K train + MMLU
  train texts (never the test texts) vs as many seeded pool documents; word bigrams, lr 0.1,
  dim 100, 5 epochs, 200k buckets.
- Classifier B: seeded wiki + books + science pool documents vs as many other seeded pool
  documents, same settings.
- Selections: ``A top 10%`` = documents at or above :func:`top_fraction_threshold` of A's
  score (top 10% of the pool's tokens); ``ensemble top 10%`` = Nemotron-CC buckets (per
  classifier 20 token-weighted bins, bucket = max) ranked by bucket, ties within a bucket
  broken by A's score, taken from the top until 10% of the tokens (the same threshold kernel
  on the key ``bucket + 0.999 * score_A``); ``random`` = seeded random documents until the
  word count of ``A top 10%`` (a new sample per seed).
- Proxy: curamix's :func:`curamix.proxy.train.train_proxy` (one stream per condition, weight
  1), one BPE tokenizer for every condition trained on a seeded pool sample, the same preset
  and the same number of training tokens everywhere (``--tokens``, lowered to the smallest
  selection so no condition repeats data), seeds 0..``--seeds``-1 (proxy init, document order,
  start offset, the random sample).
- Score: mean next-token loss on ``--eval-texts`` seeded GSM8K test + as many MMLU test texts
  (the headline is the mean of the two sets' losses), and on the held-out pool documents.
  The selections are also checked for documents sharing a 13-word n-gram with those texts.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

T0 = time.perf_counter()
CURATED = ("wiki", "books", "science")
EVAL_SETS = ("gsm8k_test", "mmlu_test")


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def ngrams13(text: str) -> set[int]:
    w = text.lower().split()
    return {hash(tuple(w[i : i + 13])) for i in range(len(w) - 12)}


# ---------------------------------------------------------------------------------------------
# One proxy run (in a worker process)


def run_one(
    cond: str,
    seed: int,
    stream: np.ndarray,
    val: dict[str, np.ndarray],
    p: dict[str, Any],
    tasks: tuple[str, ...] = EVAL_SETS,
) -> dict[str, Any]:
    """One proxy trained on ``stream`` alone; ``target`` is the mean loss over ``tasks`` (keys
    of ``val``). bench/rds_effect.py runs its conditions through this too."""
    from curamix.proxy.train import ProxyTrainConfig, train_proxy

    t0 = time.perf_counter()
    cfg = ProxyTrainConfig(
        model=p["model"], vocab_size=p["vocab"], seq_len=p["seq_len"],
        batch_size=p["batch_size"], total_tokens=p["tokens"], lr=p["lr"], warmup=0.05,
        eval_tokens=p["eval_tokens"], device="cpu", cpu_threads=p["threads"], seed=seed,
        log_every=50,
    )  # fmt: skip
    res = train_proxy(cfg, {"selection": stream}, val, {"selection": 1.0}, progress=False)
    tests = {k: float(res.val_losses[k]) for k in tasks}
    return {
        "condition": cond,
        "seed": seed,
        "target": float(np.mean(list(tests.values()))),
        "tests": tests,
        "pool_val": float(res.val_losses["pool_val"]),
        "tokens": res.tokens_trained,
        "epochs": res.epochs["selection"],
        "stream_tokens": len(stream),
        "n_params": res.n_params,
        "n_params_non_embedding": res.n_params_non_embedding,
        "wall_s": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--per-domain", type=int, default=0, help="docs per domain; 0 = all")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=1_000_000, help="training tokens per run")
    ap.add_argument("--model", default="tiny", help="proxy preset (nano, tiny, xs, ...)")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--keep", type=float, default=0.1, help="kept fraction of the pool's tokens")
    ap.add_argument("--eval-texts", type=int, default=400, help="per test set")
    ap.add_argument("--pool-val", type=int, default=400, help="pool docs held out for val")
    ap.add_argument("--curated-positives", type=int, default=3000, help="classifier B")
    ap.add_argument("--bucket", type=int, default=200_000)
    ap.add_argument("--clf-seed", type=int, default=0, help="classifiers, samples, tokenizer")
    ap.add_argument("--tokenizer-chars", type=int, default=3_000_000)
    ap.add_argument("--jobs", type=int, default=2, help="proxy runs in parallel (processes)")
    ap.add_argument("--cpu-threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--out", type=Path, default=None, help="write all numbers as JSON")
    args = ap.parse_args()

    from sklearn.metrics import roc_auc_score

    from curamix.filters.quality import (
        FastTextQualityClassifier,
        assign_bins,
        ensemble_buckets,
        percentile_bins,
        top_fraction_threshold,
    )
    from curamix.proxy.tokenizer import encode_stream, eos_id, tokenizer_sample, train_tokenizer

    data = Path(args.data)
    cs = args.clf_seed

    # -- pool ----------------------------------------------------------------------------------
    texts: list[str] = []
    dom: list[str] = []
    for f in sorted((data / "corpus").glob("*.jsonl.gz")):
        d = f.name.removesuffix(".jsonl.gz")
        rows = read_jsonl(f)
        if args.per_domain:
            idx = np.random.default_rng([cs, len(dom)]).permutation(len(rows))
            rows = [rows[i] for i in np.sort(idx[: args.per_domain])]
        texts += [r["text"] for r in rows]
        dom += [d] * len(rows)
    n_all = len(texts)
    rng = np.random.default_rng(cs)
    held = np.zeros(n_all, bool)
    held[rng.choice(n_all, args.pool_val, replace=False)] = True
    pool_val_texts = [texts[i] for i in np.flatnonzero(held)]
    texts = [t for t, h in zip(texts, held, strict=True) if not h]
    domains = np.array([d for d, h in zip(dom, held, strict=True) if not h])
    words = np.array([len(t.split()) for t in texts], dtype=np.float64)
    n, total_words = len(texts), words.sum()
    names = sorted(set(domains))
    pool_share = {d: words[domains == d].sum() / total_words for d in names}
    log(
        f"pool: {n:,} docs, {total_words:,.0f} words, {len(names)} domains"
        f"{f' ({args.per_domain} per domain)' if args.per_domain else ' (whole corpus)'}; "
        f"{args.pool_val} docs held out for pool validation"
    )

    tgt = data / "targets"
    positives_a = [r["text"] for b in ("gsm8k_train", "mmlu_train") for r in read_jsonl(tgt / f"{b}.jsonl.gz")]  # fmt: skip
    eval_texts = {}
    for k, b in enumerate(EVAL_SETS):
        rows = read_jsonl(tgt / f"{b}.jsonl.gz")
        pick = np.random.default_rng([cs, 3, k]).choice(len(rows), args.eval_texts, replace=False)
        eval_texts[b] = [rows[i]["text"] for i in np.sort(pick)]

    # -- classifiers ---------------------------------------------------------------------------
    def by_domain_counts(idx: np.ndarray) -> dict[str, int]:
        u, k = np.unique(domains[idx], return_counts=True)
        return {str(a): int(b) for a, b in zip(u, k, strict=True)}

    def fit_classifier(
        name: str, pos: list[str], neg_idx: np.ndarray, key: int
    ) -> tuple[Any, dict[str, Any]]:
        neg = [texts[i] for i in neg_idx]
        r = np.random.default_rng([cs, key])
        hp, hn = r.permutation(len(pos)), r.permutation(len(neg))
        cut_p, cut_n = len(pos) // 10, len(neg) // 10
        t = time.perf_counter()
        probe = FastTextQualityClassifier(bucket=args.bucket, random_state=cs).fit(
            [pos[i] for i in hp[cut_p:]], [neg[i] for i in hn[cut_n:]]
        )
        s_pos = probe.score_samples([pos[i] for i in hp[:cut_p]])
        s_neg = probe.score_samples([neg[i] for i in hn[:cut_n]])
        y = np.r_[np.ones(cut_p), np.zeros(cut_n)]
        s = np.r_[s_pos, s_neg]
        clf = FastTextQualityClassifier(bucket=args.bucket, random_state=cs).fit(pos, neg)
        stats = {
            "positives": len(pos),
            "negatives": len(neg),
            "negatives_by_domain": by_domain_counts(neg_idx),
            "heldout_auc": float(roc_auc_score(y, s)),
            "heldout_accuracy": float(np.mean((s >= 0.5) == y)),
            "heldout": f"{cut_p} pos + {cut_n} neg (probe fitted on the other 90%)",
            "fit_s": time.perf_counter() - t,
        }
        log(
            f"classifier {name}: {len(pos):,} pos vs {len(neg):,} neg; held-out AUC "
            f"{stats['heldout_auc']:.3f}, acc {stats['heldout_accuracy']:.3f} ({stats['fit_s']:.0f}s)"
        )
        return clf, stats

    if len(positives_a) > n // 2:  # a small slice: as many positives as negatives
        keep = np.random.default_rng([cs, 4]).choice(len(positives_a), n // 2, replace=False)
        positives_a = [positives_a[i] for i in np.sort(keep)]
    neg_a = np.sort(np.random.default_rng([cs, 1]).choice(n, len(positives_a), replace=False))
    clf_a, stats_a = fit_classifier("A (GSM8K+MMLU train vs pool)", positives_a, neg_a, 11)
    curated_idx = np.flatnonzero(np.isin(domains, CURATED))
    rb = np.random.default_rng([cs, 2])
    pos_b_idx = np.sort(rb.choice(curated_idx, min(args.curated_positives, curated_idx.size), replace=False))  # fmt: skip
    rest = np.setdiff1d(np.arange(n), pos_b_idx)
    neg_b = np.sort(rb.choice(rest, pos_b_idx.size, replace=False))
    clf_b, stats_b = fit_classifier(
        "B (wiki+books+science vs pool)", [texts[i] for i in pos_b_idx], neg_b, 12
    )
    stats_b["positives_by_domain"] = by_domain_counts(pos_b_idx)
    score_a = clf_a.score_samples(texts)
    score_b = clf_b.score_samples(texts)
    log("scored the pool with A and B")

    # -- selections ----------------------------------------------------------------------------
    thr_a = top_fraction_threshold(score_a, words, args.keep)
    sel_a = np.flatnonzero(score_a >= thr_a)
    bins_a = assign_bins(score_a, percentile_bins(score_a, words))
    bins_b = assign_bins(score_b, percentile_bins(score_b, words))
    bucket = ensemble_buckets([bins_a, bins_b])
    key = bucket + 0.999 * score_a
    thr_e = top_fraction_threshold(key, words, args.keep)
    sel_e = np.flatnonzero(key >= thr_e)
    random_words = words[sel_a].sum()

    def random_selection(seed: int) -> np.ndarray:
        order = np.random.default_rng([seed, 7]).permutation(n)
        k = int(np.searchsorted(np.cumsum(words[order]), random_words)) + 1
        return np.sort(order[:k])

    seeds = list(range(args.seeds))
    selections: dict[tuple[str, int], np.ndarray] = {}
    for s in seeds:
        selections["A top 10%", s] = sel_a
        selections["ensemble top 10%", s] = sel_e
        selections["random", s] = random_selection(s)
    conds = ["A top 10%", "ensemble top 10%", "random"]

    def summary(idx: np.ndarray) -> dict[str, Any]:
        w = words[idx].sum()
        return {
            "docs": int(idx.size),
            "words": float(w),
            "word_frac": float(w / total_words),
            "share": {d: float(words[idx][domains[idx] == d].sum() / w) for d in names},
        }

    sel_info = {
        c: [summary(selections[c, s]) for s in seeds] for c in conds
    }  # per seed (identical for the classifier selections)
    bucket_top = int(bucket.max())
    ens_note = {
        "threshold_key": float(thr_e),
        "buckets_kept": sorted({int(b) for b in bucket[sel_e]}),
        "bucket_19_word_frac": float(words[bucket == bucket_top].sum() / total_words),
        "overlap_with_A_docs": int(np.intersect1d(sel_a, sel_e).size),
    }
    a_note = {
        "threshold": float(thr_a),
        "ties_at_threshold": int(np.sum(score_a == thr_a)),
        "score_1_docs": int(np.sum(score_a >= 1.0)),
        "selected_that_were_A_negatives": int(np.intersect1d(sel_a, neg_a).size),
    }
    for c in conds[:2]:
        i = sel_info[c][0]
        top = sorted(i["share"].items(), key=lambda kv: -kv[1])[:4]
        log(
            f"selection {c}: {i['docs']:,} docs, {i['word_frac']:.2%} of words; "
            + ", ".join(f"{d} {v:.1%}" for d, v in top)
        )
    log(f"A: {a_note}; ensemble: {ens_note}")

    # contamination: selected docs sharing a 13-word n-gram with the evaluated test texts
    test_grams = set().union(*(ngrams13(t) for ts in eval_texts.values() for t in ts))
    union = np.unique(np.concatenate(list(selections.values())))
    hit = {int(i) for i in union if ngrams13(texts[i]) & test_grams}
    contam = {
        c: float(np.mean([sum(int(i) in hit for i in selections[c, s]) for s in seeds]))
        for c in conds
    }
    log(f"docs sharing a 13-gram with the {2 * args.eval_texts} eval texts: {contam}")

    # -- tokenizer and streams -----------------------------------------------------------------
    by_domain = {d: [texts[i] for i in np.flatnonzero(domains == d)] for d in names}
    tok = train_tokenizer(tokenizer_sample(by_domain, args.tokenizer_chars, cs), args.vocab)
    vocab = tok.get_vocab_size()
    encoded: dict[int, np.ndarray] = {}
    todo = [int(i) for i in union]
    for j in range(0, len(todo), 2048):
        chunk = todo[j : j + 2048]
        for i, enc in zip(chunk, tok.encode_batch([texts[i] for i in chunk]), strict=True):
            encoded[i] = np.asarray(enc.ids, dtype=np.uint16)
    eos = np.array([eos_id(tok)], dtype=np.uint16)

    def stream(idx: np.ndarray, seed: int) -> np.ndarray:
        order = np.random.default_rng([seed, 5]).permutation(idx)
        return np.concatenate([x for i in order for x in (encoded[int(i)], eos)])

    streams = {k: stream(v, k[1]) for k, v in selections.items()}
    val = {b: encode_stream(tok, ts) for b, ts in eval_texts.items()}
    val["pool_val"] = encode_stream(tok, pool_val_texts)
    per_step = args.batch_size * args.seq_len
    smallest = min(len(v) for v in streams.values())
    tokens = min(args.tokens, smallest - 1) // per_step * per_step
    log(
        f"tokenizer: vocab {vocab} from {args.tokenizer_chars:,} pool chars; streams "
        + ", ".join(f"{c} {np.mean([len(streams[c, s]) for s in seeds]):,.0f}" for c in conds)
        + " tokens; eval " + ", ".join(f"{k} {len(v):,}" for k, v in val.items())
        + f"; training {tokens:,} tokens per run"
    )  # fmt: skip
    p = {
        "model": args.model, "vocab": vocab, "seq_len": args.seq_len,
        "batch_size": args.batch_size, "tokens": tokens, "lr": args.lr,
        "eval_tokens": max(len(v) for v in val.values()), "threads": args.cpu_threads,
    }  # fmt: skip

    # -- proxies -------------------------------------------------------------------------------
    runs: list[dict[str, Any]] = []
    log(f"training {len(streams)} proxies ({args.model}), {args.jobs} jobs x {args.cpu_threads} thread(s)")  # fmt: skip
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        futs = [pool.submit(run_one, c, s, streams[c, s], val, p) for s in seeds for c in conds]
        for f in futs:
            r = f.result()
            runs.append(r)
            log(
                f"  {r['condition']:17s} seed {r['seed']}: target {r['target']:.4f} "
                f"(gsm8k {r['tests']['gsm8k_test']:.4f}, mmlu {r['tests']['mmlu_test']:.4f}), "
                f"pool val {r['pool_val']:.4f}, {r['epochs']:.2f} epochs, {r['wall_s']:.0f}s"
            )

    # -- report --------------------------------------------------------------------------------
    def ms(x: list[float]) -> str:
        a = np.asarray(x)
        return f"{a.mean():.4f} ± {a.std(ddof=1) if a.size > 1 else 0.0:.4f}"

    base = {r["seed"]: r["target"] for r in runs if r["condition"] == "random"}
    print(
        f"\n{len(seeds)} seeds; {args.model} proxy ({runs[0]['n_params_non_embedding']:,} "
        f"non-embedding / {runs[0]['n_params']:,} params), vocab {vocab}, seq {args.seq_len}, "
        f"batch {args.batch_size}, {tokens:,} training tokens per run; loss = mean next-token "
        f"loss (nats), lower is better; ± = sample std over seeds\n"
    )
    print(
        "| condition | target loss (GSM8K+MMLU test) | Δ vs random, paired | gsm8k_test | "
        "mmlu_test | pool val | docs | words (% of pool) | BPE tokens in selection | "
        "epochs | top domains (word share) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for c in conds:
        rs = [r for r in runs if r["condition"] == c]
        info = sel_info[c]
        share = {d: np.mean([i["share"][d] for i in info]) for d in names}
        top = ", ".join(f"{d} {v:.0%}" for d, v in sorted(share.items(), key=lambda kv: -kv[1])[:3])
        delta = "-" if c == "random" else ms([r["target"] - base[r["seed"]] for r in rs])
        print(
            f"| {c} | {ms([r['target'] for r in rs])} | {delta} "
            f"| {ms([r['tests']['gsm8k_test'] for r in rs])} "
            f"| {ms([r['tests']['mmlu_test'] for r in rs])} | {ms([r['pool_val'] for r in rs])} "
            f"| {np.mean([i['docs'] for i in info]):,.0f} "
            f"| {np.mean([i['words'] for i in info]):,.0f} "
            f"({np.mean([i['word_frac'] for i in info]):.1%}) "
            f"| {np.mean([r['stream_tokens'] for r in rs]):,.0f} "
            f"| {np.mean([r['epochs'] for r in rs]):.2f} | {top} |"
        )
    print("\n| domain | pool | " + " | ".join(conds) + " |")
    print("|---|---:|" + "---:|" * len(conds))
    for d in names:
        cells = [f"{np.mean([i['share'][d] for i in sel_info[c]]):.1%}" for c in conds]
        print(f"| {d} | {pool_share[d]:.1%} | " + " | ".join(cells) + " |")
    print(
        f"\nclassifier A: {json.dumps(stats_a)}\n  selection: {json.dumps(a_note)}"
        f"\nclassifier B: {json.dumps(stats_b)}\n  ensemble: {json.dumps(ens_note)}"
        f"\ndocs sharing a 13-word n-gram with the evaluated test texts (mean over seeds): "
        f"{json.dumps(contam)}"
    )
    total = time.perf_counter() - T0
    print(
        f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()} ({os.cpu_count()} CPUs), Python "
        f"{platform.python_version()}; total {total:.0f}s"
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
                    "classifier_a": stats_a,
                    "classifier_b": stats_b,
                    "a_selection": a_note,
                    "ensemble": ens_note,
                    "contamination": contam,
                    "wall_s": total,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
