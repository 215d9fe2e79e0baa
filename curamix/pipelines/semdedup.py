"""SemDeDup job: remove semantic duplicates of the pool with the embed stage's vectors.

Spark glue over :mod:`curamix.selectors.semdedup` (Abbas et al. 2023, arXiv:2303.09540):

1. the driver reads the pool's ids and domains (the stage before semdedup: dedup's output
   when the run dedups, else ingest's), and the embed stage's vectors of those ids, sorted by
   id;
2. on the driver: spherical k-means (:func:`~curamix.selectors.index.spherical_kmeans`,
   seeded; ``scope: local`` clusters each domain on its own), then each document's max
   cosine to an earlier document of its cluster (farthest-from-centroid first with
   ``keep: far``) in blocked matrix products; removals at ``eps`` and at every ``eps_report``
   value come from that one pass;
3. one Spark task per pool part writes its kept documents (``data/``, the document schema)
   and its ledger from the decisions the driver wrote for that part (``_decisions/``), so
   the output does not depend on the number of workers.

Why the driver: the vectors are small (384 float32 = 1.5 KB per document, 1.5 GB per
million) and the driver holds them anyway to cluster them; the quadratic part runs cluster
by cluster in bounded blocks. Past the driver's memory, the clusters are independent and
the same kernel would run per cluster in ``groupBy(cluster).applyInPandas``.

Ledger (one row per pool document): semantic duplicates are ``removed`` with reason
``semantic_duplicate``, ``ref_id`` = the kept twin (chains resolved) and ``score`` = the
document's max cosine to an earlier document of its cluster (the value compared with
``1 - eps``); kept embedded documents carry that score too; pool documents without an
embedding (``embed.sample``) are ``kept`` with reason ``not_embedded``.

Gate: a domain losing more than ``max_removal_rate`` of its documents fails the stage, naming
the domain and its rate (the report is kept next to the run folder).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curamix.config import PipelineConfig, config_hash
from curamix.io.store import JobResult, load_completed, stage_writer
from curamix.pipelines.dedup import DedupGateError
from curamix.pipelines.parts import map_parts, part_files
from curamix.schema import DOC_SCHEMA, LEDGER_SCHEMA

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from curamix.selectors.semdedup import SemDedupResult

STAGE = "semdedup"
SEMANTIC_DUPLICATE, NOT_EMBEDDED = "semantic_duplicate", "not_embedded"
DECISION_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("decision", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("ref_id", pa.string()),
    ]
)
COUNT_SCHEMA = pa.schema([("domain", pa.string()), ("kind", pa.string()), ("n", pa.int64())])
N_EXAMPLES = 10


class SemDedupGateError(DedupGateError):
    """A safety gate stopped the stage (a domain would lose too much of its data); a
    :class:`DedupGateError`, so the flow does not retry it and the CLI exits 3."""


def semdedup_key(cfg: PipelineConfig, pool: JobResult, embed: JobResult) -> str:
    return config_hash(STAGE, cfg.semdedup, pool.manifest_hash, embed.manifest_hash, cfg.seed)


def default_clusters(n: int) -> int:
    """Default k-means clusters for ``n`` documents: about sqrt(n / 2), at least 1."""
    return max(1, round(math.sqrt(n / 2)))


# --- shared with the coreset stage --------------------------------------------------------------


def read_pool_ids(parts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids, domains and the number of rows of each pool part, in part order (the driver reads
    only the two string columns)."""
    ids, domains, sizes = [], [], []
    for path in parts:
        t = pq.read_table(path, columns=["id", "domain"])
        ids += t["id"].to_pylist()
        domains += t["domain"].to_pylist()
        sizes.append(t.num_rows)
    return np.asarray(ids, dtype=object), np.asarray(domains, dtype=object), np.asarray(sizes)


def _finish_part(path: str, index: int, out_dir: str, stage: str) -> pa.Table:
    """One pool part: its kept documents and its ledger, from the decisions the driver wrote
    for it (same rows, same order); returns per-domain counts by kind."""
    docs = pq.read_table(path)
    dec = pq.read_table(os.path.join(out_dir, "_decisions", f"part-{index:05d}.parquet"))
    if dec["id"].to_pylist() != docs["id"].to_pylist():
        raise RuntimeError(f"{stage}: the decisions for {path} do not match its rows")
    kept = pc.equal(dec["decision"], "kept")
    pq.write_table(
        docs.filter(kept).select(DOC_SCHEMA.names),
        os.path.join(out_dir, "data", f"part-{index:05d}.parquet"),
        compression="zstd",
    )
    ledger = pa.table(
        {
            "id": dec["id"],
            "stage": pa.array([stage] * dec.num_rows, pa.string()),
            "decision": dec["decision"],
            "reason": dec["reason"],
            "score": dec["score"],
            "ref_id": dec["ref_id"],
        },
        schema=LEDGER_SCHEMA,
    )
    pq.write_table(
        ledger, os.path.join(out_dir, "ledger", f"part-{index:05d}.parquet"), compression="zstd"
    )
    counts: dict[tuple[str, str], int] = {}
    for d, decision, reason in zip(
        docs["domain"].to_pylist(),
        dec["decision"].to_pylist(),
        dec["reason"].to_pylist(),
        strict=True,
    ):
        kind = reason if decision == "removed" else "kept"
        counts[(d, kind)] = counts.get((d, kind), 0) + 1
    return pa.Table.from_pylist(
        [{"domain": d, "kind": k, "n": n} for (d, k), n in sorted(counts.items())],
        schema=COUNT_SCHEMA,
    )


def write_pool_outputs(
    spark: SparkSession,
    parts: Sequence[str],
    sizes: np.ndarray,
    decisions: pa.Table,
    out_dir: str,
    stage: str,
) -> dict[tuple[str, str], int]:
    """Write ``data/`` and ``ledger/`` of a stage that filters the pool: the driver's
    ``decisions`` (one row per pool document, in part order) are cut per part into
    ``_decisions/`` and one Spark task per part applies them. Returns (domain, kind) counts
    as written (``kind`` = ``kept`` or the removal reason)."""
    dec_dir = os.path.join(out_dir, "_decisions")
    for sub in ("data", "ledger", "_decisions"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    for i in range(len(parts)):
        chunk = decisions.slice(int(offsets[i]), int(sizes[i]))
        pq.write_table(chunk, os.path.join(dec_dir, f"part-{i:05d}.parquet"))
    res = map_parts(
        spark, list(parts), lambda i, p: _finish_part(p, i, out_dir, stage), COUNT_SCHEMA
    )
    shutil.rmtree(dec_dir)
    written: dict[tuple[str, str], int] = {}
    for r in res.to_pylist():
        written[(r["domain"], r["kind"])] = written.get((r["domain"], r["kind"]), 0) + r["n"]
    return written


def fetch_texts(parts: Sequence[str], ids: Sequence[str], chars: int = 200) -> dict[str, str]:
    """The first ``chars`` characters of the texts of a few ``ids`` (for report examples)."""
    if not ids:
        return {}
    want = pa.array(sorted(set(ids)), pa.string())
    out: dict[str, str] = {}
    for path in parts:
        t = pq.read_table(path, columns=["id", "text"])
        t = t.filter(pc.is_in(t["id"], value_set=want))
        for i, x in zip(t["id"].to_pylist(), t["text"].to_pylist(), strict=True):
            out[i] = x[:chars].replace("\n", " ")
    return out


# --- clustering ---------------------------------------------------------------------------------


def cluster_pool(
    vectors: np.ndarray,
    domains: np.ndarray,
    scope: str,
    n_clusters: int | None,
    niter: int,
    seed: int,
    gpu: str = "auto",
) -> tuple[np.ndarray, np.ndarray, int]:
    """Spherical k-means labels and cosines to the centroid; ``local`` clusters each domain on
    its own (labels offset so they never collide) with ``n_clusters`` shared in proportion to
    the domains' sizes. Returns (assign, cos_to_centroid, number of clusters)."""
    from curamix.selectors.index import spherical_kmeans

    n = len(vectors)
    assign = np.zeros(n, dtype=np.int64)
    cos = np.ones(n, dtype=np.float32)
    if n == 0:
        return assign, cos, 0
    if scope == "global":
        groups = [np.arange(n)]
    else:
        groups = [np.flatnonzero(domains == d) for d in sorted(set(domains.tolist()))]
    total = 0
    for idx in groups:
        m = len(idx)
        k = default_clusters(m) if n_clusters is None else max(1, round(n_clusters * m / n))
        k = min(k, m)
        _, a, c = spherical_kmeans(vectors[idx], k, niter=niter, seed=seed, gpu=gpu)
        assign[idx] = a + total
        cos[idx] = c
        total += k
    return assign, cos, total


# --- the job ------------------------------------------------------------------------------------


def run_semdedup(
    spark: SparkSession,
    cfg: PipelineConfig,
    on_step: Callable[[str], None] | None = None,
    upstream: dict[str, JobResult] | None = None,
) -> JobResult:
    """Remove the pool's semantic duplicates (SemDeDup) with the embed stage's vectors."""
    from curamix.pipelines.embed import load_embeddings
    from curamix.runner import pool_stage, require_upstream
    from curamix.selectors.semdedup import decide, max_cos_to_earlier, removal_counts

    if cfg.semdedup is None:
        raise ValueError("run_semdedup needs a 'semdedup:' section in the config")
    sc = cfg.semdedup
    say = on_step or (lambda _msg: None)
    t0 = time.perf_counter()
    source = pool_stage(cfg, before=STAGE)
    pool = require_upstream(cfg, source, upstream)
    embed = require_upstream(cfg, "embed", upstream)
    key = semdedup_key(cfg, pool, embed)
    done = load_completed(cfg.run_dir, STAGE, key)
    if done is not None:
        say(f"semdedup: skipped, already complete at {done.path}")
        return done
    timings: dict[str, float] = {}
    t = time.perf_counter()
    parts = part_files(pool.data_path)
    pool_ids, pool_domains, sizes = read_pool_ids(parts)
    n_in = len(pool_ids)
    if n_in != pool.counts.get("out", n_in):
        raise RuntimeError(
            f"semdedup read {n_in} documents, but {source} wrote {pool.counts['out']}"
        )
    emb = load_embeddings(embed, ids=pool_ids.tolist())
    timings["read_s"] = round(time.perf_counter() - t, 3)
    n_emb = len(emb)
    say(
        f"semdedup: {n_emb} of {n_in} documents of {source} have an embedding; spherical k-means "
        f"({sc.scope} scope) and max cosine within clusters"
    )
    t = time.perf_counter()
    gpu = cfg.embed.index.gpu if cfg.embed is not None else "auto"
    assign, cos_c, n_clusters = cluster_pool(
        emb.vectors, emb.domains, sc.scope, sc.n_clusters, sc.niter, cfg.seed, gpu
    )
    timings["kmeans_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    max_cos, nearest = max_cos_to_earlier(emb.vectors, assign, cos_c, keep=sc.keep)
    res = decide(max_cos, nearest, sc.eps)
    timings["semdedup_s"] = round(time.perf_counter() - t, 3)
    ref_cos = np.zeros(n_emb, dtype=np.float64)
    rem = np.flatnonzero(res.removed)
    ref_cos[rem] = np.einsum("ij,ij->i", emb.vectors[rem], emb.vectors[res.ref[rem]])

    # Per-domain counts and the removal-vs-eps curve (one pass: thresholds on max_cos).
    eps_list = sorted(set(sc.eps_report) | {sc.eps})
    per_domain: dict[str, dict[str, Any]] = {}
    for d in sorted(set(pool_domains.tolist())):
        per_domain[d] = {"in": int(np.count_nonzero(pool_domains == d))}
    curve_domain: dict[str, list[int]] = {}
    for d, e in per_domain.items():
        in_d = emb.domains == d
        e["embedded"] = int(np.count_nonzero(in_d))
        e["removed"] = int(np.count_nonzero(res.removed & in_d))
        e["kept"] = e["in"] - e["removed"]
        e["removal_rate"] = e["removed"] / max(e["in"], 1)
        curve_domain[d] = removal_counts(max_cos[in_d], eps_list)
    n_removed = int(res.removed.sum())
    n_kept = n_in - n_removed
    curve = removal_counts(max_cos, eps_list)
    cross = int(np.count_nonzero(emb.domains[rem] != emb.domains[res.ref[rem]]))
    chained = int(np.count_nonzero(ref_cos[rem] <= 1.0 - sc.eps))
    sizes_c = np.bincount(assign, minlength=n_clusters) if n_emb else np.zeros(0, np.int64)
    examples_idx = rem[np.argsort(max_cos[rem], kind="stable")][:N_EXAMPLES]
    texts = fetch_texts(
        parts,
        [emb.ids[i] for i in examples_idx] + [emb.ids[res.ref[i]] for i in examples_idx],
    )
    examples = [
        {
            "id": str(emb.ids[i]),
            "domain": str(emb.domains[i]),
            "ref_id": str(emb.ids[res.ref[i]]),
            "ref_domain": str(emb.domains[res.ref[i]]),
            "max_cos": round(float(max_cos[i]), 4),
            "ref_cos": round(float(ref_cos[i]), 4),
            "text": texts.get(str(emb.ids[i]), ""),
            "ref_text": texts.get(str(emb.ids[res.ref[i]]), ""),
        }
        for i in examples_idx
    ]
    over = {
        d: round(e["removal_rate"], 4)
        for d, e in per_domain.items()
        if e["removal_rate"] > sc.max_removal_rate
    }
    manifest: dict[str, Any] = {
        "config": sc.model_dump(mode="json"),
        "config_hash": config_hash(sc),
        "seed": cfg.seed,
        "inputs": {"manifests": {source: pool.manifest_hash, "embed": embed.manifest_hash}},
        "rule": "max cosine to any earlier document of the cluster (reference code)",
        "clusters": {
            "n": n_clusters,
            "largest": int(sizes_c.max()) if len(sizes_c) else 0,
            "median": float(np.median(sizes_c)) if len(sizes_c) else 0.0,
            "singletons": int(np.count_nonzero(sizes_c == 1)),
        },
        "counts": {
            "in": n_in,
            "embedded": n_emb,
            "not_embedded": n_in - n_emb,
            "kept": n_kept,
            "out": n_kept,
            "removed": n_removed,
            "quarantined": 0,
            "removed_reasons": {SEMANTIC_DUPLICATE: n_removed},
            "cross_domain_removed": cross,
            "removed_via_chain": chained,
            "per_domain": per_domain,
        },
        "removal_curve": [
            {
                "eps": e,
                "removed": n,
                "share": n / max(n_in, 1),
                "per_domain": {d: c[k] for d, c in curve_domain.items()},
            }
            for k, (e, n) in enumerate(zip(eps_list, curve, strict=True))
        ],
        "gates": {"max_removal_rate": sc.max_removal_rate, "domains_over_rate": over},
        "examples": examples,
        "timings": timings,
        "outputs": {"data": "data", "ledger": "ledger", "report": "report.md"},
    }
    with stage_writer(cfg.run_dir, STAGE, key) as w:
        w.path("report.md").write_text(_report(manifest), encoding="utf-8")
        if over:
            worst = ", ".join(f"{d}: {r:.1%}" for d, r in over.items())
            kept_report = os.path.join(cfg.run_dir, f"{STAGE}-{key}.gate-failed.md")
            shutil.copyfile(w.path("report.md"), kept_report)
            raise SemDedupGateError(
                f"semdedup would remove more than semdedup.max_removal_rate="
                f"{sc.max_removal_rate:.0%} of domain(s) {worst} (eps={sc.eps}). See "
                f"{kept_report}; lower semdedup.eps or raise semdedup.max_removal_rate to accept."
            )
        say(f"semdedup: writing kept documents and the ledger ({len(parts)} tasks)")
        t = time.perf_counter()
        decisions = _decisions(pool_ids, emb.ids, res, max_cos)
        written = write_pool_outputs(spark, parts, sizes, decisions, str(w.tmp), STAGE)
        timings["write_s"] = round(time.perf_counter() - t, 3)
        for d, e in per_domain.items():
            got = (written.get((d, "kept"), 0), written.get((d, SEMANTIC_DUPLICATE), 0))
            if got != (e["kept"], e["removed"]):
                raise RuntimeError(
                    f"semdedup accounting mismatch in domain {d!r}: wrote {got}, decided {e}"
                )
        timings["total_s"] = round(time.perf_counter() - t0, 3)
        result = w.commit(json.loads(json.dumps(manifest, default=float)))
    say(
        f"semdedup: kept {n_kept} of {n_in} documents ({n_removed} semantic duplicates at "
        f"eps={sc.eps}) -> {result.path}"
    )
    return result


def _decisions(
    pool_ids: np.ndarray, emb_ids: np.ndarray, res: SemDedupResult, max_cos: np.ndarray
) -> pa.Table:
    """One decision row per pool document (pool order) from the id-sorted kernel output."""
    n = len(pool_ids)
    pos = np.searchsorted(emb_ids, pool_ids.astype(str)) if len(emb_ids) else np.zeros(n, int)
    pos = np.minimum(pos, max(len(emb_ids) - 1, 0))
    has = (emb_ids[pos] == pool_ids.astype(str)) if len(emb_ids) else np.zeros(n, dtype=bool)
    removed = np.zeros(n, dtype=bool)
    removed[has] = res.removed[pos[has]]
    ref = np.full(n, None, dtype=object)
    ref[removed] = emb_ids[res.ref[pos[removed]]]
    score = np.full(n, np.nan)
    score[has] = max_cos[pos[has]]
    reason = np.full(n, None, dtype=object)
    reason[removed] = SEMANTIC_DUPLICATE
    reason[~has] = NOT_EMBEDDED
    return pa.table(
        {
            "id": pa.array(pool_ids.tolist(), pa.string()),
            "decision": pa.array(np.where(removed, "removed", "kept").tolist(), pa.string()),
            "reason": pa.array(reason.tolist(), pa.string()),
            "score": pa.array(score, pa.float64(), from_pandas=True),
            "ref_id": pa.array(ref.tolist(), pa.string()),
        },
        schema=DECISION_SCHEMA,
    )


def _report(m: dict[str, Any]) -> str:
    c, cf, cl = m["counts"], m["config"], m["clusters"]
    lines = [
        "# Semantic dedup report (SemDeDup)",
        "",
        f"{c['removed']} of {c['in']} documents removed as semantic duplicates at eps="
        f"{cf['eps']} (cosine > {1 - cf['eps']:.4g} to an earlier document of the same "
        f"k-means cluster; order: {cf['keep']} from the centroid first; scope {cf['scope']}). "
        f"{c['not_embedded']} documents without an embedding were kept (`not_embedded`).",
        "",
        f"Clusters: {cl['n']} (largest {cl['largest']}, median {cl['median']:g}, "
        f"{cl['singletons']} singletons). {c['cross_domain_removed']} removed documents "
        f"duplicate a document of another domain; {c['removed_via_chain']} are less similar "
        "than the threshold to their kept twin (removed for a twin that was itself removed, "
        "as in the reference code).",
        "",
        "## Removal vs eps",
        "",
        "| eps | cosine above | removed | share of the pool |",
        "|---:|---:|---:|---:|",
    ]
    for r in m["removal_curve"]:
        mark = " **(configured)**" if r["eps"] == cf["eps"] else ""
        lines.append(
            f"| {r['eps']:g}{mark} | {1 - r['eps']:.4g} | {r['removed']} | {r['share']:.2%} |"
        )
    eps_cols = [r["eps"] for r in m["removal_curve"]]
    lines += [
        "",
        "## Per domain",
        "",
        "| domain | in | embedded | removed | kept | removal rate | "
        + " | ".join(f"eps {e:g}" for e in eps_cols)
        + " |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(eps_cols),
    ]
    for d, e in c["per_domain"].items():
        flag = " **over the gate**" if d in m["gates"]["domains_over_rate"] else ""
        per_eps = " | ".join(str(r["per_domain"][d]) for r in m["removal_curve"])
        lines.append(
            f"| {d} | {e['in']} | {e['embedded']} | {e['removed']} | {e['kept']} | "
            f"{e['removal_rate']:.3f}{flag} | {per_eps} |"
        )
    g = m["gates"]
    lines += [
        "",
        "## Gate",
        "",
        f"- removal-rate ceiling {g['max_removal_rate']:.0%}: "
        + ("passed" if not g["domains_over_rate"] else f"FAILED for {g['domains_over_rate']}"),
        "",
        "## Examples (removed documents closest to the threshold first)",
        "",
    ]
    for x in m["examples"]:
        lines.append(
            f"- `{x['id']}` ({x['domain']}, max cosine {x['max_cos']}) -> kept `{x['ref_id']}` "
            f"({x['ref_domain']}, cosine {x['ref_cos']})\n  - removed: {x['text']}\n"
            f"  - kept: {x['ref_text']}"
        )
    if not m["examples"]:
        lines.append("none")
    lines.append("")
    return "\n".join(lines)
