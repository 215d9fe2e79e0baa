"""Driver for the cluster tests, run in its own process:
``python -m tests.infra.run_job CONFIG [CONFIG ...]`` (JSON-dumped PipelineConfigs, one
SparkSession for all; the first one's ``spark`` section builds it, and it must turn the UI on).

Prints ``APP <json>`` once the session is up. For each config: from the second on, ``READY``,
then it waits for a line on stdin (EOF: stop there); ``STEP <message>`` as each step starts; and ``RESULT
<json>`` at the end: the stage folders, the master and app id, how many executors ran tasks,
were lost, and how many tasks failed during this run (from the app's REST API), and the TCP
sockets the driver and the executors listen on.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from pathlib import Path

from tests.infra.cluster import cmdline, descendants, listening


def _rest(ui: str, app_id: str, what: str) -> list[dict]:
    with urllib.request.urlopen(f"{ui}/api/v1/applications/{app_id}/{what}", timeout=30) as r:
        return json.load(r)


def _executor_pids(app_id: str) -> list[int]:
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        args = cmdline(int(proc.name))
        if "CoarseGrainedExecutorBackend" in args and f"--app-id {app_id}" in args:
            out.append(int(proc.name))
    return out


def main(argv: list[str]) -> int:
    from curamix.config import PipelineConfig
    from curamix.pipelines.session import get_spark
    from curamix.runner import run_pipeline

    cfgs = [PipelineConfig.model_validate_json(a) for a in argv]
    if not cfgs[0].spark.ui:
        raise SystemExit("run_job needs spark.ui: true (it reads the app's REST API)")
    t0 = time.perf_counter()
    spark = get_spark(cfgs[0].spark)
    sc = spark.sparkContext
    ui, app_id = sc.uiWebUrl, sc.applicationId
    print(f"APP {json.dumps({'app_id': app_id, 'ui': ui})}", flush=True)

    def say(msg: str) -> None:
        print(f"STEP {time.perf_counter() - t0:7.1f}s {msg}", flush=True)

    for i, cfg in enumerate(cfgs):
        if i:
            print("READY", flush=True)
            if not sys.stdin.readline():  # EOF: the test does not want this run
                break
        failed_before = sum(s.get("numFailedTasks", 0) for s in _rest(ui, app_id, "stages"))
        t = time.perf_counter()
        res = run_pipeline(cfg, spark=spark, on_step=say)
        stages = _rest(ui, app_id, "stages")  # every attempt of every stage
        executors = [e for e in _rest(ui, app_id, "allexecutors") if e["id"] != "driver"]
        driver_jvms = [p for p in descendants(os.getpid()) if "java" in cmdline(p)]
        out = {
            "master": sc.master,
            "app_id": app_id,
            "ui": ui,
            "stages": {s: str(r.path) for s, r in res.items()},
            "executors": sum(1 for e in executors if e["totalTasks"] > 0),
            "lost_executors": sum(1 for e in executors if not e["isActive"]),
            "failed_tasks": sum(s.get("numFailedTasks", 0) for s in stages) - failed_before,
            "listening": {
                "driver": listening(driver_jvms),
                "executors": listening(_executor_pids(app_id)),
            },
            "seconds": round(time.perf_counter() - t, 1),
        }
        print(f"RESULT {json.dumps(out)}", flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
