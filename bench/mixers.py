"""Mixer effectiveness: target loss of proxies trained at one token budget per mixture method.

On ../shared/data: the 11 corpus domains are the training pool (the same random fraction of
each domain's documents, so the natural token shares are the pool's); the target is GSM8K + MMLU
*train* texts (what DGA / TiKMiX see through the proxy hook's target gradient); the score is
the loss on held-out GSM8K + MMLU *test* texts (never seen by any mixer). Every method trains
the same proxy for the same number of tokens, 3 seeds each:

- uniform, natural: static baselines;
- dga: DGAMixer, online (cosine-normalised alignment, EMA 0.5);
- tikmix: TiKMiXMixer mode D, stage-wise (influence with Adam-style diagonal H^-1 from its own
  squared-gradient average, entropy term, trust region);
- doremi: DoReMiMixer with the uniform run of the same seed as reference (its final per-domain
  validation losses);
- skillit: SkillItMixer in targeted mode: its skills graph estimated per seed by the cheap
  edge test (``estimate_skills_graph(how="single")``: a proxy warmed up on the uniform mixture
  for 1/8 of the budget, then 1/16 of the budget on each domain alone; the edge into the
  ``target`` column is how much that lowered the GSM8K + MMLU train loss), then
  ``p ∝ exp(0.5 * A[:, target] * mean of the last 3 rounds' target loss)``, the target loss
  evaluated on 2,048 held-out tokens each round. The estimate's proxy tokens (about 2x a run on 11
  domains) are reported separately and counted in its wall time.

Method settings are fixed before looking at the held-out numbers (no tuning on the test
texts). The online methods also spend compute on the hook's gradients (not counted in the
token budget; their wall time shows it).

    .venv/bin/python bench/mixers.py --quick            # < 5 min on the 2-core CPU
    .venv/bin/python bench/mixers.py --cpu-threads 1 --jobs 2 --out /tmp/mixers.json
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

SHARED = Path(
    os.environ.get("CURAMIX_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "model": "tiny", "vocab": 512, "seq_len": 128, "batch_size": 16, "tokens": 300_000,
        "domain_fraction": 0.1, "target_chars": 150_000, "test_chars": 60_000,
        "eval_tokens": 16_384, "update_every": 15,
    },
    "full": {
        "model": "xs", "vocab": 2048, "seq_len": 128, "batch_size": 16, "tokens": 3_000_000,
        "domain_fraction": 1.0, "target_chars": 1_000_000, "test_chars": 300_000,
        "eval_tokens": 65_536, "update_every": 50,
    },
}  # fmt: skip

METHODS = ("uniform", "natural", "dga", "tikmix", "doremi", "skillit")
SKILLIT = {"eta": 0.5, "window": 3, "target_mask": ["target"], "eval_tokens": 2048}
"""Skill-it's settings (the reference's LEGO eta and window), fixed before any run."""
SKILLIT_GRAPH = {
    "how": "single",
    "warmup_fraction": 1 / 8,
    "edge_fraction": 1 / 16,
    "eval_tokens": 8192,
}


# ---------------------------------------------------------------------------------------------
# Data


def sample_texts(
    path: Path, seed: int, max_chars: int | None = None, fraction: float | None = None
) -> list[str]:
    """Documents of a JSONL.gz file in a seeded random order, up to ``max_chars`` characters or
    ``fraction`` of the file's text (so domains keep their natural proportions)."""
    with gzip.open(path, "rt") as f:
        texts = [json.loads(line)["text"] for line in f]
    if fraction is not None:
        max_chars = int(fraction * sum(map(len, texts)))
    out, n = [], 0
    for i in np.random.default_rng(seed).permutation(len(texts)):
        out.append(texts[i])
        n += len(texts[i])
        if max_chars is not None and n >= max_chars:
            break
    return out


def prepare(p: dict[str, Any]) -> dict[str, Any]:
    from curamix.proxy.data import split_documents
    from curamix.proxy.tokenizer import encode_stream, train_tokenizer

    corpus = {
        f.name.removesuffix(".jsonl.gz"): sample_texts(f, 0, fraction=p["domain_fraction"])
        for f in sorted((SHARED / "corpus").glob("*.jsonl.gz"))
    }
    tgt = SHARED / "targets"
    target_train = [
        t for name in ("gsm8k_train", "mmlu_train")
        for t in sample_texts(tgt / f"{name}.jsonl.gz", 1, p["target_chars"])
    ]  # fmt: skip
    order = np.random.default_rng(2).permutation(len(target_train))
    target_train = [target_train[i] for i in order]
    tests = {
        name: sample_texts(tgt / f"{name}.jsonl.gz", 3, p["test_chars"])
        for name in ("gsm8k_test", "mmlu_test")
    }
    sample = [t[:4000] for ts in corpus.values() for t in ts[:150]] + target_train[:300]
    tok = train_tokenizer(sample, p["vocab"])
    train, val = {}, {}
    for d, ts in corpus.items():
        tr, va = split_documents(ts, 0.05, 0)
        train[d], val[d] = encode_stream(tok, tr), encode_stream(tok, va)
    for name, ts in tests.items():
        val[f"target:{name}"] = encode_stream(tok, ts)
    return {
        "train": train,
        "val": val,
        "target": encode_stream(tok, target_train),
        "vocab": tok.get_vocab_size(),
    }


# ---------------------------------------------------------------------------------------------
# One run


def make_mixer(method: str, stats: Any, graph: Any = None) -> Any:
    from curamix.mixers import (
        DGAMixer,
        DoReMiMixer,
        NaturalMixer,
        SkillItMixer,
        TiKMiXMixer,
        UniformMixer,
    )

    if method == "uniform":
        return UniformMixer().fit(stats)
    if method == "natural":
        return NaturalMixer().fit(stats)
    if method == "dga":
        return DGAMixer(eta=5.0, ema=0.5, normalize="cosine", init="uniform").fit(stats)
    if method == "tikmix":
        return TiKMiXMixer(
            mode="D", hessian="adam", uniformity=0.3, diversity=0.1, trust_region=0.05,
            init="uniform",
        ).fit(stats)  # fmt: skip
    if method == "doremi":
        return DoReMiMixer(eta=1.0, smoothing=1e-3, init="uniform").fit(stats)
    if method == "skillit":
        return SkillItMixer(graph=graph, **SKILLIT).fit(stats)
    raise ValueError(f"unknown method {method!r}")


def run_one(
    method: str, seed: int, data: dict[str, Any], p: dict[str, Any], threads: int | None,
    reference: dict[str, float] | None = None,
) -> dict[str, Any]:  # fmt: skip
    from curamix.mixers import DomainStats
    from curamix.mixers.base import OnlineMixer
    from curamix.proxy.train import ProxyTrainConfig, train_proxy

    t0 = time.perf_counter()
    train, val = data["train"], data["val"]
    stats = DomainStats.from_streams(
        train, reference_losses={d: reference[d] for d in train} if reference else None
    )
    cfg = ProxyTrainConfig(
        model=p["model"], vocab_size=data["vocab"], seq_len=p["seq_len"],
        batch_size=p["batch_size"], total_tokens=p["tokens"], lr=3e-3, warmup=0.05,
        eval_tokens=p["eval_tokens"], update_every=p["update_every"], hook_rows=8,
        device="cpu", cpu_threads=threads, seed=seed, log_every=50,
    )  # fmt: skip
    graph, graph_info = None, None
    if method == "skillit":
        graph = skills_graph(cfg, data, p)
        graph_info = {k: v for k, v in graph.info.items() if k != "base_losses"}
        graph_info["target_column"] = dict(
            zip(graph.skills, graph.matrix[:, graph.columns.index("target")].tolist(), strict=True)
        )
    mixer = make_mixer(method, stats, graph)
    online = isinstance(mixer, OnlineMixer)
    res = train_proxy(
        cfg, train, val, mixer.weights_, target_tokens=data["target"],
        hook=mixer if online else None, progress=False,
    )  # fmt: skip
    tests = {
        k.removeprefix("target:"): v for k, v in res.val_losses.items() if k.startswith("target:")
    }
    domains = {k: v for k, v in res.val_losses.items() if not k.startswith("target:")}
    return {
        "method": method,
        "seed": seed,
        "heldout": float(np.mean(list(tests.values()))),
        "tests": tests,
        "in_sample_target": res.target_loss,
        "val_mean": float(np.mean(list(domains.values()))),
        "val_losses": domains,
        "weights": dict(mixer.weights_),
        "max_epochs": max(res.epochs.values()),
        "n_params_non_embedding": res.n_params_non_embedding,
        "tokens": res.tokens_trained,
        "wall_s": time.perf_counter() - t0,
        **({"skills_graph": graph_info} if graph_info else {}),
        **({"graph_warning": mixer.graph_warning_} if method == "skillit" else {}),
    }


def skills_graph(cfg: Any, data: dict[str, Any], p: dict[str, Any]) -> Any:
    """Skill-it's graph for this seed: the cheap edge test on the same proxy (same seed), the
    domains' held-out documents and the target's train texts (never the test texts)."""
    import warnings

    from curamix.mixers import estimate_skills_graph

    per_step = cfg.batch_size * cfg.seq_len
    edge = max(per_step, int(p["tokens"] * SKILLIT_GRAPH["edge_fraction"]))
    val = {d: data["val"][d] for d in data["train"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return estimate_skills_graph(
            cfg.model_copy(update={"total_tokens": edge, "eval_tokens": SKILLIT_GRAPH["eval_tokens"]}),
            data["train"], val, data["target"],
            how=SKILLIT_GRAPH["how"],
            warmup_tokens=int(p["tokens"] * SKILLIT_GRAPH["warmup_fraction"]),
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Report


def table(rows: list[dict[str, Any]], methods: list[str]) -> str:
    by = {m: [r for r in rows if r["method"] == m] for m in methods}
    base = {
        m: {r["seed"]: r["heldout"] for r in by[m]} for m in ("uniform", "natural") if by.get(m)
    }
    lines = [
        "| method | held-out target loss (mean ± sd) | vs uniform (paired) | vs natural (paired) "
        "| gsm8k_test | mmlu_test | in-sample target | mean domain val | top weights | s/run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        rs = by[m]
        if not rs:
            continue
        h = np.array([r["heldout"] for r in rs])

        def paired(ref: str, rs: list[dict[str, Any]] = rs) -> str:
            if ref not in base or ref == rs[0]["method"]:
                return "-"
            d = np.array([r["heldout"] - base[ref][r["seed"]] for r in rs])
            return f"{d.mean():+.4f} ± {d.std(ddof=1) if len(d) > 1 else 0:.4f}"

        w = {d: np.mean([r["weights"][d] for r in rs]) for d in rs[0]["weights"]}
        top = ", ".join(f"{d} {v:.2f}" for d, v in sorted(w.items(), key=lambda kv: -kv[1])[:3])
        sd = h.std(ddof=1) if len(h) > 1 else 0.0
        lines.append(
            f"| {m} | {h.mean():.4f} ± {sd:.4f} | {paired('uniform')} | {paired('natural')} "
            f"| {np.mean([r['tests']['gsm8k_test'] for r in rs]):.4f} "
            f"| {np.mean([r['tests']['mmlu_test'] for r in rs]):.4f} "
            f"| {np.mean([r['in_sample_target'] for r in rs]):.4f} "
            f"| {np.mean([r['val_mean'] for r in rs]):.4f} | {top} "
            f"| {np.mean([r['wall_s'] for r in rs]):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="the < 5 minute CPU preset")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--tokens", type=int, default=None, help="override the token budget")
    ap.add_argument("--model", default=None, help="override the proxy preset")
    ap.add_argument("--cpu-threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (processes)")
    ap.add_argument("--out", type=Path, default=None, help="write every run's numbers as JSON")
    args = ap.parse_args()

    p = dict(PRESETS["quick" if args.quick else "full"])
    if args.tokens:
        p["tokens"] = args.tokens
    if args.model:
        p["model"] = args.model
    t0 = time.perf_counter()
    data = prepare(p)
    n_train = sum(len(v) for v in data["train"].values())
    print(
        f"data: {len(data['train'])} domains, {n_train:,} train tokens, target "
        f"{len(data['target']):,} tokens (GSM8K + MMLU train), held-out "
        + ", ".join(f"{k} {len(v):,}" for k, v in data["val"].items() if k.startswith("target:"))
        + f"; vocab {data['vocab']}; prepared in {time.perf_counter() - t0:.1f}s",
        flush=True,
    )
    shares = {d: len(v) / n_train for d, v in data["train"].items()}
    print("natural shares: " + ", ".join(f"{d} {v:.3f}" for d, v in shares.items()))
    print(
        f"proxy: {p['model']}, seq_len {p['seq_len']}, batch {p['batch_size']}, "
        f"{p['tokens']:,} tokens per run, {args.seeds} seeds, hook every {p['update_every']} "
        f"steps, {args.jobs} jobs x {args.cpu_threads} thread(s)",
        flush=True,
    )
    seeds = list(range(args.seeds))
    first = [m for m in args.methods if m != "doremi"]
    if "doremi" in args.methods and "uniform" not in first:
        first.insert(0, "uniform")  # DoReMi's reference
    rows: list[dict[str, Any]] = []
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        futs = [pool.submit(run_one, m, s, data, p, args.cpu_threads) for s in seeds for m in first]
        for f in futs:
            r = f.result()
            rows.append(r)
            print(f"  {r['method']:8s} seed {r['seed']}: held-out {r['heldout']:.4f} "
                  f"({r['wall_s']:.0f}s)", flush=True)  # fmt: skip
        if "doremi" in args.methods:
            refs = {r["seed"]: r["val_losses"] for r in rows if r["method"] == "uniform"}
            futs = [pool.submit(run_one, "doremi", s, data, p, args.cpu_threads, refs[s])
                    for s in seeds]  # fmt: skip
            for f in futs:
                r = f.result()
                rows.append(r)
                print(f"  doremi   seed {r['seed']}: held-out {r['heldout']:.4f} "
                      f"({r['wall_s']:.0f}s)", flush=True)  # fmt: skip
    total = time.perf_counter() - t0
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    print()
    print(table(rows, methods))
    print(
        f"\nheld-out = mean loss on GSM8K test and MMLU test texts (lower is better); paired = "
        f"per-seed difference to the baseline (negative: better). {p['model']} proxy, "
        f"{rows[0]['n_params_non_embedding']:,} non-embedding params; total {total:.0f}s on "
        f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)."
    )
    if args.out:
        args.out.write_text(json.dumps({"preset": p, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
