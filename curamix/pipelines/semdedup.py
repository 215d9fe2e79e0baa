"""SemDeDup job: remove semantic duplicates of the pool with the embed stage's vectors.

Spark glue over :mod:`curamix.filters.semdedup` (Abbas et al. 2023, arXiv:2303.09540), one
k-means cluster per task; the driver holds the centroids and a bounded training sample, never
the pool's ids or vectors:

1. one Spark task per pool part (the stage before semdedup: dedup's output when the run
   dedups, else ingest's) gives its ids, domains, rows and each id's hash of (seed, id); Spark
   joins them with the embed stage's vectors (documents without one are kept,
   ``not_embedded``);
2. the centroids: spherical k-means (:func:`~curamix.embeddings.index.spherical_kmeans`,
   seeded; ``scope: local`` clusters each domain on its own, with ``n_clusters`` shared in
   proportion to the domains' sizes) trained on the driver on the ``kmeans_sample`` embedded
   documents with the smallest hash (default 256 per cluster, the most FAISS's k-means trains
   on; every document when the pool is smaller), in id order, as the whole pool would be;
3. assignment, one task per pool part: each document joins its nearest centroid
   (:func:`~curamix.filters.semdedup.assign_to_centroids`, in blocks from the part's first
   row, so the numbers do not depend on the number of workers);
4. one task per cluster (``groupBy(cluster).applyInPandas``): the reference kernel
   (:func:`~curamix.filters.semdedup.semdedup`) on the cluster's documents in id order,
   farthest-from-centroid first with ``keep: far``, each document's max cosine to an earlier
   one in blocked matrix products; removals at ``eps`` with chains resolved to a kept twin.
   The decisions go to ``_clusters/`` by pool part; the report's counts (per domain, at every
   ``eps_report`` value, cluster sizes, the examples) are Spark aggregates of it;
5. one Spark task per pool part writes its kept documents (``data/``, the document schema) and
   its ledger from its decisions, so the output does not depend on the number of workers.

With the whole pool in the sample (small pools) the clusters, and so the decisions, are those
of clustering every vector on the driver (:func:`cluster_pool`, the stage's former path).

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curamix.config import PipelineConfig, config_hash
from curamix.io.store import JobResult, stage_writer, write_text_atomic
from curamix.pipelines.dedup import DedupGateError
from curamix.pipelines.parts import map_parts, sample_hash
from curamix.pipelines.pool import Decisions, PoolStage, decisions_table, md_table

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

STAGE = "semdedup"
SEMANTIC_DUPLICATE, NOT_EMBEDDED = "semantic_duplicate", "not_embedded"
N_EXAMPLES = 10
CLUSTERS = "_clusters"
"""The per-cluster decisions by pool part, inside the stage's temporary folder."""
POOL_SCHEMA = pa.schema(
    [
        ("part", pa.int64()),
        ("row", pa.int64()),
        ("id", pa.string()),
        ("domain", pa.string()),
        ("h", pa.int64()),
    ]
)
ASSIGNED = (
    "part long, row long, id string, domain string, vector array<float>, cluster long, cos float"
)
RESULT = (
    "part long, row long, id string, domain string, cluster long, max_cos float, "
    "removed boolean, ref_id string, ref_domain string, ref_cos double"
)
TEXT_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string())])


class SemDedupGateError(DedupGateError):
    """A safety gate stopped the stage (a domain would lose too much of its data); a
    :class:`DedupGateError`, so the flow does not retry it and the CLI exits 3."""


def semdedup_key(cfg: PipelineConfig, inputs: Mapping[str, JobResult]) -> str:
    """Config, the pool's and the embed stage's manifests, and the seed. ``kmeans_sample``
    counts only when set, so stages from before it existed keep their key."""
    assert cfg.semdedup is not None
    pool, embed = inputs["pool"], inputs["embed"]
    exclude = {"kmeans_sample"} if cfg.semdedup.kmeans_sample is None else set()
    section = cfg.semdedup.model_dump(mode="json", exclude=exclude)
    return config_hash(STAGE, section, pool.manifest_hash, embed.manifest_hash, cfg.seed)


def default_clusters(n: int) -> int:
    """Default k-means clusters for ``n`` documents: about sqrt(n / 2), at least 1."""
    return max(1, round(math.sqrt(n / 2)))


def group_clusters(sizes: Mapping[str, int], scope: str, n_clusters: int | None) -> dict[str, int]:
    """Clusters per k-means group (``""`` for ``global``, each domain for ``local``): the
    default ~sqrt(m / 2) of a group's ``m`` embedded documents, or ``n_clusters`` (shared in
    proportion to the domains' sizes with ``local``); at most ``m``."""
    n = sum(sizes.values())
    groups = {"": n} if scope == "global" else dict(sorted(sizes.items()))
    out = {}
    for g, m in groups.items():
        if m == 0:
            continue
        k = default_clusters(m) if n_clusters is None else max(1, round(n_clusters * m / n))
        out[g] = min(k, m)
    return out


def _texts_part(path: str, ids: set[str]) -> pa.Table:
    t = pq.read_table(path, columns=["id", "text"])
    keep = pa.array([i in ids for i in t["id"].to_pylist()], pa.bool_())
    return t.filter(keep).cast(TEXT_SCHEMA)


def fetch_texts(
    parts: Sequence[str], ids: Sequence[str], chars: int = 200, spark: SparkSession | None = None
) -> dict[str, str]:
    """The first ``chars`` characters of the texts of a few ``ids`` (for report examples), one
    task per part (``spark=None``: the parts one by one here)."""
    want = set(ids)
    if spark is None:
        t = pa.concat_tables([TEXT_SCHEMA.empty_table()] + [_texts_part(p, want) for p in parts])
    else:
        t = map_parts(spark, list(parts), lambda _i, p: _texts_part(p, want), TEXT_SCHEMA)
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


# --- the Spark side ----------------------------------------------------------------------------


def _pool_rows(path: str, index: int, seed: int) -> pa.Table:
    """A pool part's (part, row, id, domain, hash of (seed, id))."""
    t = pq.read_table(path, columns=["id", "domain"])
    ids = t["id"].to_pylist()
    return pa.table(
        {
            "part": np.full(len(ids), index, dtype=np.int64),
            "row": np.arange(len(ids), dtype=np.int64),
            "id": t["id"],
            "domain": t["domain"],
            "h": np.fromiter((sample_hash(seed, i) for i in ids), np.int64, len(ids)),
        },
        schema=POOL_SCHEMA,
    )


def _apply(batches: Iterator[pa.RecordBatch], fn: Callable[[int, str], pa.Table]) -> Iterator[Any]:
    for batch in batches:
        for idx, path in zip(
            batch.column("idx").to_pylist(), batch.column("payload").to_pylist(), strict=True
        ):
            yield from fn(idx, path).to_batches()


def parts_frame(
    spark: SparkSession, parts: list[str], fn: Callable[[int, str], pa.Table], schema: pa.Schema
) -> DataFrame:
    """A DataFrame of ``fn(i, parts[i])`` for every part, each part its own Spark task (as
    :func:`~curamix.pipelines.parts.map_parts`, left on the executors)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    df = spark.sparkContext.parallelize(list(enumerate(parts)), numSlices=max(1, len(parts)))
    return df.toDF("idx long, payload string").mapInArrow(
        lambda it: _apply(it, fn), from_arrow_schema(schema)
    )


def _vectors(column: pd.Series) -> np.ndarray:
    return np.stack(column.to_numpy()).astype(np.float32, copy=False)


def assign_part(
    pdf: pd.DataFrame, centroids: Mapping[str, tuple[int, np.ndarray]], scope: str
) -> pd.DataFrame:
    """One pool part's embedded documents (in row order) -> their cluster and cosine to its
    centroid; ``centroids``: group -> (label offset, centroids)."""
    from curamix.filters.semdedup import assign_to_centroids

    pdf = pdf.sort_values("row", kind="stable").reset_index(drop=True)
    assign = np.zeros(len(pdf), dtype=np.int64)
    cos = np.zeros(len(pdf), dtype=np.float32)
    groups = np.zeros(len(pdf), dtype=object) if scope == "global" else pdf["domain"].to_numpy()
    if scope == "global":
        groups[:] = ""
    x = _vectors(pdf["vector"]) if len(pdf) else np.zeros((0, 1), np.float32)
    for g in sorted(set(groups.tolist())):
        idx = np.flatnonzero(groups == g)
        offset, c = centroids[g]
        a, cs = assign_to_centroids(x[idx], c)
        assign[idx], cos[idx] = a + offset, cs
    return pdf.assign(cluster=assign, cos=cos)


def cluster_part(pdf: pd.DataFrame, eps: float, keep: str) -> pd.DataFrame:
    """One cluster's documents -> the reference kernel's decisions: sorted by id (the order of
    the in-driver kernel's positions), each document's max cosine to an earlier one of the
    cluster (farthest from the centroid first with ``keep="far"``), removed above ``1 - eps``
    with its kept twin (chains resolved) and their cosine."""
    import pandas as pd

    from curamix.filters.semdedup import semdedup

    pdf = pdf.sort_values("id", kind="stable").reset_index(drop=True)
    x = _vectors(pdf["vector"])
    n = len(pdf)
    res = semdedup(x, np.zeros(n, np.int64), pdf["cos"].to_numpy(np.float32), eps, keep)  # type: ignore[arg-type]
    rem = np.flatnonzero(res.removed)
    ids, doms = pdf["id"].to_numpy(dtype=object), pdf["domain"].to_numpy(dtype=object)
    ref_id = np.full(n, None, dtype=object)
    ref_domain = np.full(n, None, dtype=object)
    ref_cos = np.full(n, np.nan)
    ref_id[rem], ref_domain[rem] = ids[res.ref[rem]], doms[res.ref[rem]]
    ref_cos[rem] = np.einsum("ij,ij->i", x[rem], x[res.ref[rem]])
    return pd.DataFrame(
        {
            "part": pdf["part"].to_numpy(np.int64),
            "row": pdf["row"].to_numpy(np.int64),
            "id": ids,
            "domain": doms,
            "cluster": pdf["cluster"].to_numpy(np.int64),
            "max_cos": res.max_cos.astype(np.float32),
            "removed": res.removed,
            "ref_id": ref_id,
            "ref_domain": ref_domain,
            "ref_cos": ref_cos,
        }
    )


class FromClusters:
    """``decide`` for the writing tasks: a part's decisions from ``_clusters/part=<i>/``
    (embedded documents), ``not_embedded`` for the others; read once per part."""

    def __init__(self, folder: str):
        self.folder = folder
        self._cache: tuple[int, pa.Table] | None = None

    def _load(self, index: int) -> pa.Table:
        sub = os.path.join(self.folder, f"part={index}")
        names = (
            sorted(f for f in os.listdir(sub) if f.endswith(".parquet"))
            if os.path.isdir(sub)
            else []
        )
        cols = ["row", "id", "max_cos", "removed", "ref_id"]
        tables = [pq.read_table(os.path.join(sub, f), columns=cols) for f in names]
        if not tables:
            return pa.table({"row": pa.array([], pa.int64())})
        return pa.concat_tables(tables).sort_by("row")

    def __call__(self, index: int, docs: pa.Table, start: int) -> Decisions:
        if self._cache is None or self._cache[0] != index:
            self._cache = (index, self._load(index))
        t = self._cache[1]
        rows = t["row"].to_numpy()
        want = np.arange(start, start + docs.num_rows)
        pos = np.minimum(np.searchsorted(rows, want), max(len(rows) - 1, 0))
        has = (rows[pos] == want) if len(rows) else np.zeros(len(want), dtype=bool)
        ids = docs["id"].to_pylist()
        n = len(ids)
        removed = np.zeros(n, dtype=bool)
        score = np.full(n, np.nan)
        ref = np.full(n, None, dtype=object)
        if has.any():
            p = pos[has]
            got = np.asarray(t["id"].to_pylist(), dtype=object)[p]
            if list(got) != [ids[i] for i in np.flatnonzero(has)]:
                raise RuntimeError(f"semdedup: the decisions of part {index} do not match its rows")
            removed[has] = t["removed"].to_numpy(zero_copy_only=False)[p]
            score[has] = t["max_cos"].to_numpy(zero_copy_only=False)[p]
            ref[has] = np.asarray(t["ref_id"].to_pylist(), dtype=object)[p]
        reason = np.full(n, None, dtype=object)
        reason[removed] = SEMANTIC_DUPLICATE
        reason[~has] = NOT_EMBEDDED
        ref[~removed] = None
        return Decisions(decisions_table(ids, ~removed, reason, score, ref))


# --- the job ------------------------------------------------------------------------------------


KMEANS_SAMPLE_MARGIN = 1.1
"""The k-means sample's first draw takes this many times the share of each group it needs."""


def draw_kmeans_sample(
    joined: DataFrame,
    train: Mapping[str, int],
    sizes: Mapping[str, int],
    say: Callable[[str], None] = lambda _m: None,
) -> pa.Table:
    """``g``, ``id``, ``vector`` of the ``train[g]`` documents of each group with the smallest
    ``(h, id)`` (h = hash of (seed, id)): the same documents for any partitioning. Spark keeps
    the documents whose hash is below a per-group limit (about ``KMEANS_SAMPLE_MARGIN`` times
    the share needed, doubled while a group falls short), so only about the sample reaches the
    driver, which keeps the smallest keys."""
    from functools import reduce

    from pyspark.sql import functions as F

    share = {g: min(1.0, KMEANS_SAMPLE_MARGIN * train[g] / max(sizes[g], 1)) for g in train}
    while True:
        conds = [
            (F.col("g") == g) & (F.col("h") < F.lit(int(f * (1 << 63))))
            if f < 1
            else F.col("g") == g
            for g, f in share.items()
        ]
        t = joined.filter(reduce(lambda a, b: a | b, conds)).select("g", "h", "id", "vector")
        got = t.toArrow()
        counts = dict.fromkeys(train, 0)
        for g in got["g"].to_pylist():
            counts[g] += 1
        short = [g for g in train if counts[g] < train[g] and share[g] < 1]
        if not short:
            break
        say(f"semdedup: the k-means sample of {short} fell short; drawing again")
        share.update({g: min(1.0, share[g] * 2) for g in short})
    got = got.sort_by([("g", "ascending"), ("h", "ascending"), ("id", "ascending")])
    g = np.asarray(got["g"].to_pylist(), dtype=object)
    keep = np.zeros(len(g), dtype=bool)
    for name, m in train.items():
        keep[np.flatnonzero(g == name)[:m]] = True
    return got.filter(pa.array(keep)).select(["g", "id", "vector"])


def train_centroids(
    sample: pa.Table, k: Mapping[str, int], niter: int, seed: int, gpu: str
) -> dict[str, tuple[int, np.ndarray]]:
    """Spherical k-means per group on its sampled documents in id order (``sample``: ``g``,
    ``id``, ``vector``): group -> (label offset, centroids); groups in sorted order."""
    from curamix.embeddings.index import spherical_kmeans

    out: dict[str, tuple[int, np.ndarray]] = {}
    total = 0
    t = sample.sort_by([("g", "ascending"), ("id", "ascending")])
    g = np.asarray(t["g"].to_pylist(), dtype=object)
    vec = t["vector"].combine_chunks()
    x = vec.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    x = x.reshape(len(t), -1) if len(t) else x.reshape(0, 1)
    for name in sorted(k):
        idx = np.flatnonzero(g == name)
        c, _, _ = spherical_kmeans(
            np.ascontiguousarray(x[idx]), k[name], niter=niter, seed=seed, gpu=gpu
        )
        out[name] = (total, c)
        total += k[name]
    return out


def run_semdedup(
    spark: SparkSession,
    cfg: PipelineConfig,
    inputs: Mapping[str, JobResult],
    key: str,
    say: Callable[[str], None],
) -> JobResult:
    """Remove the pool's semantic duplicates (SemDeDup) with the embed stage's vectors, one
    k-means cluster per Spark task."""
    from pyspark.sql import functions as F

    assert cfg.semdedup is not None
    sc = cfg.semdedup
    ps = PoolStage(STAGE, cfg, inputs["pool"], key, say)
    seed = cfg.seed
    pool_df = parts_frame(spark, ps.parts, lambda i, p: _pool_rows(p, i, seed), POOL_SCHEMA)
    embedded = spark.read.parquet(str(inputs["embed"].path / "embeddings"))
    group = F.lit("") if sc.scope == "global" else F.col("domain")
    joined = pool_df.join(embedded.select("id", "vector"), "id").withColumn("g", group).persist()
    try:
        return _run(spark, cfg, ps, inputs["embed"], joined, pool_df, embedded, key, say)
    finally:
        joined.unpersist()


def _run(
    spark: SparkSession,
    cfg: PipelineConfig,
    ps: PoolStage,
    embed: JobResult,
    joined: DataFrame,
    pool_df: DataFrame,
    embedded_ids: DataFrame,
    key: str,
    say: Callable[[str], None],
) -> JobResult:
    """:func:`run_semdedup` once the pool and its vectors are joined (``joined``: part, row,
    id, domain, h, vector and the k-means group g; ``embedded_ids``: the embed stage's ids)."""
    from curamix.filters.semdedup import kmeans_train_size

    assert cfg.semdedup is not None
    sc, source, seed = cfg.semdedup, ps.source, cfg.seed
    gpu = cfg.embed.index.gpu if cfg.embed is not None else "auto"
    with ps.timed("read_s"):
        pool_counts, emb_counts = _counts(pool_df, embedded_ids)
    n_in, n_emb = sum(pool_counts.values()), sum(emb_counts.values())
    k = group_clusters(emb_counts, sc.scope, sc.n_clusters)
    sizes = {"": n_emb} if sc.scope == "global" else emb_counts
    train = {g: kmeans_train_size(sizes[g], kg, sc.kmeans_sample) for g, kg in k.items()}
    say(
        f"semdedup: {n_emb} of {n_in} documents of {source} have an embedding; spherical k-means "
        f"({sc.scope} scope, {sum(k.values())} clusters) trained on {sum(train.values())} of "
        "them, then max cosine within clusters, one task per cluster"
    )
    eps_list = sorted(set(sc.eps_report) | {sc.eps})
    with stage_writer(cfg.run_dir, STAGE, key) as w:
        folder = str(w.path(CLUSTERS))
        with ps.timed("kmeans_s"):
            sample = draw_kmeans_sample(joined, train, sizes, say) if k else None
            centroids = train_centroids(sample, k, sc.niter, seed, gpu) if k else {}
        with ps.timed("semdedup_s"):
            if k:
                scope, eps, keep = sc.scope, sc.eps, sc.keep
                assigned = (
                    joined.drop("g", "h")
                    .groupBy("part")
                    .applyInPandas(lambda pdf: assign_part(pdf, centroids, scope), ASSIGNED)
                )
                result = assigned.groupBy("cluster").applyInPandas(
                    lambda pdf: cluster_part(pdf, eps, keep), RESULT
                )
                result.write.partitionBy("part").parquet(folder)
        summary = _summary(spark, folder, eps_list, sc.eps, pool_counts, emb_counts, k)
        examples = summary.pop("examples_rows")
        texts = fetch_texts(
            ps.parts, [r["id"] for r in examples] + [r["ref_id"] for r in examples], spark=spark
        )
        manifest = _manifest(sc, embed, summary, examples, texts, train)
        n_removed = manifest["counts"]["removed_total"]
        over = manifest["gates"]["domains_over_rate"]
        if over:
            worst = ", ".join(f"{d}: {r:.1%}" for d, r in over.items())
            kept_report = os.path.join(cfg.run_dir, f"{STAGE}-{key}.gate-failed.md")
            counts = manifest.pop("counts")
            counts.pop("removed_total")
            gate = {
                "config": sc.model_dump(mode="json"),
                **manifest,
                "counts": {"in": n_in, "kept": n_in - n_removed, "removed": n_removed, **counts},
            }
            write_text_atomic(kept_report, _report(gate))
            raise SemDedupGateError(
                f"semdedup would remove more than semdedup.max_removal_rate="
                f"{sc.max_removal_rate:.0%} of domain(s) {worst} (eps={sc.eps}). See "
                f"{kept_report}; lower semdedup.eps or raise semdedup.max_removal_rate to accept."
            )
        say(f"semdedup: writing kept documents and the ledger ({len(ps.parts)} tasks)")
        with ps.timed("write_s"):
            written = ps.write(spark, w, FromClusters(folder))
        _remove_tree(folder)
        counts = manifest.pop("counts")
        counts.pop("removed_total")
        manifest["counts"] = {**ps.counts(written, reasons=(SEMANTIC_DUPLICATE,)), **counts}
        if written.removed_reasons.get(SEMANTIC_DUPLICATE, 0) != n_removed:
            raise RuntimeError(
                f"semdedup accounting mismatch: decided {n_removed} removals, wrote "
                f"{written.removed_reasons}"
            )
        result_ = ps.commit(w, written, manifest, _report)
    say(
        f"semdedup: kept {n_in - n_removed} of {n_in} documents ({n_removed} semantic "
        f"duplicates at eps={sc.eps}) -> {result_.path}"
    )
    return result_


def _counts(pool_df: DataFrame, embedded_ids: DataFrame) -> tuple[dict[str, int], dict[str, int]]:
    """Documents per domain of the pool, and of its documents with an embedding (one job)."""
    from pyspark.sql import functions as F

    has = embedded_ids.select("id", F.lit(1).alias("has"))
    rows = (
        pool_df.join(has, "id", "left")
        .groupBy("domain")
        .agg(F.count("*").alias("n"), F.count("has").alias("e"))
        .collect()
    )
    pool = {r["domain"]: int(r["n"]) for r in rows}
    return pool, {r["domain"]: int(r["e"]) for r in rows if r["e"]}


def _remove_tree(folder: str) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def _summary(
    spark: SparkSession,
    folder: str,
    eps_list: list[float],
    eps: float,
    pool_counts: Mapping[str, int],
    emb_counts: Mapping[str, int],
    k: Mapping[str, int],
) -> dict[str, Any]:
    """The report's numbers as Spark aggregates of the per-cluster decisions: per domain the
    removals (also at every ``eps_list`` value), cross-domain and chained removals, the
    cluster sizes and the removed documents closest to the threshold."""
    from pyspark.sql import functions as F

    per_domain = {d: {"removed": 0, "curve": [0] * len(eps_list)} for d in pool_counts}
    cross = chained = 0
    sizes: list[int] = []
    examples: list[dict[str, Any]] = []
    if k:
        res = spark.read.schema(RESULT.replace("part long, ", "") + ", part long").parquet(folder)
        removed = F.col("removed")
        aggs = [
            F.sum(removed.cast("long")).alias("removed"),
            F.sum((removed & (F.col("domain") != F.col("ref_domain"))).cast("long")).alias("cross"),
            F.sum((removed & (F.col("ref_cos") <= 1.0 - eps)).cast("long")).alias("chained"),
            *(
                F.sum((F.col("max_cos").cast("double") > 1.0 - e).cast("long")).alias(f"e{i}")
                for i, e in enumerate(eps_list)
            ),
        ]
        for r in res.groupBy("domain").agg(*aggs).collect():
            e = per_domain[r["domain"]]
            e["removed"] = int(r["removed"])
            e["curve"] = [int(r[f"e{i}"]) for i in range(len(eps_list))]
            cross += int(r["cross"])
            chained += int(r["chained"])
        sizes = [int(r["count"]) for r in res.groupBy("cluster").count().collect()]
        rows = (
            res.filter(removed)
            .orderBy("max_cos", "id")
            .limit(N_EXAMPLES)
            .select("id", "domain", "ref_id", "ref_domain", "max_cos", "ref_cos")
            .collect()
        )
        examples = [r.asDict() for r in rows]
    return {
        "per_domain": per_domain,
        "cross": cross,
        "chained": chained,
        "cluster_sizes": np.asarray(sorted(sizes), dtype=np.int64),
        "n_clusters": int(sum(k.values())),
        "pool_counts": dict(pool_counts),
        "emb_counts": dict(emb_counts),
        "eps_list": eps_list,
        "examples_rows": examples,
    }


def _manifest(
    sc: Any,
    embed: JobResult,
    s: Mapping[str, Any],
    examples: list[dict[str, Any]],
    texts: Mapping[str, str],
    train: Mapping[str, int],
) -> dict[str, Any]:
    """The stage's manifest fields (counts without the written ones) and its gate."""
    eps_list = s["eps_list"]
    n_in = sum(s["pool_counts"].values())
    per_domain: dict[str, dict[str, Any]] = {}
    for d in sorted(s["pool_counts"]):
        n_d, rem = s["pool_counts"][d], s["per_domain"][d]["removed"]
        per_domain[d] = {
            "in": n_d,
            "embedded": int(s["emb_counts"].get(d, 0)),
            "removed": rem,
            "kept": n_d - rem,
            "removal_rate": rem / max(n_d, 1),
        }
    n_removed = sum(e["removed"] for e in per_domain.values())
    curve = [sum(s["per_domain"][d]["curve"][i] for d in per_domain) for i in range(len(eps_list))]
    sizes = s["cluster_sizes"]
    over = {
        d: round(e["removal_rate"], 4)
        for d, e in per_domain.items()
        if e["removal_rate"] > sc.max_removal_rate
    }
    n_emb = sum(s["emb_counts"].values())
    return {
        "inputs": {"manifests": {"embed": embed.manifest_hash}},
        "rule": "max cosine to any earlier document of the cluster (reference code)",
        "clusters": {
            "n": s["n_clusters"],
            "largest": int(sizes.max()) if len(sizes) else 0,
            "median": float(np.median(sizes)) if len(sizes) else 0.0,
            "singletons": int(np.count_nonzero(sizes == 1)),
            "kmeans_trained_on": int(sum(train.values())),
        },
        "counts": {
            "removed_total": n_removed,
            "embedded": n_emb,
            "not_embedded": n_in - n_emb,
            "cross_domain_removed": s["cross"],
            "removed_via_chain": s["chained"],
            "per_domain": per_domain,
        },
        "removal_curve": [
            {
                "eps": e,
                "removed": n,
                "share": n / max(n_in, 1),
                "per_domain": {d: s["per_domain"][d]["curve"][i] for d in per_domain},
            }
            for i, (e, n) in enumerate(zip(eps_list, curve, strict=True))
        ],
        "gates": {"max_removal_rate": sc.max_removal_rate, "domains_over_rate": over},
        "examples": [
            {
                "id": str(x["id"]),
                "domain": str(x["domain"]),
                "ref_id": str(x["ref_id"]),
                "ref_domain": str(x["ref_domain"]),
                "max_cos": round(float(x["max_cos"]), 4),
                "ref_cos": round(float(x["ref_cos"]), 4),
                "text": texts.get(str(x["id"]), ""),
                "ref_text": texts.get(str(x["ref_id"]), ""),
            }
            for x in examples
        ],
    }


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
