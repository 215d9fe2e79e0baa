"""Adapt-infty job: pseudo-skill clusters of proxy-LM gradients, a scorer per cluster, CCS.

Spark glue over :mod:`curamix.selectors.adapt` (Maharana et al. 2025, arXiv:2410.10636):

1. the driver reads the pool's ids and domains and resolves the budget (``budget`` or
   ``budget_fraction`` of the pool's documents, default 0.1) and the optional permanent
   pruning (``prune_budget`` / ``prune_fraction``); above the pool is an error;
2. a proxy LM and its BPE tokenizer are trained on the ``proxy.sample`` pool documents with
   the smallest hash of (seed, id) (the rds stage's sample: the same for any partitioning)
   and saved under ``proxy/``;
3. every document's gradient over one transformer block (``layer``), projected to
   ``proj_dim`` by a seeded Rademacher matrix, and its log-perplexity, EL2N and GraNd are
   computed in this process (``engine: local``) or one Spark task per part (``spark``;
   ``auto``: local up to ``local_max_docs`` documents): the same numbers either way;
4. the driver clusters the L2-normalised vectors (MiniBatchKMeans, ``n_clusters``, seeded),
   prunes each cluster to its least redundant documents when asked (the reference runs its
   ``semdedup`` before its selection: the same order here), splits the budget over the
   clusters, and draws each cluster's share by CCS over the scorer whose histogram has the
   highest entropy; documents with fewer than 2 tokens cannot be scored and are removed
   (``adapt:too_short``);
5. one decision per document goes to the pool-stage skeleton: ``data/`` (the selected
   documents with their ``cluster``, ``score`` and ``scorer`` columns) and ``ledger/``:
   ``kept`` with reason ``adapt:cluster=<c>``; ``removed`` with ``adapt:not_sampled
   cluster=<c>`` (score: the cluster scorer's value), ``adapt:pruned cluster=<c>`` (score: its
   max cosine to an earlier document of the cluster, ``ref_id``: that document) or
   ``adapt:too_short``.

Also written: ``scores.parquet`` (every document's cluster, three scores, redundancy and
outcome), ``report.md`` (cluster sizes, each cluster's scorer and entropies, budget, drawn and
kept counts, the domains of each cluster, composition) and the manifest.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curamix.config import AdaptConfig, ConfigError, PipelineConfig, config_hash, pool_stage
from curamix.io.store import JobResult, stage_writer
from curamix.pipelines.parts import choose_engine, map_parts
from curamix.pipelines.pool import (
    DECISION_SCHEMA,
    REMOVED,
    Decisions,
    PoolStage,
    composition_table,
    decisions_table,
    md_table,
)
from curamix.schema import DOC_SCHEMA

if TYPE_CHECKING:
    from pathlib import Path

    from pyspark.sql import SparkSession

    from curamix.selectors.adapt import AdaptSelection, PruneResult

STAGE = "adapt"
KEPT_PREFIX = "adapt:cluster="
NOT_SAMPLED = "adapt:not_sampled"
PRUNED = "adapt:pruned"
TOO_SHORT = "adapt:too_short"
EXECUTION_ONLY = {"engine", "local_max_docs"}
"""Settings that change how the stage runs, never its output: not part of its cache key."""
BATCH = 512
"""Documents read from a part at once (the gradients go in ``batch_size`` batches)."""
TOP_DOMAINS = 3
DATA_SCHEMA = pa.schema(
    [
        *DOC_SCHEMA,
        pa.field("cluster", pa.int64()),
        pa.field("score", pa.float64()),
        pa.field("scorer", pa.string()),
    ]
)
"""The selected documents: the document schema plus their cluster, the value of their
cluster's scorer and its name."""
FEATURE_SCHEMA = pa.schema(
    [
        ("part", pa.int64()),
        ("row", pa.int64()),
        ("id", pa.string()),
        ("n_tokens", pa.int64()),
        ("log_ppl", pa.float64()),
        ("el2n", pa.float64()),
        ("grand", pa.float64()),
        ("grad", pa.list_(pa.float32())),
    ]
)
_CUT_SCHEMA = pa.schema(
    [
        *DECISION_SCHEMA,
        pa.field("cluster", pa.int64()),
        pa.field("data_score", pa.float64()),
        pa.field("scorer", pa.string()),
    ]
)


def _section(cfg: PipelineConfig) -> AdaptConfig:
    if cfg.adapt is None:
        raise ConfigError("the adapt stage needs an 'adapt:' section")
    return cfg.adapt


def adapt_upstream(cfg: PipelineConfig) -> dict[str, str]:
    """The pool as it stands before adapt."""
    return {"pool": pool_stage(cfg, before=STAGE)}


def adapt_key(cfg: PipelineConfig, inputs: Mapping[str, JobResult]) -> str:
    """Config (less the engine), the pool's manifest and the seed (proxy sample, weights,
    projection, k-means and draws)."""
    return config_hash(
        STAGE,
        _section(cfg).model_dump(mode="json", exclude=EXECUTION_ONLY),
        inputs["pool"].manifest_hash,
        cfg.seed,
    )


def resolve_count(
    value: int | None, fraction: float | None, n_docs: int, name: str, default: float | None
) -> tuple[int | None, str]:
    """A document count from an absolute ``value`` or a ``fraction`` of ``n_docs`` (at least
    1; ``default`` when neither is set, None: not asked for) and where it came from. Raises
    :class:`~curamix.config.ConfigError` naming the value when it exceeds the pool."""
    if value is not None:
        if value > n_docs:
            raise ConfigError(
                f"adapt.{name}={value} documents is larger than the pool ({n_docs} documents)"
            )
        return int(value), f"{name}={value}"
    frac = default if fraction is None else fraction
    if frac is None:
        return None, "off"
    if n_docs < 1:
        raise ConfigError(f"adapt: the pool has no documents to select from ({n_docs})")
    fraction_name = {"budget": "budget_fraction", "prune_budget": "prune_fraction"}[name]
    src = f"{fraction_name}={frac:g}" + (" (default)" if fraction is None else "")
    return max(1, int(frac * n_docs)), src


# --- gradients per part ----------------------------------------------------------------------


class FeatureComputer:
    """Computes a part's gradient features inside this process or a Spark task (picklable:
    the proxy's plain weights through a broadcast, rebuilt once per task)."""

    def __init__(self, ac: AdaptConfig, seed: int, payload: Any = None, local: Any = None):
        self.layer, self.proj_dim, self.seed = ac.layer, ac.proj_dim, seed
        self.max_tokens, self.batch_size, self.device = ac.max_tokens, ac.batch_size, ac.device
        self.payload = payload
        self._local = local  # (model, tokenizer) in the driver; never pickled
        self._built: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_local"] = state["_built"] = None
        return state

    def _model(self) -> tuple[Any, Any, Any]:
        if self._built is None:
            from curamix.selectors.adapt import RademacherProjection, block_parameters
            from curamix.selectors.rds import ProxyLMEncoder

            if self._local is not None:
                model, tok = self._local
            else:
                enc = ProxyLMEncoder.from_payload(self.payload.value, device=self.device)
                model, tok = enc.model, enc.tokenizer
            params = dict(model.named_parameters())
            dim = sum(params[k].numel() for k in block_parameters(model, self.layer))
            self._built = (model, tok, RademacherProjection(dim, self.proj_dim, self.seed))
        return self._built

    def part(self, path: str, index: int) -> pa.Table:
        """One row per document of the part, in its order."""
        from curamix.selectors.adapt import gradient_features

        model, tok, proj = self._model()
        out: list[pa.Table] = []
        start = 0
        for batch in pq.ParquetFile(path).iter_batches(BATCH, columns=["id", "text"]):
            ids, texts = batch.column("id").to_pylist(), batch.column("text").to_pylist()
            f = gradient_features(
                model,
                tok,
                texts,
                layer=self.layer,
                max_tokens=self.max_tokens,
                batch_size=self.batch_size,
                projection=proj,
            )
            n = len(ids)
            grad = pa.ListArray.from_arrays(
                pa.array(np.arange(n + 1, dtype=np.int32) * proj.dim_out),
                pa.array(f.vectors.reshape(-1), pa.float32()),
            )
            cols = {
                "part": np.full(n, index, dtype=np.int64),
                "row": np.arange(start, start + n, dtype=np.int64),
                "id": ids,
                "n_tokens": f.n_tokens,
                "log_ppl": f.log_ppl,
                "el2n": f.el2n,
                "grand": f.grand,
                "grad": grad,
            }
            out.append(pa.table(cols, schema=FEATURE_SCHEMA))
            start += n
        return pa.concat_tables(out) if out else FEATURE_SCHEMA.empty_table()


def compute_features(
    spark: SparkSession | None, parts: list[str], computer: FeatureComputer
) -> pa.Table:
    """Every pool document's features, sorted by (part, row)."""
    if spark is None:
        table = pa.concat_tables(
            [FEATURE_SCHEMA.empty_table()] + [computer.part(p, i) for i, p in enumerate(parts)]
        )
    else:
        table = map_parts(spark, parts, lambda i, p: computer.part(p, i), FEATURE_SCHEMA)
    return table.sort_by([("part", "ascending"), ("row", "ascending")])


# --- writing driver-side decisions with data columns ------------------------------------------


class _Cut:
    """``decide`` for the driver's decisions: the part's cut from ``_decisions/`` (read once),
    with the selected documents' ``cluster``, ``score`` and ``scorer`` columns."""

    def __init__(self, folder: str):
        self.folder = folder
        self._cache: tuple[int, pa.Table] | None = None

    def __call__(self, index: int, docs: pa.Table, start: int) -> Decisions:
        if self._cache is None or self._cache[0] != index:
            path = os.path.join(self.folder, f"part-{index:05d}.parquet")
            self._cache = (index, pq.read_table(path).cast(_CUT_SCHEMA))
        t = self._cache[1].slice(start, docs.num_rows)
        return Decisions(
            t.select(DECISION_SCHEMA.names),
            data_columns={
                "cluster": t["cluster"].combine_chunks(),
                "score": t["data_score"].combine_chunks(),
                "scorer": t["scorer"].combine_chunks(),
            },
        )


def write_cut(
    ps: PoolStage, spark: SparkSession | None, w: Any, table: pa.Table, sizes: np.ndarray
) -> Any:
    """Cut ``table`` (one row per pool document, part order, ``_CUT_SCHEMA``) per part, let
    one task per part apply its cut, and check what was written against the decisions."""
    dec_dir = w.path("_decisions")
    os.makedirs(dec_dir)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    for i in range(len(ps.parts)):
        pq.write_table(
            table.slice(int(offsets[i]), int(sizes[i])), dec_dir / f"part-{i:05d}.parquet"
        )
    written = ps.write(spark, w, _Cut(str(dec_dir)), data_schema=DATA_SCHEMA)
    shutil.rmtree(dec_dir)
    removed = table.filter(pc.equal(table["decision"], REMOVED))["reason"].to_pylist()
    want = (table.num_rows - len(removed), dict(Counter(removed)))
    if (written.n_kept, written.removed_reasons) != want:
        raise RuntimeError(
            f"adapt accounting mismatch: decided (kept, removed) {want}, wrote "
            f"{(written.n_kept, written.removed_reasons)}"
        )
    return written


# --- the job ---------------------------------------------------------------------------------


def run_adapt(
    spark: SparkSession,
    cfg: PipelineConfig,
    inputs: Mapping[str, JobResult],
    key: str,
    say: Callable[[str], None],
) -> JobResult:
    """Select the budget with Adapt-infty (see the module docstring and docs/adapt.md)."""
    from curamix.device import resolve_device
    from curamix.pipelines.rds import draw_proxy_sample
    from curamix.proxy.perplexity import save_proxy, train_reference_proxy
    from curamix.selectors.adapt import AdaptSelector
    from curamix.selectors.rds import ProxyLMEncoder

    ac = _section(cfg)
    ps = PoolStage(STAGE, cfg, inputs["pool"], key, say)
    with ps.timed("read_s"):
        pool_ids, domains, sizes = ps.read_ids()
    n_pool = len(pool_ids)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    part_ids = [pool_ids[offsets[i] : offsets[i + 1]].tolist() for i in range(len(sizes))]
    budget, budget_src = resolve_count(ac.budget, ac.budget_fraction, n_pool, "budget", 0.1)
    keep, keep_src = resolve_count(ac.prune_budget, ac.prune_fraction, n_pool, "prune_budget", None)
    assert budget is not None
    if keep is not None and keep < budget:
        raise ConfigError(
            f"adapt: the pruning keeps {keep} documents ({keep_src}), fewer than the budget "
            f"of {budget} ({budget_src}) to select from them"
        )
    if ac.n_clusters > n_pool:
        raise ConfigError(
            f"adapt.n_clusters={ac.n_clusters} is larger than the pool ({n_pool} documents)"
        )
    engine = choose_engine(ac.engine, n_pool, ac.local_max_docs)
    run_spark = None if engine == "local" else spark
    say(
        f"adapt: {n_pool} documents of {ps.source}, budget {budget} ({budget_src}), pruning "
        f"{'to ' + str(keep) if keep is not None else 'off'} ({keep_src}), {ac.n_clusters} "
        f"clusters, {engine} engine"
    )
    with stage_writer(cfg.run_dir, STAGE, key) as w:
        p = ac.proxy
        with ps.timed("proxy_s"):
            sample = draw_proxy_sample(
                run_spark, ps.parts, part_ids, cfg.seed, min(p.sample, n_pool)
            )
            say(
                f"adapt: training a {p.model} proxy LM on {len(sample)} pool documents "
                f"({p.total_tokens:,} tokens, vocab {p.vocab_size}, seq_len {p.seq_len})"
            )
            model, tok = train_reference_proxy(sample, p, cfg.seed)
            save_proxy(model, tok, w.path("proxy"))
            model = model.to(resolve_device(ac.device)).eval()
        say(f"adapt: gradients and scores of {n_pool} documents ({len(ps.parts)} parts, {engine})")
        with ps.timed("features_s"):
            bcast = None
            if run_spark is None:
                computer = FeatureComputer(ac, cfg.seed, local=(model, tok))
            else:
                payload = ProxyLMEncoder(model, tok).to_payload()
                bcast = spark.sparkContext.broadcast(payload)
                computer = FeatureComputer(ac, cfg.seed, payload=bcast)
            feats = compute_features(run_spark, ps.parts, computer)
            if bcast is not None:
                bcast.unpersist()
        if feats["id"].to_pylist() != pool_ids.tolist():
            raise RuntimeError("adapt: the features do not follow the pool's documents")
        n_tokens = feats["n_tokens"].to_numpy()
        scores = {s: feats[s].to_numpy(zero_copy_only=False) for s in ("log_ppl", "el2n", "grand")}
        vectors = (
            feats["grad"].combine_chunks().flatten().to_numpy().reshape(n_pool, ac.proj_dim)
            if n_pool
            else np.zeros((0, ac.proj_dim), np.float32)
        )
        valid = np.flatnonzero(n_tokens >= 2)
        n_valid = len(valid)
        for what, n in (("budget", budget), ("prune_budget", keep), ("n_clusters", ac.n_clusters)):
            if n is not None and n > n_valid:
                raise ConfigError(
                    f"adapt: {what}={n} is larger than the {n_valid} pool documents with at "
                    f"least 2 tokens to score (of {n_pool})"
                )
        sel = AdaptSelector(
            n_clusters=ac.n_clusters,
            scorers=list(ac.scorers),
            n_bins=ac.n_bins,
            entropy_bins=ac.entropy_bins,
            entropy_window=ac.entropy_window,
            trim=ac.trim,
            random_state=cfg.seed,
        )
        with ps.timed("cluster_s"):
            sel.fit(vectors[valid])
        pruned: PruneResult | None = None
        with ps.timed("select_s"):
            if keep is not None:
                pruned = sel.prune(keep)
            vs = {s: v[valid] for s, v in scores.items()}
            chosen = sel.select(vs, budget, None if pruned is None else pruned.positions)
        outcome = _outcomes(n_pool, valid, sel.labels_, scores, pruned, chosen)
        manifest = _manifest(ac, sel, pruned, chosen, outcome, (pool_ids, domains), n_valid)
        manifest["adapt"] |= {
            "engine": engine,
            "budget": {"value": budget, "source": budget_src},
            "prune": None if keep is None else {"value": keep, "source": keep_src},
        }
        _write_scores(w.path("scores.parquet"), pool_ids, domains, n_tokens, scores, outcome)
        say(f"adapt: writing {len(chosen.positions)} selected documents and the ledger")
        with ps.timed("write_s"):
            table = _decisions_table(pool_ids, outcome)
            written = write_cut(ps, run_spark, w, table, np.asarray(sizes, dtype=np.int64))
        if written.n_kept != len(chosen.positions):
            raise RuntimeError(
                f"adapt: wrote {written.n_kept} documents, chose {len(chosen.positions)}"
            )
        per_domain = {
            d: {
                **{k: e[k] for k in ("in", "kept", "removed", "tokens_in", "tokens_kept")},
                "pool_share": e["in"] / max(written.n_in, 1),
                "selected_share": e["kept"] / max(written.n_kept, 1),
            }
            for d, e in written.per_domain.items()
        }
        manifest["counts"] = {
            **ps.counts(written),
            "tokens_in": written.tokens_in,
            "tokens_kept": written.tokens_kept,
            "per_domain": per_domain,
        }
        result = ps.commit(w, written, manifest, _report)
    say(f"adapt: kept {written.n_kept} of {n_pool} documents -> {result.path}")
    return result


class _Outcome:
    """Per pool document (pool order): cluster (-1: unscored), the cluster scorer's value,
    redundancy and nearest earlier document, pruned / selected flags, selection order."""

    def __init__(self, n: int):
        self.cluster = np.full(n, -1, dtype=np.int64)
        self.scorer = np.full(n, None, dtype=object)
        self.score = np.full(n, np.nan)
        self.max_sim = np.full(n, np.nan)
        self.nearest = np.full(n, -1, dtype=np.int64)
        self.pruned = np.zeros(n, dtype=bool)
        self.selected = np.zeros(n, dtype=bool)
        self.order = np.full(n, -1, dtype=np.int64)
        self.valid = np.zeros(n, dtype=bool)


def _outcomes(
    n_pool: int,
    valid: np.ndarray,
    labels: np.ndarray,
    scores: dict[str, np.ndarray],
    pruned: PruneResult | None,
    chosen: AdaptSelection,
) -> _Outcome:
    o = _Outcome(n_pool)
    o.valid[valid] = True
    o.cluster[valid] = labels
    names = np.asarray(chosen.scorer, dtype=object)
    o.scorer[valid] = names[labels]
    for s, v in scores.items():
        mine = o.valid & (o.scorer == s)
        o.score[mine] = v[mine]
    if pruned is not None:
        o.max_sim[valid] = pruned.max_sim
        near = pruned.nearest
        o.nearest[valid] = np.where(near >= 0, valid[np.maximum(near, 0)], -1)
        kept = np.zeros(len(valid), dtype=bool)
        kept[pruned.positions] = True
        o.pruned[valid[~kept]] = True
    o.selected[valid[chosen.positions]] = True
    o.order[valid[chosen.positions]] = np.arange(len(chosen.positions))
    return o


def _decisions_table(pool_ids: np.ndarray, o: _Outcome) -> pa.Table:
    """One decision per pool document with the data columns of the selected ones."""
    n = len(pool_ids)
    c = o.cluster.astype(str)
    reason = np.full(n, TOO_SHORT, dtype=object)
    reason[o.valid] = np.char.add(f"{NOT_SAMPLED} cluster=", c[o.valid]).astype(object)
    reason[o.pruned] = np.char.add(f"{PRUNED} cluster=", c[o.pruned]).astype(object)
    reason[o.selected] = np.char.add(KEPT_PREFIX, c[o.selected]).astype(object)
    score = np.where(o.pruned, o.max_sim, o.score)
    ref = np.full(n, None, dtype=object)
    has = o.pruned & (o.nearest >= 0)
    ref[has] = pool_ids[o.nearest[has]]
    t = decisions_table(pool_ids.tolist(), o.selected, reason, score, ref)
    return t.append_column("cluster", pa.array(np.where(o.valid, o.cluster, -1), pa.int64())) \
        .append_column("data_score", pa.array(o.score, pa.float64(), from_pandas=True)) \
        .append_column("scorer", pa.array(o.scorer.tolist(), pa.string())) \
        .cast(_CUT_SCHEMA)  # fmt: skip


def _write_scores(
    path: Path,
    pool_ids: np.ndarray,
    domains: np.ndarray,
    n_tokens: np.ndarray,
    scores: dict[str, np.ndarray],
    o: _Outcome,
) -> None:
    cols: dict[str, Any] = {
        "id": pool_ids.tolist(),
        "domain": domains.tolist(),
        "n_tokens": n_tokens,
        "cluster": o.cluster,
        **{s: v for s, v in scores.items()},
        "scorer": pa.array(o.scorer.tolist(), pa.string()),
        "max_sim": pa.array(o.max_sim, pa.float64(), from_pandas=True),
        "pruned": o.pruned,
        "selected": o.selected,
        "selected_order": o.order,
    }
    pq.write_table(pa.table(cols), path)


def _manifest(
    ac: AdaptConfig,
    sel: Any,
    pruned: PruneResult | None,
    chosen: AdaptSelection,
    o: _Outcome,
    pool: tuple[np.ndarray, np.ndarray],
    n_valid: int,
) -> dict[str, Any]:
    """The stage's own fields: per cluster its size, pruning, budget, CCS draw, kept count,
    scorer and entropies, and its main domains."""
    _, domains = pool
    k = ac.n_clusters
    labels = sel.labels_
    sizes = np.bincount(labels, minlength=k)
    clusters = []
    for i in range(k):
        mine = o.cluster == i
        dom = Counter(domains[mine].tolist()).most_common(TOP_DOMAINS)
        clusters.append(
            {
                "cluster": i,
                "size": int(sizes[i]),
                "pruned": int(np.count_nonzero(o.pruned & mine)),
                "prune_budget": None if pruned is None else int(pruned.cluster_budget[i]),
                "budget": int(chosen.cluster_budget[i]),
                "drawn": int(chosen.sampled[i]),
                "kept": int(np.count_nonzero(o.selected & mine)),
                "scorer": chosen.scorer[i] or None,
                "entropy": {s: float(chosen.entropy[i, j]) for j, s in enumerate(sel.scorers)},
                "domains": {d: n for d, n in dom},
            }
        )
    return {
        "adapt": {
            "selected": int(o.selected.sum()),
            "scored": n_valid,
            "too_short": int((~o.valid).sum()),
            "pruned": int(o.pruned.sum()),
            "proj_dim": ac.proj_dim,
            "layer": ac.layer,
            "scorer_counts": dict(Counter(s for s in chosen.scorer if s)),
            "clusters": clusters,
        },
        "outputs": {"scores": "scores.parquet", "proxy": "proxy"},
    }


def _report(m: dict[str, Any]) -> str:
    c, a, cf = m["counts"], m["adapt"], m["config"]
    b, pr = a["budget"], a["prune"]
    scorers = cf["scorers"]
    prune_line = (
        f"Permanent pruning first: kept {pr['value']} documents ({pr['source']}), the least "
        f"redundant of each cluster (max cosine to an earlier document); {a['pruned']} pruned."
        if pr
        else "No permanent pruning (set prune_fraction or prune_budget)."
    )
    lines = [
        "# Adapt-infty report",
        "",
        f"{a['scored']} documents scored by a `{cf['proxy']['model']}` proxy (gradients of "
        f"transformer block {a['layer']} (-1: the last), projected to {a['proj_dim']} "
        f"dimensions), {a['too_short']} too short to score; {cf['n_clusters']} pseudo-skill "
        f"clusters (MiniBatchKMeans); {a['engine']} engine.",
        "",
        prune_line,
        "",
        f"Budget {b['value']} documents ({b['source']}), split equally over the clusters "
        f"(small ones give all they have); each cluster draws its share by CCS ({cf['n_bins']} "
        f"bins between its 5th and 95th percentiles) over the scorer with the highest "
        f"{cf['entropy_bins']}-bin histogram entropy (window `{cf['entropy_window']}`). Kept "
        f"{c['kept']} of {c['in']} documents and {c['tokens_kept']} of {c['tokens_in']} words.",
        "",
        "## Clusters",
        "",
        *md_table(
            ["cluster", "size", "pruned", "budget", "CCS drew", "kept", "scorer"]
            + [f"H({s})" for s in scorers],
            (
                (
                    x["cluster"],
                    x["size"],
                    x["pruned"],
                    x["budget"],
                    x["drawn"],
                    x["kept"],
                    x["scorer"] or "-",
                    *(f"{x['entropy'][s]:.3f}" for s in scorers),
                )
                for x in a["clusters"]
            ),
        ),
        "",
        "Chosen scorers: "
        + (", ".join(f"{s} {n}" for s, n in sorted(a["scorer_counts"].items())) or "none")
        + ".",
        "",
        "## Main domains per cluster",
        "",
        *md_table(
            ["cluster", "domains (documents)"],
            (
                (x["cluster"], ", ".join(f"{d} {n}" for d, n in x["domains"].items()) or "-")
                for x in a["clusters"]
            ),
        ),
        "",
        "## Composition",
        "",
        *composition_table(c["per_domain"]),
        "",
    ]
    return "\n".join(lines)
