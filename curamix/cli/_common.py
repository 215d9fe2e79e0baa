"""What every command shares: the two consoles, the mapping of known errors to exit codes, the
step logger, and the per-stage results tables printed after a pipeline run."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.table import Table

from curamix.config import ConfigError, PipelineConfig

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


@contextmanager
def _friendly_errors() -> Iterator[None]:
    from curamix.io.fs import StorageError
    from curamix.io.store import RunFolderNotWritableError, RunLockedError
    from curamix.pipelines.dedup import DedupGateError
    from curamix.pipelines.ingest import QuarantineRateError
    from curamix.pipelines.session import JavaMissingError

    try:
        yield
    except (ConfigError, JavaMissingError, RunFolderNotWritableError, StorageError) as err:
        from rich.markup import escape

        err_console.print(f"[bold red]error:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
    except RunLockedError as err:
        err_console.print(f"[bold red]busy:[/] {err}")
        raise typer.Exit(4) from None
    except (DedupGateError, QuarantineRateError) as err:  # SemDedupGateError too
        err_console.print(f"[bold red]safety gate:[/] {err}")
        raise typer.Exit(3) from None


@contextmanager
def _steps() -> Iterator[Callable[[str], None]]:
    """A step logger that prints each step with the time since the command started."""
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        console.print(f"[dim]{time.perf_counter() - t0:7.1f}s[/] {msg}")

    yield say


def _fmt(v: object) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _results_table(results: dict) -> None:
    for stage, res in results.items():
        c = res.counts
        per_domain = c.get("per_domain", {})
        cols = list(dict.fromkeys(k for d in per_domain.values() for k in d))
        table = Table(
            title=f"{stage}: {'skipped (already complete)' if res.skipped else 'done'}",
            title_justify="left",
        )
        table.add_column("domain")
        for col in cols:
            table.add_column(col, justify="right")
        for domain, d in per_domain.items():
            table.add_row(domain or "?", *(_fmt(d.get(k, "")) for k in cols))
        table.add_row("[bold]total", *(f"[bold]{_fmt(c[k])}" if k in c else "" for k in cols))
        console.print(table)
        if c.get("quarantine_reasons"):
            console.print(
                "quarantined by reason: "
                + ", ".join(f"{k}={v}" for k, v in c["quarantine_reasons"].items())
            )
        if "kl_reduction" in res.manifest:
            kl = res.manifest["kl_reduction"]
            console.print(
                f"KL reduction toward the target: {kl['selected']:.4f} (random selection of the same size: {kl['random_same_size']:.4f})"
            )
        console.print(f"outputs: [cyan]{res.path}[/]")
        for name in (
            "data",
            "scores",
            "ledger",
            "quarantine",
            "report.md",
            "scores_hist.png",
            "component_sizes.png",
        ):
            if (res.path / name).exists():
                console.print(f"  {name:<15} {res.path / name}")
        console.print(f"  {'manifest':<15} {res.path / 'manifest.json'}")


def _run(cfg: PipelineConfig, only: list[str] | None = None) -> dict:
    from curamix.io.store import check_writable
    from curamix.pipelines.session import get_spark
    from curamix.progress import spark_progress
    from curamix.runner import run_pipeline

    with _steps() as say:
        say(f"run folder: {cfg.run_dir}")
        check_writable(cfg.run_dir)  # a read-only folder: exit 2 before Spark starts
        say(f"starting Spark ({cfg.spark.master})")
        spark = get_spark(cfg.spark)
        with spark_progress(spark, console):
            results = run_pipeline(cfg, spark=spark, on_step=say, only=only)
    _results_table(results)
    return results
