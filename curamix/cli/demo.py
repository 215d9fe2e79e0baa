"""The Prefect flow commands: ``demo`` (generate the synthetic demo corpus and run
``curate_flow`` on it) and ``serve`` (a scheduled deployment of the flow), with the helpers
that print a flow run's results, mixture weights, exports and artifacts."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from curamix.cli._common import _friendly_errors, _results_table, console, err_console
from curamix.config import ConfigError, load_config


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
    """Generate the SYNTHETIC demo corpus and run the Prefect flow curate_flow on it."""
    from curamix.demo import write_demo_corpus, write_demo_pipeline

    with _friendly_errors():
        t = time.perf_counter()
        corpus = write_demo_corpus(out, n_docs=n_docs, seed=seed)
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
        load_config(pipeline)  # a bad config fails here, before Prefect starts
        _prefect_env()
        from curamix.flows.curate import curate_flow

        console.print(
            "running the pipeline as the Prefect flow curate_flow "
            + (
                f"against {os.environ['PREFECT_API_URL']}"
                if os.environ.get("PREFECT_API_URL")
                else "(ephemeral Prefect; set PREFECT_API_URL to watch it in a server's UI)"
            )
        )
        t = time.perf_counter()
        summary = curate_flow(str(pipeline))
        results = _flow_results(summary)
        _results_table(results)
        if "dedup" in results:
            from curamix.demo import dedup_recall

            found = dedup_recall(results["dedup"].path, corpus.truth_dir)
            console.print(
                "dedup vs the injected duplicates (truth/duplicates.jsonl): "
                + ", ".join(f"{k} {f}/{n}" for k, (f, n) in found.items())
            )
        _flow_report(summary)
        console.print(f"flow finished in {time.perf_counter() - t:.0f}s")
        console.print(f"next: [bold]curamix status {out / 'run'}[/]")
        console.print(
            f"explore: open [bold]notebooks/explore.ipynb[/] in Jupyter with "
            f"CURAMIX_RUN={(out / 'run').resolve()} (composition, removals, scores, weights, "
            "fits, export)"
        )


def _prefect_env() -> None:
    """Prefect settings for a local run: a patient ephemeral server, no analytics."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def _flow_results(summary: dict) -> dict:
    """The stage results of a ``curate_flow`` summary, as ``JobResult`` objects."""
    from curamix.config import KNOWN_STAGES
    from curamix.io.store import MANIFEST, JobResult

    out = {}
    for step, s in summary["steps"].items():
        if step in KNOWN_STAGES:
            path = Path(s["path"])
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
            out[step] = JobResult(step, path, manifest, skipped=s["skipped"])
    return out


def _flow_report(summary: dict) -> None:
    """The mixture weights and where every output and artifact of a flow run is."""
    from rich.markup import escape

    from curamix.flows.artifacts import step_plots
    from curamix.mixture import Mixture, decision_lines

    steps = summary["steps"]
    for step in ("mixture", "scaling"):
        if step not in steps:
            continue
        path = Path(steps[step]["path"])
        state = "skipped (already complete)" if steps[step]["skipped"] else "done"
        console.print(f"[bold]{step}[/]: {state}\noutputs: [cyan]{path}[/]", soft_wrap=True)
        for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("_")):
            console.print(f"  {f.relative_to(path).as_posix():<22} {f}", soft_wrap=True)
        if step == "scaling":
            fits = json.loads((path / "fits" / "fits.json").read_text(encoding="utf-8"))
            chin = fits.get("chinchilla", {})
            ident = chin.get("identification", {})
            if ci := chin.get("params_ci"):
                console.print(
                    f"  Chinchilla fit, {chin['ci_level']:.0%} bootstrap intervals: "
                    + ", ".join(
                        f"{k} {v:.3g} [{ci[k][0]:.3g}, {ci[k][1]:.3g}]"
                        for k, v in chin["params"].items()
                    ),
                    soft_wrap=True,
                )
            if ident:
                state = "identified" if ident["identified"] else "[red]NOT identified[/]"
                console.print(f"  Chinchilla fit {state}", soft_wrap=True)
            for w in chin.get("warnings", []):
                console.print(f"  [yellow]fit warning:[/] {escape(w)}", soft_wrap=True)
    if summary.get("mixture"):
        path = Path(summary["mixture"]["path"])
        mix = Mixture.read_json(path)
        d = mix.to_dict()
        table = Table(
            title=f"mixture weights ({mix.provenance.get('method', '?')})", title_justify="left"
        )
        for col in ("domain", "weight", *(s.name for s in mix.schedule), "tokens", "epochs"):
            table.add_column(col, justify="left" if col == "domain" else "right")
        for dom, w in sorted(mix.weights.items(), key=lambda kv: -kv[1]):
            table.add_row(
                dom,
                f"{w:.4f}",
                *(f"{s.weights[dom]:.4f}" for s in mix.schedule),
                f"{d['tokens_per_domain'][dom]:.4g}" if "tokens_per_domain" in d else "",
                f"{d['epochs'][dom]:.2f}" if "epochs" in d else "",
            )
        console.print(table)
        for i, line in enumerate(decision_lines(mix.provenance)):
            style = "[bold]" if i == 0 else "  [yellow]" if line.startswith("note:") else "  "
            console.print(f"{style}{escape(line)}", soft_wrap=True)
        console.print(f"run mixture: [cyan]{path}[/]", soft_wrap=True)
    for f in summary.get("exports", []):
        console.print(f"  export     [cyan]{f}[/]", soft_wrap=True)
    plots = [p for s in steps.values() for p in step_plots(s["path"])]
    for p in plots:
        console.print(f"  plot       [cyan]{p}[/]", soft_wrap=True)
    if summary.get("artifacts"):
        console.print(
            "Prefect artifacts (UI: Artifacts tab; or `prefect artifact ls`): "
            + ", ".join(dict.fromkeys(summary["artifacts"])),
            soft_wrap=True,
        )


def serve_cmd(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML file.")],
    cron: Annotated[
        str | None, typer.Option(help='Cron schedule, e.g. "0 3 * * *" (03:00 every day).')
    ] = None,
    name: Annotated[str, typer.Option(help="Deployment name.")] = "curamix-curate",
    timezone: Annotated[str, typer.Option(help="Time zone of the cron schedule.")] = "UTC",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a field: section.field=value.")
    ] = None,
) -> None:
    """Serve curate_flow on CONFIG as a Prefect deployment with a cron schedule (blocks).

    Needs a Prefect server (its scheduler creates the runs): start one with
    `prefect server start --host 127.0.0.1` and set PREFECT_API_URL (see docs/flows.md)."""
    _prefect_env()
    if not os.environ.get("PREFECT_API_URL"):
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            err_console.print(
                "[bold red]error:[/] no Prefect server: scheduled runs need one. Start it with\n"
                "  PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 prefect server start "
                "--host 127.0.0.1 --port 4200\nand run this again with "
                "PREFECT_API_URL=http://127.0.0.1:4200/api"
            )
            raise typer.Exit(2)
    from curamix.flows.serve import serve_pipeline

    with _friendly_errors():
        try:
            serve_pipeline(config, name=name, cron=cron, overrides=set_ or [], timezone=timezone)
        except ValueError as err:
            if isinstance(err, ConfigError):
                raise
            err_console.print(f"[bold red]error:[/] {err}")
            raise typer.Exit(2) from None
