"""BETR job: rank a pool sample against benchmark examples, train a cheap text classifier on
the ranking, and keep the pool's best-scored share of tokens.

Spark glue over :mod:`curamix.selectors.betr` (Mizrahi et al. 2025, arXiv:2507.12466):

1. sample: ``betr.sample`` pool documents with the smallest hash of (seed, id), so the sample
   does not depend on partitioning (one Spark task per part returns its smallest keys, a
   second pass fetches the chosen documents); clamped to the pool size with a message;
2. in process: embed the sample and every benchmark TRAIN example (``betr.embed``), rank the
   sample per example through a FAISS index, score = best rank value (``max``) or ``mean``;
   label the top ``positive_fraction`` positive; hold out ``heldout_fraction`` of the sample
   (hash of (seed, id)); balance the rest and train
   :class:`~curamix.selectors.betr.HashedTextClassifier`;
3. the threshold: on the held-out documents' classifier scores, the cut that keeps
   ``keep_tokens`` of their words (or ``F_opt(compute)`` percent);
4. one Spark task per pool part scores its documents with the broadcast classifier and
   writes ``scores/`` (id, domain, score, n_words), ``data/`` (the kept documents) and
   ``ledger/`` (every document: ``kept`` with its score, or ``removed`` with reason
   ``betr_below_threshold`` and its score).

Also written: ``model/`` (classifier weights ``.npy`` + JSON, no pickle), ``sample.parquet``
(the sample's rank scores, labels, split and classifier scores), ``report.md`` and the
manifest. Tokens are whitespace words (the ``n_words`` column) throughout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curamix.config import BETRConfig, ConfigError, PipelineConfig, config_hash
from curamix.io.inputs import expand_reference, read_items
from curamix.io.store import JobResult, stage_writer
from curamix.pipelines.parts import (
    SampleKey,
    in_sample,
    map_parts,
    sample_hash,
    spark_sample_cutoff,
)
from curamix.pipelines.pool import (
    Decisions,
    PoolStage,
    decisions_table,
    md_table,
)
from curamix.selectors.betr import (
    HashedTextClassifier,
    balance_classes,
    binary_metrics,
    hash_unit,
    keep_fraction,
    label_top,
    rank_values,
    token_share_threshold,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

STAGE = "betr"
REMOVED_REASON = "betr_below_threshold"
BATCH = 4096
N_TOP = 5
SNIPPET = 160
SAMPLE_SCHEMA = pa.schema(
    [("id", pa.string()), ("text", pa.string()), ("domain", pa.string()), ("n_words", pa.int64())]
)
SCORES_SCHEMA = pa.schema(
    [("id", pa.string()), ("domain", pa.string()), ("score", pa.float64()), ("n_words", pa.int64())]
)


def betr_key(cfg: PipelineConfig, inputs: Mapping[str, JobResult]) -> str:
    """Config, the pool's manifest, the benchmark files' fingerprints and the seed."""
    assert cfg.betr is not None
    bench = expand_reference(cfg.betr.benchmark_inputs, "betr.benchmark_inputs").fingerprints
    return config_hash(STAGE, cfg.betr, inputs["pool"].manifest_hash, bench, cfg.seed)


def read_benchmarks(bc: BETRConfig) -> tuple[list[tuple[str, str, str]], list[dict]]:
    """``(example id, text, benchmark)`` of every benchmark TRAIN example (benchmark = the
    input's domain, by default the file stem) and the files' fingerprints.

    Raises :class:`~curamix.config.ConfigError` (a ``ValueError``) naming the file when an
    input holds no example."""
    items, fingerprints, empty = read_items(bc.benchmark_inputs, "betr.benchmark_inputs")
    if not items or empty:
        raise ConfigError(
            "betr.benchmark_inputs: no benchmark examples in "
            + ", ".join(empty or [f["path"] for f in fingerprints])
            + " (each record needs a non-empty text)"
        )
    return items, fingerprints


def sample_docs_part(path: str, seed: int, cutoff: SampleKey | None) -> pa.Table:
    """The documents of a part inside the seeded sample that ``cutoff`` bounds."""
    t = pq.read_table(path, columns=SAMPLE_SCHEMA.names)
    return t.filter(pa.array(in_sample(t["id"].to_pylist(), seed, cutoff))).cast(SAMPLE_SCHEMA)


def decide_scores(docs: pa.Table, clf: HashedTextClassifier, threshold: float) -> Decisions:
    """A batch of pool documents: kept when the classifier score reaches ``threshold``, else
    removed (``betr_below_threshold``); ``scores/`` gets every score; summary rows: the
    batch's ``N_TOP`` best-scored documents."""
    ids, domains = docs["id"].to_pylist(), docs["domain"].to_pylist()
    texts = docs["text"].to_pylist()
    scores = clf.decision_function(texts)
    kept = scores >= threshold
    table = decisions_table(ids, kept, np.where(kept, None, REMOVED_REASON), scores)
    out = pa.table(
        {"id": ids, "domain": domains, "score": scores, "n_words": docs["n_words"]},
        schema=SCORES_SCHEMA,
    )
    top = [
        {
            "id": ids[j],
            "domain": domains[j],
            "score": float(scores[j]),
            "snippet": texts[j][:SNIPPET],
        }
        for j in np.argsort(-scores, kind="stable")[:N_TOP]
    ]
    return Decisions(table, outputs={"scores": out}, rows=top)


def draw_sample(
    spark: SparkSession, parts: list[str], seed: int, n: int
) -> tuple[list[str], list[str], list[str], np.ndarray]:
    """(ids, texts, domains, n_words) of the ``n`` pool documents with the smallest hash of
    (seed, id) (:func:`curamix.pipelines.parts.spark_sample_cutoff`, the embed stage's sample),
    in key order: the same sample for any partitioning."""
    cutoff = spark_sample_cutoff(spark, parts, seed, n)
    docs = map_parts(spark, parts, lambda i, p: sample_docs_part(p, seed, cutoff), SAMPLE_SCHEMA)
    rows = sorted(docs.to_pylist(), key=lambda r: (sample_hash(seed, r["id"]), r["id"]))
    return (
        [r["id"] for r in rows],
        [r["text"] for r in rows],
        [r["domain"] for r in rows],
        np.asarray([r["n_words"] for r in rows], dtype=np.int64),
    )


def run_betr(
    spark: SparkSession,
    cfg: PipelineConfig,
    inputs: Mapping[str, JobResult],
    key: str,
    say: Callable[[str], None],
) -> JobResult:
    """Score the pool toward the benchmarks with BETR and keep the best ``keep_tokens`` share
    of its tokens (see the module docstring and docs/betr.md)."""
    from curamix.embeddings.embed import embed_texts
    from curamix.embeddings.index import VectorIndex

    assert cfg.betr is not None
    bc = cfg.betr
    ps = PoolStage(STAGE, cfg, inputs["pool"], key, say)
    pool, source, parts = ps.pool, ps.source, ps.parts
    try:
        keep = keep_fraction(bc.keep_tokens, bc.compute)
    except ValueError as err:
        raise ConfigError(f"betr: {err}") from None
    keep_source = (
        f"compute rule F_opt({bc.compute:g}) = {keep:.2%}"
        if bc.compute is not None
        else ("keep_tokens" if bc.keep_tokens is not None else "default 10%")
    )
    items, bench_fp = read_benchmarks(bc)
    n_pool = int(pool.counts.get("out", 0)) or sum(
        pq.ParquetFile(p).metadata.num_rows for p in parts
    )
    n_sample = min(bc.sample, n_pool)
    if n_sample < bc.sample:
        say(f"betr: sample of {bc.sample} is larger than the pool ({n_pool} documents); using all")
    if n_sample * bc.positive_fraction * (1 - bc.heldout_fraction) < 1 or (
        n_sample * bc.heldout_fraction < 1
    ):
        raise ConfigError(
            f"betr: a sample of {n_sample} documents (pool: {n_pool}) leaves no positive "
            f"training document at positive_fraction={bc.positive_fraction} and "
            f"heldout_fraction={bc.heldout_fraction}; raise betr.sample"
        )
    timings = ps.timings

    say(f"betr: drawing a sample of {n_sample} of {n_pool} documents of {source}")
    t = time.perf_counter()
    ids, texts, domains, n_words = draw_sample(spark, parts, cfg.seed, n_sample)
    timings["sample_s"] = time.perf_counter() - t

    e = bc.embed
    say(f"betr: embedding {len(texts)} documents and {len(items)} benchmark examples ({e.model})")
    t = time.perf_counter()
    emb = dict(
        name=e.model,
        device=e.device,
        max_seq_length=e.max_seq_length,
        batch_size=e.batch_size,
        fp16=e.fp16,
    )
    doc_vecs = embed_texts(texts, **emb)
    ex_vecs = embed_texts([x[1] for x in items], **emb)
    timings["embed_s"] = time.perf_counter() - t

    say("betr: ranking the sample per benchmark example")
    t = time.perf_counter()
    # Ranks need k = every sampled document, above FAISS-GPU's k limit (2048): search on the CPU.
    icfg = e.index.model_copy(update={"gpu": "off"})
    index = VectorIndex.build(doc_vecs, cfg=icfg, metric="ip", seed=cfg.seed)
    bench_names = sorted({b for _, _, b in items})
    best = np.zeros(len(ids))
    total = np.zeros(len(ids))
    per_bench: dict[str, dict[str, Any]] = {}
    for b in bench_names:
        rows = [k for k, x in enumerate(items) if x[2] == b]
        b_max, b_mean = rank_values(doc_vecs, ex_vecs[rows], index=index)
        np.maximum(best, b_max, out=best)
        total += b_mean * len(rows)
        top = np.lexsort((np.arange(len(ids)), -b_mean, -b_max))[:N_TOP]
        per_bench[b] = {
            "examples": len(rows),
            "top": [
                {
                    "id": ids[j],
                    "domain": domains[j],
                    "rank_value": round(float(b_max[j]), 4),
                    "snippet": texts[j][:SNIPPET],
                }
                for j in top
            ],
        }
    mean = total / len(items)
    rank = best if bc.aggregation == "max" else mean
    labels = label_top(
        rank, bc.positive_fraction, tiebreak=mean if bc.aggregation == "max" else best
    )
    heldout = hash_unit(ids, cfg.seed, "betr-heldout") < bc.heldout_fraction
    train_idx = np.flatnonzero(~heldout)
    n_pos_train = int(labels[train_idx].sum())
    if n_pos_train == 0 or n_pos_train == len(train_idx) or heldout.sum() == 0:
        raise ConfigError(
            f"betr: the sample is too small to train and hold out: {len(ids)} documents give "
            f"{n_pos_train} positive of {len(train_idx)} training and {int(heldout.sum())} "
            "held-out documents; raise betr.sample (or positive_fraction / heldout_fraction)"
        )
    bal = train_idx[balance_classes(labels[train_idx], random_state=cfg.seed)]
    timings["rank_s"] = time.perf_counter() - t

    say(f"betr: training the classifier on {len(bal)} balanced documents")
    t = time.perf_counter()
    clf = HashedTextClassifier(num_buckets=bc.num_buckets, epochs=bc.epochs, lr=bc.lr).fit(
        [texts[j] for j in bal], labels[bal], random_state=cfg.seed
    )
    sample_scores = clf.decision_function(texts)
    metrics = binary_metrics(labels[heldout], sample_scores[heldout])
    metrics_train = binary_metrics(labels[bal], sample_scores[bal])
    threshold = token_share_threshold(sample_scores[heldout], n_words[heldout], keep)
    held_kept = sample_scores[heldout] >= threshold
    heldout_share = float(n_words[heldout][held_kept].sum() / max(n_words[heldout].sum(), 1))
    timings["train_s"] = time.perf_counter() - t
    say(
        f"betr: held-out accuracy {metrics['accuracy']:.3f} (balanced "
        f"{metrics['balanced_accuracy']:.3f}, AUC {metrics['auc']:.3f}); threshold "
        f"{threshold:.4f} keeps {heldout_share:.1%} of held-out tokens (target {keep:.1%})"
    )

    with stage_writer(cfg.run_dir, STAGE, key) as w:
        clf.save(w.path("model"))
        in_bal = np.zeros(len(ids), dtype=bool)
        in_bal[bal] = True
        pq.write_table(
            pa.table(
                {
                    "id": ids,
                    "domain": domains,
                    "n_words": n_words,
                    "rank_max": best,
                    "rank_mean": mean,
                    "positive": labels,
                    "heldout": heldout,
                    "trained_on": in_bal,
                    "score": sample_scores,
                }
            ),
            w.path("sample.parquet"),
        )
        say(f"betr: scoring {n_pool} documents in {len(parts)} tasks")
        bcast = spark.sparkContext.broadcast(clf)
        with ps.timed("score_s"):
            written = ps.write(
                spark,
                w,
                lambda _i, docs, _s: decide_scores(docs, bcast.value, threshold),
                outputs=("scores",),
            )
        bcast.unpersist()
        tok_in, tok_kept = written.tokens_in, written.tokens_kept
        per_domain: dict[str, dict[str, Any]] = {}
        for d, c in written.per_domain.items():
            per_domain[d] = {k: c[k] for k in ("in", "kept", "tokens_in", "tokens_kept", "removed")}
            per_domain[d]["token_share_pool"] = c["tokens_in"] / max(tok_in, 1)
            per_domain[d]["token_share_kept"] = c["tokens_kept"] / max(tok_kept, 1)
            per_domain[d]["kept_vs_pool"] = per_domain[d]["token_share_kept"] / max(
                per_domain[d]["token_share_pool"], 1e-12
            )
        top_pool = sorted(written.rows, key=lambda r: (-r["score"], r["id"]))
        n_in, n_kept = written.n_in, written.n_kept
        manifest = {
            "inputs": {"benchmark_files": bench_fp},
            "counts": {
                **ps.counts(written, reasons=(REMOVED_REASON,)),
                "tokens_in": tok_in,
                "tokens_kept": tok_kept,
                "per_domain": per_domain,
            },
            "betr": {
                "keep_tokens": keep,
                "keep_source": keep_source,
                "threshold": threshold,
                "kept_token_share": tok_kept / max(tok_in, 1),
                "kept_doc_share": n_kept / max(n_in, 1),
                "heldout_kept_token_share": heldout_share,
                "sample": {
                    "requested": bc.sample,
                    "used": len(ids),
                    "clamped": len(ids) < bc.sample,
                    "positives": int(labels.sum()),
                    "heldout": int(heldout.sum()),
                    "trained_on": len(bal),
                },
                "classifier": {
                    "heldout": metrics,
                    "train": metrics_train,
                    "params": clf.params(),
                },
                "benchmarks": per_bench,
                "embed_model": e.model,
                "top_pool": [
                    {
                        "id": r["id"],
                        "domain": r["domain"],
                        "score": round(r["score"], 4),
                        "snippet": r["snippet"],
                    }
                    for r in top_pool[:N_TOP]
                ],
            },
            "outputs": {"scores": "scores", "model": "model", "sample": "sample.parquet"},
        }
        result = ps.commit(w, written, manifest, _report)
    say(
        f"betr: kept {n_kept} of {n_in} documents, {tok_kept / max(tok_in, 1):.1%} of the tokens "
        f"-> {result.path}"
    )
    return result


def _one_line(s: str) -> str:
    return " ".join(s.split()).replace("|", "/")


def _report(m: dict[str, Any]) -> str:
    c, b = m["counts"], m["betr"]
    h, s = b["classifier"]["heldout"], b["sample"]
    benches = ", ".join(f"{n} ({v['examples']} examples)" for n, v in b["benchmarks"].items())
    lines = [
        "# BETR report",
        "",
        f"Benchmarks: {benches}; "
        f"embedding model `{b['embed_model']}`, aggregation `{m['config']['aggregation']}`.",
        "",
        f"Sample: {s['used']} documents"
        + (f" (requested {s['requested']}, clamped to the pool)" if s["clamped"] else "")
        + f", {s['positives']} labelled positive (top {m['config']['positive_fraction']:.0%}), "
        f"{s['heldout']} held out, {s['trained_on']} balanced documents trained on.",
        "",
        f"Classifier on the held-out documents: accuracy {h['accuracy']:.3f}, balanced "
        f"accuracy {h['balanced_accuracy']:.3f}, ROC AUC {h['auc']:.3f}.",
        "",
        f"Threshold {b['threshold']:.4f} ({b['keep_source']}: keep {b['keep_tokens']:.1%} of "
        f"tokens; {b['heldout_kept_token_share']:.1%} on the held-out documents). Kept "
        f"{c['kept']} of {c['in']} documents ({b['kept_doc_share']:.1%}) and "
        f"{c['tokens_kept']} of {c['tokens_in']} words ({b['kept_token_share']:.1%}).",
        "",
        "Tokens are whitespace words. Share = a domain's part of the pool's or of the kept "
        "tokens; ratio = kept share / pool share.",
        "",
        *md_table(
            [
                "domain",
                "docs",
                "kept docs",
                "words",
                "kept words",
                "kept rate",
                "pool share",
                "kept share",
                "ratio",
            ],
            (
                (
                    d,
                    e["in"],
                    e["kept"],
                    e["tokens_in"],
                    e["tokens_kept"],
                    f"{e['tokens_kept'] / max(e['tokens_in'], 1):.1%}",
                    f"{e['token_share_pool']:.1%}",
                    f"{e['token_share_kept']:.1%}",
                    f"{e['kept_vs_pool']:.2f}",
                )
                for d, e in c["per_domain"].items()
            ),
        ),
    ]
    lines += ["", "## Sample documents ranked best per benchmark", ""]
    for name, v in b["benchmarks"].items():
        lines.append(f"### {name}")
        lines.append("")
        for x in v["top"]:
            lines.append(
                f"- `{x['id']}` ({x['domain']}, rank value {x['rank_value']}): "
                f"{_one_line(x['snippet'])}"
            )
        lines.append("")
    lines += ["## Best-scored pool documents (classifier)", ""]
    for x in b["top_pool"]:
        lines.append(f"- `{x['id']}` ({x['domain']}, {x['score']}): {_one_line(x['snippet'])}")
    lines.append("")
    return "\n".join(lines)
