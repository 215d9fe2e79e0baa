"""The ``export`` command: render a mixture (or a recommendation, or a run's current mixture)
in a trainer's format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curamix.cli._common import console, err_console


def export_cmd(
    source: Annotated[
        Path, typer.Argument(help="Mixture JSON, recommendation JSON, or a run (RUN/mixture.json).")
    ],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="json, yaml, csv, megatron, olmo-core, nanotron, llm-foundry, hf, levanter.",
        ),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder to write (default: beside source).")
    ] = None,
    prefix_template: Annotated[
        str | None,
        typer.Option(help="Data location per domain, e.g. /data/{domain}_text_document."),
    ] = None,
    paths: Annotated[
        str | None, typer.Option(help="JSON file or inline object {domain: path or [paths]}.")
    ] = None,
    stage: Annotated[str | None, typer.Option(help="Export one schedule stage only.")] = None,
    total_steps: Annotated[
        int | None, typer.Option(help="Training steps (stage boundaries for nanotron/levanter).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed written into formats that take one.")
    ] = None,
    total_tokens: Annotated[
        float | None,
        typer.Option(help="The real run's tokens (stage boundaries are fractions of them)."),
    ] = None,
    max_epochs: Annotated[
        float | None,
        typer.Option(help="Cap every domain at this many epochs over the whole schedule."),
    ] = None,
) -> None:
    """Render a mixture for a trainer (validated first; nothing written on error)."""
    from curamix.export import export_command
    from curamix.mixture import MixtureError

    out_dir = out or (source if source.is_dir() else source.parent) / "export"
    try:
        written = export_command(
            source, fmt, out_dir, prefix_template=prefix_template, paths_json=paths, stage=stage,
            total_tokens=total_tokens, max_epochs=max_epochs, total_steps=total_steps, seed=seed,
        )  # fmt: skip
    except (MixtureError, ValueError, FileNotFoundError, KeyError) as err:
        err_console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from None
    for p in written:
        console.print(f"written: [cyan]{p}[/]")
