"""Decontamination job: flag (and by default remove) pool documents that share word n-grams with
benchmark test sets.

Spark glue over :mod:`curamix.selectors.decontam`: the index of the test sets' n-grams is built
on the driver (test sets are small), broadcast once, and one Spark task per part of the pool
(dedup's output when the run dedups, else ingest's) runs :func:`find_contamination` on its
documents and writes that part's kept documents and ledger, so the output does not depend on
the number of workers.

Ledger: every input document has one row. Contaminated (at least ``min_matches`` matched
n-grams): decision ``removed``, reason ``contaminated``; with ``remove: false`` decision
``kept``, reason ``contaminated_kept``. Both carry ``ref_id`` = the matched benchmark item id
and ``score`` = the share of the document's n-grams matched. Clean documents: ``kept``, no
reason.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from curamix.config import DecontamConfig, IngestConfig, PipelineConfig, config_hash
from curamix.io.inputs import expand_inputs
from curamix.io.records import read_unit
from curamix.io.store import JobResult, load_completed, stage_writer
from curamix.pipelines.parts import check_accounting, map_parts, part_files
from curamix.schema import DOC_SCHEMA, LEDGER_SCHEMA
from curamix.selectors.decontam import ContaminationIndex, build_index, find_contamination

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

STAGE = "decontam"
CONTAMINATED, CONTAMINATED_KEPT = "contaminated", "contaminated_kept"
FLAG_SCHEMA = pa.schema(
    [
        ("domain", pa.string()),
        ("id", pa.string()),
        ("ref_id", pa.string()),
        ("n_matches", pa.int64()),
        ("score", pa.float64()),
        ("n", pa.int64()),
    ]
)
"""A part's result: one row per domain with its document count (``id`` null), and one row per
flagged document."""
N_EXAMPLES = 10


def decontam_key(cfg: PipelineConfig, pool: JobResult, test_fingerprints: list[dict]) -> str:
    return config_hash(STAGE, cfg.decontam, pool.manifest_hash, test_fingerprints)


def read_test_items(dc: DecontamConfig) -> tuple[list[tuple[str, str, str]], list[dict]]:
    """``(item id, text, benchmark)`` of every test item (benchmark = the input's domain, by
    default the file stem), and the files' fingerprints."""
    expanded = expand_inputs(IngestConfig(inputs=dc.test_inputs))
    items: list[tuple[str, str, str]] = []
    for unit in expanded.units:
        for batch in read_unit(unit):
            t = batch.to_pydict()
            for i, text, domain, reason in zip(
                t["id"], t["text"], t["domain"], t["reason"], strict=True
            ):
                if reason is None:
                    items.append((i, text, domain))
    return items, expanded.fingerprints


def flag_part(
    path: str, index: int, out_dir: str, ci: ContaminationIndex, dc: DecontamConfig
) -> pa.Table:
    """One pool part: find contamination, write its kept documents and its ledger; return its
    per-domain counts and its flagged documents."""
    docs = pq.read_table(path)
    ids, domains = docs["id"].to_pylist(), docs["domain"].to_pylist()
    found = find_contamination(docs["text"].to_pylist(), ci)
    flagged = [f.ref_id is not None and f.n_matches >= dc.min_matches for f in found]
    removed = [x and dc.remove for x in flagged]
    pq.write_table(
        docs.filter(pa.array([not r for r in removed])).select(DOC_SCHEMA.names),
        os.path.join(out_dir, "data", f"part-{index:05d}.parquet"),
        compression="zstd",
    )
    reason = CONTAMINATED if dc.remove else CONTAMINATED_KEPT
    ledger = pa.table(
        {
            "id": ids,
            "stage": [STAGE] * len(ids),
            "decision": ["removed" if r else "kept" for r in removed],
            "reason": [reason if x else None for x in flagged],
            "score": [f.fraction if x else None for f, x in zip(found, flagged, strict=True)],
            "ref_id": [f.ref_id if x else None for f, x in zip(found, flagged, strict=True)],
        },
        schema=LEDGER_SCHEMA,
    )
    pq.write_table(
        ledger, os.path.join(out_dir, "ledger", f"part-{index:05d}.parquet"), compression="zstd"
    )
    n_in: dict[str, int] = {}
    for d in domains:
        n_in[d] = n_in.get(d, 0) + 1
    rows: list[dict[str, Any]] = [
        {"domain": d, "id": None, "ref_id": None, "n_matches": None, "score": None, "n": n}
        for d, n in sorted(n_in.items())
    ]
    rows += [
        {
            "domain": d,
            "id": i,
            "ref_id": f.ref_id,
            "n_matches": f.n_matches,
            "score": f.fraction,
            "n": None,
        }
        for d, i, f, x in zip(domains, ids, found, flagged, strict=True)
        if x
    ]
    return pa.Table.from_pylist(rows, schema=FLAG_SCHEMA)


def run_decontam(
    spark: SparkSession,
    cfg: PipelineConfig,
    on_step: Callable[[str], None] | None = None,
    upstream: dict[str, JobResult] | None = None,
) -> JobResult:
    """Flag (and by default remove) pool documents sharing n-grams with benchmark test sets."""
    from curamix.runner import pool_stage, require_upstream

    if cfg.decontam is None:
        raise ValueError("run_decontam needs a 'decontam:' section in the config")
    dc = cfg.decontam
    say = on_step or (lambda _msg: None)
    t0 = time.perf_counter()
    source = pool_stage(cfg, before=STAGE)
    pool = require_upstream(cfg, source, upstream)
    items, fingerprints = read_test_items(dc)
    key = decontam_key(cfg, pool, fingerprints)
    done = load_completed(cfg.run_dir, STAGE, key)
    if done is not None:
        say(f"decontam: skipped, already complete at {done.path}")
        return done
    if not items:
        raise ValueError(
            "decontam: the test sets hold no items: " + ", ".join(f["path"] for f in fingerprints)
        )
    parts = part_files(pool.data_path)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    ci = build_index(
        items,
        n=dc.ngram,
        min_words=dc.min_words,
        max_item_frequency=dc.max_item_frequency,
        min_content_words=dc.min_content_words,
    )
    timings["index_s"] = round(time.perf_counter() - t, 3)
    say(
        f"decontam: {len(ci.hashes)} {dc.ngram}-grams from {ci.n_items} test items; "
        f"checking {pool.counts.get('out', '?')} documents of {source} in {len(parts)} tasks"
    )
    with stage_writer(cfg.run_dir, STAGE, key) as w:
        for sub in ("data", "ledger"):
            os.makedirs(w.path(sub))
        out_dir = str(w.tmp)
        bc = spark.sparkContext.broadcast(ci)
        t = time.perf_counter()
        res = map_parts(
            spark, parts, lambda i, p: flag_part(p, i, out_dir, bc.value, dc), FLAG_SCHEMA
        ).to_pylist()
        bc.unpersist()
        timings["flag_s"] = round(time.perf_counter() - t, 3)
        per_domain: dict[str, dict[str, Any]] = {}
        flagged = sorted((r for r in res if r["id"] is not None), key=lambda r: r["id"])
        for r in res:
            if r["id"] is None:
                e = per_domain.setdefault(r["domain"], {"in": 0, "flagged": 0, "removed": 0})
                e["in"] += r["n"]
        for r in flagged:
            per_domain[r["domain"]]["flagged"] += 1
            per_domain[r["domain"]]["removed"] += int(dc.remove)
        for e in per_domain.values():
            e["kept"] = e["in"] - e["removed"]
        n_in = sum(e["in"] for e in per_domain.values())
        n_removed = sum(e["removed"] for e in per_domain.values())
        n_kept = n_in - n_removed
        check_accounting(STAGE, w.tmp, source, pool.counts.get("out"), n_in, n_kept)
        pos = {i: k for k, i in enumerate(ci.item_ids)}
        per_bench: dict[str, dict[str, Any]] = {}
        for b in ci.benchmarks:
            per_bench.setdefault(b, {"items": 0, "matched_items": 0, "docs": 0})["items"] += 1
        matched: dict[str, set[str]] = {}
        for r in flagged:
            b = ci.benchmarks[pos[r["ref_id"]]]
            per_bench[b]["docs"] += 1
            matched.setdefault(b, set()).add(r["ref_id"])
        for b, s in matched.items():
            per_bench[b]["matched_items"] = len(s)
        texts = {i: x for i, x, _ in items}
        examples = [
            {
                "id": r["id"],
                "domain": r["domain"],
                "ref_id": r["ref_id"],
                "n_matches": r["n_matches"],
                "score": round(r["score"], 4),
                "item_text": texts[r["ref_id"]][:200],
            }
            for r in sorted(flagged, key=lambda r: (-r["n_matches"], r["id"]))[:N_EXAMPLES]
        ]
        manifest = {
            "config": dc.model_dump(mode="json"),
            "config_hash": config_hash(dc),
            "inputs": {"manifests": {source: pool.manifest_hash}, "test_files": fingerprints},
            "index": {
                "items": ci.n_items,
                "items_indexed": ci.n_items_indexed,
                "ngrams": len(ci.hashes),
                "dropped_frequent": ci.n_dropped,
                "dropped_low_content": ci.n_low_content,
                "short_lengths": list(ci.short_lengths),
            },
            "counts": {
                "in": n_in,
                "kept": n_kept,
                "out": n_kept,
                "removed": n_removed,
                "flagged": len(flagged),
                "quarantined": 0,
                "removed_reasons": {CONTAMINATED: n_removed},
                "per_domain": dict(sorted(per_domain.items())),
                "per_benchmark": dict(sorted(per_bench.items())),
            },
            "examples": examples,
            "timings": timings,
            "outputs": {"data": "data", "ledger": "ledger", "report": "report.md"},
        }
        timings["total_s"] = round(time.perf_counter() - t0, 3)
        w.path("report.md").write_text(_report(manifest), encoding="utf-8")
        result = w.commit(json.loads(json.dumps(manifest, default=float)))
    say(
        f"decontam: {len(flagged)} of {n_in} documents contaminated, "
        f"{n_removed} removed -> {result.path}"
    )
    return result


def _report(m: dict[str, Any]) -> str:
    c, cf, ix = m["counts"], m["config"], m["index"]
    lines = [
        "# Decontamination report",
        "",
        f"{c['flagged']} of {c['in']} documents share at least {cf['min_matches']} word "
        f"{cf['ngram']}-gram(s) with a benchmark test item; {c['removed']} removed"
        + ("" if cf["remove"] else " (flag only: `remove: false`)")
        + ".",
        "",
        f"Index: {ix['ngrams']} n-grams of {ix['items']} test items ({ix['items_indexed']} with "
        f"any n-gram); dropped {ix['dropped_frequent']} n-grams found in more than "
        f"{cf['max_item_frequency']} items and {ix['dropped_low_content']} windows with fewer "
        f"than {cf['min_content_words']} content words.",
        "",
        "| domain | in | flagged | removed | kept |",
        "|---|---:|---:|---:|---:|",
    ]
    for d, e in c["per_domain"].items():
        lines.append(f"| {d} | {e['in']} | {e['flagged']} | {e['removed']} | {e['kept']} |")
    lines += [
        "",
        "## Benchmarks",
        "",
        "| benchmark | items | matched items | flagged docs |",
        "|---|---:|---:|---:|",
    ]
    for b, e in c["per_benchmark"].items():
        lines.append(f"| {b} | {e['items']} | {e['matched_items']} | {e['docs']} |")
    lines += ["", "## Examples (most matched n-grams first)", ""]
    for x in m["examples"]:
        item = x["item_text"].replace("\n", " ")
        lines.append(
            f"- `{x['id']}` ({x['domain']}) matches `{x['ref_id']}`: {x['n_matches']} n-grams, "
            f"{x['score']:.1%} of the document; item: {item}"
        )
    if not m["examples"]:
        lines.append("none")
    lines.append("")
    return "\n".join(lines)
