"""The pool-stage skeleton: decisions per batch, data + ledger + outputs per part, accounting."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curamix.config import build_config
from curamix.io.store import JobResult, stage_writer
from curamix.pipelines import pool as pool_mod
from curamix.pipelines.pool import (
    Decisions,
    PoolStage,
    decisions_table,
    md_table,
    positions,
)
from curamix.schema import DOC_SCHEMA


def _pool(tmp_path, sizes=(5, 0, 7)) -> JobResult:
    """A fake upstream stage: parts of ``sizes`` documents (one empty), a manifest."""
    folder = tmp_path / "run" / "ingest-k"
    (folder / "data").mkdir(parents=True)
    k = 0
    for i, n in enumerate(sizes):
        rows = []
        for _ in range(n):
            rows.append(
                {
                    "id": f"d{k:03d}",
                    "text": " ".join(["word"] * (k + 1)),
                    "domain": "a" if k % 3 else "b",
                    "source": "s",
                    "n_chars": 5 * (k + 1),
                    "n_words": k + 1,
                    "meta": None,
                }
            )
            k += 1
        pq.write_table(
            pa.Table.from_pylist(rows, schema=DOC_SCHEMA), folder / "data" / f"part-{i:05d}.parquet"
        )
    (folder / "manifest.json").write_text(json.dumps({"counts": {"out": k}}))
    return JobResult("ingest", folder, {"counts": {"out": k}})


def _decide(_i: int, docs: pa.Table, _start: int) -> Decisions:
    """Keep documents with an even number of words; score = words; a scores/ output."""
    words = docs["n_words"].to_numpy()
    kept = words % 2 == 0
    table = decisions_table(
        docs["id"].to_pylist(),
        kept,
        [None if k else "odd" for k in kept],
        words.astype(float),
        [None if k else "d000" for k in kept],
    )
    out = pa.table({"id": docs["id"], "twice": pa.array(words * 2)})
    rows = [{"batch_max": int(words.max())}] if len(words) else []
    return Decisions(table, data_columns={"w": pa.array(words)}, outputs={"x": out}, rows=rows)


def _run(tmp_path, spark, monkeypatch, batch=2):
    monkeypatch.setattr(pool_mod, "BATCH", batch)
    cfg = build_config(
        {"run_dir": str(tmp_path / "run"), "stages": []},
        use_env=False,
    )
    ps = PoolStage("dedup", cfg, _pool(tmp_path), "key", lambda _m: None)
    schema = DOC_SCHEMA.append(pa.field("w", pa.int64()))
    with stage_writer(cfg.run_dir, "dedup", "key") as w:
        written = ps.write(spark, w, _decide, data_schema=schema, outputs=("x",))
        tables = {
            sub: pq.read_table(w.path(sub)).sort_by("id").to_pylist()
            for sub in ("data", "ledger", "x")
        }
        files = sorted(p.name for p in w.path("ledger").iterdir())
    return written, tables, files


def test_skeleton_writes_every_document_once_and_counts_them(tmp_path, monkeypatch):
    written, t, files = _run(tmp_path, None, monkeypatch)
    assert files == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [r["id"] for r in t["ledger"]] == [f"d{k:03d}" for k in range(12)]
    assert {r["stage"] for r in t["ledger"]} == {"dedup"}
    kept = [r for r in t["ledger"] if r["decision"] == "kept"]
    assert [r["id"] for r in t["data"]] == [r["id"] for r in kept]
    assert all(r["n_words"] % 2 == 0 and r["w"] == r["n_words"] for r in t["data"])
    odd = [r for r in t["ledger"] if r["decision"] == "removed"]
    assert all(r["reason"] == "odd" and r["ref_id"] == "d000" for r in odd)
    assert [r["score"] for r in t["ledger"]] == [float(k + 1) for k in range(12)]
    assert [r["twice"] for r in t["x"]] == [2 * (k + 1) for k in range(12)]
    assert (written.n_in, written.n_kept) == (12, 6)
    assert written.removed_reasons == {"odd": 6}
    # domain a: k % 3 != 0 -> k in 1,2,4,5,7,8,10,11 (words k+1); b: k in 0,3,6,9
    a, b = written.per_domain["a"], written.per_domain["b"]
    assert (a["in"], a["kept"], b["in"], b["kept"]) == (8, 4, 4, 2)
    assert a["tokens_in"] == sum(k + 1 for k in range(12) if k % 3)
    assert b["tokens_kept"] == sum(k + 1 for k in range(12) if k % 3 == 0 and (k + 1) % 2 == 0)
    # One summary row per non-empty batch of 2 documents: parts of 5 and 7 -> 3 + 4 batches.
    assert sorted(r["batch_max"] for r in written.rows) == [2, 4, 5, 7, 9, 11, 12]


@pytest.mark.spark
def test_skeleton_on_spark_writes_the_same(tmp_path, spark, monkeypatch):
    local = _run(tmp_path / "local", None, monkeypatch, batch=3)
    on_spark = _run(tmp_path / "spark", spark, monkeypatch, batch=3)
    assert local[1] == on_spark[1] and local[2] == on_spark[2]
    assert local[0].per_domain == on_spark[0].per_domain


def test_mismatched_decisions_are_refused(tmp_path, monkeypatch):
    def wrong(_i, docs, _s):
        ids = docs["id"].to_pylist()[::-1]
        return Decisions(decisions_table(ids, np.ones(len(ids), bool), [None] * len(ids)))

    cfg = build_config(
        {"run_dir": str(tmp_path / "run"), "stages": []},
        use_env=False,
    )
    ps = PoolStage("x", cfg, _pool(tmp_path, sizes=(3,)), "key", lambda _m: None)
    with (
        stage_writer(cfg.run_dir, "x", "key") as w,
        pytest.raises(RuntimeError, match=r"x: the decisions for .* do not match its rows"),
    ):
        ps.write(None, w, wrong)


def test_positions_and_tables():
    pos, has = positions(np.array(["c", "a", "z"], dtype=object), np.array(["a", "b", "c"]))
    assert has.tolist() == [True, True, False] and pos[:2].tolist() == [2, 0]
    pos, has = positions(np.array(["a"], dtype=object), np.array([], dtype=str))
    assert has.tolist() == [False]
    assert md_table(["d", "n"], [("x", 1)]) == ["| d | n |", "|---|---:|", "| x | 1 |"]
    t = decisions_table(["a", "b"], np.array([True, False]), [None, "r"], np.array([np.nan, 1.0]))
    assert t.to_pylist() == [
        {"id": "a", "decision": "kept", "reason": None, "score": None, "ref_id": None},
        {"id": "b", "decision": "removed", "reason": "r", "score": 1.0, "ref_id": None},
    ]
