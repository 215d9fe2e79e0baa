"""The skeleton of a pool stage: read the run's pool, decide per document, write the filtered pool.

A pool stage (quality, decontam, semdedup, betr, select, coreset; the skill-aware selectors
later) is its decision logic plus this skeleton, which is written once:

1. **read**: the upstream pool's Parquet parts (:attr:`PoolStage.parts`); stages that decide
   on the driver read only the ids and domains (:meth:`PoolStage.read_ids`);
2. **decide**: one Spark task per part calls the stage's ``decide(index, docs, start)`` on
   each batch of the part's documents (rows ``start..`` of part ``index``) and gets a
   :class:`Decisions`: one row per document (kept or removed, reason, score, ref_id), extra
   data columns, extra per-part outputs (``scores/``) and small summary rows. Stages that
   decide on the driver hand the skeleton one decision table for the whole pool
   (:meth:`PoolStage.write_decisions`), cut per part;
3. **write**: each task writes ``data/part-<i>`` (the kept documents, document schema plus
   any extra columns) and ``ledger/part-<i>`` (every document), so the output depends on the
   parts, never on the number of workers;
4. **account and publish** (:meth:`PoolStage.commit`): every input document is in the ledger
   once and every kept one in ``data/`` (read back from the written files), the common
   counts (in, kept, removed by reason, per domain with words), then the stage's manifest,
   ``report.md`` and the completion marker.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curamix.config import config_hash
from curamix.io.fs import makedirs
from curamix.io.store import JobResult, StageWriter, part_files
from curamix.pipelines.parts import check_accounting, map_parts
from curamix.schema import DOC_SCHEMA, LEDGER_SCHEMA

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from curamix.config import PipelineConfig

KEPT, REMOVED = "kept", "removed"
BATCH = 4096
"""Documents per decision batch inside a task (bounds a task's memory on large parts)."""
DECISION_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("decision", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("ref_id", pa.string()),
    ]
)
"""What a stage decided for each document; the ledger adds the stage's name."""
PART_SCHEMA = pa.schema(
    [
        ("domain", pa.string()),
        ("decision", pa.string()),
        ("reason", pa.string()),
        ("n", pa.int64()),
        ("words", pa.int64()),
        ("row", pa.string()),
    ]
)
"""A task's result: one row per (domain, decision, reason) with documents and words, and the
stage's summary rows as JSON (``row``; the other columns null)."""


@dataclass
class Decisions:
    """A batch's decisions (one row per document, in order) and what else the stage writes."""

    table: pa.Table
    """:data:`DECISION_SCHEMA` rows."""
    data_columns: dict[str, pa.Array] = field(default_factory=dict)
    """Extra columns of the documents in ``data/`` (e.g. ``score``); a document column of the
    same name (``domain``) is replaced; the ledger's accounting uses the input's."""
    outputs: dict[str, pa.Table] = field(default_factory=dict)
    """Extra per-part outputs: ``{"scores": table}`` goes to ``scores/part-<i>.parquet``."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    """Small summary rows for the driver (top documents, flagged items, histogram counts)."""


Decide = Callable[[int, pa.Table, int], Decisions]
"""``decide(part index, documents of a batch, row offset of the batch in its part)``."""


def decisions_table(
    ids: Sequence[str] | pa.Array,
    kept: np.ndarray,
    reason: Sequence[str | None] | np.ndarray,
    score: np.ndarray | Sequence[float | None] | None = None,
    ref_id: Sequence[str | None] | np.ndarray | None = None,
) -> pa.Table:
    """A :data:`DECISION_SCHEMA` table from per-document arrays (``score`` NaN = null)."""
    n = len(ids)
    if score is None:
        score_arr = pa.nulls(n, pa.float64())
    elif isinstance(score, np.ndarray):
        score_arr = pa.array(score, pa.float64(), from_pandas=True)
    else:
        score_arr = pa.array(list(score), pa.float64())
    return pa.table(
        {
            "id": pa.array(ids, pa.string()) if not isinstance(ids, pa.Array) else ids,
            "decision": pa.array(np.where(np.asarray(kept, bool), KEPT, REMOVED), pa.string()),
            "reason": pa.array(list(reason), pa.string()),
            "score": score_arr,
            "ref_id": pa.nulls(n, pa.string())
            if ref_id is None
            else pa.array(list(ref_id), pa.string()),
        },
        schema=DECISION_SCHEMA,
    )


def positions(pool_ids: np.ndarray, sorted_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each pool id sits in the id-sorted array ``sorted_ids`` (a kernel's output over
    the documents that have, e.g., an embedding): ``(pos, has)``; ``pos`` is valid where
    ``has``."""
    n = len(pool_ids)
    if len(sorted_ids) == 0:
        return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    ids = pool_ids.astype(str)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return pos, sorted_ids[pos] == ids


def _write_part(
    path: str,
    index: int,
    out_dir: str,
    stage: str,
    decide: Decide,
    data_schema: pa.Schema,
    outputs: Sequence[str],
    count_rule: bool = False,
) -> pa.Table:
    """One task: decide batch by batch, write the part's data, ledger and extra outputs."""
    name = f"part-{index:05d}.parquet"

    def writer(sub: str, schema: pa.Schema) -> pq.ParquetWriter:
        return pq.ParquetWriter(os.path.join(out_dir, sub, name), schema, compression="zstd")

    writers = {"data": writer("data", data_schema), "ledger": writer("ledger", LEDGER_SCHEMA)}
    keys = ["domain", "decision", "reason"]
    counts, rows, start = [PART_SCHEMA.empty_table().select(PART_SCHEMA.names[:5])], [], 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(BATCH, columns=DOC_SCHEMA.names):
            docs = pa.Table.from_batches([batch]).select(DOC_SCHEMA.names).cast(DOC_SCHEMA)
            d = decide(index, docs, start)
            dec, data, start = d.table, docs, start + docs.num_rows
            if dec.num_rows != docs.num_rows or not dec["id"].equals(docs["id"]):
                raise RuntimeError(f"{stage}: the decisions for {path} do not match its rows")
            for col, values in d.data_columns.items():
                if col in data.column_names:  # e.g. quality buckets as domains
                    data = data.set_column(data.column_names.index(col), col, values)
                else:
                    data = data.append_column(col, values)
            data = data.select(data_schema.names).cast(data_schema)
            writers["data"].write_table(data.filter(pc.equal(dec["decision"], KEPT)))
            stages = pa.array([stage] * dec.num_rows, pa.string())
            ledger = dec.add_column(1, "stage", stages).cast(LEDGER_SCHEMA)
            writers["ledger"].write_table(ledger)
            for sub, table in d.outputs.items():
                if sub not in outputs:
                    raise ValueError(f"{stage}: output {sub!r} is not declared")
                if sub not in writers:
                    writers[sub] = writer(sub, table.schema)
                writers[sub].write_table(table)
            by = dec.select(["decision", "reason"]).append_column("domain", docs["domain"])
            if count_rule:  # count "rule=value<threshold" reasons by their rule
                rule = pc.replace_substring_regex(dec["reason"], pattern="=.*$", replacement="")
                by = by.set_column(1, "reason", rule)
            by = by.append_column("words", docs["n_words"])
            agg = by.group_by(keys).aggregate([("words", "count"), ("words", "sum")])
            agg = agg.rename_columns({"words_count": "n", "words_sum": "words"})
            counts.append(agg.select(PART_SCHEMA.names[:5]).cast(PART_SCHEMA.remove(5)))
            rows += [{"row": json.dumps(r, default=float)} for r in d.rows]
    finally:
        for w in writers.values():
            w.close()
    total = pa.concat_tables(counts).group_by(keys).aggregate([("n", "sum"), ("words", "sum")])
    out = total.rename_columns({"n_sum": "n", "words_sum": "words"})
    out = out.append_column("row", pa.nulls(out.num_rows, pa.string()))
    summary = pa.Table.from_pylist(rows, schema=PART_SCHEMA)
    return pa.concat_tables([out.select(PART_SCHEMA.names).cast(PART_SCHEMA), summary])


@dataclass
class Written:
    """What the tasks wrote: counts per domain and the stages' summary rows."""

    per_domain: dict[str, dict[str, Any]]
    """``{domain: {in, kept, removed, tokens_in, tokens_kept, reasons: {reason: n}}}`` (tokens
    are whitespace words)."""
    removed_reasons: dict[str, int]
    rows: list[dict[str, Any]]

    @property
    def n_in(self) -> int:
        return sum(e["in"] for e in self.per_domain.values())

    @property
    def n_kept(self) -> int:
        return sum(e["kept"] for e in self.per_domain.values())

    @property
    def tokens_in(self) -> int:
        return sum(e["tokens_in"] for e in self.per_domain.values())

    @property
    def tokens_kept(self) -> int:
        return sum(e["tokens_kept"] for e in self.per_domain.values())

    @classmethod
    def from_parts(cls, table: pa.Table) -> Written:
        per_domain: dict[str, dict[str, Any]] = {}
        removed: dict[str, int] = {}
        rows: list[dict[str, Any]] = []
        zero = {"in": 0, "kept": 0, "removed": 0, "tokens_in": 0, "tokens_kept": 0}
        for r in table.to_pylist():
            if r["row"] is not None:
                rows.append(json.loads(r["row"]))
                continue
            e = per_domain.setdefault(r["domain"], {**zero, "reasons": {}})
            kept = r["decision"] == KEPT
            for k, v in (("in", r["n"]), ("tokens_in", r["words"])):
                e[k] += v
            e["kept" if kept else "removed"] += r["n"]
            e["tokens_kept"] += r["words"] if kept else 0
            if not kept:
                removed[r["reason"]] = removed.get(r["reason"], 0) + r["n"]
            if r["reason"] is not None:
                e["reasons"][r["reason"]] = e["reasons"].get(r["reason"], 0) + r["n"]
        return cls(dict(sorted(per_domain.items())), removed, rows)


class PoolStage:
    """A running pool stage: its pool, key, timings, and the shared write and publish steps."""

    def __init__(
        self,
        stage: str,
        cfg: PipelineConfig,
        pool: JobResult,
        key: str,
        say: Callable[[str], None],
    ):
        self.stage, self.cfg, self.pool, self.key, self.say = stage, cfg, pool, key, say
        self.t0 = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.parts = part_files(pool.data_path)

    @property
    def source(self) -> str:
        """The stage whose output is the pool read here."""
        return self.pool.stage

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Record the time of a block as ``timings[name]`` (seconds)."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - t, 3)

    def read_ids(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ids, domains and the number of rows of each pool part, in part order (the driver
        reads only these two string columns); checks the count against the pool's manifest."""
        ids: list[str] = []
        domains: list[str] = []
        sizes: list[int] = []
        for path in self.parts:
            t = pq.read_table(path, columns=["id", "domain"])
            ids += t["id"].to_pylist()
            domains += t["domain"].to_pylist()
            sizes.append(t.num_rows)
        expected = self.pool.counts.get("out")
        if expected is not None and len(ids) != expected:
            raise RuntimeError(
                f"{self.stage} read {len(ids)} documents, but {self.source} wrote {expected}"
            )
        return np.asarray(ids, dtype=object), np.asarray(domains, dtype=object), np.asarray(sizes)

    def write(
        self,
        spark: SparkSession | None,
        w: StageWriter,
        decide: Decide,
        *,
        data_schema: pa.Schema = DOC_SCHEMA,
        outputs: Sequence[str] = (),
        count_rule: bool = False,
    ) -> Written:
        """One Spark task per part (``spark=None``: the parts in this process, same output):
        ``decide`` each batch, write ``data/``, ``ledger/`` and the declared extra
        ``outputs``; return the counts and summary rows. ``count_rule``: reasons of the form
        ``rule=value<threshold`` are counted by ``rule`` (the ledger keeps the value)."""
        out_dir, stage = str(w.tmp), self.stage
        for sub in ("data", "ledger", *outputs):
            makedirs(w.path(sub))

        def task(i: int, p: str) -> pa.Table:
            return _write_part(
                p, i, out_dir, stage, decide, data_schema, tuple(outputs), count_rule
            )

        if spark is None:
            res = pa.concat_tables(
                [PART_SCHEMA.empty_table()] + [task(i, p) for i, p in enumerate(self.parts)]
            )
        else:
            res = map_parts(spark, self.parts, task, PART_SCHEMA)
        return Written.from_parts(res)

    def write_decisions(
        self, spark: SparkSession, w: StageWriter, decisions: pa.Table, sizes: np.ndarray
    ) -> Written:
        """Write a stage that decided on the driver: ``decisions`` (one row per pool document,
        in part order, :data:`DECISION_SCHEMA`) are cut per part into ``_decisions/``, and one
        task per part applies its cut."""
        dec_dir = w.scratch("_decisions")
        makedirs(dec_dir)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        for i in range(len(self.parts)):
            chunk = decisions.slice(int(offsets[i]), int(sizes[i]))
            pq.write_table(chunk, dec_dir / f"part-{i:05d}.parquet")
        written = self.write(spark, w, _FromFiles(str(dec_dir)))
        w.discard("_decisions")
        removed = decisions.filter(pc.equal(decisions["decision"], REMOVED))["reason"].to_pylist()
        want = (decisions.num_rows - len(removed), dict(Counter(removed)))
        if (written.n_kept, written.removed_reasons) != want:
            raise RuntimeError(
                f"{self.stage} accounting mismatch: decided (kept, removed) {want}, wrote "
                f"{(written.n_kept, written.removed_reasons)}"
            )
        return written

    def counts(self, written: Written, reasons: Sequence[str] = ()) -> dict[str, Any]:
        """The common counts block of the manifest (``reasons``: removal reasons to list even
        when no document was removed for them)."""
        removed = {r: 0 for r in reasons} | written.removed_reasons
        return {
            "in": written.n_in,
            "kept": written.n_kept,
            "out": written.n_kept,
            "removed": written.n_in - written.n_kept,
            "quarantined": 0,
            "removed_reasons": removed,
        }

    def commit(
        self,
        w: StageWriter,
        written: Written,
        manifest: dict[str, Any],
        report: Callable[[dict[str, Any]], str],
        *,
        seed: bool = True,
    ) -> JobResult:
        """Check the accounting, then publish the stage: ``manifest`` (the stage's own fields;
        config, inputs, timings and the common outputs are added), ``report.md``, marker."""
        check_accounting(
            self.stage,
            w.tmp,
            self.source,
            self.pool.counts.get("out"),
            written.n_in,
            written.n_kept,
        )
        section = getattr(self.cfg, self.stage)
        self.timings["total_s"] = time.perf_counter() - self.t0
        inputs = dict(manifest.pop("inputs", {}))
        manifests = {self.source: self.pool.manifest_hash, **inputs.pop("manifests", {})}
        full: dict[str, Any] = {
            "config": section.model_dump(mode="json"),
            "config_hash": config_hash(section),
            **({"seed": self.cfg.seed} if seed else {}),
            "inputs": {"manifests": manifests, **inputs},
            **manifest,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }
        full["outputs"] = {
            "data": "data",
            "ledger": "ledger",
            **full.get("outputs", {}),
            "report": "report.md",
        }
        full = json.loads(json.dumps(full, default=float))
        w.path("report.md").write_text(report(full), encoding="utf-8")
        return w.commit(full)


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> list[str]:
    """Markdown table lines; ``align``: one letter per column, ``l`` or ``r`` (default: the
    first column left, the others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|",
        *("| " + " | ".join(str(x) for x in r) + " |" for r in rows),
    ]


def composition_table(per_domain: dict[str, dict[str, Any]], random: bool = False) -> list[str]:
    """The report's per-domain composition of a selection (``random``: with the random
    baseline's share)."""
    rows = []
    for d, e in per_domain.items():
        ratio = e["selected_share"] / e["pool_share"] if e["pool_share"] else 0.0
        rand = [f"{e['random_share']:.3f}"] if random else []
        share = f"{e['selected_share']:.3f}"
        rows.append((d, e["in"], f"{e['pool_share']:.3f}", e["kept"], share, *rand, f"{ratio:.2f}"))
    head = ["domain", "pool", "pool share", "selected", "selected share"]
    return md_table([*head, *(["random share"] if random else []), "ratio"], rows)


class _FromFiles:
    """``decide`` for driver-side decisions: the part's cut from ``_decisions/``, read once."""

    def __init__(self, folder: str):
        self.folder = folder
        self._cache: tuple[int, pa.Table] | None = None

    def __call__(self, index: int, docs: pa.Table, start: int) -> Decisions:
        if self._cache is None or self._cache[0] != index:
            path = os.path.join(self.folder, f"part-{index:05d}.parquet")
            self._cache = (index, pq.read_table(path).cast(DECISION_SCHEMA))
        return Decisions(self._cache[1].slice(start, docs.num_rows))
