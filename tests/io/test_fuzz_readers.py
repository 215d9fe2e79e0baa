"""Property-based fuzzing of the input readers and the config (hypothesis).

Whatever bytes a file holds, reading it completes; per file, records read = records ingested
+ records quarantined, no record is both; and every ingested text equals the text of its
source record. ``make test`` runs a bounded number of examples (profile ``ci``);
``bench/fuzz.sh`` runs the long profile (``CURAMIX_FUZZ=long``).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curamix.config import ConfigError, load_config
from curamix.io.records import STATS_REASON, ReadUnit, read_unit_table

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("CURAMIX_FUZZ", "ci"))

TEXTS = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=40
)
RECORD = st.fixed_dictionaries(
    {"text": TEXTS},
    optional={
        "id": st.one_of(st.text(max_size=8), st.integers(), st.none(), st.booleans()),
        "meta": st.one_of(st.integers(), st.floats(allow_nan=False), st.lists(st.integers())),
    },
)
LINE_KINDS = st.sampled_from(
    [
        "record",
        "record",
        "record",
        "deep",
        "non_object",
        "dup_keys",
        "surrogate",
        "nul",
        "huge",
        "blank",
        "garbage",
        "big_int",
    ]
)


def _line(kind: str, rec: dict, rng: random.Random) -> bytes:
    if kind == "record":
        return json.dumps(rec, ensure_ascii=rng.random() < 0.5).encode()
    if kind == "deep":
        n = rng.choice([50, 200, 5000, 100_000])
        return ("[" * n + "]" * n).encode()
    if kind == "non_object":
        return rng.choice([b"[1, 2]", b'"text"', b"42", b"null", b"true"])
    if kind == "dup_keys":
        return b'{"text": "first", "text": "second", "id": "dup"}'
    if kind == "surrogate":
        return b'{"text": "lone \\ud800 surrogate"}'
    if kind == "nul":
        return b'{"text": "a\\u0000b"}' if rng.random() < 0.5 else b'{"text": "raw\x00nul"}'
    if kind == "huge":
        return json.dumps({"text": "w " * rng.choice([10, 300_000])}).encode()
    if kind == "blank":
        return b"   "
    if kind == "big_int":
        return b'{"text": "n", "id": 1' + b"0" * 5000 + b"}"
    return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 30)))


def _corrupt(data: bytes, how: str, rng: random.Random) -> bytes:
    if not data or how == "none":
        return data
    if how == "truncate":
        return data[: rng.randrange(len(data))]
    if how == "bitflip":
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    if how == "insert":
        i = rng.randrange(len(data))
        return data[:i] + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 16))) + data[i:]
    if how == "crlf":
        return data.replace(b"\n", b"\r\n", rng.randint(1, 5))
    if how == "utf8_bom":
        return b"\xef\xbb\xbf" + data
    if how == "latin1":
        return data.decode("utf-8", "replace").encode("latin-1", "replace")
    raise AssertionError(how)


def _accounting(rows: list[dict]) -> tuple[int, set[int], set[int]]:
    stats = [r for r in rows if r["reason"] == STATS_REASON]
    assert len(stats) == 1, "one statistics row per file"
    docs = {r["record"] for r in rows if r["reason"] is None}
    quarantined = [r["record"] for r in rows if r["reason"] not in (None, STATS_REASON)]
    assert len(quarantined) == len(set(quarantined)), "a record quarantined twice"
    return stats[0]["record"], docs, set(quarantined)


def _read(path, fmt="jsonl", max_doc_bytes=200_000) -> list[dict]:
    unit = ReadUnit(
        format=fmt,
        paths=(str(path),),
        root=str(path.parent),
        domains=("d",),
        max_doc_bytes=max_doc_bytes,
        oversize="split",
    )
    return read_unit_table(unit).to_pylist()


def _source_lines(data: bytes) -> list[bytes]:
    """The file's records as the reader numbers them (1-based lines)."""
    return data.split(b"\n")


@given(
    records=st.lists(st.tuples(LINE_KINDS, RECORD), max_size=12),
    how=st.sampled_from(["none", "truncate", "bitflip", "insert", "crlf", "utf8_bom", "latin1"]),
    seed=st.integers(0, 2**16),
)
def test_jsonl_reader_accounts_for_every_record(tmp_path, records, how, seed):
    rng = random.Random(seed)
    data = b"\n".join(_line(k, r, rng) for k, r in records) + b"\n"
    data = _corrupt(data, how, rng)
    path = tmp_path / "f.jsonl"
    path.write_bytes(data)
    rows = _read(path)
    n, docs, quarantined = _accounting(rows)
    assert n == len(docs) + len(quarantined) and not docs & quarantined
    lines = _source_lines(data[3:] if data.startswith(b"\xef\xbb\xbf") else data)
    by_record: dict[int, list[str]] = {}
    for r in rows:
        if r["reason"] is None:
            by_record.setdefault(r["record"], []).append(r["text"])
    for rec, texts in by_record.items():
        source = json.loads(lines[rec - 1].rstrip(b"\r").decode("utf-8"))["text"]
        assert "".join(texts) == source  # split chunks rejoin to the source text


@given(
    records=st.lists(RECORD, max_size=10),
    how=st.sampled_from(["none", "truncate", "bitflip"]),
    codec=st.sampled_from(["gz", "zst"]),
    seed=st.integers(0, 2**16),
)
def test_compressed_jsonl_completes_and_accounts(tmp_path, records, how, codec, seed):
    import zstandard

    rng = random.Random(seed)
    raw = b"".join(json.dumps(r).encode() + b"\n" for r in records)
    packed = gzip.compress(raw) if codec == "gz" else zstandard.ZstdCompressor().compress(raw)
    path = tmp_path / f"f.jsonl.{codec}"
    path.write_bytes(_corrupt(packed, how, rng))
    rows = _read(path)
    n, docs, quarantined = _accounting(rows)
    assert n == len(docs) + len(quarantined) and not docs & quarantined
    if how == "none":
        got = {r["record"]: r["text"] for r in rows if r["reason"] is None}
        assert all(records[k - 1]["text"] == t for k, t in got.items())


@given(
    texts=st.lists(st.one_of(TEXTS, st.none()), max_size=10),
    how=st.sampled_from(["none", "truncate", "bitflip"]),
    seed=st.integers(0, 2**16),
)
def test_parquet_reader_completes_and_accounts(tmp_path, texts, how, seed):
    rng = random.Random(seed)
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": pa.array(texts, pa.string())}), buf)
    path = tmp_path / "f.parquet"
    path.write_bytes(_corrupt(buf.getvalue(), how, rng))
    rows = _read(path, fmt="parquet")
    n, docs, quarantined = _accounting(rows)
    assert n == len(docs) + len(quarantined) and not docs & quarantined
    if how == "none":
        assert n == len(texts)
        for r in rows:
            if r["reason"] is None:
                assert texts[r["record"] - 1] == r["text"]


def test_deep_nesting_is_quarantined_before_parsing(tmp_path):
    n = 200_000
    path = tmp_path / "deep.jsonl"
    path.write_bytes(
        b'{"text": "ok"}\n' + b"[" * n + b"]" * n + b"\n" + b'{"text": "[[[[ in a string"}\n'
    )
    rows = _read(path)
    reasons = [(r["record"], r["reason"]) for r in rows if r["reason"] != STATS_REASON]
    assert reasons == [(1, None), (2, "too_deep"), (3, None)]


def test_utf16_file_is_decoded_by_its_bom_and_counted_right(tmp_path):
    lines = "".join(json.dumps({"id": str(i), "text": f"doc {i} é"}) + "\n" for i in range(20))
    for enc in ("utf-16", "utf-16-be", "utf-32"):
        path = tmp_path / f"f-{enc}.jsonl"
        bom = {"utf-16-be": b"\xfe\xff"}.get(enc, b"")
        path.write_bytes(bom + lines.encode(enc))
        rows = _read(path)
        n, docs, quarantined = _accounting(rows)
        assert (n, len(docs), len(quarantined)) == (20, 20, 0), enc
        assert [r["text"] for r in rows if r["reason"] is None][3] == "doc 3 é"


def test_unconvertible_parquet_value_costs_only_its_row(tmp_path):
    # A timestamp far outside Python's datetime range fails to convert; only its row is lost.
    t = pa.table(
        {
            "text": ["a", "b", "c"],
            "when": pa.array([0, 2**61, 5], pa.timestamp("ms")),
        }
    )
    path = tmp_path / "t.parquet"
    pq.write_table(t, path)
    rows = _read(path, fmt="parquet")
    got = [(r["record"], r["reason"]) for r in rows if r["reason"] != STATS_REASON]
    assert got == [(1, None), (2, "record_error"), (3, None)]
    detail = next(r["detail"] for r in rows if r["reason"] == "record_error")
    assert detail.split(":")[0] in ("OverflowError", "ValueError", "ArrowInvalid")


YAML_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**20), 10**20),
        st.floats(),
        st.text(max_size=12),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
SECTIONS = st.sampled_from(
    ["run_dir", "seed", "stages", "spark", "ingest", "dedup", "dsir", "select", "mixture", "x"]
)


@given(
    doc=st.one_of(
        st.dictionaries(SECTIONS, YAML_VALUES, max_size=5),
        YAML_VALUES,
        st.text(max_size=60),
    )
)
def test_any_malformed_config_is_a_config_error(tmp_path, doc):
    import yaml

    path = tmp_path / "p.yaml"
    try:
        text = doc if isinstance(doc, str) else yaml.safe_dump(doc)
    except yaml.YAMLError:
        return
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path, use_env=False)
    except ConfigError as err:
        msg = str(err)
        assert msg and "Traceback" not in msg
        first = msg.splitlines()[0]
        assert first.startswith(("invalid configuration", str(path), "config file"))


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("dedup: {threshold: abc}\nstages: [dedup]\n", "dedup.threshold"),
        ("seed: [1, 2]\n", "seed"),
        ("ingest: {inputs: [{path: 3, format: nope}]}\n", "ingest.inputs.0.format"),
        ("stages: [ingest, nope]\n", "stages"),
    ],
)
def test_config_errors_name_the_field(tmp_path, yaml_text, field):
    path = tmp_path / "p.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(path, use_env=False)
