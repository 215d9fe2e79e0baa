"""Faults injected mid-stage: a full disk, a driver killed while publishing, an input deleted
between listing and reading. Nothing is half-published; a rerun gives identical outputs."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curamix.config import build_config
from curamix.io.store import MARKER, read_stages_index
from curamix.runner import run_pipeline
from tests.conftest import write_jsonl

NO_SPARK = object()
"""Both stages run in-process here (``engine: local``): no SparkSession is needed."""


def _corpus(folder: Path) -> Path:
    rows = [{"id": f"d{i}", "text": f"document number {i % 7} " * 8} for i in range(60)]
    rows += [{"id": "dup", "text": rows[0]["text"]}]
    write_jsonl(folder / "pool.jsonl", rows)
    return folder


def _cfg(run_dir: Path, raw: Path):
    return build_config(
        {
            "run_dir": str(run_dir),
            "stages": ["ingest", "dedup"],
            "ingest": {"inputs": [{"path": str(raw)}], "engine": "local"},
            "dedup": {"engine": "local", "max_removal_rate": 1.0},
        },
        use_env=False,
    )


def _outputs(run_dir: Path) -> dict[str, list]:
    """Every stage's data and ledger rows, sorted, from the folders stages.json names."""
    out = {}
    for stage, entry in sorted(read_stages_index(run_dir).items()):
        folder = run_dir / entry["folder"]
        assert (folder / MARKER).is_file()
        for sub in ("data", "ledger"):
            rows = pq.read_table(folder / sub).to_pylist()
            out[f"{stage}/{sub}"] = sorted(rows, key=lambda r: json.dumps(r, default=str))
    return out


def test_a_full_disk_mid_stage_publishes_nothing_and_a_rerun_is_identical(tmp_path, monkeypatch):
    raw = _corpus(tmp_path / "raw")
    clean = tmp_path / "clean"
    run_pipeline(_cfg(clean, raw), spark=NO_SPARK)

    run = tmp_path / "run"
    run_pipeline(_cfg(run, raw).model_copy(update={"stages": ["ingest"]}), spark=NO_SPARK)
    real = pq.ParquetWriter.write_table
    calls = {"n": 0}

    def full_disk(self, table, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, table, *a, **k)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        run_pipeline(_cfg(run, raw), spark=NO_SPARK)
    assert "dedup" not in read_stages_index(run)
    assert not list(run.glob("dedup-*")) and not list((run / ".tmp").iterdir())
    monkeypatch.setattr(pq.ParquetWriter, "write_table", real)  # space freed
    res = run_pipeline(_cfg(run, raw), spark=NO_SPARK)
    assert res["ingest"].skipped and not res["dedup"].skipped
    assert _outputs(run) == _outputs(clean)


KILL_AT_PUBLISH = textwrap.dedent(
    """
    import os, signal, sys
    from curamix.config import load_config
    from curamix.io import store
    from curamix.runner import run_pipeline

    real_replace = os.replace

    def replace_then_die(src, dst):
        real_replace(src, dst)
        if os.path.basename(dst).startswith("dedup-") and os.path.isdir(dst):
            os.kill(os.getpid(), signal.SIGKILL)  # after the rename, before _COMPLETE

    store.os.replace = replace_then_die
    run_pipeline(load_config(sys.argv[1], use_env=False), spark=object())
    """
)


def test_driver_killed_while_publishing_leaves_no_complete_stage(tmp_path):
    raw = _corpus(tmp_path / "raw")
    clean = tmp_path / "clean"
    run_pipeline(_cfg(clean, raw), spark=NO_SPARK)
    run = tmp_path / "run"
    cfg = _cfg(run, raw)
    run.mkdir()
    (tmp_path / "p.yaml").write_text(json.dumps(cfg.model_dump(mode="json")))
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AT_PUBLISH, str(tmp_path / "p.yaml")], capture_output=True
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    half = list(run.glob("dedup-*"))
    assert len(half) == 1 and not (half[0] / MARKER).exists()  # renamed, never marked
    assert "dedup" not in read_stages_index(run)
    res = run_pipeline(cfg, spark=NO_SPARK)  # the lock of the killed driver is taken over
    assert not res["dedup"].skipped and (res["dedup"].path / MARKER).is_file()
    assert _outputs(run) == _outputs(clean)


def test_an_input_deleted_between_listing_and_reading_is_quarantined(tmp_path, monkeypatch):
    raw = _corpus(tmp_path / "raw")
    write_jsonl(raw / "gone.jsonl", [{"id": "g", "text": "soon deleted"}])
    from curamix.io import inputs

    real = inputs.expand_inputs
    calls = []

    def list_then_delete(cfg):
        out = real(cfg)
        calls.append(1)
        if len(calls) == 2:  # the stage's own listing (the first one computes its key)
            (raw / "gone.jsonl").unlink()
        return out

    monkeypatch.setattr("curamix.pipelines.ingest.expand_inputs", list_then_delete)
    cfg = _cfg(tmp_path / "run", raw).model_copy(update={"stages": ["ingest"]})
    res = run_pipeline(cfg, spark=NO_SPARK)["ingest"]
    files = {Path(k).name: v for k, v in res.counts["per_file"].items()}
    assert files["gone.jsonl"]["quarantined"] == 1 and files["pool.jsonl"]["ingested"] == 61
    q = pq.read_table(res.quarantine_path).to_pylist()
    assert [(Path(r["source"]).name, r["reason"]) for r in q] == [("gone.jsonl", "unreadable_file")]
    assert "FileNotFoundError" in q[0]["detail"]
