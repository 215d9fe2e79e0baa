"""Decontamination job: flag (and by default remove) pool documents that share word n-grams with
benchmark test sets.

Spark glue over :mod:`curamix.filters.decontam`: the index of the test sets' n-grams is built
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

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from curamix.config import DecontamConfig, PipelineConfig, config_hash
from curamix.filters.decontam import ContaminationIndex, build_index, find_contamination
from curamix.io.inputs import expand_reference, read_items
from curamix.io.store import JobResult, stage_writer
from curamix.pipelines.pool import (
    Decisions,
    PoolStage,
    decisions_table,
    md_table,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

STAGE = "decontam"
CONTAMINATED, CONTAMINATED_KEPT = "contaminated", "contaminated_kept"
N_EXAMPLES = 10


def decontam_key(cfg: PipelineConfig, inputs: Mapping[str, JobResult]) -> str:
    """Config, the pool's manifest and the test files' fingerprints."""
    assert cfg.decontam is not None
    tests = expand_reference(cfg.decontam.test_inputs, "decontam.test_inputs").fingerprints
    return config_hash(STAGE, cfg.decontam, inputs["pool"].manifest_hash, tests)


def read_test_items(dc: DecontamConfig) -> tuple[list[tuple[str, str, str]], list[dict]]:
    """``(item id, text, benchmark)`` of every test item (benchmark = the input's domain, by
    default the file stem), and the files' fingerprints."""
    items, fingerprints, _ = read_items(dc.test_inputs, "decontam.test_inputs")
    return items, fingerprints


def decide_contamination(docs: pa.Table, ci: ContaminationIndex, dc: DecontamConfig) -> Decisions:
    """A batch of pool documents: flagged (at least ``min_matches`` n-grams of a test item)
    documents are removed (``contaminated``) or, with ``remove: false``, kept with reason
    ``contaminated_kept``; ``score`` = share of the document's n-grams matched, ``ref_id`` =
    the item. Summary rows: the flagged documents."""
    ids, domains = docs["id"].to_pylist(), docs["domain"].to_pylist()
    found = find_contamination(docs["text"].to_pylist(), ci)
    flagged = np.array([f.ref_id is not None and f.n_matches >= dc.min_matches for f in found])
    reason = CONTAMINATED if dc.remove else CONTAMINATED_KEPT
    table = decisions_table(
        ids,
        kept=~flagged if dc.remove else np.ones(len(ids), bool),
        reason=[reason if x else None for x in flagged],
        score=[f.fraction if x else None for f, x in zip(found, flagged, strict=True)],
        ref_id=[f.ref_id if x else None for f, x in zip(found, flagged, strict=True)],
    )
    rows = [
        {"domain": d, "id": i, "ref_id": f.ref_id, "n_matches": f.n_matches, "score": f.fraction}
        for d, i, f, x in zip(domains, ids, found, flagged, strict=True)
        if x
    ]
    return Decisions(table, rows=rows)


def run_decontam(
    spark: SparkSession,
    cfg: PipelineConfig,
    inputs: Mapping[str, JobResult],
    key: str,
    say: Callable[[str], None],
) -> JobResult:
    """Flag (and by default remove) pool documents sharing n-grams with benchmark test sets."""
    assert cfg.decontam is not None
    dc = cfg.decontam
    ps = PoolStage(STAGE, cfg, inputs["pool"], key, say)
    items, fingerprints = read_test_items(dc)
    if not items:
        raise ValueError(
            "decontam: the test sets hold no items: " + ", ".join(f["path"] for f in fingerprints)
        )
    with ps.timed("index_s"):
        ci = build_index(
            items,
            n=dc.ngram,
            min_words=dc.min_words,
            max_item_frequency=dc.max_item_frequency,
            min_content_words=dc.min_content_words,
        )
    say(
        f"decontam: {len(ci.hashes)} {dc.ngram}-grams from {ci.n_items} test items; "
        f"checking {ps.pool.counts.get('out', '?')} documents of {ps.source} in {len(ps.parts)} tasks"
    )
    with stage_writer(cfg.run_dir, STAGE, key) as w:
        bc = spark.sparkContext.broadcast(ci)
        with ps.timed("flag_s"):
            written = ps.write(
                spark, w, lambda _i, docs, _s: decide_contamination(docs, bc.value, dc)
            )
        bc.unpersist()
        flagged = sorted(written.rows, key=lambda r: r["id"])
        per_domain = {
            d: {
                "in": e["in"],
                "flagged": e["reasons"].get(CONTAMINATED, 0)
                + e["reasons"].get(CONTAMINATED_KEPT, 0),
                "removed": e["removed"],
                "kept": e["kept"],
            }
            for d, e in written.per_domain.items()
        }
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
            "inputs": {"test_files": fingerprints},
            "index": {
                "items": ci.n_items,
                "items_indexed": ci.n_items_indexed,
                "ngrams": len(ci.hashes),
                "dropped_frequent": ci.n_dropped,
                "dropped_low_content": ci.n_low_content,
                "short_lengths": list(ci.short_lengths),
            },
            "counts": {
                **ps.counts(written, reasons=(CONTAMINATED,)),
                "flagged": len(flagged),
                "per_domain": per_domain,
                "per_benchmark": dict(sorted(per_bench.items())),
            },
            "examples": examples,
        }
        result = ps.commit(w, written, manifest, _report, seed=False)
    c = result.counts
    say(
        f"decontam: {c['flagged']} of {c['in']} documents contaminated, "
        f"{c['removed']} removed -> {result.path}"
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
        *md_table(
            ["domain", "in", "flagged", "removed", "kept"],
            (
                (d, e["in"], e["flagged"], e["removed"], e["kept"])
                for d, e in c["per_domain"].items()
            ),
        ),
        "",
        "## Benchmarks",
        "",
        *md_table(
            ["benchmark", "items", "matched items", "flagged docs"],
            ((b, e["items"], e["matched_items"], e["docs"]) for b, e in c["per_benchmark"].items()),
        ),
    ]
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
