"""Run folders on a real S3 server (rclone serve s3 on 127.0.0.1): the publish protocol
(attempt prefix, manifest listing the parts, ``_COMPLETE`` last), what readers trust, garbage
collection, the lock object, and the errors a user sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curamix.io import fs as cfs
from curamix.io import store

pytestmark = pytest.mark.slow


@pytest.fixture
def run_uri(s3):
    bucket = s3.bucket("runs")
    return f"{bucket}/r-{uuid.uuid4().hex[:8]}"


def _write_stage(run_uri: str, stage: str, key: str, rows: int, commit: bool = True):
    w = store.StageWriter(run_uri, stage, key)
    t = pa.table({"id": [f"d{i}" for i in range(rows)]})
    for i in range(2):
        pq.write_table(t, os.fspath(w.path("data") / f"part-{i:05d}.parquet"))
    w.path("report.md").write_text("ok\n")
    if commit:
        return w, w.commit({"counts": {"docs": 2 * rows}})
    return w, None


def test_store_path_reads_writes_lists_and_removes(s3, run_uri):
    p = cfs.as_path(run_uri)
    assert isinstance(p, cfs.StorePath) and cfs.is_remote(run_uri)
    assert not p.exists()
    (p / "a" / "x.txt").write_text("héllo")
    (p / "a" / "b" / "y.parquet").write_bytes(b"1234")
    assert (p / "a" / "x.txt").read_text() == "héllo"
    assert (p / "a").is_dir() and (p / "a" / "x.txt").is_file() and not (p / "a").is_file()
    assert [q.name for q in p.glob("a/*.txt")] == ["x.txt"]
    assert [q.name for q in (p / "a").glob("**/*.parquet")] == ["y.parquet"]
    assert s3.local(f"{run_uri}/a/x.txt").read_text(encoding="utf-8") == "héllo"  # a real object
    p.rmtree()
    assert [f for f in s3.local(run_uri).rglob("*") if f.is_file()] == []  # no object left
    with pytest.raises(FileNotFoundError):
        (p / "a" / "x.txt").read_text()
    # file:// URIs and plain paths stay local
    assert str(cfs.as_path("file:///tmp/x")) == "/tmp/x" and not cfs.is_remote("file:///tmp/x")


def test_a_stage_publishes_its_attempt_and_readers_trust_only_the_manifest(s3, run_uri):
    w, res = _write_stage(run_uri, "ingest", "k1", rows=3)
    attempt = w.tmp
    assert res.path == attempt and attempt.name.startswith(store.ATTEMPT)
    marker = json.loads((cfs.as_path(run_uri) / "ingest-k1" / store.MARKER).read_text())
    assert marker["attempt"] == attempt.name
    assert [f["path"] for f in res.manifest["files"]] == [
        "data/part-00000.parquet",
        "data/part-00001.parquet",
        "report.md",
    ]
    # a stray object in the published attempt (a zombie task) is never read
    pq.write_table(pa.table({"id": ["zombie"]}), f"{attempt}/data/part-00002.parquet")
    loaded = store.load_completed(run_uri, "ingest", "k1")
    assert loaded is not None and loaded.path == attempt and loaded.skipped
    parts = store.part_files(loaded.data_path)
    assert [p.rsplit("/", 1)[-1] for p in parts] == ["part-00000.parquet", "part-00001.parquet"]
    assert pq.read_table(parts[0]).num_rows == 3
    assert store.latest_result(run_uri, "ingest").path == attempt
    assert loaded.manifest_hash == store.file_sha256(attempt / store.MANIFEST)


def test_a_killed_attempt_is_ignored_by_reruns_and_removed_by_gc(s3, run_uri):
    _, first = _write_stage(run_uri, "dedup", "k2", rows=2)
    killed, _ = _write_stage(run_uri, "dedup", "k3", rows=5, commit=False)  # never committed
    assert store.load_completed(run_uri, "dedup", "k3") is None
    assert store.latest_result(run_uri, "dedup").path == first.path
    # a rerun of k3 writes a new attempt and publishes it; the killed one stays unread
    _, second = _write_stage(run_uri, "dedup", "k3", rows=4)
    assert second.path != killed.tmp
    assert pq.read_table(store.part_files(second.data_path)[0]).num_rows == 4
    garbage = store.collect_garbage(run_uri, dry_run=True)
    assert garbage == [str(killed.tmp)]
    assert len(list(killed.tmp.glob("**"))) == 3  # its two parts and report.md
    assert store.collect_garbage(run_uri) == [str(killed.tmp)]
    left = [f for f in s3.local(str(killed.tmp)).rglob("*") if f.is_file()]
    assert left == []  # no object left under the killed attempt
    assert store.load_completed(run_uri, "dedup", "k3").path == second.path
    assert store.load_completed(run_uri, "dedup", "k2").path == first.path
    assert store.collect_garbage(run_uri) == []


def test_the_lock_object_refuses_a_live_owner_and_takes_over_a_dead_one(s3, run_uri):
    code = textwrap.dedent(
        f"""
        import sys, time
        from curamix.io import store
        with store.run_lock({run_uri!r}):
            print("held", flush=True)
            sys.stdin.readline()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        owner = store.lock_owner(run_uri)
        assert owner["pid"] == proc.pid and owner["token"]
        locked = pytest.raises(store.RunLockedError, match=rf"in use by pid {proc.pid} .*heartbeat")
        with locked, store.run_lock(run_uri):
            pass
    finally:
        proc.communicate("\n", timeout=60)
    assert proc.returncode == 0
    assert store.lock_owner(run_uri) is None  # released
    # a lock whose heartbeat is older than the TTL (its owner died) is taken over
    stale = {"pid": 1, "host": "gone", "token": "x", "heartbeat_at": "2026-01-01T00:00:00+00:00"}
    (cfs.as_path(run_uri) / store.LOCK).write_text(json.dumps(stale))
    with store.run_lock(run_uri):
        assert store.lock_owner(run_uri)["pid"] == os.getpid()
        with store.run_lock(run_uri):  # re-entrant within the process
            pass
        assert store.lock_owner(run_uri)["pid"] == os.getpid()
    assert store.lock_owner(run_uri) is None


def test_clear_errors_name_the_uri_and_the_cause(s3, monkeypatch):
    with pytest.raises(
        cfs.StorageError, match=r"s3://no-such-bucket/r: the bucket 'no-such-bucket' does not exist"
    ):
        store.check_writable("s3://no-such-bucket/r")
    with pytest.raises(
        cfs.StorageError, match=r"foo://x/y: no filesystem handles the scheme 'foo'"
    ):
        cfs.resolve("foo://x/y")
    s3.bucket("creds")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    cfs._filesystem.cache_clear()
    try:
        with pytest.raises(cfs.StorageError, match=r"s3://creds/r: the credentials were refused"):
            store.check_writable("s3://creds/r")
    finally:
        monkeypatch.undo()
        cfs._filesystem.cache_clear()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    cfs._filesystem.cache_clear()
    try:
        with pytest.raises(cfs.StorageError, match=r"s3://creds/r: "):
            store.check_writable("s3://creds/r")
    finally:
        monkeypatch.undo()
        cfs._filesystem.cache_clear()
