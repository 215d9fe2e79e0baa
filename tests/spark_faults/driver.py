"""``python driver.py PIPELINE REPORT [STAGE ...]``: run PIPELINE's stages one at a time on the
Spark master it names, arming the worker kill of ``sitecustomize.py`` before each STAGE, and
write REPORT (JSON): per stage, whether a worker died in it, the failed task attempts Spark's
status tracker counted in its jobs, and its output folder."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from curamix.config import load_config
from curamix.pipelines.session import get_spark
from curamix.runner import run_pipeline


def main(pipeline: str, report_path: str, *targets: str) -> None:
    cfg = load_config(pipeline, use_env=False)
    kill_dir = Path(os.environ["CURAMIX_TEST_KILL_DIR"])
    spark = get_spark(cfg.spark)
    tracker = spark.sparkContext.statusTracker()
    report = {"master": spark.sparkContext.master, "stages": {}}
    for stage in cfg.stages:
        before = set(tracker.getJobIdsForGroup())
        if stage in targets:
            (kill_dir / "armed").write_text(stage, encoding="utf-8")
        res = run_pipeline(cfg, spark, only=[stage])[stage]
        jobs = sorted(set(tracker.getJobIdsForGroup()) - before)
        infos = [tracker.getJobInfo(j) for j in jobs]
        stage_infos = [tracker.getStageInfo(s) for i in infos if i for s in i.stageIds]
        fired = None
        if (kill_dir / "fired").exists():
            fired = (kill_dir / "fired").read_text(encoding="utf-8")
            (kill_dir / "fired").rename(kill_dir / f"fired-{stage}")
        (kill_dir / "armed").unlink(missing_ok=True)  # a stage without Python tasks
        report["stages"][stage] = {
            "fired": fired,
            "jobs": len(jobs),
            "failed_tasks": sum(s.numFailedTasks for s in stage_infos if s is not None),
            "skipped": res.skipped,
            "path": str(res.path),
        }
    Path(report_path).write_text(json.dumps(report, indent=2), encoding="utf-8")
    spark.stop()


if __name__ == "__main__":
    main(*sys.argv[1:])
