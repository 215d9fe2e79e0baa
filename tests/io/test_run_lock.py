"""One writer per run folder: a live owner refuses the second, a dead one's lock is taken over,
and the stages index never loses an entry to concurrent commits."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from curamix.io.store import (
    LOCK,
    RunLockedError,
    lock_owner,
    read_stages_index,
    record_stage,
    run_lock,
)

HOLD = textwrap.dedent(
    """
    import sys, time
    from curamix.io.store import run_lock
    with run_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def _holder(run_dir: Path, seconds: float) -> subprocess.Popen:
    """A process that takes the lock and holds it; returns once it holds it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_owner_refuses_a_second_writer_and_names_itself(tmp_path):
    proc = _holder(tmp_path, 30)
    try:
        with pytest.raises(RunLockedError) as err, run_lock(tmp_path):
            pass
        msg = str(err.value)
        assert f"pid {proc.pid} on {socket.gethostname()}" in msg and " since 20" in msg
        assert lock_owner(tmp_path)["pid"] == proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_dead_owners_lock_is_taken_over(tmp_path):
    proc = _holder(tmp_path, 30)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / LOCK).is_file() and lock_owner(tmp_path)["pid"] == proc.pid  # stale
    with run_lock(tmp_path):
        assert lock_owner(tmp_path)["pid"] == os.getpid()
    # Released on exit: another process can take it now.
    done = subprocess.run(
        [sys.executable, "-c", HOLD, str(tmp_path), "0"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == "held"


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    with run_lock(tmp_path), run_lock(tmp_path / "."):
        assert lock_owner(tmp_path)["pid"] == os.getpid()
    with run_lock(tmp_path):  # released after the outer block, taken again
        pass


def test_run_pipeline_refuses_a_folder_in_use(tmp_path):
    from curamix.config import build_config
    from curamix.runner import run_pipeline

    cfg = build_config({"run_dir": str(tmp_path / "run"), "stages": []}, use_env=False)
    proc = _holder(tmp_path / "run", 30)
    try:
        with pytest.raises(RunLockedError, match=f"pid {proc.pid}"):
            run_pipeline(cfg, spark=object())  # refused before Spark is touched
    finally:
        proc.kill()
        proc.wait()
    assert run_pipeline(cfg, spark=object()) == {}


WRITER = textwrap.dedent(
    """
    import sys
    from curamix.io.store import record_stage
    for i in range(int(sys.argv[3])):
        record_stage(sys.argv[1], f"{sys.argv[2]}{i}", f"folder-{sys.argv[2]}{i}")
    """
)


def test_concurrent_commits_keep_every_stages_entry(tmp_path):
    n = 40
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), p, str(n)])
        for p in ("a", "b", "c")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    index = read_stages_index(tmp_path)
    assert len(index) == 3 * n
    assert index["b7"]["folder"] == "folder-b7"
    json.loads((tmp_path / "stages.json").read_text())  # never half-written


def test_record_stage_from_threads(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as ex:
        list(ex.map(lambda i: record_stage(tmp_path, f"s{i}", f"f{i}"), range(60)))
    assert len(read_stages_index(tmp_path)) == 60
