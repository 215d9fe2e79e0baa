"""The ingest Spark job: accounting of every record, quarantine, skips, real data."""

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from curamix.config import build_config
from curamix.io.store import MARKER
from curamix.pipelines.ingest import run_ingest
from curamix.schema import DOC_SCHEMA, LEDGER_SCHEMA, QUARANTINE_SCHEMA
from tests.conftest import MAX_DOC_BYTES, write_jsonl

pytestmark = pytest.mark.spark


def _cfg(run_dir: Path, inputs: list[dict], **ingest):
    ingest = {"engine": "spark", **ingest}  # these tests are about the Spark job
    return build_config(
        {"run_dir": str(run_dir), "ingest": {"inputs": inputs, **ingest}}, use_env=False
    )


def _sorted_rows(path: Path) -> list[dict]:
    t = pq.read_table(path)
    return sorted(t.to_pylist(), key=lambda r: json.dumps(r, sort_keys=True, default=str))


def test_in_process_engine_writes_what_the_spark_job_writes(spark, bad_inputs, tmp_path):
    """``engine: local`` (the driver, no Spark jobs) gives the same documents, quarantine
    (duplicate ids included), ledger and counts, part file by part file; and the finished
    stage is reused whatever the engine."""
    folder, _ = bad_inputs
    on_spark = run_ingest(
        spark, _cfg(tmp_path / "s", [{"path": str(folder)}], max_doc_bytes=MAX_DOC_BYTES)
    )
    local_cfg = _cfg(
        tmp_path / "l", [{"path": str(folder)}], max_doc_bytes=MAX_DOC_BYTES, engine="local"
    )
    in_process = run_ingest(spark, local_cfg)
    assert on_spark.manifest["engine"] == "spark" and in_process.manifest["engine"] == "local"
    assert in_process.counts == on_spark.counts
    assert in_process.counts["quarantine_reasons"]["duplicate_id"] >= 2
    for sub in ("data", "quarantine", "ledger"):
        parts = sorted(p.name for p in (on_spark.path / sub).glob("part-*.parquet"))
        assert parts == sorted(p.name for p in (in_process.path / sub).glob("part-*.parquet"))
        for name in parts:
            assert _sorted_rows(in_process.path / sub / name) == _sorted_rows(
                on_spark.path / sub / name
            ), (sub, name)
    assert in_process.path.name == on_spark.path.name  # same stage key
    again = run_ingest(
        spark, _cfg(tmp_path / "l", [{"path": str(folder)}], max_doc_bytes=MAX_DOC_BYTES)
    )
    assert again.skipped and again.path == in_process.path


def test_bad_input_folder_gives_exact_counts(spark, bad_inputs, tmp_path):
    folder, expected = bad_inputs
    res = run_ingest(
        spark, _cfg(tmp_path / "run", [{"path": str(folder)}], max_doc_bytes=MAX_DOC_BYTES)
    )
    c = res.counts
    assert c["quarantine_reasons"] == expected["reasons"]
    assert c["kept"] == expected["ingested"] and c["quarantined"] == expected["quarantined"]
    assert c["in"] == c["kept"] + c["quarantined"] and c["out"] == c["kept"]
    per_file = {
        Path(k).name: (v["records"], v["ingested"], v["quarantined"])
        for k, v in c["per_file"].items()
    }
    assert per_file == expected["per_file"]
    assert [Path(p).name for p in res.manifest["ignored_files"]] == expected["ignored"]

    docs = pq.read_table(res.data_path)
    quarantine = pq.read_table(res.quarantine_path)
    ledger = pq.read_table(res.ledger_path)
    assert docs.schema.names == DOC_SCHEMA.names
    assert set(QUARANTINE_SCHEMA.names) <= set(quarantine.schema.names)
    assert ledger.schema.names == LEDGER_SCHEMA.names
    assert (
        docs.num_rows == expected["ingested"] and len(set(docs["id"].to_pylist())) == docs.num_rows
    )
    assert quarantine.num_rows == expected["quarantined"]
    # The ledger holds one row per input record: kept docs and quarantined records.
    decisions = Counter(ledger["decision"].to_pylist())
    assert decisions == {"kept": expected["ingested"], "quarantined": expected["quarantined"]}
    # Duplicate ids: the first occurrence (by file path, then line) is kept.
    q = quarantine.to_pylist()
    dups = {r["ref_id"]: r for r in ledger.to_pylist() if r["reason"] == "duplicate_id"}
    assert set(dups) == {"g1", "g2"}
    kept_g2 = next(d for d in docs.to_pylist() if d["id"] == "g2")
    assert Path(kept_g2["source"]).name == "mixed.jsonl"
    g1 = next(
        r for r in q if r["reason"] == "duplicate_id" and Path(r["source"]).name == "mixed.jsonl"
    )
    assert g1["record"] == 16 and "first seen at" in g1["detail"]
    assert json.loads(g1["raw"])["text"] == "same id as an earlier record of this file"
    assert all(r["source"] and r["reason"] for r in q)


def test_second_identical_run_skips_and_changed_input_reruns(spark, tmp_path):
    data = tmp_path / "in"
    write_jsonl(data / "a.jsonl", [{"id": f"a{i}", "text": f"doc {i}"} for i in range(20)])
    cfg = _cfg(tmp_path / "run", [{"path": str(data)}])
    first = run_ingest(spark, cfg)
    marker_time = (first.path / MARKER).stat().st_mtime_ns
    second = run_ingest(spark, cfg)
    assert not first.skipped and second.skipped and second.path == first.path
    assert (first.path / MARKER).stat().st_mtime_ns == marker_time  # untouched
    write_jsonl(data / "a.jsonl", [{"id": f"a{i}", "text": f"doc {i}"} for i in range(21)])
    third = run_ingest(spark, cfg)
    assert not third.skipped and third.path != first.path and third.counts["kept"] == 21
    changed_cfg = run_ingest(spark, _cfg(tmp_path / "run", [{"path": str(data), "domain": "x"}]))
    assert not changed_cfg.skipped and list(changed_cfg.counts["per_domain"]) == ["x"]


def test_split_mode_and_meta(spark, tmp_path):
    text = "\n\n".join("paragraph " + "w " * 200 for _ in range(10))
    write_jsonl(
        tmp_path / "in" / "big.jsonl",
        [{"id": "big", "text": text, "url": "http://x"}, {"id": "small", "text": "hi"}],
    )
    res = run_ingest(
        spark,
        _cfg(
            tmp_path / "run", [{"path": str(tmp_path / "in")}], max_doc_bytes=1000, oversize="split"
        ),
    )
    docs = sorted(pq.read_table(res.data_path).to_pylist(), key=lambda d: d["id"])
    chunks = [d for d in docs if d["id"].startswith("big#")]
    assert len(chunks) > 1 and res.counts["kept"] == 2 and res.counts["out"] == len(chunks) + 1
    chunks.sort(key=lambda d: json.loads(d["meta"])["chunk"])
    assert "".join(d["text"] for d in chunks) == text
    assert json.loads(chunks[0]["meta"])["url"] == "http://x"


def test_spark_job_matches_the_plain_kernel(spark, bad_inputs, tmp_path):
    """The Spark job writes what the in-process kernel reads, less the duplicate ids."""
    from curamix.config import IngestConfig, InputSpec
    from curamix.io.inputs import expand_inputs
    from curamix.io.records import read_unit_table

    folder, _ = bad_inputs
    res = run_ingest(
        spark, _cfg(tmp_path / "run", [{"path": str(folder)}], max_doc_bytes=MAX_DOC_BYTES)
    )
    units = expand_inputs(
        IngestConfig(inputs=[InputSpec(path=str(folder))], max_doc_bytes=MAX_DOC_BYTES)
    ).units
    local = pa.concat_tables([read_unit_table(u) for u in units])
    local_docs = local.filter(pc.is_null(local["reason"])).select(DOC_SCHEMA.names)
    spark_docs = pq.read_table(res.data_path)
    dup = {
        r["ref_id"]
        for r in pq.read_table(res.quarantine_path).to_pylist()
        if r["reason"] == "duplicate_id"
    }
    spark_keys = sorted((d["id"], d["source"]) for d in spark_docs.to_pylist())
    local_keys = sorted((d["id"], d["source"]) for d in local_docs.to_pylist())
    assert set(spark_keys) <= set(local_keys) and len(local_keys) - len(spark_keys) == len(dup)
    by_key: dict = {}
    for d in local_docs.to_pylist():
        by_key.setdefault((d["id"], d["source"]), d)  # the first occurrence is the one kept
    assert all(by_key[(d["id"], d["source"])] == d for d in spark_docs.to_pylist())
    # One part file per read unit, whatever the number of Spark workers.
    assert len(list(res.data_path.glob("part-*.parquet"))) == len(units)


@pytest.mark.realdata
@pytest.mark.slow
def test_real_corpus_ingests_every_document(spark, shared_data, tmp_path):
    files = sorted((shared_data / "corpus").glob("*.jsonl.gz"))
    res = run_ingest(
        spark, _cfg(tmp_path / "run", [{"path": str(shared_data / "corpus" / "*.jsonl.gz")}])
    )
    assert (
        res.counts["kept"] == 43_693
        and res.counts["quarantined"] == 0
        and res.counts["out"] == 43_693
    )
    stems = {f.name.removesuffix(".jsonl.gz") for f in files}
    assert set(res.counts["per_domain"]) == stems and len(stems) == 11
    docs = pq.read_table(res.data_path, columns=["id", "domain", "meta"])
    assert docs.num_rows == 43_693
    # ids are "<domain>/<origin>/<local id>": the domain column equals the file stem for every row.
    assert all(
        i.split("/", 1)[0] == d
        for i, d in zip(docs["id"].to_pylist(), docs["domain"].to_pylist(), strict=True)
    )
    assert (
        res.counts["per_domain"]["web"]["kept"] == 1515
        and res.counts["per_domain"]["commonsense"]["kept"] == 9169
    )
    metas = [
        json.loads(m)
        for m, d in zip(docs["meta"].to_pylist(), docs["domain"].to_pylist(), strict=True)
        if d == "web" and m
    ]
    assert metas and all("meta" in m for m in metas)  # web's meta object is kept, not dropped


@pytest.mark.parametrize("engine", ["spark", "local"])
def test_hostile_records_never_stop_the_run(spark, tmp_path, engine):
    """A record that makes the JSON parser recurse (issue 18: it used to stop the run on both
    engines), a UTF-16 file and a non-object line are counted; the rest is ingested."""
    raw = tmp_path / "raw"
    raw.mkdir()
    n = 100_000
    (raw / "deep.jsonl").write_bytes(
        b'{"id": "a", "text": "one"}\n'
        + b"[" * n
        + b"]" * n
        + b'\n[1, 2]\n{"id": "b", "text": "two"}\n'
    )
    lines = "".join(json.dumps({"id": f"u{i}", "text": f"utf16 doc {i}"}) + "\n" for i in range(20))
    (raw / "wide.jsonl").write_bytes(lines.encode("utf-16"))
    res = run_ingest(spark, _cfg(tmp_path / engine, [{"path": str(raw)}], engine=engine))
    c = res.counts
    assert (c["in"], c["kept"], c["quarantined"]) == (24, 22, 2)
    assert c["quarantine_reasons"] == {"not_an_object": 1, "too_deep": 1}
    files = {Path(k).name: v for k, v in c["per_file"].items()}
    assert files["wide.jsonl"] == {"records": 20, "ingested": 20, "quarantined": 0, "rows": 20}
    # A quarantine-rate ceiling stops the stage, naming the file and its rate.
    from curamix.pipelines.ingest import QuarantineRateError

    strict = _cfg(
        tmp_path / f"{engine}-strict", [{"path": str(raw)}], engine=engine, max_quarantine_rate=0.25
    )
    with pytest.raises(QuarantineRateError, match=r"deep\.jsonl: 2 of 4 records \(50\.0%\)"):
        run_ingest(spark, strict)
