"""Faults injected mid-stage: a full disk, a driver killed while publishing, an input deleted
between listing and reading; and a read-only run folder. Nothing is half-published; a rerun
gives identical outputs."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
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


# --- a read-only run folder -------------------------------------------------------------------


def _chmod_binds(tmp: Path) -> bool:
    """Whether a folder's mode stops this process from writing in it (not for root, or any
    process with ``CAP_DAC_OVERRIDE``): tried on a 0o555 folder in ``tmp``."""
    probe = tmp / "mode-probe"
    probe.mkdir()
    probe.chmod(0o555)
    try:
        (probe / "x").touch()
    except PermissionError:
        return True
    finally:
        probe.chmod(0o755)
        shutil.rmtree(probe)
    return False


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


@contextmanager
def read_only(folder: Path) -> Iterator[str]:
    """``folder`` (and everything in it) read-only while the block runs; yields the reason the
    OS gives. Where modes bind (not root): chmod, folders 0o555 and files 0o444 (``Permission
    denied``). Where they do not (root, as on this project's test machines): what a read-only
    mount does, ``OSError(EROFS)`` from every Python call that creates, writes, renames or
    removes a path under ``folder`` (``open`` and ``os.open`` for writing, ``mkdir``,
    ``rename``, ``replace``, ``unlink``, ``rmdir``; by path: calls relative to a ``dir_fd``
    pass)."""
    if _chmod_binds(folder.parent):
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
        for p in sorted(modes, key=lambda p: -len(p.parts)):
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield os.strerror(errno.EACCES)
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    monkeypatch = pytest.MonkeyPatch()
    base = os.path.realpath(folder)

    def under(path) -> bool:
        if isinstance(path, int):
            return False
        p = os.path.realpath(os.fsdecode(path))
        return p == base or p.startswith(base + os.sep)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    def guard(real, is_write=lambda *a, **k: True):
        def call(path, *args, **kwargs):
            if under(path) and is_write(*args, **kwargs):
                refuse(path)
            return real(path, *args, **kwargs)

        return call

    def opens_for_writing(mode="r", *a, **k) -> bool:
        return any(c in mode for c in "wax+")

    def os_open_writes(flags, *a, **k) -> bool:
        return bool(flags & _WRITE_FLAGS)

    for mod in (builtins, io):
        monkeypatch.setattr(mod, "open", guard(io.open, opens_for_writing))
    monkeypatch.setattr(os, "open", guard(os.open, os_open_writes))
    for name in ("mkdir", "unlink", "remove", "rmdir"):
        monkeypatch.setattr(os, name, guard(getattr(os, name)))
    for name in ("rename", "replace"):
        real2 = getattr(os, name)

        def two(src, dst, *a, _real=real2, **k):
            for p in (src, dst):
                if under(p):
                    refuse(p)
            return _real(src, dst, *a, **k)

        monkeypatch.setattr(os, name, two)
    try:
        yield os.strerror(errno.EROFS)
    finally:
        monkeypatch.undo()


def _files(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and its sha256."""
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_read_only_run_folder_is_refused_before_any_stage_and_stays_readable(
    tmp_path, monkeypatch
):
    """A completed run on a read-only folder: a rerun (which would only skip) and a fresh run
    below it stop at once with one line naming the folder; nothing is written or lost, the
    outputs stay readable (``curamix status``), and once writable the rerun skips."""
    from typer.testing import CliRunner

    from curamix.cli import app
    from curamix.io.store import RunFolderNotWritableError, latest_result

    raw = _corpus(tmp_path / "raw")
    run = tmp_path / "run"
    cfg = _cfg(run, raw)
    done = run_pipeline(cfg, spark=NO_SPARK)
    (tmp_path / "p.yaml").write_text(json.dumps(cfg.model_dump(mode="json")))
    before, outputs = _files(run), _outputs(run)
    started = []
    monkeypatch.setattr("curamix.pipelines.session.get_spark", lambda *a: started.append(a))
    monkeypatch.setattr("curamix.runner.run_stage", lambda *a, **k: started.append(a))
    with read_only(run) as reason:
        with pytest.raises(RunFolderNotWritableError) as err:
            run_pipeline(cfg, spark=NO_SPARK)
        msg = str(err.value)
        assert "\n" not in msg and f"run folder {run} is not writable ({reason}); " in msg
        fresh = run / "new-run"
        with pytest.raises(RunFolderNotWritableError, match=f"run folder {fresh} is not writable"):
            run_pipeline(cfg.model_copy(update={"run_dir": str(fresh)}), spark=NO_SPARK)
        out = CliRunner().invoke(app, ["run", str(tmp_path / "p.yaml")])
        said = "".join(out.output.split())  # as the console wrapped it, without the spaces
        assert out.exit_code == 2 and f"error:runfolder{run}isnotwritable" in said
        assert "Traceback" not in out.output and isinstance(out.exception, SystemExit)
        status = CliRunner().invoke(app, ["status", str(run), "--json"])
        assert status.exit_code == 0, status.output
        assert {r["stage"]: r["state"] for r in json.loads(status.output)} == {
            "ingest": "done",
            "dedup": "done",
        }
        assert latest_result(run, "dedup").path == done["dedup"].path
        assert _files(run) == before and not fresh.exists()
    assert not started  # neither Spark nor any stage
    monkeypatch.undo()
    again = run_pipeline(cfg, spark=NO_SPARK)  # writable again
    assert all(r.skipped for r in again.values()) and _outputs(run) == outputs
