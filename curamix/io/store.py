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

On an object store (``run_dir: s3://bucket/runs/r1``, any URI of :mod:`curamix.io.fs`) there is
no atomic rename, so a stage publishes differently::

      ingest-<key>/
        attempt-<id>/            one per attempt: data/, ledger/, ..., manifest.json
        _COMPLETE                written last: names the attempt whose manifest counts

The tasks write their parts straight under a fresh ``attempt-<id>/`` prefix; the driver then
writes the attempt's ``manifest.json``, which lists every part file with its size, and last
the stage's ``_COMPLETE``. Readers trust only the attempt that a ``_COMPLETE`` names, and
within it only the files its manifest lists (:func:`part_files`), whatever else lies there:
a killed attempt leaves a prefix that reruns ignore and ``curamix gc`` (:func:`collect_garbage`)
removes. The run lock is an object with an owner and a heartbeat (:func:`run_lock`).
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
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import curamix
from curamix.io.fs import AnyPath, StorePath, as_path, is_remote, rmtree

if TYPE_CHECKING:
    import pyarrow as pa

MARKER = "_COMPLETE"
MANIFEST = "manifest.json"
STAGES_INDEX = "stages.json"
SCRATCH = "_scratch"
"""On an object store: ``RUN/_scratch/<attempt>/`` holds a running stage's side files."""
GC_NOTE = "_GC"
"""On an object store: what ``curamix gc`` last removed from a stage folder."""
RUN_TAG = ".curamix-run"
"""On an object store: the object that :func:`check_writable` writes to prove the folder
writable; it stays, so the run folder's prefix is never emptied."""
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


def write_text_atomic(path: str | AnyPath, text: str) -> AnyPath:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename: readers see
    the old file or the new one, never half of one. On an object store one ``PUT`` is already
    all-or-nothing."""
    path = as_path(path)
    if isinstance(path, StorePath):
        path.write_text(text)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | AnyPath, obj: Any) -> None:
    """Write JSON to ``path`` through a temporary file and an atomic rename."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def file_sha256(path: str | AnyPath) -> str:
    if isinstance(path, StorePath) or is_remote(path):
        return hashlib.sha256(as_path(path).read_bytes()).hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class JobResult:
    """A completed stage output."""

    stage: str
    path: AnyPath
    manifest: dict[str, Any]
    skipped: bool = False

    @property
    def folder(self) -> str:
        """The stage folder's name (``<stage>-<key>``), for local and object-store runs."""
        return self.path.parent.name if isinstance(self.path, StorePath) else self.path.name

    @property
    def data_path(self) -> AnyPath:
        return self.path / "data"

    @property
    def ledger_path(self) -> AnyPath:
        return self.path / "ledger"

    @property
    def quarantine_path(self) -> AnyPath:
        return self.path / "quarantine"

    @property
    def manifest_hash(self) -> str:
        """Hash of the manifest file: what downstream stages put in their own key."""
        return file_sha256(self.path / MANIFEST)

    @property
    def counts(self) -> dict[str, Any]:
        return self.manifest.get("counts", {})


def part_files(folder: str | os.PathLike | StorePath) -> list[str]:
    """The Parquet part files (``part-*.parquet``) of a stage output folder, sorted.

    On an object store, a published attempt's folder lists the parts its manifest names (a
    stray object is never read); an attempt being written lists what is there."""
    import fnmatch
    import glob

    if is_remote(folder):
        folder = as_path(folder)
        assert isinstance(folder, StorePath)
        manifest = folder.parent / MANIFEST
        listed = None
        if manifest.is_file():
            listed = json.loads(manifest.read_text()).get("files")
        if listed is not None:
            files = sorted(
                str(folder.parent / f["path"])
                for f in listed
                if posix_dirname(f["path"]) == folder.name
                and fnmatch.fnmatchcase(f["path"].rsplit("/", 1)[-1], "part-*.parquet")
            )
        else:
            files = [str(p) for p in folder.glob("part-*.parquet")]
        if not files:
            raise FileNotFoundError(f"no part-*.parquet files in {folder}")
        return files
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


def posix_dirname(rel: str) -> str:
    return rel.rsplit("/", 1)[0] if "/" in rel else ""


def stage_folder(run_dir: str | AnyPath, stage: str, key: str) -> AnyPath:
    return as_path(run_dir) / f"{stage}-{key}"


def completed_at(folder: AnyPath) -> AnyPath | None:
    """Where the completed output of a stage folder lies: the folder itself (local disk), or
    the attempt its ``_COMPLETE`` names (object store); None when the stage is unfinished."""
    marker = folder / MARKER
    if isinstance(folder, StorePath):
        try:
            attempt = json.loads(marker.read_text())["attempt"]
        except FileNotFoundError:
            return None
        out = folder / attempt
        return out if attempt.startswith(ATTEMPT) and "/" not in attempt else None
    return folder if marker.is_file() else None


def _result(stage: str, folder: AnyPath) -> JobResult | None:
    where = completed_at(folder)
    if where is None:
        return None
    manifest = json.loads((where / MANIFEST).read_text(encoding="utf-8"))
    return JobResult(stage=stage, path=where, manifest=manifest, skipped=True)


def load_completed(run_dir: str | AnyPath, stage: str, key: str) -> JobResult | None:
    """The completed output of ``stage`` with ``key``, or None if there is none."""
    return _result(stage, stage_folder(run_dir, stage, key))


ATTEMPT = "attempt-"


class StageWriter:
    """Where a running stage writes; :meth:`commit` publishes it atomically (local disk: a
    rename; object store: a manifest, then ``_COMPLETE``)."""

    def __init__(self, run_dir: str | AnyPath, stage: str, key: str):
        self.run_dir = as_path(run_dir)
        self.stage, self.key = stage, key
        self.final = stage_folder(run_dir, stage, key)
        self.remote = isinstance(self.run_dir, StorePath)
        tag = uuid.uuid4().hex[:12]
        if self.remote:
            self.tmp: AnyPath = self.final / f"{ATTEMPT}{tag}"
        else:
            self.tmp = self.run_dir / ".tmp" / f"{stage}-{key}-{tag[:8]}"
            self.tmp.mkdir(parents=True)
        self.committed = False
        self.discarded: list[str] = []

    def path(self, name: str) -> AnyPath:
        return self.tmp / name

    def scratch(self, name: str) -> AnyPath:
        """A scratch folder for side files no reader needs (dropped by :meth:`discard`).
        Local disk: inside the attempt. Object store: under ``RUN/_scratch/<attempt>/``,
        outside the attempt, because deleting objects under a prefix can make pyarrow write a
        folder marker there, which some S3-compatible servers then list wrongly."""
        if not self.remote:
            return self.tmp / name
        keep = self.run_dir / SCRATCH / ".keep"  # the scratch prefix is never emptied
        if not keep.is_file():
            keep.write_text("scratch space of running stages; `curamix gc` empties it\n")
        return self.run_dir / SCRATCH / self.tmp.name / name

    def discard(self, name: str) -> None:
        """Drop the scratch folder ``name``: now on local disk, after the commit on an object
        store (a failure there leaves it to ``curamix gc``)."""
        if self.remote:
            self.discarded.append(name)
        else:
            shutil.rmtree(self.tmp / name, ignore_errors=True)

    def commit(self, manifest: dict[str, Any]) -> JobResult:
        manifest = {
            "stage": self.stage,
            "key": self.key,
            "curamix_version": curamix.__version__,
            "completed_at": now_iso(),
            **manifest,
        }
        if self.remote:
            return self._commit_remote(manifest)
        write_json_atomic(self.tmp / MANIFEST, manifest)
        if self.final.exists():  # an unfinished earlier attempt (no marker): replace it
            shutil.rmtree(self.final)
        os.replace(self.tmp, self.final)
        (self.final / MARKER).write_text(now_iso() + "\n", encoding="utf-8")  # written last
        record_stage(self.run_dir, self.stage, self.final.name)
        return JobResult(stage=self.stage, path=self.final, manifest=manifest, skipped=False)

    def _commit_remote(self, manifest: dict[str, Any]) -> JobResult:
        assert isinstance(self.tmp, StorePath)
        base = self.tmp.uri + "/"
        files = [
            {"path": rel, "size": info.size}
            for info, p in self.tmp._walk()
            if info.type.name == "File" and (rel := p.uri[len(base) :]) != MANIFEST
        ]
        manifest = {**manifest, "attempt": self.tmp.name, "files": sorted(files, key=str)}
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        marker = {"attempt": self.tmp.name, "completed_at": now_iso()}
        (self.final / MARKER).write_text(json.dumps(marker) + "\n")  # written last
        self.committed = True
        record_stage(self.run_dir, self.stage, self.final.name)
        if self.discarded:
            with suppress(OSError):  # left for `curamix gc`
                rmtree(self.run_dir / SCRATCH / self.tmp.name)
        return JobResult(stage=self.stage, path=self.tmp, manifest=manifest, skipped=False)

    def abort(self) -> None:
        if self.remote:  # a failed attempt is left for `curamix gc`, as a killed one is
            return
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextmanager
def stage_writer(run_dir: str | AnyPath, stage: str, key: str) -> Iterator[StageWriter]:
    """A :class:`StageWriter` whose temporary folder is removed if the stage fails."""
    w = StageWriter(run_dir, stage, key)
    try:
        yield w
    finally:
        w.abort()  # a no-op after commit, which renamed the temporary folder away


def read_stages_index(run_dir: str | AnyPath) -> dict[str, Any]:
    p = as_path(run_dir) / STAGES_INDEX
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


_INDEX_LOCK = threading.Lock()


def record_stage(run_dir: str | AnyPath, stage: str, folder: str) -> None:
    """Point ``stages.json``'s entry for ``stage`` at ``folder``: read, update and replace the
    index under a lock (threads of this process, and other processes through ``flock``), so
    concurrent commits never lose an entry. On an object store the run lock already keeps
    other processes out, so the threads' lock is enough."""
    import fcntl

    run_dir = as_path(run_dir)
    if isinstance(run_dir, StorePath):
        with _INDEX_LOCK:
            index = read_stages_index(run_dir)
            index[stage] = {"folder": folder, "recorded_at": now_iso()}
            write_json_atomic(run_dir / STAGES_INDEX, index)
        return
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


def check_writable(run_dir: str | AnyPath) -> None:
    """Refuse a run folder this process cannot write, before any work starts: create it if
    needed, then create and remove a probe file in it. A read-only filesystem (``EROFS``) or
    missing permissions (``EACCES``, ``EPERM``) raise :class:`RunFolderNotWritableError`, one
    line naming the folder and the reason; other errors (``ENOSPC``...) propagate as they are.

    A run that would only skip completed stages is refused too (it writes the lock,
    ``pipeline.yaml`` and ``last_run.json``); completed outputs stay readable in place
    (``curamix status``, :func:`latest_result`).

    On an object store: the bucket must exist and take a probe object
    (:class:`curamix.io.fs.StorageError` otherwise, naming the URI and the cause)."""
    if is_remote(run_dir):
        from curamix.io.fs import check_store

        check_store(str(run_dir))
        # the probe stays: the run folder's tag (deleting the only object of a prefix makes
        # pyarrow write a folder marker, which some S3-compatible servers turn into a file)
        tag = as_path(run_dir) / RUN_TAG
        tag.write_text(json.dumps({"curamix_version": curamix.__version__, "at": now_iso()}))
        return
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


LOCK_TTL_S = 120.0
"""An object-store lock whose heartbeat is older than this is stale (its owner died); the
owner rewrites it every quarter of that."""


def lock_owner(run_dir: str | AnyPath) -> dict[str, Any] | None:
    """Who holds (or last held) the run folder's lock: pid, host, started_at, command (and
    on an object store heartbeat_at and the lock's token)."""
    try:
        owner = json.loads((as_path(run_dir) / LOCK).read_text(encoding="utf-8") or "null")
        return None if owner and owner.get("released_at") else owner
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
    it is not a lock across machines on a network filesystem.

    On an object store the lock is the object ``RUN/.lock``: the owner (pid, host, command,
    a random token) and a heartbeat that a thread rewrites every ``LOCK_TTL_S / 4`` seconds.
    A lock whose heartbeat is younger than :data:`LOCK_TTL_S` refuses the run; an older one
    (a dead owner) is taken over. After writing its own lock a run reads it back and gives up
    if another run's token is there (two runs starting within the same instant: the later
    write wins, the other refuses). Machines' clocks must agree within the TTL.

    A folder that cannot be written is refused first, with
    :class:`RunFolderNotWritableError` (:func:`check_writable`)."""
    import fcntl

    if is_remote(run_dir):
        with _remote_lock(as_path(run_dir)):  # type: ignore[arg-type]
            yield
        return
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


def _age_s(iso: str | None) -> float:
    if not iso:
        return float("inf")
    try:
        return (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(iso)).total_seconds()
    except ValueError:
        return float("inf")


def _locked_error(run_dir: Any, o: dict[str, Any]) -> RunLockedError:
    beat = _age_s(o.get("heartbeat_at"))
    return RunLockedError(
        f"run folder {run_dir} is in use by pid {o.get('pid', '?')} on {o.get('host', '?')} "
        f"since {o.get('started_at', '?')} ({o.get('command', '?')}; last heartbeat "
        f"{beat:.0f}s ago); wait for it to finish, or use another run_dir"
    )


@contextmanager
def _remote_lock(run_dir: StorePath) -> Iterator[None]:
    """The object-store run lock of :func:`run_lock` (re-entrant within a process)."""
    key = str(run_dir / LOCK)
    with _HELD_LOCK:
        if key in _HELD:
            _HELD[key][1] += 1
            held = True
        else:
            held = False
    if not held:
        check_writable(run_dir)
        lock = run_dir / LOCK
        o = lock_owner(run_dir)
        if o and _age_s(o.get("heartbeat_at")) < LOCK_TTL_S:
            raise _locked_error(run_dir, o)
        token = uuid.uuid4().hex
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": now_iso(),
            "command": " ".join(sys.argv)[:300],
            "token": token,
            "heartbeat_at": now_iso(),
            "ttl_s": LOCK_TTL_S,
        }
        lock.write_text(json.dumps(owner) + "\n")
        back = lock_owner(run_dir) or {}
        if back.get("token") != token:
            raise _locked_error(run_dir, back)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(LOCK_TTL_S / 4):
                try:
                    if (lock_owner(run_dir) or {}).get("token") != token:
                        return  # taken over after a stall longer than the TTL
                    lock.write_text(json.dumps({**owner, "heartbeat_at": now_iso()}) + "\n")
                except OSError:
                    continue  # a transient store error: try again at the next beat

        thread = threading.Thread(target=beat, name="curamix-lock-heartbeat", daemon=True)
        thread.start()
        with _HELD_LOCK:
            _HELD[key] = [(stop, thread, lock, token), 1]
    try:
        yield
    finally:
        with _HELD_LOCK:
            entry = _HELD[key]
            entry[1] -= 1
            release = entry[1] == 0
            if release:
                del _HELD[key]
        if release:
            stop, thread, lock, token = entry[0]
            stop.set()
            thread.join()
            if (lock_owner(run_dir) or {}).get("token") == token:  # released, not deleted:
                # deleting a prefix's object can make pyarrow write a folder marker there
                lock.write_text(json.dumps({"released_at": now_iso(), "token": None}) + "\n")


def collect_garbage(run_dir: str | AnyPath, dry_run: bool = False) -> list[str]:
    """Remove what killed attempts left in a run folder, and return what was (or, with
    ``dry_run``, would be) removed: on an object store every ``attempt-*`` prefix that no
    ``_COMPLETE`` names; on local disk the ``.tmp/`` folders and the
    stage folders without ``_COMPLETE``. Completed outputs are never touched. Run it while
    no run is using the folder (it takes the run lock)."""
    root = as_path(run_dir)
    removed: list[str] = []
    with run_lock(root):
        if isinstance(root, StorePath):
            from collections import defaultdict

            attempts: dict[str, set[str]] = defaultdict(set)
            base = root.uri + "/"
            for info, p in root._walk():
                rel = p.uri[len(base) :].split("/")
                if info.type.name != "File" or not info.size:
                    continue  # folders, and empty folders shown as empty objects by some servers
                if len(rel) >= 3 and rel[1].startswith(ATTEMPT):
                    attempts[rel[0]].add(rel[1])
            scratch = {p.name for p in (root / SCRATCH).iterdir()} - {".keep"}
            removed += [str(root / SCRATCH / n) for n in sorted(scratch)]
            if not dry_run:
                for n in sorted(scratch):
                    rmtree(root / SCRATCH / n)
            attempts.pop(SCRATCH, None)
            for folder, names in sorted(attempts.items()):
                done = completed_at(root / folder)
                stale = sorted(n for n in names if done is None or done.name != n)
                removed += [str(root / folder / n) for n in stale]
                if dry_run or not stale:
                    continue
                # a note first, so that the stage's prefix never becomes empty (pyarrow would
                # write a folder marker, which some S3-compatible servers mishandle)
                note = {"removed": stale, "at": now_iso()}
                (root / folder / GC_NOTE).write_text(json.dumps(note) + "\n")
                for n in stale:
                    rmtree(root / folder / n)
            return removed
        tmp = root / ".tmp"
        if tmp.is_dir():
            for p in sorted(tmp.iterdir()):
                removed.append(str(p))
        for p in sorted(root.iterdir()) if root.is_dir() else []:
            unfinished = (p / MANIFEST).is_file() and not (p / MARKER).is_file()
            if p.is_dir() and not p.name.startswith(".") and unfinished:
                removed.append(str(p))
        if not dry_run:
            for r in removed:
                rmtree(Path(r))
    return removed


def latest_result(run_dir: str | AnyPath, stage: str) -> JobResult | None:
    """The latest completed output of ``stage`` in a run, from ``stages.json``."""
    entry = read_stages_index(run_dir).get(stage)
    if not entry:
        return None
    return _result(stage, as_path(run_dir) / entry["folder"])
