"""The dedup and DSIR jobs on a real Spark standalone cluster on 127.0.0.1 (2 workers, started
with infra/spark/start-cluster.sh): the same outputs as local mode, everything bound to
loopback, and a worker killed mid-job changes nothing."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curamix.config import PipelineConfig, build_config
from curamix.runner import run_pipeline
from tests.infra.cluster import REPO, Cluster, free_port, is_loopback_addr, listening

pytestmark = [pytest.mark.spark, pytest.mark.slow]

STAGES = ("ingest", "dedup", "dsir", "select")
KILL_STAGES = ("ingest", "dedup", "dsir")
"""The run with a worker killed (its ingest output is copied from the local run)."""
VOLATILE = {"completed_at", "timings", "spark", "inputs", "key"}
"""Manifest fields that differ between two runs of the same stage (times, upstream hashes)."""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The synthetic demo corpus (about 240 records in 9 read units, duplicates included)."""
    from curamix.demo import make_demo_corpus

    root = tmp_path_factory.mktemp("cluster-corpus")
    make_demo_corpus(root, n_docs=200, seed=0)
    return root


def _cfg(
    corpus: Path,
    run_dir: Path | str,
    master: str,
    stages=STAGES,
    ui_port: int | None = None,
    raw: str | None = None,
) -> PipelineConfig:
    """The same stages and settings for every run; only the master (and the UI) change."""
    spark: dict = {
        "master": master,
        "driver_memory": "1g",
        "executor_memory": "1g",
        "shuffle_partitions": 4,
    }
    if ui_port:
        spark.update(ui=True, conf={"spark.ui.port": str(ui_port)})
    return build_config(
        {
            "run_dir": str(run_dir),
            "seed": 0,
            "stages": list(stages),
            "spark": spark,
            "ingest": {
                "inputs": [{"path": raw or str(corpus / "raw"), "domain_map": {"news*": "news"}}],
                "max_doc_bytes": 100_000,
                "engine": "spark",  # small input: auto would run it in the driver
            },
            "dedup": {"threshold": 0.8, "engine": "spark"},
            "dsir": {
                "target_inputs": [{"path": str(corpus / "targets" / "demobench_train.jsonl")}],
                "min_example_length": 20,
            },
            "select": {"fraction": 0.3},
        },
        use_env=False,
    )


@pytest.fixture(scope="module")
def local_run(spark, corpus) -> Path:
    """The reference: the same pipeline in local mode (local[2], 4 shuffle partitions)."""
    cfg = _cfg(corpus, corpus / "run-local", "local[2]")
    run_pipeline(cfg, spark=spark)
    return Path(cfg.run_dir)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster.start(tmp_path_factory.mktemp("spark-cluster"), workers=2, cores=1, memory="1536m")
    yield c
    out = c.stop()
    assert out.returncode == 0, out.stderr


class Driver:
    """``python -m tests.infra.run_job CONFIG...`` in its own process (one SparkSession for
    all the runs), its stdout read as it comes (``APP``, ``READY``, ``STEP``, ``RESULT``)."""

    def __init__(self, cfgs: list[PipelineConfig], log_file: Path):
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("CURAMIX_") and k != "SPARK_LOCAL_IP"
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.infra.run_job", *(c.model_dump_json() for c in cfgs)],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self.log_file = log_file
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        t0 = time.monotonic()
        with open(self.log_file, "w", encoding="utf-8") as fh:
            for line in self.proc.stdout:
                fh.write(f"{time.monotonic() - t0:8.1f} {line}")
                fh.flush()
                self.lines.put(line.rstrip("\n"))
        self.lines.put("")  # EOF

    def wait_for(self, prefix: str, timeout: float) -> str:
        """The next line starting with ``prefix`` (fails on timeout or when the driver exits)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            self.log.append(line)
            if line.startswith(prefix):
                return line
            if line == "" and self.proc.poll() is not None:
                break
        pytest.fail(f"no {prefix!r} line from the driver; its output:\n" + self.tail())

    def go(self) -> None:
        """Start the next run (the driver waits after ``READY``)."""
        self.wait_for("READY", 120)
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = 900) -> dict:
        line = self.wait_for("RESULT ", timeout)
        return json.loads(line[len("RESULT ") :])

    def tail(self, n: int = 60) -> str:
        while not self.lines.empty():
            self.log.append(self.lines.get())
        return "\n".join(self.log[-n:])

    def stop(self, timeout: float = 120) -> int | None:
        """Close stdin (no more runs) and wait for a clean exit; kill it after ``timeout``."""
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


def _rows(folder: Path) -> list[dict]:
    rows = pq.read_table(folder).to_pylist()
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))


def _stage_folder(run_dir: Path, stage: str) -> Path:
    folders = sorted(run_dir.glob(f"{stage}-*"))
    assert len(folders) == 1, folders
    return folders[0]


def assert_same_outputs(run_a: Path, run_b: Path, stages=STAGES) -> None:
    """Every Parquet output of every stage has the same rows (ids, decisions, reasons, scores,
    texts ...), the manifests the same counts and config, and DSIR the same fitted model."""
    for stage in stages:
        a, b = _stage_folder(run_a, stage), _stage_folder(run_b, stage)
        subs = sorted(p.name for p in a.iterdir() if p.is_dir())
        assert subs == sorted(p.name for p in b.iterdir() if p.is_dir()), stage
        assert subs, f"{stage}: no outputs in {a}"
        for sub in subs:
            ra, rb = _rows(a / sub), _rows(b / sub)
            assert ra, f"{stage}/{sub} is empty"
            assert ra == rb, f"{stage}/{sub} differs between {a} and {b}"
        ma = json.loads((a / "manifest.json").read_text())
        mb = json.loads((b / "manifest.json").read_text())
        assert {k: v for k, v in ma.items() if k not in VOLATILE} == {
            k: v for k, v in mb.items() if k not in VOLATILE
        }, stage
        if stage == "dsir":
            with np.load(a / "model.npz") as za, np.load(b / "model.npz") as zb:
                assert sorted(za.files) == sorted(zb.files)
                for name in za.files:
                    assert np.array_equal(za[name], zb[name]), name


@pytest.fixture(scope="module")
def s3_corpus(s3, corpus) -> tuple[str, str]:
    """The corpus's raw files on the test S3 server, and a run folder URI there."""
    import uuid

    tag = uuid.uuid4().hex[:8]
    raw = s3.upload(corpus / "raw", f"{s3.bucket('pools')}/cluster-{tag}")
    return raw, f"{s3.bucket('runs')}/cluster-{tag}"


@pytest.fixture(scope="module")
def driver(cluster, corpus, local_run, s3_corpus):
    """One driver process for the three cluster runs (the later ones wait for ``go``): the
    full pipeline; the same with inputs and run folder on S3; then dedup and DSIR again from
    the same ingest output (copied from the local run: the ingest key does not depend on the
    master) for the worker-kill test."""
    ui_port = free_port()
    first = _cfg(corpus, corpus / "run-cluster", cluster.url, ui_port=ui_port)
    raw_uri, run_uri = s3_corpus
    on_s3 = _cfg(corpus, run_uri, cluster.url, ui_port=ui_port, raw=raw_uri)
    kill_dir = corpus / "run-kill"
    ingest = _stage_folder(local_run, "ingest")
    shutil.copytree(ingest, kill_dir / ingest.name)
    second = _cfg(corpus, kill_dir, cluster.url, KILL_STAGES, ui_port=ui_port)
    d = Driver([first, on_s3, second], corpus / "driver.log")
    yield d
    d.stop(timeout=60)  # ends a driver still waiting for the second run; kills a stuck one


@pytest.fixture(scope="module")
def cluster_run(driver, corpus):
    """The full pipeline on the 2-worker cluster, its UI on (bound to 127.0.0.1)."""
    app = json.loads(driver.wait_for("APP ", 600)[4:])
    res = driver.result()
    assert res["app_id"] == app["app_id"]
    return corpus / "run-cluster", res


def test_cluster_run_equals_local_mode(cluster, cluster_run, local_run):
    run_dir, res = cluster_run
    assert res["master"] == cluster.url
    assert set(res["stages"]) == set(STAGES)
    assert res["executors"] == 2, res  # both workers ran tasks of this app
    assert_same_outputs(local_run, run_dir)
    # The dedup really removed duplicates and DSIR/select really selected (not a vacuous match).
    dedup = json.loads((_stage_folder(local_run, "dedup") / "manifest.json").read_text())
    assert dedup["counts"]["removed"] > 0
    select = json.loads((_stage_folder(local_run, "select") / "manifest.json").read_text())
    assert 0 < select["counts"]["kept"] < select["counts"]["in"]
    app = next(a for a in cluster.master_json()["activeapps"] if a["id"] == res["app_id"])
    assert app["state"] == "RUNNING" and app["cores"] == 2  # both workers' cores


def test_cluster_and_driver_listen_on_loopback_only(cluster, cluster_run):
    _, res = cluster_run
    master = listening([cluster.pid("master")])
    # RPC and web UI only: the REST submission server (6066 by default) is off.
    assert {p for _, p in master} == {cluster.port, cluster.webui_port}, master
    workers = listening([cluster.pid(f"worker-{i}") for i in (1, 2)])
    seen = {
        "master": master,
        "workers": workers,
        "driver": [tuple(x) for x in res["listening"]["driver"]],
        "executors": [tuple(x) for x in res["listening"]["executors"]],
    }
    for who, socks in seen.items():
        assert socks, f"no listening sockets found for {who}"
        assert all(is_loopback_addr(a) for a, _ in socks), (who, socks)
    ui_port = int(res["ui"].rsplit(":", 1)[1])
    assert ui_port in {p for _, p in seen["driver"]}  # the app's UI was on, on 127.0.0.1


def _busy_executors(ui: str, app_id: str) -> set[str]:
    """Ids of the executors running a task now, from the app's REST API."""
    try:
        url = f"{ui}/api/v1/applications/{app_id}/executors"
        with urllib.request.urlopen(url, timeout=5) as r:
            execs = json.load(r)
    except OSError:
        return set()
    return {e["id"] for e in execs if e["id"] != "driver" and e.get("activeTasks", 0) > 0}


def _catch_worker_mid_task(cluster: Cluster, ui: str, app_id: str, timeout: float) -> int | None:
    """A worker whose executor is frozen (SIGSTOP) in the middle of a task: freeze the worker
    of a busy executor; if the task had ended just before (the app sees the executor idle),
    let it go on and try again. A frozen executor cannot finish its task, so killing it now
    loses that task for sure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w in (1, 2):
            mine = set(cluster.executors_of(w))
            if not mine & _busy_executors(ui, app_id):
                continue
            pids = cluster.signal_worker(w, signal.SIGSTOP)
            time.sleep(0.5)  # let the app see any task end that happened before the freeze
            if mine & _busy_executors(ui, app_id):
                return w
            for p in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGCONT)
        time.sleep(0.05)
    return None


@pytest.fixture(scope="module")
def cluster_s3_run(driver, cluster_run):
    """The second run: inputs and run folder on the S3 server, nothing else shared between
    the driver and the workers (each worker has its own work and local dirs)."""
    driver.go()
    return driver.result()


def test_cluster_run_on_s3_equals_local_mode(cluster, cluster_s3_run, local_run, corpus, s3_corpus):
    """The workers read the inputs from the bucket and write every part there: the same rows
    as local mode (``source`` names the object instead of the file)."""
    from curamix.io.store import latest_result, part_files

    res = cluster_s3_run
    raw_uri, run_uri = s3_corpus
    assert res["executors"] == 2, res
    for stage in STAGES:
        remote = latest_result(run_uri, stage)
        assert remote is not None and str(remote.path).startswith("s3://"), stage
        a = _stage_folder(local_run, stage)
        subs = sorted(p.name for p in a.iterdir() if p.is_dir())
        for sub in subs:
            got = pa.concat_tables(pq.read_table(f) for f in part_files(remote.path / sub))
            rows = [
                {k: (v.replace(str(corpus / "raw"), raw_uri) if isinstance(v, str) else v)
                 for k, v in r.items()}
                for r in _rows(a / sub)
            ]  # fmt: skip
            want = sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))
            have = sorted(got.to_pylist(), key=lambda r: json.dumps(r, sort_keys=True, default=str))
            assert have == want, (stage, sub)


def test_worker_killed_mid_job_same_output(
    cluster, driver, cluster_run, cluster_s3_run, local_run, corpus
):
    """SIGKILL one worker (and its executor and Python workers) while it runs a dedup task:
    Spark reruns the lost task on the other worker and the outputs are still identical to
    local mode; the master shows the worker dead."""
    first_dir, first = cluster_run
    run_dir = corpus / "run-kill"
    assert cluster.master_json()["aliveworkers"] == 2
    driver.go()
    start = len(driver.log)
    line = driver.wait_for("STEP", 120)
    assert "ingest: skipped" in line, driver.tail()
    line = driver.wait_for("STEP", 120)
    assert "dedup: MinHash signatures" in line, driver.tail()
    # Catch a worker's executor in the middle of a task, then take the worker down.
    victim = _catch_worker_mid_task(cluster, first["ui"], first["app_id"], timeout=300)
    assert victim is not None, "no executor was caught running a task:\n" + driver.tail()
    killed = cluster.kill_worker(victim)
    driver.tail()  # every line printed up to the kill, into driver.log
    at_kill = [x for x in driver.log[start:] if x.startswith("STEP")]
    assert not any(x.startswith("RESULT") for x in driver.log[start:]), "ended before the kill"
    res = driver.result()
    assert driver.stop() == 0, driver.tail()
    assert len(killed) >= 2  # the worker JVM and its executor JVM (and Python workers)
    # Killed during dedup; the rest of dedup and all of DSIR ran on the surviving worker.
    assert "dedup:" in at_kill[-1], at_kill
    after = [x for x in driver.log[start:] if x.startswith("STEP")][len(at_kill) :]
    assert any("dedup: kept" in x for x in after), after
    assert any("dsir: scored" in x for x in after), after
    assert res["lost_executors"] == 1, res
    assert res["failed_tasks"] >= 1, res  # tasks were lost with the executor and rerun
    state = cluster.master_json()
    assert state["aliveworkers"] == 1, state["workers"]
    assert sorted(w["state"] for w in state["workers"]) == ["ALIVE", "DEAD"], state["workers"]
    done = next(a for a in state["completedapps"] if a["id"] == res["app_id"])
    assert done["state"] == "FINISHED"
    assert_same_outputs(local_run, run_dir, KILL_STAGES[1:])
    assert_same_outputs(first_dir, run_dir, KILL_STAGES[1:])
