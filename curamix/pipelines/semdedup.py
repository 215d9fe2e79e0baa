"""SemDeDup job: remove semantic duplicates of the pool with the embed stage's vectors.

Spark glue over :mod:`curamix.filters.semdedup` (Abbas et al. 2023, arXiv:2303.09540):

1. the driver reads the pool's ids and domains (the stage before semdedup: dedup's output
   when the run dedups, else ingest's), and the embed stage's vectors of those ids, sorted by
   id;
2. on the driver: spherical k-means (:func:`~curamix.embeddings.index.spherical_kmeans`,
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

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from curamix.config import PipelineConfig, config_hash
from curamix.io.store import JobResult, rows_for_ids, stage_writer, write_text_atomic
from curamix.pipelines.dedup import DedupGateError
from curamix.pipelines.pool import PoolStage, decisions_table, md_table, positions

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from curamix.filters.semdedup import SemDedupResult

STAGE = "semdedup"
SEMANTIC_DUPLICATE, NOT_EMBEDDED = "semantic_duplicate", "not_embedded"
N_EXAMPLES = 10


class SemDedupGateError(DedupGateError):
    """A safety gate stopped the stage (a domain would lose too much of its data); a
    :class:`DedupGateError`, so the flow does not retry it and the CLI exits 3."""


def semdedup_key(cfg: PipelineConfig, inputs: Mapping[str, JobResult]) -> str:
    """Config, the pool's and the embed stage's manifests, and the seed."""
    pool, embed = inputs["pool"], inputs["embed"]
    return config_hash(STAGE, cfg.semdedup, pool.manifest_hash, embed.manifest_hash, cfg.seed)


def default_clusters(n: int) -> int:
    """Default k-means clusters for ``n`` documents: about sqrt(n / 2), at least 1."""
    return max(1, round(math.sqrt(n / 2)))


def fetch_texts(parts: Sequence[str], ids: Sequence[str], chars: int = 200) -> dict[str, str]:
    """The first ``chars`` characters of the texts of a few ``ids`` (for report examples)."""
    t = rows_for_ids(parts, ids, "text")
    return {
        i: x[:chars].replace("\n", " ")
        for i, x in zip(t["id"].to_pylist(), t["text"].to_pylist(), strict=True)
    }


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
    from curamix.embeddings.index import spherical_kmeans

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
    inputs: Mapping[str, JobResult],
    key: str,
    say: Callable[[str], None],
) -> JobResult:
    """Remove the pool's semantic duplicates (SemDeDup) with the embed stage's vectors."""
    from curamix.filters.semdedup import decide, max_cos_to_earlier, removal_counts
    from curamix.pipelines.embed import load_embeddings

    assert cfg.semdedup is not None
    sc = cfg.semdedup
    ps = PoolStage(STAGE, cfg, inputs["pool"], key, say)
    source, embed = ps.source, inputs["embed"]
    with ps.timed("read_s"):
        pool_ids, pool_domains, sizes = ps.read_ids()
        emb = load_embeddings(embed, ids=pool_ids.tolist())
    n_in, n_emb = len(pool_ids), len(emb)
    say(
        f"semdedup: {n_emb} of {n_in} documents of {source} have an embedding; spherical k-means "
        f"({sc.scope} scope) and max cosine within clusters"
    )
    gpu = cfg.embed.index.gpu if cfg.embed is not None else "auto"
    with ps.timed("kmeans_s"):
        assign, cos_c, n_clusters = cluster_pool(
            emb.vectors, emb.domains, sc.scope, sc.n_clusters, sc.niter, cfg.seed, gpu
        )
    with ps.timed("semdedup_s"):
        max_cos, nearest = max_cos_to_earlier(emb.vectors, assign, cos_c, keep=sc.keep)
        res = decide(max_cos, nearest, sc.eps)
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
        ps.parts,
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
        "inputs": {"manifests": {"embed": embed.manifest_hash}},
        "rule": "max cosine to any earlier document of the cluster (reference code)",
        "clusters": {
            "n": n_clusters,
            "largest": int(sizes_c.max()) if len(sizes_c) else 0,
            "median": float(np.median(sizes_c)) if len(sizes_c) else 0.0,
            "singletons": int(np.count_nonzero(sizes_c == 1)),
        },
        "counts": {
            "embedded": n_emb,
            "not_embedded": n_in - n_emb,
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
    }
    if over:
        worst = ", ".join(f"{d}: {r:.1%}" for d, r in over.items())
        kept_report = os.path.join(cfg.run_dir, f"{STAGE}-{key}.gate-failed.md")
        gate = {
            "config": sc.model_dump(mode="json"),
            **manifest,
            "counts": {"in": n_in, "kept": n_kept, "removed": n_removed, **manifest["counts"]},
        }
        write_text_atomic(kept_report, _report(gate))
        raise SemDedupGateError(
            f"semdedup would remove more than semdedup.max_removal_rate="
            f"{sc.max_removal_rate:.0%} of domain(s) {worst} (eps={sc.eps}). See "
            f"{kept_report}; lower semdedup.eps or raise semdedup.max_removal_rate to accept."
        )
    with stage_writer(cfg.run_dir, STAGE, key) as w:
        say(f"semdedup: writing kept documents and the ledger ({len(ps.parts)} tasks)")
        with ps.timed("write_s"):
            decisions = _decisions(pool_ids, emb.ids, res, max_cos)
            written = ps.write_decisions(spark, w, decisions, sizes)
        manifest["counts"] = {
            **ps.counts(written, reasons=(SEMANTIC_DUPLICATE,)),
            **manifest["counts"],
        }
        result = ps.commit(w, written, manifest, _report)
    say(
        f"semdedup: kept {n_kept} of {n_in} documents ({n_removed} semantic duplicates at "
        f"eps={sc.eps}) -> {result.path}"
    )
    return result


def _decisions(
    pool_ids: np.ndarray, emb_ids: np.ndarray, res: SemDedupResult, max_cos: np.ndarray
) -> pa.Table:
    """One decision row per pool document (pool order) from the id-sorted kernel output."""
    pos, has = positions(pool_ids, emb_ids)
    removed = np.zeros(len(pool_ids), dtype=bool)
    removed[has] = res.removed[pos[has]]
    ref = np.full(len(pool_ids), None, dtype=object)
    ref[removed] = emb_ids[res.ref[pos[removed]]]
    score = np.full(len(pool_ids), np.nan)
    score[has] = max_cos[pos[has]]
    reason = np.full(len(pool_ids), None, dtype=object)
    reason[removed] = SEMANTIC_DUPLICATE
    reason[~has] = NOT_EMBEDDED
    return decisions_table(pool_ids.tolist(), ~removed, reason, score, ref)


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
        *md_table(
            ["eps", "cosine above", "removed", "share of the pool"],
            (
                (
                    f"{r['eps']:g}" + (" **(configured)**" if r["eps"] == cf["eps"] else ""),
                    f"{1 - r['eps']:.4g}",
                    r["removed"],
                    f"{r['share']:.2%}",
                )
                for r in m["removal_curve"]
            ),
            align="rrrr",
        ),
    ]
    curve, over = m["removal_curve"], m["gates"]["domains_over_rate"]
    rows = (
        (
            d,
            e["in"],
            e["embedded"],
            e["removed"],
            e["kept"],
            f"{e['removal_rate']:.3f}" + (" **over the gate**" if d in over else ""),
            *(r["per_domain"][d] for r in curve),
        )
        for d, e in c["per_domain"].items()
    )
    head = ["domain", "in", "embedded", "removed", "kept", "removal rate"]
    lines += ["", "## Per domain", "", *md_table(head + [f"eps {r['eps']:g}" for r in curve], rows)]
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
