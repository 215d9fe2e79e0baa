"""DSIR scoring job: fit hashed n-gram distributions, score every pool document.

Spark glue over :mod:`curamix.selectors.dsir`. One task per ingest part file:

1. count pass: each task sums the bucket counts of its part (raw, capped at
   ``num_tokens_to_fit / n_parts`` n-grams like the reference's per-shard cap) and of its
   documents in ``target_domains``; target files are read with the ingest readers. Only
   count vectors reach the driver, never documents.
2. the driver fits :class:`~curamix.selectors.dsir.DSIRSelector` from the summed counts;
3. score pass: each task scores its part with that selector and writes
   ``scores/part-<i>.parquet`` (id, domain, score, length, one ``score__<target>`` column per
   target with separate targets) and ``ledger/part-<i>.parquet``.

The fitted model is saved as ``model.npz`` (arrays, no pickle).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curamix.config import DSIRConfig, IngestConfig, PipelineConfig, config_hash
from curamix.io.fs import load_npz, makedirs, save_npz
from curamix.io.inputs import ExpandedInputs, expand_inputs
from curamix.io.records import ReadUnit, read_unit
from curamix.io.store import JobResult, part_files, stage_writer
from curamix.pipelines.parts import map_parts
from curamix.selectors.dsir import DSIRSelector, batch_grams

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

STAGE = "dsir"
MASKED_REASON = "below_min_example_length"
COUNTS_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("name", pa.string()),
        ("n_docs", pa.int64()),
        ("counts", pa.list_(pa.int64())),
    ]
)
SUMMARY_SCHEMA = pa.schema(
    [
        ("domain", pa.string()),
        ("n_docs", pa.int64()),
        ("n_eligible", pa.int64()),
        ("score_sum", pa.float64()),
    ]
)
BATCH = 2048


def make_selector(cfg: DSIRConfig) -> DSIRSelector:
    """The estimator a DSIR config describes."""
    return DSIRSelector(
        num_buckets=cfg.num_buckets,
        ngrams=cfg.ngrams,
        hash_mode=cfg.hash_mode,
        laplace=cfg.laplace,
        min_example_length=cfg.min_example_length,
        num_tokens_to_fit=cfg.num_tokens_to_fit,
        length_normalize=cfg.length_normalize,
        chunk_tokens=cfg.chunk_tokens,
        separate_targets=cfg.separate_targets,
    )


def _bincount(sel: DSIRSelector, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(summed bucket counts, n-grams per text) of a batch."""
    g = batch_grams(texts, sel.num_buckets, sel.ngrams, sel.hash_mode)
    return np.bincount(g.buckets, minlength=sel.num_buckets), np.bincount(g.row, minlength=g.n_rows)


def _order_blocks(buckets: np.ndarray, n_tokens: np.ndarray, ngrams: int) -> list[np.ndarray]:
    """Split :func:`batch_grams` buckets into one block per n-gram order (unigrams first)."""
    sizes = [int(np.maximum(n_tokens - o + 1, 0).sum()) for o in range(1, ngrams + 1)]
    return np.split(buckets, np.cumsum(sizes)[:-1])


def _order_rows(n_tokens: np.ndarray, ngrams: int) -> list[np.ndarray]:
    """Document of every n-gram, per order: order o has max(n_tokens - o + 1, 0) per document."""
    docs = np.arange(len(n_tokens), dtype=np.int64)
    return [np.repeat(docs, np.maximum(n_tokens - o + 1, 0)) for o in range(1, ngrams + 1)]


def count_part(
    path: str,
    sel: DSIRSelector,
    max_tokens: int | None,
    target_domains: list[str],
    cache_path: str | None = None,
) -> pa.Table:
    """Raw counts of one part (capped at ``max_tokens`` n-grams, stopping after the document
    that crosses the cap) and the counts of its documents in ``target_domains``. With
    ``cache_path``, also save every document's n-gram buckets there for :func:`score_part`."""
    nb = sel.num_buckets
    raw = np.zeros(nb, dtype=np.int64)
    seen, n_raw, capped = 0, 0, False
    tgt: dict[str, list[Any]] = {}
    wanted = set(target_domains)
    cache: list[list[np.ndarray]] = [
        [] for _ in range(sel.ngrams + 1)
    ]  # n_tokens, then one list per order
    dtype = np.uint16 if nb <= 1 << 16 else np.uint32
    for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH, columns=["text", "domain"]):
        texts, domains = batch.column("text").to_pylist(), batch.column("domain").to_pylist()
        if capped and not wanted and cache_path is None:
            break
        g = batch_grams(texts, nb, sel.ngrams, sel.hash_mode)
        doc_of_gram = g.row  # no chunking here: rows are documents
        if cache_path is not None:
            cache[0].append(g.n_tokens.astype(np.int32))
            for o, block in enumerate(_order_blocks(g.buckets, g.n_tokens, sel.ngrams), start=1):
                cache[o].append(block.astype(dtype))
        if not capped:
            if max_tokens is not None:
                per_doc = np.bincount(doc_of_gram, minlength=g.n_rows)
                over = np.nonzero(seen + np.cumsum(per_doc) > max_tokens)[0]
                if len(over):
                    raw += np.bincount(g.buckets[doc_of_gram <= over[0]], minlength=nb)
                    n_raw += int(over[0]) + 1
                    capped = True
                else:
                    raw += np.bincount(g.buckets, minlength=nb)
                    n_raw += len(texts)
                    seen += len(g.buckets)
            else:
                raw += np.bincount(g.buckets, minlength=nb)
                n_raw += len(texts)
        if wanted:
            dom = np.asarray(domains, dtype=object)
            for d in wanted.intersection(domains):
                is_d = dom == d
                entry = tgt.setdefault(d, [np.zeros(nb, dtype=np.int64), 0])
                entry[0] += np.bincount(g.buckets[is_d[doc_of_gram]], minlength=nb)
                entry[1] += int(is_d.sum())
    if cache_path is not None:
        arrays = {"n_tokens": np.concatenate(cache[0]) if cache[0] else np.zeros(0, np.int32)}
        for o in range(1, sel.ngrams + 1):
            arrays[f"order{o}"] = np.concatenate(cache[o]) if cache[o] else np.zeros(0, dtype)
        save_npz(cache_path, **arrays)
    rows = [{"kind": "raw", "name": "", "n_docs": n_raw, "counts": raw.tolist()}]
    rows += [
        {"kind": "target", "name": d, "n_docs": n, "counts": c.tolist()}
        for d, (c, n) in sorted(tgt.items())
    ]
    return pa.Table.from_pylist(rows, schema=COUNTS_SCHEMA)


def cached_scores(sel: DSIRSelector, cache_path: str) -> tuple[np.ndarray, np.ndarray]:
    """(log weights, example lengths) of a part from its cached n-gram buckets; equal to
    :meth:`DSIRSelector.score_batch` on the part's texts (without ``chunk_tokens``)."""
    with load_npz(cache_path) as z:
        n_tokens = z["n_tokens"].astype(np.int64)
        blocks = [z[f"order{o}"] for o in range(1, sel.ngrams + 1)]
    n = len(n_tokens)
    ld = np.atleast_2d(sel.log_diff_)
    rows = _order_rows(n_tokens, sel.ngrams)
    scores = np.zeros((n, len(ld)))
    for r, b in zip(rows, blocks, strict=True):
        for t in range(len(ld)):
            scores[:, t] += np.bincount(r, weights=ld[t][b.astype(np.int64)], minlength=n)
    grams = sum(np.maximum(n_tokens - o + 1, 0) for o in range(1, sel.ngrams + 1))
    lengths = (grams + sel.ngrams * (sel.ngrams - 1) // 2) // sel.ngrams
    if sel.length_normalize:
        scores = scores / np.maximum(n_tokens, 1)[:, None]
    return (scores[:, 0] if np.ndim(sel.log_diff_) == 1 else scores), lengths


def count_target_unit(unit: ReadUnit, sel: DSIRSelector) -> pa.Table:
    """Counts of one target read unit, per domain; quarantined records are counted by reason."""
    nb = sel.num_buckets
    tgt: dict[str, list[Any]] = {}
    bad: dict[str, int] = {}
    for batch in read_unit(unit, batch_rows=BATCH):
        t = batch.to_pydict()
        docs: dict[str, list[str]] = {}
        for text, domain, reason in zip(t["text"], t["domain"], t["reason"], strict=True):
            if reason is None:
                docs.setdefault(domain, []).append(text)
            elif not reason.startswith("__"):
                bad[reason] = bad.get(reason, 0) + 1
        for d, texts in docs.items():
            c, _ = _bincount(sel, texts)
            entry = tgt.setdefault(d, [np.zeros(nb, dtype=np.int64), 0])
            entry[0] += c
            entry[1] += len(texts)
    rows = [
        {"kind": "target", "name": d, "n_docs": n, "counts": c.tolist()}
        for d, (c, n) in sorted(tgt.items())
    ]
    rows += [
        {"kind": "quarantined", "name": r, "n_docs": n, "counts": []}
        for r, n in sorted(bad.items())
    ]
    return pa.Table.from_pylist(rows, schema=COUNTS_SCHEMA)


def score_columns(sel: DSIRSelector) -> list[str]:
    return [f"score__{n}" for n in sel.target_names_] if np.ndim(sel.log_diff_) == 2 else []


def score_part(
    path: str, sel: DSIRSelector, out_dir: str, index: int, cache_path: str | None = None
) -> pa.Table:
    """Score one part (from its cached n-gram buckets when ``cache_path`` is given); write its
    scores and ledger parts; return per-domain sums."""
    extra = score_columns(sel)
    fields = [
        ("id", pa.string()),
        ("domain", pa.string()),
        ("score", pa.float64()),
        ("length", pa.int64()),
    ]
    schema = pa.schema(fields + [(c, pa.float64()) for c in extra])
    name = f"part-{index:05d}.parquet"
    from curamix.schema import LEDGER_SCHEMA

    sums: dict[str, list[float]] = {}
    with (
        pq.ParquetWriter(os.path.join(out_dir, "scores", name), schema, compression="zstd") as sw,
        pq.ParquetWriter(
            os.path.join(out_dir, "ledger", name), LEDGER_SCHEMA, compression="zstd"
        ) as lw,
    ):
        if cache_path is not None:
            all_scores, all_lengths = cached_scores(sel, cache_path)
        cols_read = ["id", "domain"] if cache_path is not None else ["id", "text", "domain"]
        offset = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH, columns=cols_read):
            ids, domains = batch.column("id").to_pylist(), batch.column("domain").to_pylist()
            if cache_path is not None:
                scores = all_scores[offset : offset + len(ids)]
                lengths = all_lengths[offset : offset + len(ids)]
                offset += len(ids)
            else:
                scores, lengths = sel.score_batch(batch.column("text").to_pylist())
            if scores.ndim == 2:
                # One weight to report: the proportion-weighted mixture of the targets' weights.
                main = np.log(
                    np.exp(scores - scores.max(axis=1, keepdims=True)) @ sel.target_proportions_
                ) + scores.max(axis=1)
            else:
                main = scores
            cols = {"id": ids, "domain": domains, "score": main, "length": lengths}
            for j, c in enumerate(extra):
                cols[c] = scores[:, j]
            sw.write_table(pa.table(cols, schema=schema))
            masked = lengths < sel.min_example_length
            lw.write_table(
                pa.table(
                    {
                        "id": ids,
                        "stage": [STAGE] * len(ids),
                        "decision": ["kept"] * len(ids),
                        "reason": [MASKED_REASON if m else None for m in masked.tolist()],
                        "score": main,
                        "ref_id": [None] * len(ids),
                    },
                    schema=LEDGER_SCHEMA,
                )
            )
            for d, s, m in zip(domains, main.tolist(), masked.tolist(), strict=True):
                e = sums.setdefault(d, [0, 0, 0.0])
                e[0] += 1
                e[1] += 0 if m else 1
                e[2] += s
    rows = [
        {"domain": d, "n_docs": int(a), "n_eligible": int(b), "score_sum": c}
        for d, (a, b, c) in sorted(sums.items())
    ]
    return pa.Table.from_pylist(rows, schema=SUMMARY_SCHEMA)


def save_model(sel: DSIRSelector, path: str) -> None:
    save_npz(
        path,
        compressed=True,
        log_diff=sel.log_diff_,
        raw_counts=sel.raw_counts_,
        target_counts=sel.target_counts_,
        target_names=np.asarray(sel.target_names_),
        target_proportions=sel.target_proportions_,
    )


def load_model(path: str, cfg: DSIRConfig) -> DSIRSelector:
    """The fitted selector a dsir stage saved."""
    with load_npz(path) as z:
        sel = make_selector(cfg).fit_counts(
            z["target_counts"], z["raw_counts"], z["target_names"].tolist()
        )
        sel.target_proportions_ = z["target_proportions"]
    return sel


def target_files(dcfg: DSIRConfig) -> ExpandedInputs | None:
    """The target inputs (``dsir.target_inputs``), or None when the targets are pool domains."""
    return expand_inputs(IngestConfig(inputs=dcfg.target_inputs)) if dcfg.target_inputs else None


def dsir_key(cfg: PipelineConfig, inputs: Mapping[str, JobResult]) -> str:
    """Config, the pool's manifest and the target files' fingerprints."""
    assert cfg.dsir is not None
    targets = target_files(cfg.dsir)
    fingerprints = targets.fingerprints if targets else []
    return config_hash(STAGE, cfg.dsir, inputs["pool"].manifest_hash, fingerprints)


def run_dsir(
    spark: SparkSession,
    cfg: PipelineConfig,
    inputs: Mapping[str, JobResult],
    key: str,
    say: Callable[[str], None],
) -> JobResult:
    """Fit DSIR on the run's ingested pool and targets, and score every pool document."""
    assert cfg.dsir is not None
    dcfg = cfg.dsir
    t0 = time.perf_counter()
    ingest = inputs["pool"]
    targets = target_files(dcfg)
    parts = part_files(ingest.data_path)
    sel = make_selector(dcfg)
    sel._check_params()
    max_tokens = sel._max_raw_tokens()
    per_part_cap = None if max_tokens is None else max(1, max_tokens // len(parts))
    timings: dict[str, float] = {}
    with stage_writer(cfg.run_dir, STAGE, key) as w:
        say(
            f"dsir: counting n-grams of {len(parts)} parts{' and the target files' if targets else ''}"
        )
        t = time.perf_counter()
        domains = list(dcfg.target_domains)
        cache_dir = (
            str(w.scratch("_features")) if dcfg.cache_features and not dcfg.chunk_tokens else None
        )
        if cache_dir:
            makedirs(cache_dir)

        def cache_of(i: int) -> str | None:
            return os.path.join(cache_dir, f"part-{i:05d}.npz") if cache_dir else None

        counts = map_parts(
            spark,
            parts,
            lambda i, p: count_part(p, sel, per_part_cap, domains, cache_of(i)),
            COUNTS_SCHEMA,
        )
        if targets:
            units = [u.to_json() for u in targets.units]
            counts = pa.concat_tables(
                [
                    counts,
                    map_parts(
                        spark,
                        units,
                        lambda i, u: count_target_unit(ReadUnit.from_json(u), sel),
                        COUNTS_SCHEMA,
                    ),
                ]
            )
        timings["count_s"] = time.perf_counter() - t

        raw = np.zeros(dcfg.num_buckets, dtype=np.int64)
        by_target: dict[str, list[Any]] = {}
        quarantined: dict[str, int] = {}
        n_raw_fit = 0
        for r in counts.to_pylist():
            if r["kind"] == "raw":
                raw += np.asarray(r["counts"], dtype=np.int64)
                n_raw_fit += r["n_docs"]
            elif r["kind"] == "target":
                e = by_target.setdefault(r["name"], [np.zeros(dcfg.num_buckets, dtype=np.int64), 0])
                e[0] += np.asarray(r["counts"], dtype=np.int64)
                e[1] += r["n_docs"]
            else:
                quarantined[r["name"]] = quarantined.get(r["name"], 0) + r["n_docs"]
        missing = [d for d in dcfg.target_domains if d not in by_target]
        if missing:
            known = sorted(ingest.counts.get("per_domain", {}))
            raise ValueError(
                f"dsir.target_domains: {missing} not found in the pool (its domains: {known})"
            )
        if not by_target:
            raise ValueError("dsir: the targets hold no documents")
        names = sorted(by_target)
        sel.target_proportions = (
            [dcfg.target_proportions.get(n, 0.0) for n in names]
            if dcfg.target_proportions
            else None
        )
        sel.fit_counts(np.stack([by_target[n][0] for n in names]), raw, names)
        save_model(sel, str(w.path("model.npz")))

        say("dsir: scoring every pool document")
        t = time.perf_counter()
        for sub in ("scores", "ledger"):
            makedirs(w.path(sub))
        out_dir = str(w.tmp)
        summary = map_parts(
            spark, parts, lambda i, p: score_part(p, sel, out_dir, i, cache_of(i)), SUMMARY_SCHEMA
        )
        timings["score_s"] = time.perf_counter() - t
        if cache_dir:
            w.discard("_features")
        per_domain: dict[str, dict[str, Any]] = {}
        for r in summary.to_pylist():
            e = per_domain.setdefault(r["domain"], {"n_docs": 0, "n_eligible": 0, "score_sum": 0.0})
            e["n_docs"] += r["n_docs"]
            e["n_eligible"] += r["n_eligible"]
            e["score_sum"] += r["score_sum"]
        n_docs = sum(e["n_docs"] for e in per_domain.values())
        n_eligible = sum(e["n_eligible"] for e in per_domain.values())
        if n_docs != ingest.counts.get("out", n_docs):
            raise RuntimeError(
                f"dsir scored {n_docs} documents, but ingest wrote {ingest.counts.get('out')}"
            )
        timings["total_s"] = time.perf_counter() - t0
        manifest = {
            "config": dcfg.model_dump(mode="json"),
            "config_hash": config_hash(dcfg),
            "inputs": {
                "manifests": {"ingest": ingest.manifest_hash},
                "target_files": targets.fingerprints if targets else [],
            },
            "counts": {
                "in": n_docs,
                "out": n_docs,
                "kept": n_docs,
                "removed": 0,
                "quarantined": 0,
                "eligible": n_eligible,
                "masked_short": n_docs - n_eligible,
                "per_domain": {
                    d: {
                        "in": e["n_docs"],
                        "eligible": e["n_eligible"],
                        "mean_score": e["score_sum"] / max(e["n_docs"], 1),
                    }
                    for d, e in sorted(per_domain.items())
                },
            },
            "fit": {
                "raw_docs_used": n_raw_fit,
                "raw_ngrams": int(raw.sum()),
                "targets": {
                    n: {"docs": by_target[n][1], "ngrams": int(by_target[n][0].sum())}
                    for n in names
                },
                "target_proportions": dict(
                    zip(names, sel.target_proportions_.tolist(), strict=False)
                )
                if dcfg.separate_targets
                else None,
                "target_quarantined": quarantined,
            },
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "outputs": {"scores": "scores", "ledger": "ledger", "model": "model.npz"},
        }
        result = w.commit(json.loads(json.dumps(manifest, default=float)))
    say(f"dsir: scored {n_docs} documents ({n_eligible} long enough to select) -> {result.path}")
    return result
