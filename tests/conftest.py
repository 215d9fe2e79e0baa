"""Shared fixtures: the real-data folder, a session-wide local[2] SparkSession, tiny corpora;
the ``gpu`` marker; the device tolerances of the embedding tests."""

from __future__ import annotations

import functools
import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# --- object storage -----------------------------------------------------------------------------
# The AWS variables point at the test S3 server (tests/s3.py) from the start of the session, so
# Spark workers started by any fixture see it; the server itself starts with the ``s3`` fixture.
from tests.s3 import S3Server, export_env  # noqa: E402

export_env()


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3 server (``rclone serve s3``) on 127.0.0.1 for the session."""
    server = S3Server(tmp_path_factory.mktemp("s3") / "root").start()
    yield server
    server.stop()


# --- devices ----------------------------------------------------------------------------------
#
# ``@pytest.mark.gpu`` needs a CUDA device torch can use; ``@pytest.mark.gpu("faiss")`` needs
# one that FAISS sees too (a faiss-gpu build). Where it is missing such a test is deselected at
# collection ("N deselected"), never skipped; CURAMIX_REQUIRE_GPU=1 keeps them, so a GPU job
# on a machine that lost its GPU fails instead of passing with the GPU tests left out.

GPU_NEEDS = {
    "cuda": "a CUDA device (torch.cuda.is_available())",
    "faiss": "a CUDA device that FAISS sees (a faiss-gpu build, faiss.get_num_gpus() > 0)",
}
REQUIRE_GPU_ENV = "CURAMIX_REQUIRE_GPU"


@functools.cache
def gpu_capabilities() -> dict[str, bool]:
    """What this machine offers the ``gpu`` tests (probed once, at the first GPU test)."""
    import torch

    cuda = bool(torch.cuda.is_available())
    faiss_gpu = False
    if cuda:
        from curamix.embeddings.index import faiss_gpus

        faiss_gpu = faiss_gpus() > 0
    return {"cuda": cuda, "faiss": faiss_gpu}


def gpu_need(item: pytest.Item) -> str | None:
    """What a test's ``gpu`` marker asks for: ``"cuda"`` (no argument), ``"faiss"``, or None."""
    mark = item.get_closest_marker("gpu")
    if mark is None:
        return None
    need = mark.args[0] if mark.args else "cuda"
    if need not in GPU_NEEDS:
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.gpu({need!r}); use no argument or one of "
            f"{sorted(GPU_NEEDS)}"
        )
    return need


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the ``gpu`` tests this machine cannot run (unless CURAMIX_REQUIRE_GPU=1)."""
    needs = {item.nodeid: need for item in items if (need := gpu_need(item)) is not None}
    if not needs or os.environ.get(REQUIRE_GPU_ENV) == "1":
        return
    have = gpu_capabilities()
    drop = [item for item in items if item.nodeid in needs and not have[needs[item.nodeid]]]
    if drop:
        config.hook.pytest_deselected(items=drop)
        gone = {id(item) for item in drop}
        items[:] = [item for item in items if id(item) not in gone]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A ``gpu`` test kept on a machine without the device (CURAMIX_REQUIRE_GPU=1) fails here,
    naming what is missing."""
    need = gpu_need(item)
    if need is not None and not gpu_capabilities()[need]:
        pytest.fail(
            f"{item.nodeid} needs {GPU_NEEDS[need]}, which this machine lacks "
            f"({REQUIRE_GPU_ENV}=1 keeps the GPU tests instead of deselecting them)",
            pytrace=False,
        )


CPU_BATCH_ATOL = 2e-5
"""fp32 on the CPU: the same texts encoded alone or in batches of other sizes (the padding
changes the kernels' shapes, hence the summation order) agree within this per component.
Measured: below 1e-5 for all-MiniLM-L6-v2."""
CUDA_FP32_ATOL = 1e-4
"""fp32 on CUDA (``fp16=False``) against fp32 on the CPU, per component: the same arithmetic in
another summation order (torch keeps TF32 off for matmuls by default); ~1e-6 expected, and a
TF32 or half-precision slip (~1e-3) would fail."""
FP16_COSINE_MIN = 0.999
"""fp16 on CUDA (the default ``fp16=True``) against fp32 on the CPU, per vector: the cosine of
the two unit vectors. fp16 weights and activations (10-bit mantissa) measured on the CPU give
1 - cos <= 1.5e-6 for this model and bf16 (7-bit) <= 1.1e-4; CUDA may also reduce fp16
matmuls in reduced precision. 1e-3 is ~10x the bf16 figure; a wrong vector has cos < 0.9."""
FP16_ATOL = 5e-3
"""The same comparison per component (the components of a 384-d unit vector are ~0.05):
measured fp16 2.8e-4, bf16 3.6e-3 on the CPU."""


def assert_embeddings_close(
    got: np.ndarray, want: np.ndarray, fp16: bool, fp32_atol: float
) -> None:
    """``got`` matches ``want`` row for row: within ``fp32_atol`` per component, or, when one of
    them is fp16 CUDA output, a per-vector cosine of at least :data:`FP16_COSINE_MIN` and
    :data:`FP16_ATOL` per component."""
    assert got.shape == want.shape and got.dtype == want.dtype == np.float32
    if not fp16:
        np.testing.assert_allclose(got, want, rtol=0, atol=fp32_atol)
        return
    cos = np.einsum("ij,ij->i", got.astype(np.float64), want.astype(np.float64))
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    cos = np.divide(cos, norms, out=np.ones_like(cos), where=norms > 0)
    assert cos.min() >= FP16_COSINE_MIN, f"fp16 vs reference: min cosine {cos.min():.6f}"
    np.testing.assert_allclose(got, want, rtol=0, atol=FP16_ATOL)


def _shared_data() -> Path:
    env = os.environ.get("CURAMIX_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests using it fail when it is absent (deselect them with
    ``-m "not realdata"``)."""
    path = _shared_data()
    if not (path / "corpus").is_dir():
        pytest.fail(f"real data folder not found at {path} (set CURAMIX_SHARED_DATA)")
    return path


def score_near_dups(shared_data: Path, tmp_path: Path, pred: list[dict]) -> dict:
    """The near-dup benchmark's own scorer (build_near_dups.py score) on ``pred`` rows."""
    import subprocess
    import sys

    path = tmp_path / "pred.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pred))
    out = subprocess.run(
        [
            sys.executable,
            str(shared_data / "build_near_dups.py"),
            "score",
            "--labels",
            str(shared_data / "corpus_with_dups" / "labels.jsonl.gz"),
            "--pred",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """One local[2] SparkSession for the whole test session (UI off, loopback only)."""
    from curamix.config import SparkConfig
    from curamix.pipelines.session import get_spark

    cfg = SparkConfig(
        master="local[2]",
        app_name="curamix-tests",
        driver_memory="2g",
        shuffle_partitions=4,
        local_dir=str(tmp_path_factory.mktemp("spark-local")),
    )
    session = get_spark(cfg)
    yield session
    session.stop()


def write_jsonl(path: Path, rows: list, gz: bool = False) -> Path:
    """Rows as JSON Lines; ``bytes`` rows are written verbatim."""
    data = b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def _readable_lines(data: bytes, kind: str) -> int:
    """Complete lines in a truncated compressed stream (what a reader can still recover)."""
    if kind == "gz":
        import zlib

        return zlib.decompressobj(wbits=31).decompress(data).count(b"\n")
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj().decompress(data).count(b"\n")


MAX_DOC_BYTES = 2000


@pytest.fixture
def bad_inputs(tmp_path) -> tuple[Path, dict]:
    """A folder holding every kind of bad input, with the exact counts ingest must report.

    Ingest it with ``max_doc_bytes=MAX_DOC_BYTES``. Returns (folder, expected) where expected
    has ``reasons`` (quarantined records by reason), ``per_file`` (file name -> (records,
    ingested, quarantined)), ``ingested``, ``quarantined`` and ``ignored``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    root = tmp_path / "bad_inputs"
    root.mkdir()
    good = [
        {"id": f"g{i}", "text": f"good document number {i} with a few words", "lang": "en"}
        for i in range(5)
    ]
    write_jsonl(
        root / "mixed.jsonl",
        [
            *good,
            b'{"id": "broken", "text": "no closing',  # invalid_json
            b'{"id": "latin1", "text": "caf\xe9"}',  # invalid_utf8
            {"id": "m1", "body": "text is under the wrong key"},  # missing_text
            {"id": "m2", "text": None},  # missing_text
            {"id": "n1", "text": 12345},  # non_string_text
            {"id": "n2", "text": ["a", "list"]},  # non_string_text
            {"id": "e1", "text": ""},  # empty_text
            {"id": "e2", "text": " \n\t "},  # empty_text
            b'["an", "array"]',  # not_an_object
            {"id": "big", "text": "word " * 1000},  # too_large (5000 bytes > 2000)
            {"id": "g1", "text": "same id as an earlier record of this file"},  # duplicate_id
            b"",  # blank line: no record
            {"text": "no id here, gets a hash id"},
            b'{"id": "surrogate", "text": "bad \\ud800 escape"}',  # invalid_utf8 (lone surrogate)
        ],
    )
    write_jsonl(
        root / "other.jsonl.gz",
        [{"id": "g2", "text": "duplicate of g2 in mixed.jsonl"}, {"id": "o1", "text": "fine"}],
        gz=True,
    )
    trunc_rows = [
        {"id": f"t{i}", "text": f"truncated shard record {i} " + "x" * 200} for i in range(60)
    ]
    blob = gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in trunc_rows), mtime=0)
    (root / "trunc.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    n_trunc_gz = _readable_lines(blob[: len(blob) // 2], "gz")
    # Several 128 KiB zstd blocks, so the first half of the stream decodes to whole lines.
    zrows = [
        {"id": f"z{i}", "text": f"zstd record {i} " + " ".join(str(i * j) for j in range(60))}
        for i in range(2000)
    ]
    zblob = zstandard.ZstdCompressor().compress(
        b"".join(json.dumps(r).encode() + b"\n" for r in zrows)
    )
    (root / "trunc.jsonl.zst").write_bytes(zblob[: len(zblob) // 2])
    n_trunc_zst = _readable_lines(zblob[: len(zblob) // 2], "zst")
    (root / "garbage.jsonl.gz").write_bytes(b"this is not gzip data at all\n" * 3)
    pq.write_table(
        pa.Table.from_pylist(
            [
                {"id": "p1", "text": "parquet row one", "n": 1},
                {"id": "p2", "text": None, "n": 2},
                {"id": "p3", "text": "parquet row three", "n": 3},
            ]
        ),
        root / "table.parquet",
    )
    (root / "texts").mkdir()
    (root / "texts" / "a.txt").write_text("a plain text document")
    (root / "texts" / "b.txt").write_bytes(b"not utf-8: \xff\xfe")
    (root / "texts" / "c.txt").write_text("   \n")
    (root / "README.md").write_text("not data")
    (root / ".hidden.jsonl").write_text('{"text": "hidden files are skipped"}\n')

    per_file = {
        "mixed.jsonl": (18, 6, 12),  # 5 good + the hash-id doc; 12 bad (the g1 duplicate included)
        "other.jsonl.gz": (2, 1, 1),
        "trunc.jsonl.gz": (n_trunc_gz + 1, n_trunc_gz, 1),
        "trunc.jsonl.zst": (n_trunc_zst + 1, n_trunc_zst, 1),
        "garbage.jsonl.gz": (1, 0, 1),
        "table.parquet": (3, 2, 1),
        "a.txt": (1, 1, 0),
        "b.txt": (1, 0, 1),
        "c.txt": (1, 0, 1),
    }
    reasons = {
        "invalid_json": 1,
        "invalid_utf8": 3,
        "missing_text": 3,
        "non_string_text": 2,
        "empty_text": 3,
        "not_an_object": 1,
        "too_large": 1,
        "duplicate_id": 2,
        "truncated_file": 2,
        "unreadable_file": 1,
    }
    expected = {
        "per_file": per_file,
        "reasons": reasons,
        "ingested": sum(v[1] for v in per_file.values()),
        "quarantined": sum(v[2] for v in per_file.values()),
        "ignored": ["README.md"],
    }
    assert expected["quarantined"] == sum(reasons.values())
    assert 0 < n_trunc_gz < 60 and 0 < n_trunc_zst < 2000
    return root, expected
