"""A Spark executor's Python worker killed in the middle of a task, once in each stage kind that
runs tasks on Spark: ingest (RDD tasks), embed, a pool stage deciding in its tasks (decontam), a
pool stage deciding on the driver (semdedup), scoring (dsir), select and coreset. (Dedup: a
real standalone worker is killed in tests/infra/test_cluster.py.)

The killed run is a subprocess on ``local[2,2]`` (two task slots, each task tried at most twice,
like a cluster's ``spark.task.maxFailures``) with ``tests/spark_faults`` on ``PYTHONPATH``: its
``sitecustomize.py``, which every Spark Python worker imports at start-up, makes the first
task attempt of an armed stage exit with ``os._exit(137)`` after producing its first output.
No production code knows about it. Per stage kind: the run completes, Spark counted the failed
attempt, and the stage's files equal a clean run's, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from curamix.config import PipelineConfig, build_config, load_config
from curamix.io.store import MANIFEST, MARKER
from curamix.runner import run_pipeline
from tests.conftest import REPO

pytestmark = [pytest.mark.spark, pytest.mark.slow]

KILLED = ("ingest", "embed", "semdedup", "decontam", "dsir", "select", "coreset")
"""The stages of the shared pipeline, each with one worker killed; in run order."""
VOLATILE = {"completed_at", "timings", "docs_per_s", "spark", "inputs", "key"}
"""Manifest fields that differ between two runs (times, speed, master, upstream hashes)."""
NOT_DATA = {MARKER, MANIFEST, "report.md"}
"""Files compared otherwise (the manifest without VOLATILE) or not at all (times in them)."""


def _config(root: Path, run_dir: Path, master: str) -> PipelineConfig:
    """The demo pipeline, small: the stages of KILLED, every one on Spark (ingest is forced to;
    auto would run 100 documents in the driver), quality, dedup and betr left out."""
    from curamix.demo import write_demo_pipeline

    cfg = load_config(
        write_demo_pipeline(root),
        [
            f"run_dir={run_dir}",
            f"spark.master={master}",
            "spark.shuffle_partitions=4",
            "ingest.engine=spark",
            "embed.max_seq_length=48",
        ],
        use_env=False,
    )
    data = cfg.model_dump(mode="json")
    for section in ("dedup", "quality", "betr", "mixture", "scaling", "export", "flow"):
        data[section] = None
    data.update(stages=list(KILLED), coreset={"fraction": 0.5})
    return build_config(data, use_env=False)


def _digest(folder: Path) -> dict:
    """sha256 of every file of a stage output (Spark's random file-name UUIDs removed) and its
    manifest without the VOLATILE fields."""
    out: dict = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in NOT_DATA):
        name = re.sub(r"-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", "", str(f.relative_to(folder)))
        out[name] = hashlib.sha256(f.read_bytes()).hexdigest()
    manifest = json.loads((folder / MANIFEST).read_text())
    out[MANIFEST] = {k: v for k, v in manifest.items() if k not in VOLATILE}
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, spark) -> tuple[dict, dict]:
    """A clean run (this session's local[2]) and a run killing one worker per stage (a
    subprocess on local[2,2]): (clean stage -> folder, the killed run's report)."""
    from curamix.demo import make_demo_corpus

    root = tmp_path_factory.mktemp("spark-faults")
    make_demo_corpus(root, n_docs=100, seed=0)
    clean = run_pipeline(_config(root, root / "clean", "local[2]"), spark=spark)
    cfg = _config(root, root / "killed", "local[2,2]")
    (root / "killed.json").write_text(json.dumps(cfg.model_dump(mode="json")))
    kill_dir = root / "kill"
    kill_dir.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(REPO / "tests" / "spark_faults"), str(REPO), os.environ.get("PYTHONPATH", "")]
        ),
        "CURAMIX_TEST_KILL_DIR": str(kill_dir),
    }
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "spark_faults" / "driver.py"),
         str(root / "killed.json"), str(root / "report.json"), *KILLED],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads((root / "report.json").read_text())
    assert report["master"] == "local[2,2]"
    return {s: r.path for s, r in clean.items()}, report


@pytest.mark.parametrize("stage", KILLED)
def test_a_worker_killed_mid_task_is_retried_and_changes_nothing(runs, stage):
    clean, report = runs
    got = report["stages"][stage]
    assert got["fired"] and got["fired"].startswith(stage), got  # a worker died in this stage
    died = json.loads(got["fired"].splitlines()[1])
    assert died["pid"] > 0 and died["partition"] >= 0
    assert got["failed_tasks"] >= 1, got  # Spark saw the attempt fail, and ran it again
    assert not got["skipped"]
    killed = Path(got["path"])
    assert (killed / MARKER).is_file()
    assert _digest(killed) == _digest(clean[stage])
