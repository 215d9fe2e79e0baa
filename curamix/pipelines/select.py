"""Selection job: k documents by importance resampling (Gumbel top-k) over a scoring stage.

1. keys pass (one task per scores part): ``key = log w + Gumbel`` with the noise of each
   document from a hash of (seed, id), as :meth:`DSIRSelector.select` does with ``ids``; so
   the selection is the same whatever the partitioning, on one core or a cluster.
2. exact global top-k without collecting the pool: :func:`band_top_k` brackets the k-th key
   with ``approxQuantile``, takes every key above the bracket and sorts only the bracket
   (ties broken by id). Separate targets take their quotas in turn, excluding earlier picks.
3. outputs: the selected documents (``data/``, the ingest columns plus ``score``), the ledger
   (kept / removed: ``not_selected`` or ``below_min_example_length``), and a report: KL
   reduction of the selection against a random selection of the same size, per-domain
   composition, and a histogram of the scores (``scores_hist.png``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curamix.config import PipelineConfig, config_hash
from curamix.io.store import JobResult, load_completed, stage_writer
from curamix.pipelines.parts import map_parts, part_files
from curamix.selectors.dsir import gumbel_from_ids, kl_reduction

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

STAGE = "select"
RANDOM_STREAM = 7_777_777
"""Seed offset of the random baseline selection (reported next to the real one)."""
EMPTY = pa.schema([("n", pa.int64())])


def key_columns(n_targets: int) -> list[str]:
    return [f"key__{t}" for t in range(n_targets)]


def keys_part(
    path: str,
    out_dir: str,
    index: int,
    seed: int,
    top_k: bool,
    min_length: int,
    score_cols: list[str],
) -> pa.Table:
    """Write the selection keys of one scores part: id, eligible, key__<t>, key__random."""
    t = pq.read_table(path, columns=["id", "length", *score_cols])
    ids = t["id"].to_pylist()
    cols: dict[str, Any] = {
        "id": t["id"],
        "eligible": pa.array(np.asarray(t["length"]) >= min_length),
    }
    for j, c in enumerate(score_cols):
        s = np.asarray(t[c], dtype=np.float64)
        cols[f"key__{j}"] = s if top_k else s + gumbel_from_ids(ids, seed * 1_000_003 + j)
    cols["key__random"] = gumbel_from_ids(ids, seed * 1_000_003 + RANDOM_STREAM)
    pq.write_table(pa.table(cols), os.path.join(out_dir, f"part-{index:05d}.parquet"))
    return pa.table({"n": [t.num_rows]}, schema=EMPTY)


def band_top_k(df: DataFrame, key: str, k: int, eps: float = 1e-3) -> tuple[float, list[str]]:
    """Exact top ``k`` rows of ``df`` by ``key`` (ties: smaller id first) as (threshold, band):
    the top k are the rows with key > threshold plus the ids in ``band``. Only the rows near
    the k-th key (a band of about 6 * eps * n) reach the driver."""
    from pyspark.sql import functions as F

    n = df.count()
    if not 0 < k <= n:
        raise ValueError(f"k={k} must be in 1..{n}")
    while True:
        p = 1.0 - k / n
        lo, hi = df.approxQuantile(key, [max(p - 3 * eps, 0.0), min(p + 3 * eps, 1.0)], eps)
        above = df.filter(F.col(key) > hi).count()
        if above <= k:
            band = df.filter((F.col(key) >= lo) & (F.col(key) <= hi)).select("id", key).toArrow()
            need = k - above
            if band.num_rows >= need:
                keys = np.asarray(band[key], dtype=np.float64)
                ids = np.asarray(band["id"].to_pylist(), dtype=object)
                order = sorted(range(len(ids)), key=lambda i: (-keys[i], ids[i]))[:need]
                return float(hi), [ids[i] for i in order]
        if eps >= 0.25:  # the whole range is in the band by now
            raise RuntimeError(f"band_top_k could not bracket the top {k} of {n} rows by {key}")
        eps *= 4


def _sum_counts_fn(sel):
    from curamix.selectors.dsir import batch_grams

    def fn(batches):
        total = np.zeros(sel.num_buckets, dtype=np.int64)
        for b in batches:
            g = batch_grams(
                b.column("text").to_pylist(), sel.num_buckets, sel.ngrams, sel.hash_mode
            )
            total += np.bincount(g.buckets, minlength=sel.num_buckets)
        yield pa.RecordBatch.from_pylist(
            [{"counts": total.tolist()}], schema=pa.schema([("counts", pa.list_(pa.int64()))])
        )

    return fn


def _sum_counts(df: DataFrame, sel) -> np.ndarray:
    rows = df.select("text").mapInArrow(_sum_counts_fn(sel), "counts array<long>").toArrow()
    total = np.zeros(sel.num_buckets, dtype=np.int64)
    for c in rows["counts"].to_pylist():
        total += np.asarray(c, dtype=np.int64)
    return total


def select_key(cfg: PipelineConfig, scores: JobResult) -> str:
    return config_hash(STAGE, cfg.select, cfg.seed, scores.manifest_hash)


def run_select(
    spark: SparkSession,
    cfg: PipelineConfig,
    on_step: Callable[[str], None] | None = None,
    upstream: dict[str, JobResult] | None = None,
) -> JobResult:
    """Select documents by the scores of ``cfg.select.scores`` (DSIR) with ``cfg.seed``."""
    from pyspark.sql import functions as F

    from curamix.pipelines.dsir import MASKED_REASON, load_model, score_columns
    from curamix.runner import pool_stage, require_upstream

    if cfg.select is None:
        raise ValueError("run_select needs a 'select:' section in the config")
    say = on_step or (lambda _msg: None)
    scfg = cfg.select
    t0 = time.perf_counter()
    scores = require_upstream(cfg, scfg.scores, upstream)
    ingest = require_upstream(cfg, pool_stage(cfg), upstream)
    key = select_key(cfg, scores)
    done = load_completed(cfg.run_dir, STAGE, key)
    if done is not None:
        say(f"select: skipped, already complete at {done.path}")
        return done
    assert cfg.dsir is not None
    sel = load_model(str(scores.path / "model.npz"), cfg.dsir)
    cols = score_columns(sel) or ["score"]
    n_eligible = int(scores.counts["eligible"])
    k = scfg.k if scfg.k is not None else max(1, int(scfg.fraction * int(scores.counts["in"])))
    if k > n_eligible:
        raise ValueError(
            f"select.k={k} is larger than the {n_eligible} documents eligible for selection "
            f"(of {scores.counts['in']}; the rest are shorter than min_example_length={cfg.dsir.min_example_length})"
        )
    quotas = [int(k * p) for p in sel.target_proportions_] if len(cols) > 1 else [k]
    quotas[-1] += k - sum(quotas)
    timings: dict[str, float] = {}
    with stage_writer(cfg.run_dir, STAGE, key) as w:
        say(
            f"select: drawing {k} of {n_eligible} eligible documents (seed {cfg.seed}{', top-k' if scfg.top_k else ''})"
        )
        t = time.perf_counter()
        keys_dir = str(w.path("_keys"))
        os.makedirs(keys_dir)
        parts = part_files(scores.path / "scores")
        min_len = cfg.dsir.min_example_length
        map_parts(
            spark,
            parts,
            lambda i, p: keys_part(p, keys_dir, i, cfg.seed, scfg.top_k, min_len, cols),
            EMPTY,
        )
        keys = spark.read.parquet(keys_dir).cache()
        eligible = keys.filter(F.col("eligible"))
        chosen: DataFrame | None = None
        rules = []
        for j, q in enumerate(quotas):
            if q == 0:
                continue
            pool = eligible if chosen is None else eligible.join(chosen, "id", "left_anti")
            hi, band = band_top_k(pool, f"key__{j}", q)
            rules.append({"target": j, "quota": q, "threshold": hi, "band": len(band)})
            picked = (
                pool.filter(F.col(f"key__{j}") > hi)
                .select("id")
                .unionByName(spark.createDataFrame([(b,) for b in band], "id string"))
            )
            chosen = picked if chosen is None else chosen.unionByName(picked)
        assert chosen is not None
        chosen = chosen.cache()
        n_chosen = chosen.count()
        if n_chosen != k:
            raise RuntimeError(f"select: chose {n_chosen} documents instead of {k}")
        hi_r, band_r = band_top_k(eligible, "key__random", k)
        random_ids = (
            eligible.filter(F.col("key__random") > hi_r)
            .select("id")
            .unionByName(spark.createDataFrame([(b,) for b in band_r], "id string"))
        )
        timings["select_s"] = time.perf_counter() - t

        say("select: writing the selected documents, ledger and report")
        t = time.perf_counter()
        docs = spark.read.parquet(str(ingest.data_path))
        score_df = spark.read.parquet(str(scores.path / "scores")).select("id", "score", "length")
        selected = docs.join(chosen, "id", "left_semi").join(score_df.select("id", "score"), "id")
        n_files = max(1, math.ceil(k / 200_000))
        selected.repartitionByRange(n_files, "id").sortWithinPartitions("id").write.parquet(
            str(w.path("data"))
        )
        flag = chosen.withColumn("_chosen", F.lit(True))
        ledger = score_df.join(flag, "id", "left").select(
            "id",
            F.lit(STAGE).alias("stage"),
            F.when(F.col("_chosen"), F.lit("kept")).otherwise(F.lit("removed")).alias("decision"),
            F.when(F.col("_chosen"), F.lit(None).cast("string"))
            .when(F.col("length") < min_len, F.lit(MASKED_REASON))
            .otherwise(F.lit("not_selected"))
            .alias("reason"),
            "score",
            F.lit(None).cast("string").alias("ref_id"),
        )
        ledger.write.parquet(str(w.path("ledger")))
        composition = {
            r["domain"]: r["count"]
            for r in docs.join(chosen, "id", "left_semi").groupBy("domain").count().collect()
        }
        sel_counts = _sum_counts(docs.join(chosen, "id", "left_semi"), sel)
        rand_counts = _sum_counts(docs.join(random_ids, "id", "left_semi"), sel)
        kl_sel = kl_reduction(sel.target_counts_, sel.raw_counts_, sel_counts)
        kl_rand = kl_reduction(sel.target_counts_, sel.raw_counts_, rand_counts)
        hist = _histogram(score_df.filter(F.col("length") >= min_len).join(flag, "id", "left"))
        _plot_histogram(hist, str(w.path("scores_hist.png")))
        keys.unpersist()
        chosen.unpersist()
        import shutil

        shutil.rmtree(keys_dir)
        timings["write_s"] = time.perf_counter() - t
        pool_counts = {d: v["in"] for d, v in scores.counts["per_domain"].items()}
        n_pool = sum(pool_counts.values())
        per_domain = {
            d: {
                "in": pool_counts[d],
                "kept": composition.get(d, 0),
                "removed": pool_counts[d] - composition.get(d, 0),
                "pool_share": pool_counts[d] / n_pool,
                "selected_share": composition.get(d, 0) / k,
            }
            for d in sorted(pool_counts)
        }
        timings["total_s"] = time.perf_counter() - t0
        manifest = {
            "config": scfg.model_dump(mode="json"),
            "config_hash": config_hash(scfg),
            "seed": cfg.seed,
            "inputs": {
                "manifests": {scfg.scores: scores.manifest_hash, "ingest": ingest.manifest_hash}
            },
            "counts": {
                "in": n_pool,
                "kept": k,
                "out": k,
                "removed": n_pool - k,
                "quarantined": 0,
                "removed_reasons": {
                    "not_selected": n_eligible - k,
                    MASKED_REASON: n_pool - n_eligible,
                },
                "per_domain": per_domain,
            },
            "kl_reduction": {"selected": kl_sel, "random_same_size": kl_rand},
            "rules": rules,
            "timings": {k_: round(v, 3) for k_, v in timings.items()},
            "outputs": {
                "data": "data",
                "ledger": "ledger",
                "report": "report.md",
                "histogram": "scores_hist.png",
            },
        }
        (w.path("report.md")).write_text(_report(manifest), encoding="utf-8")
        result = w.commit(manifest)
    say(
        f"select: {k} documents selected, KL reduction {kl_sel:.4f} (random: {kl_rand:.4f}) -> {result.path}"
    )
    return result


def _histogram(df: DataFrame, bins: int = 50) -> dict[str, Any]:
    from pyspark.sql import functions as F

    lo, hi = df.agg(F.min("score"), F.max("score")).first()
    if lo is None:
        return {"edges": [], "all": [], "selected": []}
    width = (hi - lo) / bins or 1.0
    b = F.least(F.floor((F.col("score") - lo) / width), F.lit(bins - 1)).cast("int")
    rows = df.groupBy(b.alias("b"), F.col("_chosen").isNotNull().alias("s")).count().collect()
    all_, chosen = [0] * bins, [0] * bins
    for r in rows:
        all_[r["b"]] += r["count"]
        if r["s"]:
            chosen[r["b"]] += r["count"]
    return {"edges": [lo + i * width for i in range(bins + 1)], "all": all_, "selected": chosen}


def _plot_histogram(hist: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    if hist["edges"]:
        e = hist["edges"]
        ax.stairs(hist["all"], e, label="eligible pool", fill=True, alpha=0.4)
        ax.stairs(hist["selected"], e, label="selected", fill=True, alpha=0.7)
        ax.set_yscale("log")
    ax.set_xlabel("log importance weight")
    ax.set_ylabel("documents")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _report(m: dict[str, Any]) -> str:
    c = m["counts"]
    lines = [
        "# Selection report",
        "",
        f"{c['kept']} of {c['in']} documents selected (seed {m['seed']}, {'top-k' if m['config']['top_k'] else 'importance resampling'}).",
        "",
        f"KL reduction toward the target: **{m['kl_reduction']['selected']:.4f}** (a random selection of the same size: {m['kl_reduction']['random_same_size']:.4f}).",
        "",
        "| domain | pool | pool share | selected | selected share | ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for d, v in c["per_domain"].items():
        ratio = v["selected_share"] / v["pool_share"] if v["pool_share"] else 0.0
        lines.append(
            f"| {d} | {v['in']} | {v['pool_share']:.3f} | {v['kept']} | {v['selected_share']:.3f} | {ratio:.2f} |"
        )
    lines += ["", "![scores](scores_hist.png)", ""]
    return "\n".join(lines)
