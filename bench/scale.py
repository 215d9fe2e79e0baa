"""Scale-out: ingest -> dedup -> DSIR -> select (and the mixture search) on a pool of N documents.

    .venv/bin/python bench/scale.py --docs 200000 [--files 8] [--where local|s3]
        [--master local[2]|cluster|spark://...] [--stages ingest,dedup,dsir,select]
        [--mixture] [--work DIR] [--json OUT] [--compare OTHER.json]

Pool (cached in ``--work`` by N, files, seed and compression): the real corpus
(``../shared/data/corpus``, 43,693 documents in 11 domains) followed by perturbed copies of it
until N documents, in ``--files`` gzip (or zstd) JSONL files of uneven sizes (geometric shares,
ratio 0.7, in a seeded order). Document ``i`` is a pure function of (seed, i), so the files are
written in parallel, streamed, and the same for any number of processes:

- fresh documents: position ``i`` takes corpus document ``perm[i % 43,693]``; its first pass is
  the document itself, every later pass a copy whose word chunks (4 words, 1 for documents
  under 64 words) are shuffled: bigrams mostly survive (DSIR still sees the domain), word
  5-grams do not (the copies are not near-duplicates of each other);
- injected duplicates (``--dup-rate``, 10%): a copy of a random fresh document of the whole
  pool (any file), perturbed by the near-dup benchmark's own generator
  (``build_near_dups.py``: its kinds and weights, exact / whitespace / case / near@R word edits
  / near+fmt), so dedup has real work that crosses files.

Run: the stages as one curamix pipeline config (``build_config`` + ``run_pipeline``, one stage
per call so each is timed alone), ``engine: spark`` wherever a stage has one (ingest, dedup,
the mixture search), DSIR towards GSM8K + MMLU train, select 10%. ``--where s3`` serves
``WORK/s3`` with ``rclone serve s3`` on 127.0.0.1 (``tests/s3.py``), uploads the pool and the
targets there, and writes the run folder to ``s3://runs/...`` (the mixture search cannot run
into an object-store run folder yet: ``--mixture`` needs ``--where local``).
``--master cluster`` starts a standalone cluster on 127.0.0.1 (``infra/spark/start-cluster.sh``
through ``tests/infra/cluster.py``): 2 workers, 1 core each, each its own work folder, executor
scratch under ``WORK/spark-local``.

Measured per stage: wall time (this script's clock around ``run_pipeline``; the manifests'
``timings`` are kept in the JSON), docs/s (the stage's input documents / wall), the peak RSS
sampled every 0.2 s from /proc of the driver (its Python process and its JVM, apart and
summed), of the Python workers (local mode: the JVM's Python children, RSS summed, so pages
shared after fork count once per worker) and of each executor (cluster: its JVM and its Python
workers), and from Spark's REST API (the UI is on, bound to 127.0.0.1) the jobs, stages and
tasks of the stage's job group, failed tasks, shuffle bytes written and spill (Spark's
``memoryBytesSpilled`` / ``diskBytesSpilled``), and each JVM's peak heap in use so far (Spark's
executor metrics, polled every second). ``--compare`` prints the cost growth against an
earlier run's JSON (the issue's bound: at most 11x per stage for 10x documents).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import gzip
import hashlib
import importlib.util
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from multiprocessing import get_context
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SHARE_RATIO = 0.7
"""File ``k`` of the pool holds a share proportional to ``SHARE_RATIO ** k`` (order shuffled)."""
CHUNK_WORDS = 4
SHORT_DOC_WORDS = 64
EVENT = "@@scale "
"""Prefix of the child's event lines on stdout (JSON after it)."""
GIB = 2**30


# ----------------------------------------------------------------------------- pool
def file_sizes(n: int, files: int, seed: int) -> list[int]:
    """Documents per file: geometric shares (ratio 0.7) in a seeded order, summing to ``n``."""
    if files < 1 or n < files:
        raise SystemExit(f"--files {files} needs 1 <= files <= --docs ({n})")
    w = [SHARE_RATIO**k for k in range(files)]
    random.Random(seed).shuffle(w)
    sizes = [max(1, int(n * x / sum(w))) for x in w]
    sizes[sizes.index(max(sizes))] += n - sum(sizes)
    return sizes


class PoolMaker:
    """Document ``i`` of an ``n``-document pool as a pure function of (seed, i)."""

    def __init__(self, data: Path, n: int, seed: int, dup_rate: float):
        spec = importlib.util.spec_from_file_location(
            "build_near_dups", data / "build_near_dups.py"
        )
        if spec is None or spec.loader is None:
            raise SystemExit(f"cannot load {data / 'build_near_dups.py'}")
        gen = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(gen)
        self.gen, self.n, self.seed, self.dup_rate = gen, n, seed, dup_rate
        self.docs: list[tuple[str, str, str]] = []
        for f in sorted((data / "corpus").glob("*.jsonl.gz")):
            for r in gen.read_jsonl(str(f)):
                self.docs.append((r["id"], r["text"], r.get("source") or f.name.split(".")[0]))
        rng = random.Random(seed)
        self.perm = list(range(len(self.docs)))
        rng.shuffle(self.perm)
        self.vocab = gen.build_vocab([{"text": t} for _, t, _ in self.docs], rng)
        self.kinds = gen.parse_kinds(gen.DEFAULT_KINDS)
        self.weights = [k[2] for k in self.kinds]

    def _u(self, i: int) -> float:
        """A uniform draw in [0, 1) fixed by (seed, i): whether position ``i`` is a duplicate."""
        h = hashlib.blake2b(f"{self.seed}:{i}".encode(), digest_size=8).digest()
        return int.from_bytes(h, "little") / 2**64

    def _rng(self, i: int) -> random.Random:
        return random.Random(self.seed * 10**12 + i)

    def fresh(self, i: int) -> dict[str, str]:
        m = len(self.docs)
        doc_id, text, source = self.docs[self.perm[i % m]]
        copy = i // m
        if copy == 0:
            return {"id": doc_id, "text": text, "source": source}
        words = text.split()
        size = 1 if len(words) < SHORT_DOC_WORDS else CHUNK_WORDS
        chunks = [words[k : k + size] for k in range(0, len(words), size)]
        self._rng(i).shuffle(chunks)
        return {
            "id": f"{doc_id}~{copy}",
            "text": " ".join(w for c in chunks for w in c),
            "source": source,
        }

    def doc(self, i: int) -> tuple[dict[str, str], str]:
        """(record, kind): kind is ``original``, ``copy`` or the injected duplicate's kind."""
        if self._u(i) >= self.dup_rate:
            return self.fresh(i), "original" if i < len(self.docs) else "copy"
        rng = self._rng(i)
        j = rng.randrange(self.n)
        for _ in range(100):
            if self._u(j) >= self.dup_rate:
                break
            j = rng.randrange(self.n)
        else:
            return self.fresh(i), "copy"
        src = self.fresh(j)
        name, rate, _ = rng.choices(self.kinds, weights=self.weights)[0]
        g, text = self.gen, src["text"]
        if name == "whitespace":
            text = g.perturb_whitespace(text, rng)
        elif name == "case":
            text = g.perturb_case(text, rng)
        elif name in ("near", "near+fmt"):
            text, _ = g.perturb_words(text, rate, rng, self.vocab)
            if name == "near+fmt":
                text = g.perturb_case(g.perturb_whitespace(text, rng), rng)
        elif name != "exact":
            raise SystemExit(f"unexpected duplicate kind {name!r}")
        row = {"id": f"{src['id']}~dup{i}", "text": text, "source": src["source"]}
        return row, g.kind_label(name, rate)


_MAKER: PoolMaker | None = None


@contextlib.contextmanager
def _open_out(path: Path, compression: str) -> Iterator[Any]:
    with open(path, "wb") as raw:
        if compression == "gz":
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as g:
                yield g
        else:
            import zstandard

            with zstandard.ZstdCompressor(level=3).stream_writer(raw) as z:
                yield z


def _write_file(job: dict[str, Any]) -> dict[str, Any]:
    """Write positions ``[start, start + count)`` to ``path``, 2,000 lines at a time."""
    global _MAKER
    if _MAKER is None or (_MAKER.n, _MAKER.seed) != (job["n"], job["seed"]):
        _MAKER = PoolMaker(Path(job["data"]), job["n"], job["seed"], job["dup_rate"])
    path = Path(job["path"])
    tmp = path.with_name(path.name + ".tmp")
    kinds: collections.Counter[str] = collections.Counter()
    nbytes, buf = 0, []
    t = time.perf_counter()
    with _open_out(tmp, job["compression"]) as fh:
        for i in range(job["start"], job["start"] + job["count"]):
            row, kind = _MAKER.doc(i)
            kinds[kind] += 1
            buf.append(_MAKER.gen._dumps(row) + "\n")
            if len(buf) == 2000:
                b = "".join(buf).encode("utf-8")
                fh.write(b)
                nbytes, buf = nbytes + len(b), []
        b = "".join(buf).encode("utf-8")
        fh.write(b)
        nbytes += len(b)
    tmp.rename(path)
    return {
        "file": path.name,
        "docs": job["count"],
        "bytes": nbytes,
        "compressed_bytes": path.stat().st_size,
        "kinds": dict(kinds),
        "seconds": round(time.perf_counter() - t, 1),
    }


def make_pool(
    data: Path, n: int, files: int, seed: int, work: Path, compression: str, dup_rate: float
) -> tuple[Path, dict[str, Any]]:
    """The pool folder and its description (``<folder>.json`` beside it, written last: a folder
    without it is rebuilt)."""
    folder = work / f"pool-n{n}-f{files}-s{seed}-d{dup_rate:g}-{compression}"
    meta_path = folder.with_name(folder.name + ".json")
    if meta_path.is_file():
        return folder, json.loads(meta_path.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sizes = file_sizes(n, files, seed)
    starts = [sum(sizes[:k]) for k in range(files)]
    ext = "jsonl.gz" if compression == "gz" else "jsonl.zst"
    jobs = [
        {
            "path": str(folder / f"shard-{k:02d}.{ext}"),
            "start": starts[k],
            "count": sizes[k],
            "n": n,
            "seed": seed,
            "data": str(data),
            "dup_rate": dup_rate,
            "compression": compression,
        }
        for k in range(files)
    ]
    jobs.sort(key=lambda j: -j["count"])  # largest first: the two processes end together
    t = time.perf_counter()
    procs = min(len(jobs), os.cpu_count() or 1)
    with get_context("spawn").Pool(procs) as pool:
        done = pool.map(_write_file, jobs, chunksize=1)
    done.sort(key=lambda d: d["file"])
    kinds: collections.Counter[str] = collections.Counter()
    for d in done:
        kinds.update(d["kinds"])
    meta = {
        "docs": n,
        "files": done,
        "seed": seed,
        "dup_rate": dup_rate,
        "compression": compression,
        "bytes": sum(d["bytes"] for d in done),
        "compressed_bytes": sum(d["compressed_bytes"] for d in done),
        "kinds": dict(sorted(kinds.items())),
        "generate_seconds": round(time.perf_counter() - t, 1),
        "processes": procs,
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return folder, meta


# ----------------------------------------------------------------------------- memory
def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(x) for x in (task / "children").read_text().split()]
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _pss(pid: int) -> int:
    """Proportional set size: shared pages split among the processes that map them."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for c in _children(todo.pop()):
            out.append(c)
            todo.append(c)
    return out


def _is_jvm(pid: int) -> bool:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")).startswith("java")
    except OSError:
        return "java" in _cmdline(pid).split(" ", 1)[0]


class Sampler(threading.Thread):
    """Peak RSS by role, per current stage, every ``period`` seconds (from /proc).

    Roles: ``driver_python`` (the driver process), ``driver_jvm`` (its JVM), ``driver`` (the
    two summed per sample), ``python_workers`` (Python processes under the driver JVM: local
    mode's executors; ``python_workers_pss``: their proportional set size, shared pages
    split), ``executor<id>_jvm`` / ``executor<id>_python`` / ``executor<id>``
    (cluster executors of this app, found by their command line), ``s3_server`` (rclone)."""

    def __init__(self, driver: int, s3_pid: int | None, period: float = 0.2):
        super().__init__(daemon=True)
        self.driver, self.s3_pid, self.period = driver, s3_pid, period
        self.stage = "start"
        self.app_id: str | None = None
        self.peaks: dict[str, dict[str, int]] = collections.defaultdict(dict)
        self.samples = 0
        self._halt = threading.Event()
        self._exec_scan = 0.0
        self._executors: dict[str, int] = {}

    def _find_executors(self) -> dict[str, int]:
        """Executor id -> JVM pid for this app (rescanned every 2 s: /proc is long)."""
        now = time.monotonic()
        if self.app_id and now - self._exec_scan > 2.0:
            self._exec_scan = now
            found = {}
            for p in os.listdir("/proc"):
                if not p.isdigit():
                    continue
                args = _cmdline(int(p))
                if "CoarseGrainedExecutorBackend" in args and f"--app-id {self.app_id}" in args:
                    a = args.split()
                    found[a[a.index("--executor-id") + 1]] = int(p)
            self._executors = found
        return self._executors

    def sample(self) -> dict[str, int]:
        out: dict[str, int] = collections.defaultdict(int)
        out["driver_python"] = _rss(self.driver)
        for c in _children(self.driver):
            if _is_jvm(c):
                out["driver_jvm"] += _rss(c)
                for w in _tree(c):
                    if "python" not in _cmdline(w).split(" ", 1)[0]:
                        continue
                    out["python_workers"] += _rss(w)
                    out["python_workers_pss"] += _pss(w)
        out["driver"] = out["driver_python"] + out["driver_jvm"]
        for eid, pid in self._find_executors().items():
            jvm, py = _rss(pid), sum(_rss(w) for w in _tree(pid))
            if jvm:
                out[f"executor{eid}_jvm"] = jvm
                out[f"executor{eid}_python"] = py
                out[f"executor{eid}"] = jvm + py
        if self.s3_pid:
            out["s3_server"] = _rss(self.s3_pid)
        return out

    def run(self) -> None:
        while not self._halt.is_set():
            s = self.sample()
            for key in (self.stage, "all"):
                peaks = self.peaks[key]
                for role, v in s.items():
                    if v > peaks.get(role, 0):
                        peaks[role] = v
            self.samples += 1
            self._halt.wait(self.period)

    def stop(self) -> None:
        self._halt.set()
        self.join()


# ----------------------------------------------------------------------------- child (driver)
def _emit(ev: dict[str, Any]) -> None:
    print(EVENT + json.dumps(ev), flush=True)


def _rest(ui: str, app: str, what: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{ui}/api/v1/applications/{app}/{what}", timeout=60) as r:
        return json.load(r)


def _spark_time(s: str) -> float:
    """Epoch seconds of the REST API's ``2026-12-03T10:00:00.123GMT``."""
    t = dt.datetime.strptime(s.replace("GMT", ""), "%Y-%m-%dT%H:%M:%S.%f")
    return t.replace(tzinfo=dt.UTC).timestamp()


def spark_stats(sc: Any, group: str, t0: float, t1: float) -> dict[str, Any]:
    """Jobs, Spark stages, tasks, shuffle and spill of job group ``group`` (jobs with no group
    submitted between ``t0`` and ``t1`` count too), from the app's REST API; task counts only,
    from the status tracker, when the API does not answer."""
    ui, app = sc.uiWebUrl, sc.applicationId
    try:
        jobs = _rest(ui, app, "jobs")
        stages = _rest(ui, app, "stages")
    except (OSError, ValueError) as err:
        st = sc.statusTracker()
        ids = st.getJobIdsForGroup(group)
        sids = sorted({s for j in ids if (info := st.getJobInfo(j)) for s in info.stageIds})
        tasks = [info.numTasks for s in sids if (info := st.getStageInfo(s))]
        return {
            "source": f"status tracker (REST API failed: {err}); no spill figures",
            "jobs": len(ids),
            "spark_stages": len(tasks),
            "tasks": sum(tasks),
            "tasks_per_stage": tasks,
        }
    mine = [
        j
        for j in jobs
        if j.get("jobGroup") == group
        or (not j.get("jobGroup") and t0 <= _spark_time(j["submissionTime"]) <= t1)
    ]
    ids = {s for j in mine for s in j["stageIds"]}
    ran = sorted(
        (s for s in stages if s["stageId"] in ids and s["status"] != "SKIPPED"),
        key=lambda s: (s["stageId"], s["attemptId"]),
    )

    def total(field: str) -> int | None:
        if ran and all(field not in s for s in ran):
            return None  # this Spark version does not report it
        return int(sum(s.get(field, 0) for s in ran))

    return {
        "source": "REST API",
        "jobs": len(mine),
        "spark_stages": len(ran),
        "tasks": sum(s["numCompleteTasks"] + s["numFailedTasks"] for s in ran),
        "failed_tasks": total("numFailedTasks"),
        "tasks_per_stage": [s["numTasks"] for s in ran],
        "input_bytes": total("inputBytes"),
        "shuffle_write_bytes": total("shuffleWriteBytes"),
        "memory_bytes_spilled": total("memoryBytesSpilled"),
        "disk_bytes_spilled": total("diskBytesSpilled"),
        "executor_run_s": round(sum(s.get("executorRunTime", 0) for s in ran) / 1000, 1),
    }


def heap_peaks(sc: Any) -> dict[str, int | None]:
    """Executor id (``driver`` too) -> the peak JVM heap in use so far, from Spark's executor
    metrics (polled every second; {} when the REST API does not answer)."""
    try:
        execs = _rest(sc.uiWebUrl, sc.applicationId, "allexecutors")
    except (OSError, ValueError):
        return {}
    return {e["id"]: (e.get("peakMemoryMetrics") or {}).get("JVMHeapMemory") for e in execs}


def child(spec: dict[str, Any]) -> None:
    """The driver: build the session, run each stage (then the search) in its own job group."""
    from curamix.config import build_config
    from curamix.pipelines.session import get_spark
    from curamix.runner import run_pipeline

    cfg = build_config(spec["config"], use_env=False)
    _emit({"ev": "stage", "stage": "spark_start"})
    t = time.perf_counter()
    spark = get_spark(cfg.spark)
    sc = spark.sparkContext
    _emit(
        {
            "ev": "spark",
            "app_id": sc.applicationId,
            "ui": sc.uiWebUrl,
            "seconds": round(time.perf_counter() - t, 2),
            "default_parallelism": sc.defaultParallelism,
        }
    )
    steps = [*spec["stages"], *(["mixture"] if spec["mixture"] else [])]
    for stage in steps:
        _emit({"ev": "stage", "stage": stage})
        sc.setJobGroup(stage, f"curamix {stage}")
        p0, t0 = time.perf_counter(), time.time()
        msgs: list[tuple[float, str]] = []

        def say(msg: str, p0: float = p0, msgs: list = msgs) -> None:
            msgs.append((round(time.perf_counter() - p0, 2), msg))
            print(f"  [{time.perf_counter() - p0:7.1f}s] {msg}", flush=True)

        if stage == "mixture":
            res, docs = _mixture(spark, cfg, say)
        else:
            res = run_pipeline(cfg, spark, on_step=say, only=[stage])[stage]
            docs = res.counts.get("in")
        wall = time.perf_counter() - p0
        sc.setJobGroup("none", "between stages")
        _emit(
            {
                "ev": "done",
                "stage": stage,
                "wall_s": round(wall, 2),
                "docs_in": docs,
                "counts": {k: v for k, v in res.counts.items() if not isinstance(v, dict)},
                "timings": res.manifest.get("timings"),
                "engine": res.manifest.get("engine"),
                "folder": res.folder,
                "spark": spark_stats(sc, stage, t0, time.time()),
                "jvm_heap_peak_so_far": heap_peaks(sc),
                "messages": msgs,
            }
        )
    _emit({"ev": "stage", "stage": "stop"})
    spark.stop()


def _mixture(spark: Any, cfg: Any, say: Callable[[str], None]) -> tuple[Any, int | None]:
    """The flow's mixture step (``curamix.flows.curate.mixture_task``) on this session."""
    from functools import partial

    from curamix.mixers.search import (
        pool_stage_for,
        read_target_texts,
        run_mixture_search,
        target_spec,
    )
    from curamix.pipelines.parts import map_parts
    from curamix.runner import require_upstream

    pool = require_upstream(cfg, pool_stage_for(cfg))
    paths, domains = target_spec(cfg)
    res = run_mixture_search(
        cfg.run_dir, cfg.mixture, pool, cfg.seed, read_target_texts(paths), domains, say,
        partial(map_parts, spark),
    )  # fmt: skip
    return res, pool.counts.get("out")


# ----------------------------------------------------------------------------- parent
def pipeline_config(args: argparse.Namespace, pool_uri: str, targets: list[str], run_dir: str,
                    master: str, ui_port: int, local_dir: Path) -> dict[str, Any]:  # fmt: skip
    """The run's config (a plain mapping for ``build_config``)."""
    is_local = master.startswith("local")
    spark: dict[str, Any] = {
        "master": master,
        "app_name": "curamix-bench-scale",
        "driver_memory": args.driver_memory or ("4g" if is_local else "2g"),
        "ui": True,
        "conf": {
            "spark.ui.port": str(ui_port),
            "spark.ui.retainedJobs": "100000",
            "spark.ui.retainedStages": "100000",
            "spark.executor.metrics.pollingInterval": "1s",
        },
    }
    if is_local:
        spark["local_dir"] = str(local_dir)
    else:
        spark["executor_memory"] = args.executor_memory
    if args.shuffle_partitions:
        spark["shuffle_partitions"] = args.shuffle_partitions
    cfg: dict[str, Any] = {
        "run_dir": run_dir,
        "seed": args.seed,
        "stages": args.stages,
        "spark": spark,
        "ingest": {"inputs": [{"path": pool_uri, "domain_field": "source"}], "engine": "spark"},
        "dedup": {"engine": "spark"},
        "dsir": {"target_inputs": [{"path": p} for p in targets]},
        "select": {"fraction": args.select_fraction},
    }
    if args.mixture:
        cfg["mixture"] = {
            "method": args.mixture_method,
            "model": "nano",
            "total_tokens": args.mixture_tokens,
            "eval_tokens": 8192,
            "engine": "spark",
            "checkpoint_every": None,
        }
    return cfg


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _upload(src: Path, uri: str) -> int:
    """Stream every file of ``src`` to ``uri/`` through S3 (skipped when the object has the same
    size); returns the files sent."""
    import pyarrow.fs as pafs

    fs, base = pafs.FileSystem.from_uri(uri)
    sent = 0
    for f in sorted(p for p in src.iterdir() if p.is_file()):
        info = fs.get_file_info(f"{base}/{f.name}")
        if info.type == pafs.FileType.File and info.size == f.stat().st_size:
            continue
        with (
            open(f, "rb") as fh,
            fs.open_output_stream(f"{base}/{f.name}", compression=None) as out,
        ):
            shutil.copyfileobj(fh, out, 8 * 2**20)
        sent += 1
    return sent


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Make (or reuse) the pool, start what ``--where`` / ``--master`` need, run the child
    driver under the sampler, and collect its events."""
    data, work = Path(args.data), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    pool_dir, pool = make_pool(
        data, args.docs, args.files, args.seed, work, args.compression, args.dup_rate
    )
    print(
        f"pool: {pool_dir} ({pool['docs']:,} docs, {pool['bytes'] / GIB:.2f} GiB JSONL, "
        f"{pool['compressed_bytes'] / GIB:.2f} GiB {pool['compression']}, "
        f"{len(pool['files'])} files of {min(f['docs'] for f in pool['files']):,}-"
        f"{max(f['docs'] for f in pool['files']):,} docs; ready in {time.perf_counter() - t:.0f} s)",
        flush=True,
    )
    targets = [str(data / "targets" / f"{n}_train.jsonl.gz") for n in ("gsm8k", "mmlu")]
    tag = f"n{args.docs}-{args.where}-{args.master.replace('[', '').replace(']', '').split(':')[0]}"
    tag += time.strftime("-%Y%m%d-%H%M%S")
    server = cluster = None
    sys.path.insert(0, str(REPO))
    try:
        pool_uri, run_dir = str(pool_dir), str(work / "runs" / tag)
        if args.where == "s3":
            from tests import s3 as s3mod

            s3mod.export_env()
            server = s3mod.S3Server(work / "s3" / "root").start()
            pools = server.bucket("pools")
            pool_uri = f"{pools}/{pool_dir.name}"
            t = time.perf_counter()
            sent = _upload(pool_dir, pool_uri)
            tdir = work / "s3-targets"
            tdir.mkdir(exist_ok=True)
            for p in targets:
                shutil.copyfile(p, tdir / Path(p).name)
            _upload(tdir, f"{pools}/targets")
            targets = [f"{pools}/targets/{Path(p).name}" for p in targets]
            print(f"s3: {server.endpoint}, pool at {pool_uri} ({sent} files sent in "
                  f"{time.perf_counter() - t:.0f} s)", flush=True)  # fmt: skip
            run_dir = f"{server.bucket('runs')}/{tag}"
        master = args.master
        local_dir = work / "spark-local"
        local_dir.mkdir(exist_ok=True)
        if master == "cluster":
            from tests.infra.cluster import Cluster

            os.environ["SPARK_LOCAL_DIRS"] = str(local_dir)  # each executor: its own subfolder
            t = time.perf_counter()
            cluster = Cluster.start(
                work / "cluster" / tag, workers=2, cores=1, memory=args.worker_memory
            )
            master = cluster.url
            print(f"cluster: {master}, 2 workers x 1 core x {args.worker_memory} "
                  f"(up in {time.perf_counter() - t:.0f} s)", flush=True)  # fmt: skip
        cfg = pipeline_config(args, pool_uri, targets, run_dir, master, _free_port(), local_dir)
        res = _run_child(args, cfg, work / "logs" / f"{tag}.log", server)
        res.update(
            pool={k: v for k, v in pool.items() if k != "files"} | {"folder": str(pool_dir)},
            pool_files=pool["files"],
            run_dir=run_dir,
            master=master,
            where=args.where,
            config=cfg,
        )
        if not args.keep_run:
            local_run = server.local(run_dir) if server else Path(run_dir)
            shutil.rmtree(local_run, ignore_errors=True)
        return res
    finally:
        if cluster is not None:
            cluster.stop()
        if server is not None:
            server.stop()


def _run_child(
    args: argparse.Namespace, cfg: dict[str, Any], log: Path, server: Any
) -> dict[str, Any]:
    log.parent.mkdir(parents=True, exist_ok=True)
    spec = {"config": cfg, "stages": args.stages, "mixture": args.mixture}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            cwd=REPO,
        )
        sampler = Sampler(proc.pid, server.proc.pid if server else None, args.sample_s)
        sampler.start()
        events: list[dict[str, Any]] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            if not line.startswith(EVENT):
                print(line, end="", flush=True)
                continue
            ev = json.loads(line[len(EVENT) :])
            events.append(ev)
            if ev["ev"] == "stage":
                sampler.stage = ev["stage"]
                print(f"-- {ev['stage']}", flush=True)
            elif ev["ev"] == "spark":
                sampler.app_id = ev["app_id"]
            elif ev["ev"] == "done":
                sampler.stage = "between"
                s = ev["spark"]
                print(f"-- {ev['stage']}: {ev['wall_s']:.1f} s, {s['jobs']} jobs, "
                      f"{s['tasks']} tasks", flush=True)  # fmt: skip
        rc = proc.wait()
        sampler.stop()
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-40:]
        raise SystemExit(f"the driver failed (exit {rc}); log {log}:\n" + "\n".join(tail))
    peaks = {k: dict(v) for k, v in sampler.peaks.items()}
    spark_ev = next(e for e in events if e["ev"] == "spark")
    stages = {}
    for e in (e for e in events if e["ev"] == "done"):
        e["peak_rss"] = peaks.get(e["stage"], {})
        stages[e["stage"]] = e
    return {
        "spark_start_s": spark_ev["seconds"],
        "default_parallelism": spark_ev["default_parallelism"],
        "stages": stages,
        "peak_rss_all": peaks.get("all", {}),
        "rss_samples": sampler.samples,
        "log": str(log),
    }


# ----------------------------------------------------------------------------- report
def _gib(v: int | None) -> str:
    return "-" if not v else f"{v / GIB:.2f}"


def _mib(v: int | None) -> str:
    return "-" if v is None else f"{v / 2**20:.0f}"


def _executors(peaks: dict[str, int]) -> str:
    ids = sorted({k[len("executor") :] for k in peaks if k.startswith("executor") and "_" not in k})
    return " ".join(f"{i}:{_gib(peaks[f'executor{i}'])}" for i in ids)


def report(res: dict[str, Any]) -> str:
    """The per-stage table (and the whole run's peaks) as text."""
    lines = [
        f"{'stage':9s} {'wall s':>8s} {'docs in':>10s} {'docs/s':>9s} {'driver':>7s} "
        f"{'(py':>5s} {'jvm)':>5s} {'py wrk':>7s} {'executors GiB':>16s} {'jobs':>5s} "
        f"{'tasks':>6s} {'spill mem/disk MiB':>19s}  tasks per Spark stage"
    ]
    for name, s in res["stages"].items():
        p, sp = s["peak_rss"], s["spark"]
        docs = s["docs_in"]
        rate = f"{docs / s['wall_s']:9.0f}" if docs else f"{'-':>9s}"
        per = sp["tasks_per_stage"]
        per_s = ",".join(map(str, per[:12])) + (f",... ({len(per)})" if len(per) > 12 else "")
        spill = f"{_mib(sp.get('memory_bytes_spilled'))}/{_mib(sp.get('disk_bytes_spilled'))}"
        lines.append(
            f"{name:9s} {s['wall_s']:8.1f} {docs or 0:10,d} {rate} {_gib(p.get('driver')):>7s} "
            f"{_gib(p.get('driver_python')):>5s} {_gib(p.get('driver_jvm')):>5s} "
            f"{_gib(p.get('python_workers')):>7s} {_executors(p) or '-':>16s} {sp['jobs']:5d} "
            f"{sp['tasks']:6d} {spill:>19s}  {per_s}"
        )
    a = res["peak_rss_all"]
    lines.append(
        f"whole run: driver peak {_gib(a.get('driver'))} GiB (python {_gib(a.get('driver_python'))}, "
        f"JVM {_gib(a.get('driver_jvm'))}), Python workers {_gib(a.get('python_workers'))} GiB, "
        f"executors {_executors(a) or '-'}, S3 server {_gib(a.get('s3_server'))} GiB; "
        f"Spark start {res['spark_start_s']:.1f} s; {res['rss_samples']} RSS samples"
    )
    last = list(res["stages"].values())[-1].get("jvm_heap_peak_so_far") or {}
    if last:
        heaps = ", ".join(f"{k} {_gib(v)}" for k, v in sorted(last.items()))
        lines.append(f"JVM heap in use, peak over the run (Spark's executor metrics): {heaps} GiB")
    return "\n".join(lines)


def compare(res: dict[str, Any], other: dict[str, Any]) -> str:
    """Cost growth per stage from ``other`` (smaller) to ``res``: wall time and driver peak."""
    n0, n1 = other["pool"]["docs"], res["pool"]["docs"]
    lines = [f"growth {n0:,} -> {n1:,} docs ({n1 / n0:.1f}x): wall time, driver peak RSS"]
    for name, s in res["stages"].items():
        if name not in other["stages"]:
            continue
        o = other["stages"][name]
        g = s["wall_s"] / o["wall_s"]
        d0, d1 = o["peak_rss"].get("driver", 0), s["peak_rss"].get("driver", 0)
        flag = "" if g <= 1.1 * n1 / n0 else "  ABOVE 1.1x the docs ratio"
        lines.append(
            f"  {name:9s} {o['wall_s']:8.1f} s -> {s['wall_s']:8.1f} s  {g:5.2f}x{flag};"
            f"  driver {_gib(d0)} -> {_gib(d1)} GiB ({d1 / max(d0, 1):.2f}x)"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--docs", type=int, default=20_000, help="documents in the pool")
    ap.add_argument("--files", type=int, default=8, help="pool files (uneven sizes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dup-rate", type=float, default=0.1, help="share of injected duplicates")
    ap.add_argument("--compression", choices=("gz", "zst"), default="gz")
    ap.add_argument(
        "--work",
        default=str(Path(tempfile.gettempdir()) / "curamix-bench-scale"),
        help="scratch folder: pools (cached), run folders, logs (default: %(default)s)",
    )
    ap.add_argument("--where", choices=("local", "s3"), default="local")
    ap.add_argument(
        "--master", default="local[2]", help="local[N], 'cluster' (2 workers here) or spark://..."
    )
    ap.add_argument("--stages", default="ingest,dedup,dsir,select")
    ap.add_argument("--mixture", action="store_true", help="then the mixture search (local runs)")
    ap.add_argument("--mixture-method", default="dga")
    ap.add_argument("--mixture-tokens", type=int, default=102_400)
    ap.add_argument("--select-fraction", type=float, default=0.1)
    ap.add_argument("--driver-memory", default=None, help="default 4g local, 2g on a cluster")
    ap.add_argument("--executor-memory", default="2g")
    ap.add_argument("--worker-memory", default="3g", help="per worker of --master cluster")
    ap.add_argument("--shuffle-partitions", type=int, default=None)
    ap.add_argument("--sample-s", type=float, default=0.2, help="RSS sampling period")
    ap.add_argument("--keep-run", action="store_true", help="keep the run folder")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--compare", default=None, help="an earlier run's --json: print the growth")
    ap.add_argument("--gen-only", action="store_true", help="make the pool and stop")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    args.stages = [s for s in args.stages.split(",") if s]
    if args.mixture and args.where == "s3":
        raise SystemExit(
            "--mixture needs --where local: the mixture search cannot run into an object-store "
            "run folder yet (curamix.runner.STORE_READY)"
        )
    if args.gen_only:
        folder, meta = make_pool(
            Path(args.data), args.docs, args.files, args.seed, Path(args.work),
            args.compression, args.dup_rate,
        )  # fmt: skip
        print(json.dumps({"folder": str(folder), **meta}, indent=1))
        return
    print(
        f"machine: {platform.node()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB:.0f} GiB, "
        f"python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M')}",
        flush=True,
    )
    res = run(args)
    res["args"] = {k: v for k, v in vars(args).items() if k != "child"}
    res["date"] = time.strftime("%Y-%m-%d %H:%M")
    res["machine"] = f"{platform.node()}, {os.cpu_count()} cores"
    print()
    print(report(res))
    if args.compare:
        print(compare(res, json.loads(Path(args.compare).read_text())))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
        print(f"results: {args.json}")


if __name__ == "__main__":
    main()
