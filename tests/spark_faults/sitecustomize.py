"""Kill a Spark Python worker mid-task, once, for tests/test_faults_spark.py.

Put this folder on ``PYTHONPATH`` with ``CURAMIX_TEST_KILL_DIR`` set: Spark's Python workers
inherit both from the driver (through the JVM), so every worker runs this at start-up. It
installs an import hook that wraps the task function ``pyspark.worker`` builds for each task
(``read_command`` for RDD tasks, ``read_udfs`` for ``mapInArrow`` and UDFs). When the driver
has armed the kill (``KILL_DIR/armed`` exists, holding the curamix stage's name), the first
task attempt 0 to produce its first output (or to finish its input without one) renames
``armed`` to ``fired`` (atomic, so exactly one worker wins), writes the Spark stage, partition
and its pid there, and exits with ``os._exit(137)``: the Python worker dies like a SIGKILL, in
the middle of the task. Spark sees the task fail and, with ``local[N,2]``, runs it again.

Nothing here imports pyspark before a task runs: the daemon forks workers and must not start
threads first. The driver imports this too and is left alone (no task context there).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import os
import sys

_DIR = os.environ.get("CURAMIX_TEST_KILL_DIR")


def _maybe_die() -> None:
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is None or ctx.attemptNumber() != 0 or not _DIR:
        return
    fired = os.path.join(_DIR, "fired")
    try:
        os.rename(os.path.join(_DIR, "armed"), fired)
    except FileNotFoundError:
        return  # not armed, or another worker already died for this stage
    with open(fired, "a", encoding="utf-8") as fh:
        info = {"stage_id": ctx.stageId(), "partition": ctx.partitionId(), "pid": os.getpid()}
        fh.write("\n" + json.dumps(info) + "\n")
    os._exit(137)


def _dying(out):
    checked = False
    for item in out:
        yield item
        if not checked:
            checked = True
            _maybe_die()  # after the first output: work done, the task not yet finished
    if not checked:
        _maybe_die()


def _wrap(build):
    """Wrap ``build``'s task function; ``read_command`` also reads single UDFs (a pair, not the
    task's (func, profiler, deserializer, serializer)), which pass through untouched."""

    def wrapped(*args, **kwargs):
        got = build(*args, **kwargs)
        if not (isinstance(got, tuple) and len(got) == 4 and callable(got[0])):
            return got
        func, *rest = got
        return (lambda split, iterator: _dying(func(split, iterator)), *rest)

    return wrapped


class _Loader(importlib.abc.Loader):
    """Runs ``pyspark.worker`` with its own loader (shared by the whole ``pyspark.zip``), then
    wraps its two task builders."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        module.read_command = _wrap(module.read_command)
        module.read_udfs = _wrap(module.read_udfs)


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "pyspark.worker":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


if _DIR:
    sys.meta_path.insert(0, _Hook())
