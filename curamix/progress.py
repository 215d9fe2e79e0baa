"""A console progress bar for Spark jobs, fed by Spark's status tracker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from rich.console import Console


@contextmanager
def spark_progress(
    spark: SparkSession, console: Console, interval_s: float = 0.5
) -> Iterator[None]:
    """Show the tasks done / total of Spark's active stages while the block runs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    tracker = spark.sparkContext.statusTracker()
    stop = threading.Event()
    progress = Progress(
        TextColumn("[dim]spark[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    bar = progress.add_task("idle", total=None)

    def poll() -> None:
        while not stop.wait(interval_s):
            infos = [tracker.getStageInfo(s) for s in tracker.getActiveStageIds()]
            infos = [i for i in infos if i is not None]
            if not infos:
                continue
            total = sum(i.numTasks for i in infos)
            done = sum(i.numCompletedTasks for i in infos)
            name = infos[0].name.split(" at ")[0]
            progress.update(
                bar, description=f"stage {infos[0].stageId} ({name})", total=total, completed=done
            )

    thread = threading.Thread(target=poll, daemon=True)
    with progress:
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
