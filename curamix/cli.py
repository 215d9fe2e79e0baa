"""The ``curamix`` command line: ``ingest``, ``run``, ``status``, ``demo``.

Every command prints where its outputs are. Bad configs and a missing Java runtime end with
a one-paragraph message and exit code 2, not a traceback.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from curamix import __version__
from curamix.config import ConfigError, PipelineConfig, build_config, load_config

app = typer.Typer(
    help="curamix: data curation and mixtures for LM pretraining.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


@contextmanager
def _friendly_errors() -> Iterator[None]:
    from curamix.pipelines.session import JavaMissingError

    try:
        yield
    except (ConfigError, JavaMissingError) as err:
        err_console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from None


@contextmanager
def _steps() -> Iterator[Callable[[str], None]]:
    """A step logger that prints each step with the time since the command started."""
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        console.print(f"[dim]{time.perf_counter() - t0:7.1f}s[/] {msg}")

    yield say


def _results_table(results: dict) -> None:
    for stage, res in results.items():
        c = res.counts
        table = Table(
            title=f"{stage}: {'skipped (already complete)' if res.skipped else 'done'}",
            title_justify="left",
        )
        for col in ("domain", "in", "kept", "quarantined", "out"):
            table.add_column(col, justify="right" if col != "domain" else "left")
        for domain, d in c.get("per_domain", {}).items():
            table.add_row(
                domain or "?", *(str(d.get(k, 0)) for k in ("in", "kept", "quarantined", "out"))
            )
        table.add_row(
            "[bold]total", *(f"[bold]{c.get(k, 0)}" for k in ("in", "kept", "quarantined", "out"))
        )
        console.print(table)
        if c.get("quarantine_reasons"):
            console.print(
                "quarantined by reason: "
                + ", ".join(f"{k}={v}" for k, v in c["quarantine_reasons"].items())
            )
        console.print(f"outputs: [cyan]{res.path}[/]")
        for name in ("data", "ledger", "quarantine"):
            if (res.path / name).exists():
                console.print(f"  {name:<11} {res.path / name}")
        console.print(f"  {'manifest':<11} {res.path / 'manifest.json'}")


def _run(cfg: PipelineConfig) -> dict:
    from curamix.pipelines.session import get_spark
    from curamix.progress import spark_progress
    from curamix.runner import run_pipeline

    with _steps() as say:
        say(f"run folder: {cfg.run_dir}")
        say(f"starting Spark ({cfg.spark.master})")
        spark = get_spark(cfg.spark)
        with spark_progress(spark, console):
            results = run_pipeline(cfg, spark=spark, on_step=say)
    _results_table(results)
    return results


@app.command()
def ingest(
    inputs: Annotated[
        list[str], typer.Argument(help="Files, folders or globs (JSONL[.gz|.zst], Parquet, .txt).")
    ],
    run_dir: Annotated[Path, typer.Option("--run-dir", "-o", help="Run folder.")] = Path(
        "runs/default"
    ),
    format: Annotated[str, typer.Option(help="auto, jsonl, parquet, txt or hf.")] = "auto",
    text_field: Annotated[str, typer.Option(help="Field holding the text.")] = "text",
    id_field: Annotated[str, typer.Option(help="Field holding the source id.")] = "id",
    domain: Annotated[str | None, typer.Option(help="One domain for all inputs.")] = None,
    domain_field: Annotated[
        str | None, typer.Option(help="Record field holding the domain.")
    ] = None,
    max_doc_bytes: Annotated[
        int, typer.Option(help="Size limit per document (UTF-8 bytes).")
    ] = 1_000_000,
    oversize: Annotated[
        str, typer.Option(help="quarantine or split documents over the limit.")
    ] = "quarantine",
    master: Annotated[str, typer.Option(help="Spark master URL.")] = "local[*]",
) -> None:
    """Ingest raw files into the document store of RUN_DIR (bad records are quarantined)."""
    with _friendly_errors():
        spec = {
            "format": format,
            "text_field": text_field,
            "id_field": id_field,
            "domain": domain,
            "domain_field": domain_field,
        }
        cfg = build_config(
            {
                "run_dir": str(run_dir),
                "stages": ["ingest"],
                "spark": {"master": master},
                "ingest": {
                    "inputs": [{"path": p, **spec} for p in inputs],
                    "max_doc_bytes": max_doc_bytes,
                    "oversize": oversize,
                },
            },
            origin="command line",
        )
        _run(cfg)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML file.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a field: section.field=value.")
    ] = None,
) -> None:
    """Run the stages a pipeline YAML lists (finished stages are skipped)."""
    with _friendly_errors():
        cfg = load_config(config, set_ or [])
        _run(cfg)


@app.command()
def status(
    run_dir: Annotated[Path, typer.Argument(help="Run folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a run's stages, their counts and what remains to run."""
    from curamix.runner import run_status

    with _friendly_errors():
        rows = run_status(run_dir)
    if as_json:
        print(json.dumps([r.__dict__ for r in rows], indent=2, default=str))
        return
    table = Table(title=f"run {run_dir}", title_justify="left")
    for col in ("stage", "state", "in", "kept", "removed", "quarantined", "out", "folder"):
        table.add_column(col)
    colors = {"done": "green", "stale": "yellow", "pending": "white", "error": "red"}
    for r in rows:
        c = r.counts
        table.add_row(
            r.stage,
            f"[{colors.get(r.state, 'white')}]{r.state}[/]",
            *(str(c.get(k, "")) for k in ("in", "kept", "removed", "quarantined", "out")),
            r.folder or "",
        )
    console.print(table)
    for r in rows:
        if r.detail:
            console.print(f"  {r.stage}: {r.detail}")
    remaining = [r.stage for r in rows if r.state != "done"]
    console.print(
        "remaining: " + (", ".join(remaining) if remaining else "nothing, every stage is done")
    )


@app.command()
def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the demo corpus and its run.")
    ] = Path("demo"),
    n_docs: Annotated[int, typer.Option(help="Clean pool documents to generate.")] = 4000,
    seed: Annotated[int, typer.Option(help="Seed of the generator and the run.")] = 0,
    run_pipeline: Annotated[
        bool, typer.Option("--run/--no-run", help="Run the pipeline after generating.")
    ] = True,
) -> None:
    """Generate the SYNTHETIC demo corpus and run the pipeline on it."""
    from curamix.demo import make_demo_corpus, write_demo_pipeline

    with _friendly_errors():
        t = time.perf_counter()
        corpus = make_demo_corpus(out, n_docs=n_docs, seed=seed)
        pipeline = write_demo_pipeline(out, seed=seed)
        console.print(
            f"demo corpus (synthetic, seed {seed}): {corpus.total_records} records in {len(corpus.n_docs)} domains, "
            f"{corpus.n_exact_dups} exact + {corpus.n_near_dups} near duplicates, {corpus.n_leaked} leaked benchmark "
            f"items, {sum(corpus.n_bad.values())} bad records ({time.perf_counter() - t:.1f}s)"
        )
        console.print(
            f"  raw pool   {corpus.raw_dir}\n  targets    {corpus.targets_dir}\n  truth      {corpus.truth_dir}\n  pipeline   {pipeline}"
        )
        if not run_pipeline:
            return
        _run(load_config(pipeline))
        console.print(f"next: [bold]curamix status {out / 'run'}[/]")


@app.command()
def version() -> None:
    """Print the curamix version."""
    console.print(__version__)


def main() -> None:
    os.environ.setdefault("PYTHONHASHSEED", "0")
    app()


if __name__ == "__main__":
    main()
