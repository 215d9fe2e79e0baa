"""Effect of RDS+ (issue 21, part 2): with GSM8K, MMLU and ARC as three tasks, does a proxy
trained on RDS+'s round-robin selection of 10% of the pool reach a lower held-out target loss
than one trained on a random 10% or on BETR's 10%, at equal tokens?

    .venv/bin/python bench/rds_effect.py --smoke          # ~1-2 min on 2 CPUs
    .venv/bin/python bench/rds_effect.py                  # whole corpus (the lead's run)
    .venv/bin/python bench/rds_effect.py [--data ../shared/data] [--per-domain 0] [--seeds 3] \
        [--tokens 1000000] [--model tiny] [--embed-condition] [--jobs 2] [--out /tmp/rds.json]

Setup (on ../shared/data; every choice fixed before looking at the held-out losses):

- Pool: every corpus document (``--per-domain N``: a seeded N per domain) minus ``--pool-val``
  seeded documents held out for a general validation loss. Tokens are whitespace words
  (what the stages count).
- Tasks, queries and held-out evaluation texts (disjoint): GSM8K: ``--queries`` seeded
  gsm8k_train texts / ``--eval-texts`` seeded gsm8k_test texts; MMLU: up to ``--queries`` of
  the 285 mmlu_train (dev) texts / mmlu_test texts; ARC: the ARC-Easy + ARC-Challenge test texts (there is no ARC
  train set here) split by a seeded permutation: ``--queries`` for the queries, the
  evaluation texts from the rest.
- RDS+: the stage's default representation, a ``--rep-model`` proxy LM and its BPE
  tokenizer trained on ``--rep-sample`` seeded pool documents for ``--rep-tokens`` tokens
  (:func:`curamix.proxy.perplexity.reference_proxy`, what ``rds`` does), position-weighted
  mean of its last hidden layer, score = max cosine to a task's queries, round-robin over
  the three tasks until 10% of the pool's words (``budget_unit: tokens``). With
  ``--embed-condition``, also RDS+ over all-MiniLM-L6-v2 vectors (``representation:
  embed``; embeds the whole pool: slow on CPU).
- BETR (in process, the stage's kernels): ``--betr-sample`` seeded pool documents and every
  query embedded with all-MiniLM-L6-v2 (``--max-seq-length``), ranked per example (``max``),
  top 10% labelled positive, 20% held out, balanced, the hashed text classifier, then the
  pool's best-scored documents until the same word count as RDS+'s selection.
- Random: seeded pool documents until that word count (a new sample per seed).
- Proxy: :func:`curamix.proxy.train.train_proxy` per condition and seed, one BPE tokenizer
  for all conditions (seeded pool sample), the same preset and number of training tokens
  everywhere (``--tokens``, lowered to the smallest selection so nothing repeats), seeds
  0..``--seeds``-1 (init, document order, the random sample).
- Score: mean next-token loss on each task's evaluation texts (the headline is the mean of
  the three) and on the held-out pool documents; paired differences vs random per seed.
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
# bench/quality_effect.py: the same one-selection proxy run, the log and the JSONL reader
from quality_effect import T0, log, read_jsonl, run_one

TASKS = ("gsm8k", "mmlu", "arc")
SMOKE = {
    "per_domain": 60,
    "pool_val": 60,
    "queries": 40,
    "eval_texts": 60,
    "rep_sample": 400,
    "rep_tokens": 32_768,
    "betr_sample": 160,
    "max_seq_length": 48,
    "tokens": 40_960,
    "model": "nano",
    "vocab": 512,
    "seq_len": 64,
    "tokenizer_chars": 400_000,
}
"""``--smoke``: a small slice and tiny proxies, to check the whole path in a minute or two."""


def pick(rows: list, n: int, key: list[int]) -> list:
    idx = np.random.default_rng(key).permutation(len(rows))
    return [rows[i] for i in np.sort(idx[: min(n, len(rows))])]


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--smoke", action="store_true", help="small slice, tiny proxies (~1-2 min)")
    ap.add_argument("--per-domain", type=int, default=0, help="docs per domain; 0 = all")
    ap.add_argument("--pool-val", type=int, default=400, help="pool docs held out for val")
    ap.add_argument("--queries", type=int, default=500, help="queries per task (MMLU has 285)")
    ap.add_argument("--eval-texts", type=int, default=400, help="per task")
    ap.add_argument("--keep", type=float, default=0.1, help="kept fraction of the pool's words")
    ap.add_argument("--rep-model", default="nano", help="RDS+ proxy preset (the stage's default)")
    ap.add_argument("--rep-sample", type=int, default=2000)
    ap.add_argument("--rep-tokens", type=int, default=300_000)
    ap.add_argument("--rep-vocab", type=int, default=1024)
    ap.add_argument("--rep-seq-len", type=int, default=128)
    ap.add_argument("--embed-condition", action="store_true", help="add RDS+ over MiniLM")
    ap.add_argument("--betr-sample", type=int, default=2000)
    ap.add_argument("--max-seq-length", type=int, default=64, help="MiniLM truncation")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=1_000_000, help="training tokens per run")
    ap.add_argument("--model", default="tiny", help="evaluation proxy preset")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--tokenizer-chars", type=int, default=3_000_000)
    ap.add_argument("--sel-seed", type=int, default=0, help="samples, splits, selectors")
    ap.add_argument("--jobs", type=int, default=2, help="proxy runs in parallel (processes)")
    ap.add_argument("--cpu-threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--out", type=Path, default=None, help="write all numbers as JSON")
    args = ap.parse_args()
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
        args.rep_model = "nano"
        args.rep_vocab, args.rep_seq_len = 512, 64

    from curamix.embeddings.embed import embed_texts
    from curamix.proxy.perplexity import reference_proxy
    from curamix.proxy.tokenizer import encode_stream, eos_id, tokenizer_sample, train_tokenizer
    from curamix.selectors.betr import (
        HashedTextClassifier,
        balance_classes,
        hash_unit,
        label_top,
        rank_values,
    )
    from curamix.selectors.rds import ProxyLMEncoder, RDSSelector

    data = Path(args.data)
    ss = args.sel_seed

    # -- pool ----------------------------------------------------------------------------------
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
    budget = args.keep * total_words
    names = sorted(set(domains))
    pool_share = {d: words[domains == d].sum() / total_words for d in names}
    log(
        f"pool: {n:,} docs, {total_words:,.0f} words, {len(names)} domains"
        f"{f' ({args.per_domain} per domain)' if args.per_domain else ' (whole corpus)'}; "
        f"{args.pool_val} held out; budget {args.keep:.0%} = {budget:,.0f} words"
    )

    # -- tasks: queries and held-out evaluation texts ------------------------------------------
    tgt = data / "targets"
    gsm_train = [r["text"] for r in read_jsonl(tgt / "gsm8k_train.jsonl.gz")]
    arc = [
        r["text"]
        for b in ("arc_easy_test", "arc_challenge_test")
        for r in read_jsonl(tgt / f"{b}.jsonl.gz")
    ]
    arc_perm = np.random.default_rng([ss, 9]).permutation(len(arc))
    arc_q, arc_rest = arc_perm[: args.queries], arc_perm[args.queries :]
    queries = {
        "gsm8k": pick(gsm_train, args.queries, [ss, 1]),
        "mmlu": pick(
            [r["text"] for r in read_jsonl(tgt / "mmlu_train.jsonl.gz")], args.queries, [ss, 6]
        ),
        "arc": [arc[i] for i in np.sort(arc_q)],
    }
    eval_texts = {
        "gsm8k": pick(
            [r["text"] for r in read_jsonl(tgt / "gsm8k_test.jsonl.gz")], args.eval_texts, [ss, 2]
        ),
        "mmlu": pick(
            [r["text"] for r in read_jsonl(tgt / "mmlu_test.jsonl.gz")], args.eval_texts, [ss, 3]
        ),
        "arc": [arc[i] for i in np.sort(arc_rest[: args.eval_texts])],
    }
    assert not set(queries["arc"]) & set(eval_texts["arc"])
    log(
        "tasks: "
        + ", ".join(f"{t} {len(queries[t])} queries / {len(eval_texts[t])} eval" for t in TASKS)
    )

    # -- RDS+ (proxy representation) ------------------------------------------------------------
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
    enc = ProxyLMEncoder(rep_model, rep_tok, batch_size=32)
    t_train = time.perf_counter() - t
    t = time.perf_counter()
    doc_vec = enc.encode(texts)
    sel = RDSSelector("round_robin").fit({k: enc.encode(q) for k, q in queries.items()})
    scores = sel.score_samples(doc_vec)
    rds = sel.select(scores, budget, words)
    stats["rds_proxy"] = {
        "train_s": t_train,
        "encode_score_s": time.perf_counter() - t,
        "per_task": dict(zip(TASKS, rds.per_task(3).tolist(), strict=True)),
        "duplicate_pops": rds.pops - len(rds.positions),
        "score_range": [float(scores.min()), float(scores.max())],
    }
    log(f"RDS+ (proxy {args.rep_model}): {len(rds.positions):,} docs; {stats['rds_proxy']}")
    selections: dict[str, np.ndarray] = {"RDS+ proxy": np.sort(rds.positions)}

    # -- BETR and (optional) RDS+ over MiniLM ---------------------------------------------------
    emb = {"device": "cpu", "max_seq_length": args.max_seq_length}
    t = time.perf_counter()
    q_all = [(k, x) for k in TASKS for x in queries[k]]
    q_vec = embed_texts([x for _, x in q_all], **emb)
    b_idx = np.sort(
        np.random.default_rng([ss, 5]).choice(n, min(args.betr_sample, n), replace=False)
    )
    b_vec = embed_texts([texts[i] for i in b_idx], **emb)
    best, mean = rank_values(b_vec, q_vec)
    labels = label_top(best, 0.1, tiebreak=mean)
    ho = hash_unit([str(i) for i in b_idx], ss, "betr-heldout") < 0.2
    tr = np.flatnonzero(~ho)
    bal = tr[balance_classes(labels[tr], random_state=ss)]
    clf = HashedTextClassifier().fit([texts[b_idx[i]] for i in bal], labels[bal], random_state=ss)
    b_scores = clf.decision_function(texts)
    order = np.argsort(-b_scores, kind="stable")
    k = int(np.searchsorted(np.cumsum(words[order]), words[rds.positions].sum() - 1e-9)) + 1
    selections["BETR"] = np.sort(order[:k])
    stats["betr"] = {"s": time.perf_counter() - t, "trained_on": len(bal), "sample": len(b_idx)}
    log(f"BETR: {k:,} docs at RDS+'s word count ({stats['betr']['s']:.0f}s)")
    if args.embed_condition:
        t = time.perf_counter()
        e_doc = embed_texts(texts, **emb)
        off = np.cumsum([0] + [len(queries[k]) for k in TASKS])
        e_sel = RDSSelector("round_robin").fit(
            {k: q_vec[off[j] : off[j + 1]] for j, k in enumerate(TASKS)}
        )
        e_rds = e_sel.select(e_sel.score_samples(e_doc), budget, words)
        selections["RDS+ MiniLM"] = np.sort(e_rds.positions)
        stats["rds_minilm"] = {
            "s": time.perf_counter() - t,
            "per_task": dict(zip(TASKS, e_rds.per_task(3).tolist(), strict=True)),
        }
        log(f"RDS+ (MiniLM): {len(e_rds.positions):,} docs; {stats['rds_minilm']}")

    target_words = words[rds.positions].sum()

    def random_selection(seed: int) -> np.ndarray:
        o = np.random.default_rng([seed, 7]).permutation(n)
        kk = int(np.searchsorted(np.cumsum(words[o]), target_words - 1e-9)) + 1
        return np.sort(o[:kk])

    seeds = list(range(args.seeds))
    conds = [*selections, "random"]
    per_seed = {(c, s): selections[c] for c in selections for s in seeds}
    per_seed |= {("random", s): random_selection(s) for s in seeds}

    def summary(idx: np.ndarray) -> dict[str, Any]:
        w = words[idx].sum()
        return {
            "docs": int(idx.size),
            "words": float(w),
            "word_frac": float(w / total_words),
            "share": {d: float(words[idx][domains[idx] == d].sum() / w) for d in names},
        }

    sel_info = {c: [summary(per_seed[c, s]) for s in seeds] for c in conds}
    overlap = len(np.intersect1d(selections["RDS+ proxy"], selections["BETR"]))

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
                f"  {r['condition']:12s} seed {r['seed']}: target {r['target']:.4f} ("
                + ", ".join(f"{k} {r['tests'][k]:.4f}" for k in TASKS)
                + f"), pool val {r['pool_val']:.4f}, {r['epochs']:.2f} epochs"
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
        "| condition | target loss (mean of 3) | Δ vs random, paired | gsm8k | mmlu | arc | "
        "pool val | docs | words (% of pool) | top domains (word share) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in conds:
        rs = [r for r in runs if r["condition"] == c]
        info = sel_info[c]
        share = {d: np.mean([i["share"][d] for i in info]) for d in names}
        top = ", ".join(f"{d} {v:.0%}" for d, v in sorted(share.items(), key=lambda kv: -kv[1])[:3])
        delta = "-" if c == "random" else ms([r["target"] - base[r["seed"]]["target"] for r in rs])
        print(
            f"| {c} | {ms([r['target'] for r in rs])} | {delta} | "
            + " | ".join(ms([r["tests"][k] for r in rs]) for k in TASKS)
            + f" | {ms([r['pool_val'] for r in rs])} | {np.mean([i['docs'] for i in info]):,.0f} "
            f"| {np.mean([i['words'] for i in info]):,.0f} "
            f"({np.mean([i['word_frac'] for i in info]):.1%}) | {top} |"
        )
    print("\n| domain | pool | " + " | ".join(conds) + " |")
    print("|---|---:|" + "---:|" * len(conds))
    for d in names:
        cells = [f"{np.mean([i['share'][d] for i in sel_info[c]]):.1%}" for c in conds]
        print(f"| {d} | {pool_share[d]:.1%} | " + " | ".join(cells) + " |")
    print(
        f"\nRDS+ (proxy): {json.dumps(stats['rds_proxy'])}\nBETR: {json.dumps(stats['betr'])}"
        + (f"\nRDS+ (MiniLM): {json.dumps(stats['rds_minilm'])}" if "rds_minilm" in stats else "")
        + f"\ndocuments in both RDS+ (proxy) and BETR: {overlap}"
    )
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
                    "overlap_rds_betr": overlap,
                    "wall_s": total,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
