"""The scaling-law commands: ``sweep`` (train a grid of proxy models), ``fit`` (fit the laws
on its results) and ``recommend`` (model size, tokens, keep fraction and mixture for a compute
budget)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from curamix import __version__
from curamix.cli._common import _steps, console, err_console
from curamix.config import ConfigError


def _fit_errors() -> tuple[type[BaseException], ...]:
    from curamix.mixture import MixtureError
    from curamix.scaling_laws import NotFittedError, ScalingLawFitError

    return (ScalingLawFitError, NotFittedError, MixtureError, ValueError, FileNotFoundError)


def _say_fit(fits: dict, say) -> None:  # type: ignore[no-untyped-def]
    """Each law's intervals and identifiability verdict, and the held-out errors."""
    from rich.markup import escape

    for name in ("chinchilla", "data_constrained", "mixing"):
        fit = fits.get(name)
        if not isinstance(fit, dict) or "params" not in fit:
            continue
        ci = fit.get("params_ci", {})
        if name != "mixing":
            say(
                f"{name}: "
                + ", ".join(
                    f"{k} {v:.4g}" + (f" [{ci[k][0]:.4g}, {ci[k][1]:.4g}]" if k in ci else "")
                    for k, v in fit["params"].items()
                )
                + (f"  ({fit['ci_level']:.0%} bootstrap intervals)" if ci else "")
            )
        else:
            say(f"{name}: {json.dumps(fit['params'])[:300]}")
        ident = fit.get("identification")
        if ident is not None:
            if ident["identified"]:
                say(f"{name}: [green]identified[/]")
            else:
                say(f"{name}: [red]NOT identified[/] (decisions will not use it)")
                for r in ident["reasons"]:
                    say(f"  [yellow]reason:[/] {escape(r)}")
    for h in fits.get("chinchilla", {}).get("heldout", []):
        say(
            f"held-out N={h['n_params']:.3g} D={h['tokens']:.3g}: loss {h['loss']:.4f} "
            f"predicted {h['predicted']:.4f} ({h['rel_error']:+.2%})"
        )


def sweep(
    run_dir: Annotated[Path, typer.Argument(help="Run folder with a completed ingest/dedup.")],
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="Model preset (repeatable).")
    ] = None,
    tokens: Annotated[
        list[int] | None, typer.Option("--tokens", "-t", help="Token budget (repeatable).")
    ] = None,
    vocab_size: Annotated[int, typer.Option(help="Tokenizer vocabulary.")] = 4096,
    seq_len: Annotated[int, typer.Option(help="Context length.")] = 128,
    batch_size: Annotated[int, typer.Option(help="Sequences per step.")] = 16,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 3e-3,
    seed: Annotated[int, typer.Option(help="Seed of every cell.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    fit: Annotated[bool, typer.Option("--fit/--no-fit", help="Fit the laws afterwards.")] = True,
    n_boot: Annotated[
        int, typer.Option(help="Bootstrap resamples over the runs for the fits' intervals.")
    ] = 200,
    keep: Annotated[
        list[float] | None,
        typer.Option(help="Keep fraction of the scored pool (repeatable): a keep-fraction sweep."),
    ] = None,
    score_stage: Annotated[str, typer.Option(help="Stage whose scores rank the pool.")] = "dsir",
    target: Annotated[
        list[str] | None,
        typer.Option("--target", help="Target texts (file/folder/glob) for target_loss."),
    ] = None,
) -> None:
    """Train a grid of proxy models (sizes x token budgets, optionally x keep fractions of a
    DSIR/BETR-ranked pool) and fit the scaling laws."""
    from curamix.scaling_laws.sweep import SweepConfig, run_sweep

    try:
        cfg = SweepConfig(
            **({"models": model} if model else {}),
            **({"token_budgets": tokens} if tokens else {}),
            vocab_size=vocab_size, seq_len=seq_len, batch_size=batch_size, lr=lr, seed=seed,
            device=device,
        )  # fmt: skip
        with _steps() as say:
            if keep:
                _keep_fraction_sweep(run_dir, cfg, keep, score_stage, target, fit, say, n_boot)
                return
            target_tokens = None
            if target:
                from curamix.proxy.data import prepare_run_tokens
                from curamix.proxy.tokenizer import encode_stream
                from curamix.scaling_laws.data import read_texts

                tok, _, _ = prepare_run_tokens(run_dir, cfg.vocab_size, random_state=seed)
                target_tokens = encode_stream(tok, read_texts(target))
            df = run_sweep(run_dir, cfg, target_tokens=target_tokens, log=say)
            if fit:
                from curamix.scaling_laws.fit import fit_table

                fits = fit_table(df, run_dir / "scaling" / "fits", random_state=seed, n_boot=n_boot)
                _say_fit(fits, say)
    except (*_fit_errors(), ConfigError) as err:
        err_console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from None
    console.print(f"results: [cyan]{run_dir / 'scaling' / 'results.parquet'}[/]")
    if fit:
        console.print(f"fits:    [cyan]{run_dir / 'scaling' / 'fits' / 'report.md'}[/]")


def _keep_fraction_sweep(run_dir: Path, cfg, keep, score_stage, target, fit, say, n_boot) -> None:  # type: ignore[no-untyped-def]
    from curamix.proxy.tokenizer import encode_stream, load_or_train_tokenizer, tokenizer_path
    from curamix.scaling_laws.data import read_texts
    from curamix.scaling_laws.fit import fit_table
    from curamix.scaling_laws.sweep import load_scored_pool, run_keep_fraction_sweep

    scored = load_scored_pool(run_dir, score_stage)
    say(f"{len(scored):,} scored documents from the latest '{score_stage}' stage")
    by_domain = {d: g["text"].tolist() for d, g in scored.groupby("domain", sort=True)}
    tok = load_or_train_tokenizer(
        tokenizer_path(run_dir, cfg.vocab_size), by_domain, cfg.vocab_size, random_state=cfg.seed
    )
    target_tokens = encode_stream(tok, read_texts(target)) if target else None
    df = run_keep_fraction_sweep(run_dir, cfg, scored, keep, target_tokens, tok, log=say)
    out = run_dir / "scaling" / "filter"
    if fit:
        fits = fit_table(
            df, out / "fits", laws=("filtering",), random_state=cfg.seed, n_boot=n_boot,
            filtering_metric="target_loss" if target else "loss",
        )  # fmt: skip
        for k, p in fits["filtering"]["pools"].items():
            ok = p["identification"]["identified"]
            say(
                f"keep {float(k):g}: a={p['a']:.4g} b={p['b']:.4g} d={p['d']:.4g} tau={p['tau']:.3g}"
                + ("" if ok else "  [red]NOT identified[/]: " + "; ".join(
                    p["identification"]["reasons"]))
            )  # fmt: skip
        console.print(f"fits:    [cyan]{out / 'fits' / 'report.md'}[/]")
    console.print(f"results: [cyan]{out / 'results.parquet'}[/]")


def fit_cmd(
    points: Annotated[
        Path,
        typer.Argument(
            help="Results table (CSV/Parquet; columns n_params, tokens, loss, optional "
            "unique_tokens and w:<domain>) or a run folder holding scaling/results.parquet."
        ),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default: beside points).")
    ] = None,
    law: Annotated[
        list[str] | None,
        typer.Option("--law", help="chinchilla, data_constrained, mixing, filtering (repeatable)."),
    ] = None,
    holdout: Annotated[
        str, typer.Option(help="largest: hold out the largest run and report its error; none.")
    ] = "largest",
    n_boot: Annotated[
        int,
        typer.Option(help="Bootstrap resamples over the runs (0: none, so no law is identified)."),
    ] = 200,
    ci_level: Annotated[float, typer.Option(help="Level of the bootstrap intervals.")] = 0.9,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
) -> None:
    """Fit scaling laws on proxy results; bootstrap intervals and an identifiability verdict
    per law; write fits.json, plots and report.md."""
    from curamix.scaling_laws.data import read_table
    from curamix.scaling_laws.fit import fit_table

    try:
        table = points / "scaling" / "results.parquet" if points.is_dir() else points
        out_dir = out or (table.parent / "fits")
        with _steps() as say:
            df = read_table(table)
            say(f"read {len(df)} runs from {table}")
            fits = fit_table(
                df, out_dir, laws=tuple(law or ["chinchilla"]),
                holdout=None if holdout == "none" else holdout, n_boot=n_boot,
                random_state=seed, ci_level=ci_level,
            )  # fmt: skip
            _say_fit(fits, say)
    except _fit_errors() as err:
        err_console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from None
    console.print(
        f"fits: [cyan]{out_dir / 'fits.json'}[/]  report: [cyan]{out_dir / 'report.md'}[/]"
    )


def recommend(
    compute: Annotated[float, typer.Option("--compute", "-c", help="Training FLOPs, e.g. 1e21.")],
    fits: Annotated[
        Path | None, typer.Option(help="fits.json (or its folder) from `curamix fit`.")
    ] = None,
    domain_tokens: Annotated[
        Path | None,
        typer.Option(help="JSON {domain: unique tokens}; caps each domain at max-epochs."),
    ] = None,
    max_epochs: Annotated[float, typer.Option(help="Repetition cap per domain.")] = 4.0,
    upsample: Annotated[
        list[str] | None, typer.Option(help="Domain to upweight at the end (repeatable).")
    ] = None,
    upsample_factor: Annotated[float, typer.Option(help="Upweighting factor.")] = 2.0,
    upsample_last: Annotated[float, typer.Option(help="Last fraction of training.")] = 0.15,
    allow_fallback: Annotated[
        bool,
        typer.Option(
            "--allow-fallback/--no-fallback",
            help="A fit that is not identified: size from the published Chinchilla constants "
            "(named in the notes), or fail with the reasons.",
        ),
    ] = True,
    min_params: Annotated[
        float | None,
        typer.Option(help="Smallest N to recommend (default: the fit's smallest proxy)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write recommendation + mixture JSON here.")
    ] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(help="Also make the mixture the run's current one (RUN/mixture.json)."),
    ] = None,
) -> None:
    """Model size, tokens, keep fraction and mixture weights for a compute budget."""
    from rich.markup import escape

    from curamix.scaling_laws.decide import recommend as _recommend
    from curamix.scaling_laws.fit import load_fits

    try:
        laws = load_fits(fits) if fits else {}
        dtok = json.loads(domain_tokens.read_text()) if domain_tokens else None
        rec = _recommend(
            compute, chinchilla=laws.get("chinchilla"), mixing=laws.get("mixing"),
            filtering_pools=laws.get("filtering_pools"),
            domain_tokens=dtok, max_epochs=max_epochs, upsample=tuple(upsample or ()),
            upsample_factor=upsample_factor, upsample_last=upsample_last,
            provenance={"fits": str(fits) if fits else None, "curamix": __version__},
            allow_fallback=allow_fallback, min_params=min_params,
        )  # fmt: skip
    except _fit_errors() as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
    iv = rec.intervals or {}

    def _iv(key: str) -> str:
        return f" [{iv[key][0]:.4g} - {iv[key][1]:.4g}]" if key in iv else ""

    level = f" ({rec.ci_level:.0%} bootstrap intervals)" if iv else ""
    console.print(f"compute C = {rec.compute:.3g} FLOPs (C = 6 N D){level}")
    console.print(
        f"  model      N = {rec.n_params:.4g}{_iv('n_params')} parameters   "
        f"[dim]{escape(rec.size_source)}[/]"
    )
    loss = (
        f"   predicted loss {rec.predicted_loss:.4f}{_iv('predicted_loss')}"
        if rec.predicted_loss is not None
        else ""
    )
    console.print(f"  data       D = {rec.n_tokens:.4g}{_iv('n_tokens')} tokens{loss}")
    if rec.identification is not None:
        ok = rec.identification["identified"]
        console.print(f"  fit        {'identified' if ok else '[red]NOT identified[/]'}")
    if rec.extrapolation:
        ex = rec.extrapolation
        console.print(
            f"  extrapolation from the largest proxy run: N x{ex['n_params']:.3g}, "
            f"D x{ex['tokens']:.3g}, C x{ex['compute']:.3g}"
        )
    console.print(
        f"  keep       {rec.keep_fraction:.2%} of the ranked pool   [dim]{rec.keep_fraction_source}[/]"
    )
    if rec.mixture is not None:
        table = Table(title=f"mixture ({rec.mixture_source})", title_justify="left")
        for col in ("domain", "weight", *(s.name for s in rec.mixture.schedule)):
            table.add_column(col)
        for d, w in sorted(rec.mixture.weights.items(), key=lambda kv: -kv[1]):
            table.add_row(d, f"{w:.4f}", *(f"{s.weights[d]:.4f}" for s in rec.mixture.schedule))
        console.print(table)
    for n in rec.notes:
        console.print(f"  [yellow]note:[/] {escape(n)}", soft_wrap=True)
    if out:
        from curamix.io.store import write_json_atomic

        write_json_atomic(out, rec.to_dict())
        console.print(f"written: [cyan]{out}[/]")
    if run_dir is not None:
        if rec.mixture is None:
            err_console.print(
                "[bold red]error:[/] no mixture to write: give fits with a mixing law"
            )
            raise typer.Exit(2)
        path = rec.run_mixture().write_json(run_dir / "mixture.json")
        console.print(f"run mixture: [cyan]{path}[/]  (curamix export --format ... {run_dir})")
