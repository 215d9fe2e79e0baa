"""Selection job: k documents by importance resampling (Gumbel top-k) over a scoring stage.

1. keys pass (one task per scores part): ``key = log w + Gumbel`` with the noise of each
   document from a hash of (seed, id), as :meth:`DSIRSelector.select` does with ``ids``; so
   the selection is the same whatever the partitioning, on one core or a cluster.
2. exact global top-k without collecting the pool: :func:`band_top_k` brackets the k-th key
   with ``approxQuantile``, takes every key above the bracket and sorts only the bracket
   (ties broken by id). Separate targets take their quotas in turn, excluding earlier picks.
   The result is a rule per target (threshold + the band's ids), small whatever the pool.
3. the pool-stage skeleton (:mod:`curamix.pipelines.pool`) applies the rules part by part:
   the selected documents (``data/``, the document columns plus ``score``), the ledger
   (kept / removed: ``not_selected`` or ``below_min_example_length``), and per part the
   hashed n-gram counts of the selection and of a random selection of the same size (for the
   KL reduction) and the score histogram (``scores_hist.png``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curamix.config import PipelineConfig, config_hash, pool_stage
from curamix.io.fs import makedirs, save_figure
from curamix.io.store import JobResult, part_files, stage_writer
from curamix.pipelines.dsir import MASKED_REASON, load_model, score_columns
from curamix.pipelines.parts import map_parts, read_parquet_df
from curamix.pipelines.pool import (
    DOC_SCHEMA,
    Decisions,
    PoolStage,
    composition_table,
    decisions_table,
)
from curamix.selectors.dsir import DSIRSelector, batch_grams, gumbel_from_ids, kl_reduction

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

STAGE = "select"
NOT_SELECTED = "not_selected"
RANDOM_STREAM = 7_777_777
"""Seed offset of the random baseline selection (reported next to the real one)."""
BINS = 50
RANGE_SCHEMA = pa.schema([("lo", pa.float64()), ("hi", pa.float64())])
DATA_SCHEMA = DOC_SCHEMA.append(pa.field("score", pa.float64()))


def keys_schema(score_cols: list[str]) -> pa.Schema:
    """What :func:`keys_part` writes."""
    keys = [pa.field(f"key__{j}", pa.float64()) for j in range(len(score_cols))]
    base = [("id", pa.string()), ("score", pa.float64()), ("eligible", pa.bool_())]
    return pa.schema([*base, *keys, pa.field("key__random", pa.float64())])


def keys_part(
    path: str,
    out_dir: str,
    index: int,
    seed: int,
    top_k: bool,
    min_length: int,
    score_cols: list[str],
) -> pa.Table:
    """Write the selection keys of one scores part (id, score, eligible, key__<t>,
    key__random); return the range of its eligible scores."""
    extra = [c for c in score_cols if c != "score"]
    t = pq.read_table(path, columns=["id", "score", "length", *extra])
    ids = t["id"].to_pylist()
    eligible = np.asarray(t["length"]) >= min_length
    cols: dict[str, Any] = {"id": t["id"], "score": t["score"], "eligible": pa.array(eligible)}
    for j, c in enumerate(score_cols):
        s = np.asarray(t[c], dtype=np.float64)
        cols[f"key__{j}"] = s if top_k else s + gumbel_from_ids(ids, seed * 1_000_003 + j)
    cols["key__random"] = gumbel_from_ids(ids, seed * 1_000_003 + RANDOM_STREAM)
    pq.write_table(pa.table(cols), os.path.join(out_dir, f"part-{index:05d}.parquet"))
    s = np.asarray(t["score"], dtype=np.float64)[eligible]
    return pa.table(
        {"lo": [float(s.min()) if len(s) else None], "hi": [float(s.max()) if len(s) else None]},
        schema=RANGE_SCHEMA,
    )


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


def picked(keys: pa.Table, rule: dict[str, Any]) -> np.ndarray:
    """Rows of ``keys`` that a :func:`band_top_k` rule takes: key above the threshold, or in
    the band."""
    above = np.asarray(keys[rule["key"]], dtype=np.float64) > rule["threshold"]
    band = np.isin(np.asarray(keys["id"].to_pylist(), dtype=object), list(rule["band"]))
    return above | band


class ApplyRules:
    """``decide`` for the skeleton: the rules applied to a batch's keys; summary rows carry
    the batch's n-gram counts (selected, random) and score histogram (all, selected)."""

    def __init__(
        self,
        keys_dir: str,
        rules: list[dict],
        random_rule: dict,
        sel: DSIRSelector,
        bins: tuple[float, float] | None,
    ):
        self.keys_dir, self.rules, self.random_rule = keys_dir, rules, random_rule
        self.sel, self.bins = sel, bins
        self._cache: tuple[int, pa.Table] | None = None

    def __call__(self, index: int, docs: pa.Table, start: int) -> Decisions:
        if self._cache is None or self._cache[0] != index:
            path = os.path.join(self.keys_dir, f"part-{index:05d}.parquet")
            self._cache = (index, pq.read_table(path))
        keys = self._cache[1].slice(start, docs.num_rows)
        if not keys["id"].equals(docs["id"]):
            raise RuntimeError("select: the scores do not follow the pool's rows")
        eligible = np.asarray(keys["eligible"], dtype=bool)
        chosen = np.zeros(docs.num_rows, dtype=bool)
        for rule in self.rules:  # separate targets: in turn, excluding earlier picks
            chosen |= eligible & ~chosen & picked(keys, rule)
        rand = eligible & picked(keys, self.random_rule)
        score = np.asarray(keys["score"], dtype=np.float64)
        reason = np.where(chosen, None, np.where(eligible, NOT_SELECTED, MASKED_REASON))
        texts = docs["text"].to_pylist()
        rows = [
            {"counts": _bucket_counts(self.sel, [t for t, c in zip(texts, m, strict=True) if c])}
            | {"of": name}
            for name, m in (("selected", chosen), ("random", rand))
        ]
        if self.bins is not None:
            hist = {
                k: _hist(score[m], *self.bins) for k, m in (("all", eligible), ("selected", chosen))
            }
            rows.append({"of": "hist", **hist})
        return Decisions(
            decisions_table(docs["id"], chosen, reason, score),
            data_columns={"score": pa.array(score, pa.float64())},
            rows=rows,
        )


def _bucket_counts(sel: DSIRSelector, texts: list[str]) -> dict[str, int]:
    """Hashed n-gram counts of ``texts`` (sparse: bucket -> count)."""
    if not texts:
        return {}
    g = batch_grams(texts, sel.num_buckets, sel.ngrams, sel.hash_mode)
    b, c = np.unique(g.buckets, return_counts=True)
    return {str(int(x)): int(y) for x, y in zip(b, c, strict=True)}


def _hist(x: np.ndarray, lo: float, width: float) -> list[int]:
    """Counts in :data:`BINS` bins of ``width`` from ``lo`` (the last bin closed)."""
    b = np.minimum(np.floor((x - lo) / width), BINS - 1).astype(np.int64)
    return np.bincount(b, minlength=BINS).tolist()


def select_upstream(cfg: PipelineConfig) -> dict[str, str]:
    """The scoring stage (``select.scores``) and the pool it scored."""
    assert cfg.select is not None
    return {"scores": cfg.select.scores, "pool": pool_stage(cfg, before=STAGE)}


def select_key(cfg: PipelineConfig, inputs: Mapping[str, JobResult]) -> str:
    """Config, seed and the scoring stage's manifest."""
    return config_hash(STAGE, cfg.select, cfg.seed, inputs["scores"].manifest_hash)


def run_select(
    spark: SparkSession,
    cfg: PipelineConfig,
    inputs: Mapping[str, JobResult],
    key: str,
    say: Callable[[str], None],
) -> JobResult:
    """Select documents by the scores of ``cfg.select.scores`` (DSIR) with ``cfg.seed``."""
    from pyspark.sql import functions as F

    assert cfg.select is not None and cfg.dsir is not None
    scfg, scores = cfg.select, inputs["scores"]
    ps = PoolStage(STAGE, cfg, inputs["pool"], key, say)
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
    with stage_writer(cfg.run_dir, STAGE, key) as w:
        say(
            f"select: drawing {k} of {n_eligible} eligible documents (seed {cfg.seed}{', top-k' if scfg.top_k else ''})"
        )
        keys_dir = str(w.scratch("_keys"))
        makedirs(keys_dir)
        min_len = cfg.dsir.min_example_length
        with ps.timed("select_s"):
            ranges = map_parts(
                spark,
                part_files(scores.path / "scores"),
                lambda i, p: keys_part(p, keys_dir, i, cfg.seed, scfg.top_k, min_len, cols),
                RANGE_SCHEMA,
            )
            keys = read_parquet_df(spark, keys_dir, keys_schema(cols)).cache()
            eligible = keys.filter(F.col("eligible"))
            rules: list[dict[str, Any]] = []
            chosen: DataFrame | None = None
            for j, q in enumerate(quotas):
                if q == 0:
                    continue
                pool = eligible if chosen is None else eligible.join(chosen, "id", "left_anti")
                hi, band = band_top_k(pool, f"key__{j}", q)
                rule = {"key": f"key__{j}", "threshold": hi, "band": band}
                rules.append(rule)
                if j < len(quotas) - 1:
                    taken = pool.filter(F.col(rule["key"]) > hi).select("id")
                    taken = taken.unionByName(
                        spark.createDataFrame([(b,) for b in band], "id string")
                    )
                    chosen = taken if chosen is None else chosen.unionByName(taken)
            hi_r, band_r = band_top_k(eligible, "key__random", k)
            random_rule = {"key": "key__random", "threshold": hi_r, "band": band_r}
            keys.unpersist()
        lo, hi_ = (ranges[c].drop_null().to_numpy() for c in ("lo", "hi"))
        bins = (lo.min(), (hi_.max() - lo.min()) / BINS or 1.0) if len(lo) else None

        say("select: writing the selected documents, ledger and report")
        with ps.timed("write_s"):
            decide = ApplyRules(keys_dir, rules, random_rule, sel, bins)
            written = ps.write(spark, w, decide, data_schema=DATA_SCHEMA)
        w.discard("_keys")
        if written.n_kept != k:
            raise RuntimeError(f"select: chose {written.n_kept} documents instead of {k}")
        counts = {x: np.zeros(sel.num_buckets, dtype=np.int64) for x in ("selected", "random")}
        hist = {"all": np.zeros(BINS, np.int64), "selected": np.zeros(BINS, np.int64)}
        for r in written.rows:
            if r["of"] == "hist":
                hist["all"] += r["all"]
                hist["selected"] += r["selected"]
            else:
                buckets = np.asarray(list(r["counts"]), dtype=np.int64)
                np.add.at(counts[r["of"]], buckets, list(r["counts"].values()))
        edges = [] if bins is None else (bins[0] + bins[1] * np.arange(BINS + 1)).tolist()
        _plot_histogram({"edges": edges, **hist}, str(w.path("scores_hist.png")))
        kl_sel = kl_reduction(sel.target_counts_, sel.raw_counts_, counts["selected"])
        kl_rand = kl_reduction(sel.target_counts_, sel.raw_counts_, counts["random"])
        n_pool = written.n_in
        per_domain = {
            d: {
                "in": e["in"],
                "kept": e["kept"],
                "removed": e["removed"],
                "pool_share": e["in"] / n_pool,
                "selected_share": e["kept"] / k,
            }
            for d, e in written.per_domain.items()
        }
        manifest = {
            "inputs": {"manifests": {scfg.scores: scores.manifest_hash}},
            "counts": {
                **ps.counts(written, reasons=(NOT_SELECTED, MASKED_REASON)),
                "per_domain": per_domain,
            },
            "kl_reduction": {"selected": kl_sel, "random_same_size": kl_rand},
            "rules": [
                {"target": j, "quota": q, "threshold": r["threshold"], "band": len(r["band"])}
                for (j, q), r in zip(
                    ((j, q) for j, q in enumerate(quotas) if q), rules, strict=True
                )
            ],
            "outputs": {"histogram": "scores_hist.png"},
        }
        result = ps.commit(w, written, manifest, _report)
    say(
        f"select: {k} documents selected, KL reduction {kl_sel:.4f} (random: {kl_rand:.4f}) -> {result.path}"
    )
    return result


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
    save_figure(fig, path, dpi=100)
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
        *composition_table(c["per_domain"]),
        "",
        "![scores](scores_hist.png)",
        "",
    ]
    return "\n".join(lines)
