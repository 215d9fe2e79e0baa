"""The per-file reading kernel, without Spark."""

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from curamix.config import IngestConfig, InputSpec
from curamix.io.inputs import expand_inputs
from curamix.io.records import (
    STATS_REASON,
    ReadUnit,
    count_words,
    file_stem,
    hash_id,
    read_unit_table,
    split_text,
)
from tests.conftest import MAX_DOC_BYTES, write_jsonl


def _read_all(folder: Path, **ingest) -> pa.Table:
    units = expand_inputs(IngestConfig(inputs=[InputSpec(path=str(folder))], **ingest)).units
    return pa.concat_tables([read_unit_table(u) for u in units])


def test_every_bad_record_is_quarantined_with_its_reason(bad_inputs):
    folder, expected = bad_inputs
    rows = _read_all(folder, max_doc_bytes=MAX_DOC_BYTES).to_pylist()
    stats = {Path(r["source"]).name: r["record"] for r in rows if r["reason"] == STATS_REASON}
    docs = [r for r in rows if r["reason"] is None]
    bad = [r for r in rows if r["reason"] not in (None, STATS_REASON)]
    # Duplicate ids are found by the ingest job across files; here they are still documents.
    want = {k: v for k, v in expected["reasons"].items() if k != "duplicate_id"}
    assert Counter(r["reason"] for r in bad) == want
    assert {name: rec for name, (rec, _, _) in expected["per_file"].items()} == stats
    assert len(docs) == expected["ingested"] + expected["reasons"]["duplicate_id"]
    for r in bad:  # each quarantined row says where it came from
        assert r["source"] and r["record"] >= 0 and r["id"] == f"{r['source']}#{r['record']}"


def test_record_numbers_raw_text_and_details(bad_inputs):
    folder, _ = bad_inputs
    rows = read_unit_table(
        ReadUnit(
            format="jsonl",
            paths=(str(folder / "mixed.jsonl"),),
            root=str(folder),
            domains=("mixed",),
            max_doc_bytes=MAX_DOC_BYTES,
        )
    ).to_pylist()
    by_reason = {}
    for r in rows:
        if r["reason"]:
            by_reason.setdefault(r["reason"], r)  # the first of each reason
    assert by_reason["invalid_json"]["record"] == 6
    assert by_reason["invalid_json"]["raw"] == '{"id": "broken", "text": "no closing'
    assert by_reason["invalid_json"]["detail"].startswith("Unterminated string")
    assert (
        by_reason["invalid_utf8"]["record"] == 7 and "caf\ufffd" in by_reason["invalid_utf8"]["raw"]
    )
    surrogate = [r for r in rows if r["reason"] == "invalid_utf8"][1]
    assert surrogate["record"] == 19 and "lone surrogate" in surrogate["detail"]
    assert "5000 bytes > max_doc_bytes=2000" in by_reason["too_large"]["detail"]
    assert json.loads(by_reason["too_large"]["raw"])["text"] == "word " * 1000  # nothing lost
    assert by_reason["not_an_object"]["detail"] == "expected a JSON object, got list"
    docs = {r["id"]: r for r in rows if r["reason"] is None}
    assert docs["g0"]["meta"] == '{"lang": "en"}' and docs["g0"]["domain"] == "mixed"
    assert docs["g0"]["n_words"] == 8 and docs["g0"]["n_chars"] == len(
        "good document number 0 with a few words"
    )
    hashed = [d for d in docs if d.startswith("mixed/")]
    assert len(hashed) == 1 and len(hashed[0]) == len("mixed/") + 20
    # The blank line 17 is not a record; line numbers keep counting it.
    assert docs[hashed[0]]["record"] == 18


def test_truncated_and_unreadable_files(bad_inputs):
    folder, expected = bad_inputs
    for name, reason in [
        ("trunc.jsonl.gz", "truncated_file"),
        ("trunc.jsonl.zst", "truncated_file"),
        ("garbage.jsonl.gz", "unreadable_file"),
    ]:
        rows = read_unit_table(
            ReadUnit(format="jsonl", paths=(str(folder / name),), root=str(folder), domains=("d",))
        ).to_pylist()
        q = [r for r in rows if r["reason"] not in (None, STATS_REASON)]
        assert [r["reason"] for r in q] == [reason]
        n_docs = sum(r["reason"] is None for r in rows)
        assert n_docs == expected["per_file"][name][1]
        assert q[0]["record"] == (0 if reason == "unreadable_file" else n_docs + 1)


def test_zstd_multi_frame_reads_whole(tmp_path):
    import zstandard

    c = zstandard.ZstdCompressor()
    data = c.compress(b'{"text": "frame one"}\n') + c.compress(
        b'{"text": "frame two"}\n{"text": "three"}\n'
    )
    (tmp_path / "x.jsonl.zst").write_bytes(data)
    rows = read_unit_table(
        ReadUnit(
            format="jsonl",
            paths=(str(tmp_path / "x.jsonl.zst"),),
            root=str(tmp_path),
            domains=("x",),
        )
    ).to_pylist()
    assert [r["text"] for r in rows if r["reason"] is None] == ["frame one", "frame two", "three"]


def test_oversize_split_keeps_every_byte(tmp_path):
    text = "\n\n".join(f"paragraph {i} " + "word " * 50 for i in range(40))
    write_jsonl(tmp_path / "big.jsonl", [{"id": "doc", "text": text, "k": 1}])
    rows = read_unit_table(
        ReadUnit(
            format="jsonl",
            paths=(str(tmp_path / "big.jsonl"),),
            root=str(tmp_path),
            domains=("d",),
            max_doc_bytes=1000,
            oversize="split",
        )
    ).to_pylist()
    docs = [r for r in rows if r["reason"] is None]
    assert len(docs) > 1 and "".join(d["text"] for d in docs) == text
    assert all(len(d["text"].encode()) <= 1000 for d in docs)
    assert [d["id"] for d in docs] == [f"doc#{k}" for k in range(len(docs))]
    meta = json.loads(docs[1]["meta"])
    assert meta == {"k": 1, "parent_id": "doc", "chunk": 1, "n_chunks": len(docs)}
    assert all(d["text"].endswith("\n\n") for d in docs[:-1])  # cut at paragraph breaks


@pytest.mark.parametrize(
    "text,max_bytes",
    [
        ("a" * 10, 3),
        ("héllo wörld " * 30, 7),
        ("line\n" * 50, 12),
        ("日本語のテキスト" * 20, 5),
        ("x", 1),
    ],
)
def test_split_text_invariants(text, max_bytes):
    chunks = split_text(text, max_bytes)
    assert "".join(chunks) == text
    assert all(0 < len(c.encode()) <= max_bytes for c in chunks)


def test_split_text_rejects_non_positive():
    with pytest.raises(ValueError, match="max_bytes must be positive, got 0"):
        split_text("abc", 0)


def test_domain_field_and_missing_domain(tmp_path):
    write_jsonl(
        tmp_path / "pool.jsonl",
        [{"text": "a", "src": "wiki"}, {"text": "b"}, {"text": "c", "src": 3}],
    )
    units = expand_inputs(
        IngestConfig(inputs=[InputSpec(path=str(tmp_path), domain_field="src")])
    ).units
    rows = read_unit_table(units[0]).to_pylist()
    assert [r["domain"] for r in rows if r["reason"] is None] == ["wiki"]
    assert [r["reason"] for r in rows if r["reason"] not in (None, STATS_REASON)] == [
        "missing_domain"
    ] * 2


def test_hash_ids_are_stable_and_distinct():
    a = hash_id("web", "x/part-0.jsonl", 3, "same text")
    assert a == hash_id("web", "x/part-0.jsonl", 3, "same text")
    assert a != hash_id("web", "x/part-0.jsonl", 4, "same text")
    assert a != hash_id("web", "x/part-1.jsonl", 3, "same text")


def test_stems_and_words():
    assert file_stem("/a/books.jsonl.gz") == "books"
    assert file_stem("wiki.parquet") == "wiki" and file_stem("x.jsonl.zst") == "x"
    assert count_words("  two\twords\n") == 2


def test_hf_save_to_disk_folder(tmp_path):
    import datasets

    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"text": ["one", "two", "three"], "label": [0, 1, 0]}
            ),
            "test": datasets.Dataset.from_dict({"text": ["four"], "label": [1]}),
        }
    )
    dd.save_to_disk(str(tmp_path / "myset"))
    ex = expand_inputs(
        IngestConfig(
            inputs=[InputSpec(path=str(tmp_path / "myset"), format="hf", hf_split="train")]
        )
    )
    rows = pa.concat_tables([read_unit_table(u) for u in ex.units]).to_pylist()
    docs = [r for r in rows if r["reason"] is None]
    assert [d["text"] for d in docs] == ["one", "two", "three"]
    assert {d["domain"] for d in docs} == {"myset"} and json.loads(docs[1]["meta"]) == {"label": 1}
    ex_all = expand_inputs(
        IngestConfig(inputs=[InputSpec(path=str(tmp_path / "myset"), format="hf")])
    )
    assert sum(read_unit_table(u).num_rows for u in ex_all.units) == 4 + len(
        ex_all.units
    )  # + stats rows
