"""Does a DGA schedule found on a proxy transfer to a larger model? (issue 23, item 4)

1. One DGA search (seed 0) on the ``--proxy`` preset over the 11 corpus domains, the target
   GSM8K + MMLU *train* texts, with bench/mixers.py's data and settings (DGA ``eta=5,
   ema=0.5, normalize="cosine"``, the search's defaults): its weight trajectory.
2. The trajectory compressed to stages (:func:`curamix.mixers.compress_trajectory`:
   ``--epsilon``, the search's default 0.05, or ``--stages K``).
3. A **fresh** ``--model`` (default ``s``: 4.7M non-embedding parameters, 4.8x ``xs``)
   trained from scratch at equal tokens (``--tokens``, default the proxy's budget) on
   (a) the staged schedule (replayed by :class:`curamix.mixers.ScheduleReplay`, its
   boundaries snapped to the model's steps), (b) the mixer's final weights (what
   ``mixture.json`` holds by default), (c) the time-averaged weights (the same tokens per
   domain as the trajectory, in one stage), (d) uniform, (e) natural; ``--seeds`` seeds each
   (model init and batch order; the search is fixed).
4. Judged by held-out GSM8K + MMLU *test* loss (the mean of the two sets' losses), never seen
   by the mixer. The table shows mean ± sd over seeds and, per seed, the paired difference
   to the final weights and to uniform (negative: better), and the loss ratio to final.

Settings are fixed here before looking at the held-out numbers.

    .venv/bin/python bench/schedule_transfer.py --smoke              # ~1-2 min on 2 CPUs
    .venv/bin/python bench/schedule_transfer.py --out /tmp/schedule_transfer.json
    .venv/bin/python bench/schedule_transfer.py --proxy xs --model s --seeds 3 --jobs 2
"""

from __future__ import annotations

import argparse
import math
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
# bench/mixers.py: one data recipe (corpus, targets, tokenizer) for the mixer benches
from mixers import PRESETS as MIXER_PRESETS
from mixers import prepare

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "proxy": "nano", "model": "tiny", "vocab": 512, "seq_len": 64, "batch_size": 16,
        "tokens": 102_400, "domain_fraction": 0.03, "target_chars": 60_000,
        "test_chars": 30_000, "eval_tokens": 8_192, "update_every": 10, "seeds": 2,
    },
    "full": {
        **{k: MIXER_PRESETS["full"][k] for k in ("vocab", "seq_len", "batch_size", "tokens",
                                                  "domain_fraction", "target_chars",
                                                  "test_chars", "eval_tokens", "update_every")},
        "proxy": "xs", "model": "s", "seeds": 3,
    },
}  # fmt: skip

CONDITIONS = ("staged", "final", "time_avg", "uniform", "natural")


def model_spec(name: str, vocab: int, seq_len: int) -> Any:
    """A preset name (``xs``, ``s``...) or ``d<d_model>l<layers>h<heads>`` (``d128l2h4``: 4x
    ``tiny``'s non-embedding parameters), for sizes between the presets."""
    import re

    from curamix.proxy.model import ProxyModelConfig

    m = re.fullmatch(r"d(\d+)l(\d+)h(\d+)", name)
    if m is None:
        return name
    d, n_layers, n_heads = map(int, m.groups())
    return ProxyModelConfig(vocab_size=vocab, seq_len=seq_len, d_model=d, n_layers=n_layers,
                            n_heads=n_heads)  # fmt: skip


def train_config(p: dict[str, Any], model: str, vocab: int, seed: int, threads: int | None,
                 tokens: int, update_every: int, hook_rows: int) -> Any:  # fmt: skip
    from curamix.proxy.train import ProxyTrainConfig

    return ProxyTrainConfig(
        model=model_spec(model, vocab, p["seq_len"]), vocab_size=vocab, seq_len=p["seq_len"],
        batch_size=p["batch_size"],
        total_tokens=tokens, lr=3e-3, warmup=0.05, eval_tokens=p["eval_tokens"],
        update_every=update_every, hook_rows=hook_rows, device="cpu", cpu_threads=threads,
        seed=seed, log_every=50,
    )  # fmt: skip


def heldout(res: Any) -> dict[str, float]:
    tests = {k.removeprefix("target:"): float(v) for k, v in res.val_losses.items()
             if k.startswith("target:")}  # fmt: skip
    return {"heldout": float(np.mean(list(tests.values()))), **tests}


# ---------------------------------------------------------------------------------------------
# 1-2. The search and its schedule


def search(data: dict[str, Any], p: dict[str, Any], threads: int | None) -> dict[str, Any]:
    """DGA on the proxy (seed 0): its trajectory, final weights and proxy losses."""
    from curamix.mixers import DGAMixer, DomainStats
    from curamix.mixers.search import DEFAULT_PARAMS
    from curamix.proxy.train import train_proxy

    t0 = time.perf_counter()
    stats = DomainStats.from_streams(data["train"])
    mixer = DGAMixer(**DEFAULT_PARAMS["dga"]).fit(stats)
    start = dict(mixer.weights_)
    cfg = train_config(p, p["proxy"], data["vocab"], 0, threads, p["tokens"], p["update_every"], 8)
    res = train_proxy(cfg, data["train"], data["val"], start, target_tokens=data["target"],
                      hook=mixer, progress=False)  # fmt: skip
    return {
        "trajectory": [(0, 0, start), *mixer.history_],
        "final": dict(mixer.weights_),
        "tokens": res.tokens_trained,
        "proxy_params_non_embedding": res.n_params_non_embedding,
        "proxy_target_loss": res.target_loss,
        **{f"proxy_{k}": v for k, v in heldout(res).items()},
        "wall_s": time.perf_counter() - t0,
    }


def snapped(starts: list[float], weights: list[dict[str, float]], n_steps: int) -> Any:
    """The staged mixture with each boundary moved to the nearest of the model's steps."""
    from curamix.mixture import Mixture, Stage

    steps = [round(s * n_steps) for s in starts]
    keep = [i for i, s in enumerate(steps) if i == 0 or (s > steps[i - 1] and s < n_steps)]
    later = [Stage(steps[i] / n_steps, weights[i], f"stage{i}") for i in keep[1:]]
    return Mixture(weights[0], later), [steps[i] for i in keep]


# ---------------------------------------------------------------------------------------------
# 3. One fresh-model run (in a worker process)


def run_one(cond: str, seed: int, data: dict[str, Any], p: dict[str, Any],
            plan: dict[str, Any], threads: int | None) -> dict[str, Any]:  # fmt: skip
    from curamix.mixers import ScheduleReplay
    from curamix.proxy.train import train_proxy

    t0 = time.perf_counter()
    hook, every = None, 10**9
    if cond == "staged":
        mix, steps = snapped(plan["starts"], plan["weights"], plan["n_steps"])
        every = math.gcd(*steps[1:], plan["n_steps"]) if len(steps) > 1 else plan["n_steps"]
        cfg = train_config(p, p["model"], data["vocab"], seed, threads, plan["tokens"], every, 1)
        hook = ScheduleReplay(mix, cfg.n_steps() * cfg.batch_size * p["seq_len"])
        weights = hook.weights_at(0)
    else:
        cfg = train_config(p, p["model"], data["vocab"], seed, threads, plan["tokens"], every, 1)
        weights = plan["static"][cond]
    res = train_proxy(cfg, data["train"], data["val"], weights, target_tokens=data["target"],
                      hook=hook, progress=False)  # fmt: skip
    share = {d: t / sum(res.tokens_seen.values()) for d, t in res.tokens_seen.items()}
    return {
        "condition": cond, "seed": seed, **heldout(res), "in_sample_target": res.target_loss,
        "token_share": share, "max_epochs": max(res.epochs.values()),
        "n_params_non_embedding": res.n_params_non_embedding, "tokens": res.tokens_trained,
        "hook_every": every if hook is not None else None,
        "switches": hook.switches_ if hook is not None else None,
        "wall_s": time.perf_counter() - t0,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 4. Report


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by = {c: {r["seed"]: r for r in rows if r["condition"] == c} for c in CONDITIONS}
    out: dict[str, Any] = {}
    for c in CONDITIONS:
        seeds = sorted(by[c])
        h = np.array([by[c][s]["heldout"] for s in seeds])
        entry = {
            "heldout_mean": float(h.mean()),
            "heldout_sd": float(h.std(ddof=1)) if len(h) > 1 else 0.0,
            "gsm8k_test": float(np.mean([by[c][s]["gsm8k_test"] for s in seeds])),
            "mmlu_test": float(np.mean([by[c][s]["mmlu_test"] for s in seeds])),
        }
        for ref in ("final", "uniform"):
            d = np.array([by[c][s]["heldout"] - by[ref][s]["heldout"] for s in seeds])
            entry[f"vs_{ref}"] = [float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else 0.0]
            entry[f"better_than_{ref}"] = int((d < 0).sum())
        ratio = [by[c][s]["heldout"] / by["final"][s]["heldout"] for s in seeds]
        entry["ratio_to_final"] = float(np.mean(ratio))
        out[c] = entry
    return out


def table(summary: dict[str, Any], n_seeds: int) -> str:
    lines = [
        "| condition | held-out loss (mean ± sd) | gsm8k test | mmlu test | vs final (paired) "
        "| vs uniform (paired) | ratio to final | better than final |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c, e in summary.items():
        vf = "-" if c == "final" else f"{e['vs_final'][0]:+.4f} ± {e['vs_final'][1]:.4f}"
        vu = "-" if c == "uniform" else f"{e['vs_uniform'][0]:+.4f} ± {e['vs_uniform'][1]:.4f}"
        bf = "-" if c == "final" else f"{e['better_than_final']}/{n_seeds}"
        lines.append(
            f"| {c} | {e['heldout_mean']:.4f} ± {e['heldout_sd']:.4f} | {e['gsm8k_test']:.4f} "
            f"| {e['mmlu_test']:.4f} | {vf} | {vu} | {e['ratio_to_final']:.4f} | {bf} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: 1-2 minutes on 2 CPUs")
    ap.add_argument("--proxy", default=None, help="proxy preset of the DGA search (default xs)")
    ap.add_argument("--model", default=None, help="the fresh, larger model (default s)")
    ap.add_argument("--seeds", type=int, default=None, help="fresh-model seeds (default 3)")
    ap.add_argument("--tokens", type=int, default=None,
                    help="fresh-model tokens (default: the proxy's budget)")  # fmt: skip
    ap.add_argument("--proxy-tokens", type=int, default=None, help="the search's budget")
    ap.add_argument("--stages", type=int, default=None, help="K (default: by --epsilon)")
    ap.add_argument("--epsilon", type=float, default=0.05, help="L1 tolerance without K")
    ap.add_argument("--cpu-threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--jobs", type=int, default=2, help="fresh-model runs in parallel")
    ap.add_argument("--out", type=Path, default=None, help="write every number as JSON")
    args = ap.parse_args()

    from curamix.io.store import write_json_atomic
    from curamix.mixers import compress_trajectory, time_averaged_weights

    p = dict(PRESETS["smoke" if args.smoke else "full"])
    for key, val in (("proxy", args.proxy), ("model", args.model), ("seeds", args.seeds),
                     ("tokens", args.proxy_tokens)):  # fmt: skip
        if val is not None:
            p[key] = val
    t0 = time.perf_counter()
    data = prepare(p)
    n_train = sum(len(v) for v in data["train"].values())
    print(f"data: {len(data['train'])} domains, {n_train:,} train tokens, target "
          f"{len(data['target']):,} tokens (GSM8K + MMLU train); vocab {data['vocab']}; "
          f"{time.perf_counter() - t0:.1f}s", flush=True)  # fmt: skip

    found = search(data, p, args.cpu_threads)
    print(f"search: DGA on the {p['proxy']} proxy ({found['proxy_params_non_embedding']:,} "
          f"non-embedding params), {found['tokens']:,} tokens, {len(found['trajectory'])} "
          f"points; proxy held-out {found['proxy_heldout']:.4f}; {found['wall_s']:.0f}s",
          flush=True)  # fmt: skip
    sc = compress_trajectory(found["trajectory"], found["tokens"], args.stages, args.epsilon)
    how = f"K={args.stages}" if args.stages else f"epsilon={args.epsilon:g}"
    print(f"schedule ({how}): {sc.n_stages} stages from {sc.n_points} points, max L1 "
          f"{sc.max_l1:.4f}, token-weighted mean L1 {sc.mean_l1:.4f}; starts "
          + ", ".join(f"{s:.3f}" for s in sc.starts), flush=True)  # fmt: skip

    domains = list(data["train"])
    tokens = args.tokens or found["tokens"]
    per_step = p["batch_size"] * p["seq_len"]
    static = {
        "final": found["final"],
        "time_avg": time_averaged_weights(found["trajectory"], found["tokens"]),
        "uniform": {d: 1.0 / len(domains) for d in domains},
        "natural": {d: len(data["train"][d]) / n_train for d in domains},
    }
    plan = {"starts": sc.starts, "weights": sc.weights, "tokens": tokens,
            "n_steps": tokens // per_step, "static": static}  # fmt: skip
    for name, w in static.items():
        top = sorted(w.items(), key=lambda kv: -kv[1])[:3]
        print(f"  {name:8s}: " + ", ".join(f"{d} {v:.3f}" for d, v in top), flush=True)

    seeds = list(range(p["seeds"]))
    rows: list[dict[str, Any]] = []
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        futs = [pool.submit(run_one, c, s, data, p, plan, args.cpu_threads)
                for s in seeds for c in CONDITIONS]  # fmt: skip
        for f in futs:
            r = f.result()
            rows.append(r)
            print(f"  {r['condition']:8s} seed {r['seed']}: held-out {r['heldout']:.4f} "
                  f"({r['wall_s']:.0f}s)", flush=True)  # fmt: skip
    summary = summarise(rows)
    total = time.perf_counter() - t0
    print()
    print(table(summary, len(seeds)))
    s = summary["staged"]
    print(
        f"\nfresh {p['model']} model ({rows[0]['n_params_non_embedding']:,} non-embedding "
        f"params, {rows[0]['n_params_non_embedding'] / found['proxy_params_non_embedding']:.1f}x "
        f"the proxy), {tokens:,} tokens per run, {len(seeds)} seeds. held-out = mean of GSM8K "
        f"test and MMLU test loss (lower is better); paired = per-seed difference (negative: "
        f"better). staged vs final: {s['vs_final'][0]:+.4f} ± {s['vs_final'][1]:.4f}, better on "
        f"{s['better_than_final']}/{len(seeds)} seeds. Total {total:.0f}s on "
        f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)."
    )
    if args.out:
        write_json_atomic(args.out, {
            "preset": p, "args": {k: (str(v) if isinstance(v, Path) else v)
                                  for k, v in vars(args).items()},
            "search": {k: v for k, v in found.items() if k != "trajectory"},
            "trajectory": [{"step": st, "tokens": t, "weights": w}
                           for st, t, w in found["trajectory"]],
            "schedule": sc.provenance(), "static": static, "rows": rows, "summary": summary,
            "total_s": total,
        })  # fmt: skip
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
