"""Coreset job: keep k documents of the pool chosen by CCS, SSL prototypes, k-center greedy,
facility location, density-based pruning (DBP) or at random, over the embed stage's vectors.

Spark glue over :mod:`curamix.selectors.coreset`:

1. the driver reads the pool's ids and domains (the run's latest pool: decontam's,
   semdedup's, dedup's or ingest's output) and the embed stage's vectors of those ids, sorted
   by id; only documents with an embedding can be chosen (the others are removed with reason
   ``not_embedded``);
2. the score (for ``ccs`` and ``prototypes``): ``prototype`` = cosine distance to the nearest
   spherical k-means centroid (Sorscher et al. 2022), or the per-document ``score`` of a
   scoring stage's ``scores/`` (``dsir``: the log importance weight; ``betr``: the
   classifier score), or ``proxy_loss``: each document's mean next-token loss under a small
   reference proxy trained on the driver on the ``proxy.sample`` pool documents with the
   smallest hash of (seed, id) (perplexity pruning, Marion et al. 2023;
   :func:`proxy_loss_scores`), the scoring one Spark task per pool part with the proxy's
   weights broadcast (the same numbers in this process without Spark). Higher = harder: CCS
   drops the top ``beta`` share, ``keep_hard`` prototypes keep the top k;
3. the selection runs on the driver from the id-sorted arrays with ``random_state=cfg.seed``
   (``dbp`` runs its own spherical k-means with ``n_clusters``, default as for the prototype
   score), so the same seed gives the same coreset on one core or a cluster;
4. one Spark task per pool part writes its selected documents (``data/``, the document
   schema) and its ledger (``kept``, or ``removed`` with reason ``not_selected``; ``score``
   = the document's score when the method uses one).

The report compares the per-domain composition before and after, and the coverage of the
coreset (cosine distance of sampled pool documents to their nearest selected document)
against a random selection of the same size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from curamix.config import CoresetConfig, PipelineConfig, ProxyScoreConfig, config_hash, pool_stage
from curamix.io.store import JobResult, part_files, rows_for_ids, stage_writer
from curamix.pipelines.pool import (
    PoolStage,
    composition_table,
    decisions_table,
    md_table,
    positions,
)
from curamix.pipelines.semdedup import NOT_EMBEDDED, default_clusters

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

STAGE = "coreset"
NOT_SELECTED = "not_selected"
RANDOM_STREAM = 7_777_777
"""Seed offset of the random baseline in the report's coverage comparison."""
COVERAGE_QUERIES = 2000


def coreset_upstream(cfg: PipelineConfig) -> dict[str, str]:
    """The pool, the embed stage, and the scoring stage when ``coreset.score`` names one."""
    assert cfg.coreset is not None
    up = {"pool": pool_stage(cfg, before=STAGE), "embed": "embed"}
    if cfg.coreset.score not in ("prototype", "proxy_loss"):
        up["scores"] = cfg.coreset.score
    return up


PROXY_SAMPLE_RULE = "the proxy.sample pool documents of smallest hash(seed, id)"
"""In the key of ``score: proxy_loss`` coresets (their reference sample's rule)."""
PROXY_SCORE_SCHEMA = pa.schema([("id", pa.string()), ("score", pa.float64())])


def coreset_key(cfg: PipelineConfig, inputs: Mapping[str, JobResult]) -> str:
    """Config, the manifests of the pool, the embed stage and the scoring stage, and the seed
    (and, for ``proxy_loss``, the reference sample's rule)."""
    assert cfg.coreset is not None
    scores = inputs.get("scores")
    rule = [PROXY_SAMPLE_RULE] if cfg.coreset.score == "proxy_loss" else []
    return config_hash(
        STAGE,
        cfg.coreset,
        inputs["pool"].manifest_hash,
        inputs["embed"].manifest_hash,
        scores.manifest_hash if scores is not None else None,
        cfg.seed,
        *rule,
    )


def coreset_size(cc: CoresetConfig, n_pool: int) -> int:
    """``k``, or ``fraction`` of the pool's documents (at least 1)."""
    return cc.k if cc.k is not None else max(1, int(cc.fraction * n_pool))  # type: ignore[operator]


def proxy_payload(model: Any, tok: Any) -> dict[str, Any]:
    """The reference proxy as plain data for a Spark broadcast: its config, its float32
    weights as numpy arrays and its tokenizer's JSON."""
    return {
        "config": model.cfg.model_dump(mode="json"),
        "state": {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()},
        "tokenizer": tok.to_str(),
    }


def proxy_from_payload(payload: Mapping[str, Any], device: str = "cpu") -> tuple[Any, Any]:
    """The (model, tokenizer) of :func:`proxy_payload`, the model in eval mode on ``device``."""
    import torch
    from tokenizers import Tokenizer

    from curamix.device import resolve_device
    from curamix.proxy.model import ProxyLM, ProxyModelConfig

    model = ProxyLM(ProxyModelConfig(**payload["config"]))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in payload["state"].items()})
    return model.to(resolve_device(device)).eval(), Tokenizer.from_str(payload["tokenizer"])


def proxy_loss_part(
    path: str, payload: Mapping[str, Any], ids: np.ndarray, device: str = "cpu"
) -> pa.Table:
    """One part's proxy-loss scores: :func:`~curamix.proxy.perplexity.doc_losses` of its
    documents whose id is in ``ids`` (sorted), in the part's order, on one torch thread (the
    same numbers in any task and in the driver). NaN for a document under 2 tokens."""
    import pyarrow.parquet as pq
    import torch

    from curamix.proxy.perplexity import doc_losses

    t = pq.read_table(path, columns=["id", "text"])
    pid = np.asarray(t["id"].to_pylist(), dtype=str)
    keep = np.flatnonzero(np.isin(pid, ids))
    if not len(keep):
        return PROXY_SCORE_SCHEMA.empty_table()
    model, tok = proxy_from_payload(payload, device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scores = doc_losses(model, tok, t["text"].take(pa.array(keep)).to_pylist())
    finally:
        torch.set_num_threads(threads)
    return pa.table({"id": pid[keep].tolist(), "score": scores}, schema=PROXY_SCORE_SCHEMA)


def proxy_loss_scores(
    ps: ProxyScoreConfig,
    parts: list[str],
    ids: np.ndarray,
    seed: int,
    say: Callable[[str], None],
    spark: SparkSession | None = None,
) -> np.ndarray:
    """Perplexity scores (Marion et al. 2023) of ``ids`` (sorted): a reference proxy trained
    on the driver on the ``ps.sample`` pool documents with the smallest hash of (seed, id)
    (the embed stage's sample rule, in that order; the same for any partitioning) scores each
    document's mean next-token loss (nats/token). The scoring runs one Spark task per part
    with the proxy broadcast (``spark=None``: the parts one by one here; the same numbers), so
    the driver never holds the pool's texts, only one score per document. Documents under 2
    tokens get the median score."""
    from curamix.pipelines.parts import map_parts
    from curamix.pipelines.rds import draw_proxy_sample
    from curamix.proxy.perplexity import reference_proxy

    part_ids = None
    if spark is None:
        import pyarrow.parquet as pq

        part_ids = [pq.read_table(p, columns=["id"])["id"].to_pylist() for p in parts]
    sample = draw_proxy_sample(spark, parts, part_ids or [], seed, ps.sample)
    say(
        f"coreset: training a {ps.model} reference proxy on {len(sample)} pool documents "
        f"({ps.total_tokens:,} tokens)"
    )
    model, tok = reference_proxy(
        sample,
        model=ps.model,
        vocab_size=ps.vocab_size,
        seq_len=ps.seq_len,
        batch_size=ps.batch_size,
        total_tokens=ps.total_tokens,
        random_state=seed,
        device=ps.device,
    )
    say(f"coreset: proxy-loss scores of {len(ids)} documents ({len(parts)} parts)")
    payload, device = proxy_payload(model, tok), ps.device
    ids = np.asarray(ids, dtype=str)
    if spark is None:
        table = pa.concat_tables(
            [PROXY_SCORE_SCHEMA.empty_table()]
            + [proxy_loss_part(p, payload, ids, device) for p in parts]
        )
    else:
        shared = spark.sparkContext.broadcast((payload, ids))
        table = map_parts(
            spark,
            parts,
            lambda _i, p: proxy_loss_part(p, shared.value[0], shared.value[1], device),
            PROXY_SCORE_SCHEMA,
        )
        shared.unpersist()
    table = table.sort_by("id")
    if table["id"].to_pylist() != ids.tolist():
        raise RuntimeError("coreset: the pool's parts do not hold every embedded document")
    scores = table["score"].to_numpy(zero_copy_only=False).astype(np.float64)
    bad = np.isnan(scores)
    if bad.all():
        raise ValueError("coreset.score=proxy_loss: no pool document has 2 tokens to score")
    scores[bad] = np.nanmedian(scores)
    return scores


def read_stage_scores(result: JobResult, ids: np.ndarray) -> np.ndarray:
    """The ``score`` column of a scoring stage's ``scores/`` for ``ids`` (sorted), float64.
    Raises ValueError naming the stage and a missing id when a document has no score."""
    folder = result.path / "scores"
    if not folder.is_dir():
        raise ValueError(
            f"coreset.score={result.stage!r}: {result.path} has no scores/ folder to read "
            "per-document scores from"
        )
    t = rows_for_ids(part_files(folder), ids, "score")
    got = np.asarray(t["id"].to_pylist(), dtype=str)
    if len(got) != len(ids) or (got != ids).any():
        missing = sorted(set(ids.tolist()) - set(got.tolist()))
        raise ValueError(
            f"coreset.score={result.stage!r}: {len(missing)} embedded pool documents have no "
            f"score in {folder} (e.g. {missing[:3]}); the scoring stage read another pool"
        )
    return np.asarray(t["score"].to_numpy(zero_copy_only=False), dtype=np.float64)


def coverage(
    vectors: np.ndarray, chosen: np.ndarray, n_queries: int, seed: int
) -> dict[str, float]:
    """Cosine distance from up to ``n_queries`` sampled documents to their nearest chosen
    document: mean, 95th percentile and max (lower = the coreset covers the pool better)."""
    rng = np.random.default_rng(seed)
    q = rng.choice(len(vectors), size=min(n_queries, len(vectors)), replace=False)
    best = np.full(len(q), -np.inf, dtype=np.float32)
    c = vectors[chosen]
    for lo in range(0, len(c), 8192):
        best = np.maximum(best, (vectors[q] @ c[lo : lo + 8192].T).max(axis=1))
    d = 1.0 - best.astype(np.float64)
    return {"mean": float(d.mean()), "p95": float(np.quantile(d, 0.95)), "max": float(d.max())}


def run_coreset(
    spark: SparkSession,
    cfg: PipelineConfig,
    inputs: Mapping[str, JobResult],
    key: str,
    say: Callable[[str], None],
) -> JobResult:
    """Select a coreset of the pool (CCS, prototypes, k-center, facility location, DBP or
    random) with ``cfg.seed``."""
    from curamix.pipelines.embed import load_embeddings
    from curamix.selectors.coreset import prototype_scores, random_select, select_coreset

    assert cfg.coreset is not None
    cc = cfg.coreset
    ps = PoolStage(STAGE, cfg, inputs["pool"], key, say)
    source, parts, embed, score_stage = ps.source, ps.parts, inputs["embed"], inputs.get("scores")
    with ps.timed("read_s"):
        pool_ids, pool_domains, sizes = ps.read_ids()
        emb = load_embeddings(embed, ids=pool_ids.tolist())
    n_in, n_emb = len(pool_ids), len(emb)
    k = coreset_size(cc, n_in)
    if k > n_emb:
        raise ValueError(
            f"coreset.k={k} is larger than the {n_emb} pool documents with an embedding "
            f"(of {n_in} in {source}"
            + (f"; embed.sample={cfg.embed.sample}" if cfg.embed and cfg.embed.sample else "")
            + ")"
        )
    needs_score = cc.method in ("ccs", "prototypes")
    scores: np.ndarray | None = None
    n_clusters = None
    if (needs_score and score_stage is None) or cc.method == "dbp":
        n_clusters = min(cc.n_clusters or default_clusters(n_emb), n_emb)
    with ps.timed("score_s"):
        if needs_score and cc.score == "proxy_loss":
            scores = proxy_loss_scores(cc.proxy, parts, emb.ids, cfg.seed, say, spark)
        elif needs_score and score_stage is None:
            say(f"coreset: prototype scores (spherical k-means, {n_clusters} clusters)")
            scores = prototype_scores(emb.vectors, n_clusters, seed=cfg.seed)
        elif score_stage is not None:
            scores = read_stage_scores(score_stage, emb.ids)
    say(f"coreset: {cc.method} selects {k} of {n_emb} embedded documents (seed {cfg.seed})")
    with ps.timed("select_s"):
        chosen = select_coreset(
            cc.method,
            k,
            vectors=emb.vectors,
            scores=scores,
            n=n_emb,
            random_state=cfg.seed,
            beta=cc.beta,
            strata=cc.strata,
            keep_hard=cc.keep_hard,
            epsilon=cc.epsilon,
            n_clusters=n_clusters,
            temperature=cc.temperature,
            n_neighbors=cc.n_neighbors,
            balance=cc.balance,
            within=cc.within,
        )
    if len(chosen) != k or len(np.unique(chosen)) != k:
        raise RuntimeError(
            f"coreset: {cc.method} chose {len(np.unique(chosen))} documents, not {k}"
        )
    with ps.timed("coverage_s"):
        cov = coverage(emb.vectors, chosen, COVERAGE_QUERIES, cfg.seed)
        baseline = random_select(n_emb, k, random_state=cfg.seed + RANDOM_STREAM)
        cov_random = coverage(emb.vectors, baseline, COVERAGE_QUERIES, cfg.seed)

    selected = np.zeros(n_emb, dtype=bool)
    selected[chosen] = True
    per_domain: dict[str, dict[str, Any]] = {}
    for d in sorted(set(pool_domains.tolist())):
        in_d = emb.domains == d
        n_d = int(np.count_nonzero(pool_domains == d))
        kept = int(np.count_nonzero(selected & in_d))
        per_domain[d] = {
            "in": n_d,
            "embedded": int(np.count_nonzero(in_d)),
            "kept": kept,
            "removed": n_d - kept,
            "pool_share": n_d / max(n_in, 1),
            "selected_share": kept / k,
            "random_share": int(np.count_nonzero(in_d[baseline])) / k,
        }
    score_summary = None
    if scores is not None:
        score_summary = {
            "pool": _quantiles(scores),
            "selected": _quantiles(scores[chosen]),
        }
    manifest: dict[str, Any] = {
        "inputs": {
            "manifests": {
                "embed": embed.manifest_hash,
                **({cc.score: score_stage.manifest_hash} if score_stage is not None else {}),
            }
        },
        "k": k,
        "n_clusters": n_clusters,
        "coverage": {"selected": cov, "random_same_size": cov_random},
        "scores": score_summary,
    }
    with stage_writer(cfg.run_dir, STAGE, key) as w:
        say(f"coreset: writing the selected documents and the ledger ({len(parts)} tasks)")
        with ps.timed("write_s"):
            decisions = _decisions(pool_ids, emb.ids, selected, scores)
            written = ps.write_decisions(spark, w, decisions, sizes)
        manifest["counts"] = {
            **ps.counts(written, reasons=(NOT_SELECTED, NOT_EMBEDDED)),
            "embedded": n_emb,
            "per_domain": per_domain,
        }
        result = ps.commit(w, written, manifest, _report)
    say(f"coreset: kept {k} of {n_in} documents ({cc.method}) -> {result.path}")
    return result


def _quantiles(x: np.ndarray) -> dict[str, float]:
    q = np.quantile(x, [0.0, 0.25, 0.5, 0.75, 1.0])
    return dict(zip(("min", "q25", "median", "q75", "max"), map(float, q), strict=True))


def _decisions(
    pool_ids: np.ndarray, emb_ids: np.ndarray, selected: np.ndarray, scores: np.ndarray | None
) -> pa.Table:
    """One decision row per pool document (pool order) from the id-sorted selection."""
    pos, has = positions(pool_ids, emb_ids)
    kept = np.zeros(len(pool_ids), dtype=bool)
    kept[has] = selected[pos[has]]
    reason = np.full(len(pool_ids), None, dtype=object)
    reason[has & ~kept] = NOT_SELECTED
    reason[~has] = NOT_EMBEDDED
    score = np.full(len(pool_ids), np.nan)
    if scores is not None:
        score[has] = scores[pos[has]]
    return decisions_table(pool_ids.tolist(), kept, reason, score)


def _report(m: dict[str, Any]) -> str:
    c, cf, cov = m["counts"], m["config"], m["coverage"]
    method = cf["method"]
    how = {
        "ccs": f"CCS (drop the hardest beta={cf['beta']}, {cf['strata']} strata of the "
        f"`{cf['score']}` score)",
        "prototypes": f"SSL prototypes (keep the {'hardest' if cf['keep_hard'] else 'easiest'} "
        f"by the `{cf['score']}` score)",
        "kcenter": "k-center greedy over the embeddings",
        "facility_location": "facility location (stochastic greedy, "
        f"epsilon={cf['epsilon']}) over the embeddings",
        "dbp": f"density-based pruning ({m['n_clusters']} k-means clusters, temperature "
        f"{cf['temperature']}, balance {cf['balance']}, {cf['within']} within clusters)",
        "random": "uniform random",
    }[method]
    lines = [
        "# Coreset report",
        "",
        f"{c['kept']} of {c['in']} documents selected by {how}, seed {m['seed']}. "
        f"{c['removed_reasons'][NOT_EMBEDDED]} pool documents had no embedding (removed, "
        "`not_embedded`).",
        "",
        "Coverage (cosine distance of sampled pool documents to their nearest selected one; "
        "lower is better):",
        "",
        *md_table(
            ["selection", "mean", "p95", "max"],
            (
                (name, *(f"{cov[key][q]:.4f}" for q in ("mean", "p95", "max")))
                for name, key in ((method, "selected"), ("random, same size", "random_same_size"))
            ),
        ),
        "",
        "## Composition",
        "",
        *composition_table(c["per_domain"], random=True),
    ]
    if m["scores"]:
        qs = ("min", "q25", "median", "q75", "max")
        rows = (
            (name, *(f"{m['scores'][name][q]:.4g}" for q in qs)) for name in ("pool", "selected")
        )
        lines += ["", f"## Score (`{cf['score']}`)", "", *md_table(["", *qs], rows)]
    lines.append("")
    return "\n".join(lines)
