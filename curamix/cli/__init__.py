"""The ``curamix`` command line: ``ingest``, ``run``, ``dedup``, ``quality``, ``embed``, ``semdedup``,
``decontam``, ``score`` (``dsir``, ``betr``), ``select``, ``coreset``, ``rds``, ``adapt``,
``sweep``, ``fit``, ``recommend``, ``export``, ``status``, ``demo`` (the Prefect flow), ``serve``.

Every command prints where its outputs are. Bad configs and a missing Java runtime end with
a one-paragraph message and exit code 2, not a traceback.

One module per command group, each holding plain functions that this module registers, in
the order ``curamix --help`` lists them: :mod:`.stages` (the pipeline stages and ``status``),
:mod:`.demo` (the Prefect flow: ``demo``, ``serve``), :mod:`.scaling` (``sweep``, ``fit``,
``recommend``), :mod:`.export`; :mod:`._common` holds what they share. Heavy libraries are
imported inside the commands, so ``import curamix.cli`` stays fast.
"""

from __future__ import annotations

import os

import typer

from curamix import __version__
from curamix.cli import demo, export, scaling, stages
from curamix.cli._common import console

app = typer.Typer(
    help="curamix: data curation and mixtures for LM pretraining.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
score_app = typer.Typer(help="Score the documents of a run (DSIR, BETR).", no_args_is_help=True)
app.add_typer(score_app, name="score")


def version() -> None:
    """Print the curamix version."""
    console.print(__version__)


app.command()(stages.ingest)
app.command()(stages.run)
app.command("dedup")(stages.dedup_cmd)
app.command("quality")(stages.quality_cmd)
app.command("decontam")(stages.decontam_cmd)
app.command("embed")(stages.embed_cmd)
app.command("semdedup")(stages.semdedup_cmd)
app.command("coreset")(stages.coreset_cmd)
app.command("select")(stages.select_cmd)
app.command("rds")(stages.rds_cmd)
app.command("adapt")(stages.adapt_cmd)
app.command()(stages.status)
app.command()(stages.gc)
score_app.command("dsir")(stages.score_dsir)
score_app.command("betr")(stages.score_betr)
app.command()(demo.demo)
app.command("serve")(demo.serve_cmd)
app.command()(scaling.sweep)
app.command("fit")(scaling.fit_cmd)
app.command()(scaling.recommend)
app.command("export")(export.export_cmd)
app.command()(version)


def main() -> None:
    os.environ.setdefault("PYTHONHASHSEED", "0")
    app()
