"""Run folders and stage outputs: atomic writes, manifests, completion markers, skips.

A run folder holds every stage of one run::

    RUN/
      pipeline.yaml              the config of the latest `curamix run`
      stages.json                stage -> folder of its latest completed output
      ingest-<key>/              one folder per stage and key (config + inputs hash)
        data/                    the output dataset (Parquet)
        ledger/                  decisions: one row per input document
        quarantine/              bad input (ingest)
        manifest.json            stage, config, hashes, counts, timings, version
        _COMPLETE                written last; a folder without it is unfinished

A stage works in ``RUN/.tmp/<stage>-<key>-<uuid>/`` and is renamed into place when done, so
readers never see half an output; a rerun whose key has a completed folder is skipped.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import os
import shutil
import socket
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import curamix

if TYPE_CHECKING:
    import pyarrow as pa

MARKER = "_COMPLETE"
MANIFEST = "manifest.json"
STAGES_INDEX = "stages.json"
LOCK = ".lock"
"""The run folder's lock file: held (``flock``) by the process writing the run, and naming it."""


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def inside(root: str | Path, name: str | Path) -> Path:
    """``root / name``, refusing a name read from a file (a marker, a manifest) that would lead
    outside ``root`` (``..``, an absolute path, a link out): ``ValueError`` naming both."""
    base = Path(root).resolve()
    path = (base / name).resolve()
    if path != base and base not in path.parents:
        raise ValueError(f"{name!r} leads outside {base}; refusing to touch {path}")
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename: readers see
    the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON to ``path`` through a temporary file and an atomic rename."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class JobResult:
    """A completed stage output."""

    stage: str
    path: Path
    manifest: dict[str, Any]
    skipped: bool = False

    @property
    def data_path(self) -> Path:
        return self.path / "data"

    @property
    def ledger_path(self) -> Path:
        return self.path / "ledger"

    @property
    def quarantine_path(self) -> Path:
        return self.path / "quarantine"

    @property
    def manifest_hash(self) -> str:
        """Hash of the manifest file: what downstream stages put in their own key."""
        return file_sha256(self.path / MANIFEST)

    @property
    def counts(self) -> dict[str, Any]:
        return self.manifest.get("counts", {})


def part_files(folder: str | os.PathLike) -> list[str]:
    """The Parquet part files (``part-*.parquet``) of a stage output folder, sorted."""
    import glob

    files = sorted(glob.glob(os.path.join(os.fspath(folder), "part-*.parquet")))
    if not files:
        raise FileNotFoundError(f"no part-*.parquet files in {folder}")
    return files


def rows_for_ids(files: Sequence[str], ids: Sequence[str], column: str) -> pa.Table:
    """``id`` and ``column`` of the rows of ``files`` (Parquet parts) whose id is in ``ids``,
    sorted by id; each file is filtered as it is read."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    want = pa.array(sorted(set(ids)), pa.string())
    tables = [pq.read_table(p, columns=["id", column]) for p in files]
    t = pa.concat_tables(x.filter(pc.is_in(x["id"], value_set=want)) for x in tables)
    return t.take(pc.sort_indices(t, sort_keys=[("id", "ascending")]))


def stage_folder(run_dir: str | Path, stage: str, key: str) -> Path:
    return Path(run_dir) / f"{stage}-{key}"


def load_completed(run_dir: str | Path, stage: str, key: str) -> JobResult | None:
    """The completed output of ``stage`` with ``key``, or None if there is none."""
    folder = stage_folder(run_dir, stage, key)
    if not (folder / MARKER).is_file():
        return None
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    return JobResult(stage=stage, path=folder, manifest=manifest, skipped=True)


class StageWriter:
    """Where a running stage writes; :meth:`commit` publishes it atomically."""

    def __init__(self, run_dir: str | Path, stage: str, key: str):
        self.run_dir = Path(run_dir)
        self.stage, self.key = stage, key
        self.final = stage_folder(run_dir, stage, key)
        self.tmp = self.run_dir / ".tmp" / f"{stage}-{key}-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir(parents=True)

    def path(self, name: str) -> Path:
        return self.tmp / name

    def commit(self, manifest: dict[str, Any]) -> JobResult:
        manifest = {
            "stage": self.stage,
            "key": self.key,
            "curamix_version": curamix.__version__,
            "completed_at": now_iso(),
            **manifest,
        }
        write_json_atomic(self.tmp / MANIFEST, manifest)
        if self.final.exists():  # an unfinished earlier attempt (no marker): replace it
            shutil.rmtree(self.final)
        os.replace(self.tmp, self.final)
        (self.final / MARKER).write_text(now_iso() + "\n", encoding="utf-8")  # written last
        record_stage(self.run_dir, self.stage, self.final.name)
        return JobResult(stage=self.stage, path=self.final, manifest=manifest, skipped=False)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextmanager
def stage_writer(run_dir: str | Path, stage: str, key: str) -> Iterator[StageWriter]:
    """A :class:`StageWriter` whose temporary folder is removed if the stage fails."""
    w = StageWriter(run_dir, stage, key)
    try:
        yield w
    finally:
        w.abort()  # a no-op after commit, which renamed the temporary folder away


def read_stages_index(run_dir: str | Path) -> dict[str, Any]:
    p = Path(run_dir) / STAGES_INDEX
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}


_INDEX_LOCK = threading.Lock()


def record_stage(run_dir: str | Path, stage: str, folder: str) -> None:
    """Point ``stages.json``'s entry for ``stage`` at ``folder``: read, update and replace the
    index under a lock (threads of this process, and other processes through ``flock``), so
    concurrent commits never lose an entry."""
    import fcntl

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _INDEX_LOCK, open(run_dir / f".{STAGES_INDEX}.lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            index = read_stages_index(run_dir)
            index[stage] = {"folder": folder, "recorded_at": now_iso()}
            write_json_atomic(run_dir / STAGES_INDEX, index)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class RunLockedError(RuntimeError):
    """Another live process is writing the run folder."""


class RunFolderNotWritableError(RuntimeError):
    """The run folder cannot be written (a read-only filesystem, or no permission); the CLI
    prints it and exits 2."""


_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def check_writable(run_dir: str | Path) -> None:
    """Refuse a run folder this process cannot write, before any work starts: create it if
    needed, then create and remove a probe file in it. A read-only filesystem (``EROFS``) or
    missing permissions (``EACCES``, ``EPERM``) raise :class:`RunFolderNotWritableError`, one
    line naming the folder and the reason; other errors (``ENOSPC``...) propagate as they are.

    A run that would only skip completed stages is refused too (it writes the lock,
    ``pipeline.yaml`` and ``last_run.json``); completed outputs stay readable in place
    (``curamix status``, :func:`latest_result`)."""
    run_dir = Path(run_dir)
    probe = run_dir / f".write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as err:
        if err.errno not in _NOT_WRITABLE:
            raise
        where = "" if err.filename in (str(run_dir), str(probe)) else f": {err.filename}"
        raise RunFolderNotWritableError(
            f"run folder {run_dir} is not writable ({os.strerror(err.errno)}{where}); "
            f"its completed outputs can still be read (curamix status {run_dir}); make it "
            "writable, or set run_dir to another folder"
        ) from None


_HELD: dict[str, list[Any]] = {}
"""Run folders this process holds: real path -> [open lock file, depth] (the lock is
re-entrant within a process: a flow's tasks and the stages they run share it)."""
_HELD_LOCK = threading.Lock()


def lock_owner(run_dir: str | Path) -> dict[str, Any] | None:
    """Who holds (or last held) the run folder's lock: pid, host, started_at, command."""
    try:
        return json.loads((Path(run_dir) / LOCK).read_text(encoding="utf-8") or "null")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the run folder for this process: a second writer (another ``curamix run``, flow or
    demo on the same folder) is refused with :class:`RunLockedError` naming the owner.

    The lock is an ``flock`` on ``RUN/.lock``, which also records the owner. The operating
    system releases it when the owner exits or is killed, so a stale lock left by a dead
    process is taken over by the next run, and the file then names the new owner. ``flock``
    holds between processes that see the same local filesystem (a cluster's driver machine);
    it is not a lock across machines on a network filesystem or object store.

    A folder that cannot be written is refused first, with
    :class:`RunFolderNotWritableError` (:func:`check_writable`)."""
    import fcntl

    path = Path(run_dir).resolve() / LOCK
    key = str(path)
    with _HELD_LOCK:
        if key in _HELD:
            _HELD[key][1] += 1
            held = True
        else:
            held = False
    if not held:
        check_writable(path.parent)
        fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held until released below
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            o = lock_owner(run_dir) or {}
            raise RunLockedError(
                f"run folder {Path(run_dir)} is in use by pid {o.get('pid', '?')} on "
                f"{o.get('host', '?')} since {o.get('started_at', '?')} "
                f"({o.get('command', '?')}); wait for it to finish, or use another run_dir"
            ) from None
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": now_iso(),
            "command": " ".join(sys.argv)[:300],
        }
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(owner) + "\n")
        fh.flush()
        with _HELD_LOCK:
            _HELD[key] = [fh, 1]
    try:
        yield
    finally:
        with _HELD_LOCK:
            entry = _HELD[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _HELD[key]
                fcntl.flock(entry[0], fcntl.LOCK_UN)
                entry[0].close()


def latest_result(run_dir: str | Path, stage: str) -> JobResult | None:
    """The latest completed output of ``stage`` in a run, from ``stages.json``."""
    entry = read_stages_index(run_dir).get(stage)
    if not entry:
        return None
    folder = Path(run_dir) / entry["folder"]
    if not (folder / MARKER).is_file():
        return None
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    return JobResult(stage=stage, path=folder, manifest=manifest, skipped=True)
