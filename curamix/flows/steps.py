"""The plain functions behind ``curate_flow``'s steps after the stages (no Prefect here).

- :func:`check_plan`: every check that can fail before a stage runs.
- :func:`run_scaling_step`: a proxy sweep on the mixture search's token streams, the law fits
  and a compute-aware recommendation, into ``RUN/scaling-<key>/`` (skipped when done).
- :func:`finalize_mixture`: the run's mixture, ``RUN/mixture.json``: the recommendation's
  (mixing-law optimum) when there is one, else the mixer's with the recommended token budget.
- :func:`run_export_step`: the mixture rendered for trainers into ``RUN/export/`` (skipped
  when the same mixture was exported with the same settings).

Each writes through a temporary file or folder and an atomic rename, so a run killed at any
point leaves either the old output or the new one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curamix.config import ConfigError, PipelineConfig, ScalingConfig, config_hash
from curamix.io.store import (
    JobResult,
    file_sha256,
    inside,
    load_completed,
    stage_writer,
    write_json_atomic,
)

if TYPE_CHECKING:
    from curamix.mixture import Mixture

SCALING = "scaling"
RUN_MIXTURE = "mixture.json"
RECOMMENDATION = "recommendation.json"
EXPORT_DIR = "export"
EXPORT_MARKER = "_COMPLETE.json"
SCORE_STAGES = ("embed", "dsir")
"""Stages without a ``data/`` of documents."""


def check_plan(cfg: PipelineConfig) -> None:
    """Raise :class:`ConfigError` for a flow that cannot finish, before any stage runs: a flow
    step without the section it builds on, a mixer parameter or target that cannot work."""
    problems: list[str] = []
    if cfg.scaling is not None and cfg.mixture is None:
        problems.append("scaling: needs the 'mixture:' section (the sweep reuses its streams)")
    if cfg.export is not None and cfg.mixture is None:
        problems.append("export: needs the 'mixture:' section (there is no mixture to export)")
    if cfg.mixture is not None:
        from curamix.mixers.search import NEEDS_TARGET, make_mixer, pool_stage_for, target_spec
        from curamix.proxy.model import PRESETS

        m = cfg.mixture
        try:
            make_mixer(m.method, m.params, cfg.seed)
        except (TypeError, ValueError) as err:
            problems.append(f"mixture.params: {err}")
        if m.model not in PRESETS:
            problems.append(f"mixture.model: unknown preset {m.model!r}; known {list(PRESETS)}")
        stage = pool_stage_for(cfg)
        if stage in SCORE_STAGES:
            problems.append(
                f"mixture.stage: {stage!r} writes scores, not documents; use a stage with a "
                "data/ output (ingest, dedup, semdedup, quality, decontam, betr, rds, select, "
                "coreset)"
            )
        elif stage not in cfg.stages:
            problems.append(
                f"mixture.stage: {stage!r} is not a stage of this run (stages: {cfg.stages})"
            )
        paths, domains = target_spec(cfg)
        if m.method in NEEDS_TARGET and not paths and not domains:
            problems.append(
                f"mixture.method: {m.method!r} follows a target's gradient: give "
                "mixture.target_inputs or mixture.target_domains (or a dsir section with targets)"
            )
    if cfg.scaling is not None:
        from curamix.proxy.model import PRESETS

        bad = [x for x in cfg.scaling.models if x not in PRESETS]
        if bad:
            problems.append(f"scaling.models: unknown presets {bad}; known {list(PRESETS)}")
        if cfg.mixture is not None:
            one = cfg.scaling.batch_size * cfg.mixture.seq_len
            small = [b for b in cfg.scaling.token_budgets if b < one]
            if small:
                problems.append(
                    f"scaling.token_budgets: {small} are smaller than one batch "
                    f"(scaling.batch_size * mixture.seq_len = {one})"
                )
        if "mixing" in cfg.scaling.laws and len(cfg.scaling.mixtures) < 2:
            problems.append(
                "scaling.laws: the mixing law needs runs on several mixtures; list at least two "
                f"in scaling.mixtures (got {cfg.scaling.mixtures})"
            )
    if problems:
        raise ConfigError(
            "the flow cannot run this config:\n" + "\n".join(f"  - {p}" for p in problems)
        )


# ---------------------------------------------------------------------------------------------
# Scaling laws


def scaling_key(cfg: ScalingConfig, seed: int, search: JobResult) -> str:
    """Sweep + fit settings (the device resolved, not the threads), seed and the search's
    manifest: a CPU and a GPU sweep never share a folder."""
    from curamix.device import device_name

    settings = cfg.model_dump(mode="json", exclude={"device", "cpu_threads"})
    return config_hash(SCALING, settings, seed, search.manifest_hash, device_name(cfg.device))


def run_scaling_step(
    run_dir: str | Path,
    cfg: ScalingConfig,
    search: JobResult,
    pool: JobResult,
    seed: int = 0,
    on_step: Callable[[str], None] | None = None,
) -> JobResult:
    """Sweep proxies (``cfg.models`` x ``cfg.token_budgets`` x ``cfg.mixtures``) on the search's
    streams, fit ``cfg.laws``, recommend for ``cfg.compute``; write ``RUN/scaling-<key>/``.

    The sweep's cells live in ``RUN/scaling/runs/`` (:func:`curamix.scaling_laws.sweep.run_sweep`:
    finished cells are reused, an interrupted one resumes from its checkpoint). The folder holds
    ``results.parquet``, ``fits/`` (``fits.json``, ``chinchilla.png``, ``report.md``),
    ``recommendation.json`` and ``report.md``.
    """
    from curamix import __version__
    from curamix.mixers.search import load_search_streams, read_mixture
    from curamix.scaling_laws.decide import fit_and_recommend
    from curamix.scaling_laws.sweep import SweepConfig, natural_mixture, sweep_results

    say = on_step or (lambda _m: None)
    run_dir = Path(run_dir)
    key = scaling_key(cfg, seed, search)
    done = load_completed(run_dir, SCALING, key)
    if done is not None:
        say(f"scaling: skipped, already complete at {done.path}")
        return done
    t0 = time.perf_counter()
    tok, train, val, target = load_search_streams(run_dir, search, pool)
    found = read_mixture(search)
    available = {
        "search": dict(found.weights),
        "natural": natural_mixture(train),
        "uniform": {d: 1.0 / len(train) for d in train},
    }
    mixtures = {name: available[name] for name in cfg.mixtures}
    scfg = search.manifest["config"]
    sweep = SweepConfig(
        models=cfg.models, token_budgets=cfg.token_budgets, mixtures=mixtures,
        vocab_size=tok.get_vocab_size(), seq_len=scfg["seq_len"], batch_size=cfg.batch_size,
        lr=cfg.lr, eval_tokens=scfg["eval_tokens"], seed=seed, device=cfg.device,
        cpu_threads=cfg.cpu_threads,
    )  # fmt: skip
    say(
        f"scaling: sweep of {len(cfg.models)} models x {len(cfg.token_budgets)} budgets x "
        f"{len(mixtures)} mixture(s)"
    )
    df = sweep_results(run_dir, sweep, train, val, target_tokens=target, progress=False, log=say)
    df = df.sort(["n_params", "tokens", "mixture"], maintain_order=True)
    with stage_writer(run_dir, SCALING, key) as w:
        # fit (bootstrapped, identified) and decide: a fit that is not identified is refused
        fits, rec = fit_and_recommend(
            df, w.path("fits"), cfg, found, seed,
            mixing_target="target_loss" if target is not None else "loss",
            provenance={"curamix": __version__, "laws": list(cfg.laws), "seed": seed},
        )  # fmt: skip
        for note in rec.notes:
            say(f"scaling: note: {note}")
        say(
            f"scaling: for C={rec.compute:.3g} FLOPs: N={rec.n_params:.3g} parameters, "
            f"D={rec.n_tokens:.3g} tokens ({rec.size_source})"
        )
        write_json_atomic(w.path(RECOMMENDATION), rec.to_dict())
        df.drop(["wall_s", "tokens_per_s"], strict=False).write_parquet(w.path("results.parquet"))
        manifest = {
            "config": cfg.model_dump(mode="json"),
            "config_hash": config_hash(cfg),
            "seed": seed,
            "inputs": {"manifests": {"mixture": search.manifest_hash}},
            "counts": {"in": df.height, "out": df.height},
            "sweep": sweep.model_dump(mode="json"),
            "fits": {k: v.get("params") for k, v in fits.items() if isinstance(v, dict)},
            "recommendation": {k: v for k, v in rec.to_dict().items() if k != "mixture"},
            "timings": {"total_s": round(time.perf_counter() - t0, 3)},
            "outputs": {
                "results": "results.parquet",
                "fits": "fits/fits.json",
                "plot": "fits/chinchilla.png",
                "recommendation": RECOMMENDATION,
                "report": "report.md",
            },
        }
        w.path("report.md").write_text(_scaling_report(manifest, w.path("fits")), "utf-8")
        result = w.commit(manifest)
    say(f"scaling: done in {time.perf_counter() - t0:.1f}s")
    return result


def _scaling_report(manifest: dict[str, Any], fits_dir: Path) -> str:
    from curamix.mixture import decision_lines

    rec = manifest["recommendation"]
    lines = [
        "# Scaling laws",
        "",
        f"Proxy sweep: models {manifest['config']['models']}, budgets "
        f"{manifest['config']['token_budgets']}, mixtures {manifest['config']['mixtures']} "
        f"({manifest['counts']['in']} runs).",
        "",
        *[f"- {line}" for line in decision_lines({"recommendation": rec})],
        f"- keep {rec['keep_fraction']:.2%} of a ranked pool ({rec['keep_fraction_source']})",
    ]
    if rec.get("mixture_source"):
        lines.append(f"- mixture: {rec['mixture_source']}")
    fit_report = fits_dir / "report.md"
    if fit_report.is_file():
        text = fit_report.read_text(encoding="utf-8").replace("](", "](fits/")
        lines += ["", text.replace("# Scaling-law fits", "## Fits", 1)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The run's mixture


def final_mixture(search: JobResult, scaling: JobResult | None = None) -> Mixture:
    """The run's mixture: the recommendation's (a mixing-law optimum) when the scaling step gave
    one, else the search's weights with the recommended token budget (when there is one)."""
    from curamix.mixers.search import read_mixture
    from curamix.mixture import Mixture

    found = read_mixture(search)
    if scaling is None:
        return found
    rec = json.loads((scaling.path / RECOMMENDATION).read_text(encoding="utf-8"))
    summary = {k: v for k, v in rec.items() if k != "mixture"}
    if rec.get("mixture"):
        law = Mixture.from_dict(rec["mixture"])
        return Mixture(
            weights=law.weights, schedule=law.schedule, total_tokens=law.total_tokens,
            domain_tokens=law.domain_tokens,
            provenance={**law.provenance, "recommendation": summary,
                        "search": dict(found.provenance)},
        )  # fmt: skip
    return Mixture(
        weights=found.weights,
        schedule=found.schedule,
        total_tokens=rec["n_tokens"],
        domain_tokens=found.domain_tokens,
        provenance={**found.provenance, "recommendation": summary},
    )


def finalize_mixture(
    run_dir: str | Path,
    search: JobResult,
    scaling: JobResult | None = None,
    on_step: Callable[[str], None] | None = None,
) -> tuple[Mixture, Path, bool]:
    """Write :func:`final_mixture` to ``RUN/mixture.json`` (atomically); returns the mixture,
    the path and whether the file already held exactly this (``skipped``)."""
    say = on_step or (lambda _m: None)
    mix = final_mixture(search, scaling)
    path = Path(run_dir) / RUN_MIXTURE
    text = json.dumps(mix.to_dict(), indent=2, sort_keys=False, default=str) + "\n"
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        say(f"recommend: skipped, {path} is up to date")
        return mix, path, True
    mix.write_json(path)
    say(f"recommend: wrote {path}")
    return mix, path, False


# ---------------------------------------------------------------------------------------------
# Export


def export_key(cfg: Any, mixture_path: Path) -> str:
    return config_hash("export", cfg, file_sha256(mixture_path))


def run_export_step(
    run_dir: str | Path,
    cfg: Any,
    mixture_path: str | Path | None = None,
    on_step: Callable[[str], None] | None = None,
) -> tuple[list[Path], bool]:
    """Render the run's mixture in each of ``cfg.formats`` into ``RUN/export/``.

    ``cfg`` is an :class:`curamix.config.ExportConfig`. Skipped when ``RUN/export/_COMPLETE.json``
    records the same settings and mixture and its files are there; files of an earlier export
    that this one does not write again are removed. Returns (files, skipped)."""
    from curamix.export import export_mixture, format_options, load_mixture

    say = on_step or (lambda _m: None)
    run_dir = Path(run_dir)
    src = Path(mixture_path) if mixture_path is not None else run_dir / RUN_MIXTURE
    out = run_dir / EXPORT_DIR
    key = export_key(cfg, src)
    marker = out / EXPORT_MARKER
    old: dict[str, Any] = json.loads(marker.read_text("utf-8")) if marker.is_file() else {}
    if old.get("key") == key and all((out / f).is_file() for f in old.get("files", [])):
        say(f"export: skipped, {out} is up to date")
        return [out / f for f in old["files"]], True
    mix = load_mixture(src)
    given = {
        "template": cfg.prefix_template,
        "paths": cfg.paths,
        "total_steps": cfg.total_steps,
        "seed": cfg.seed,
    }
    written: list[Path] = []
    for fmt in cfg.formats:
        allowed = format_options(fmt)
        opts = {k: v for k, v in given.items() if v is not None and k in allowed}
        written += export_mixture(mix, fmt, out, **opts)
    names = [p.name for p in written]
    for stale in set(old.get("files", [])) - set(names):
        inside(out, stale).unlink(missing_ok=True)  # a name from the marker: stays in out/
    write_json_atomic(
        marker,
        {"key": key, "mixture_sha256": file_sha256(src), "formats": cfg.formats, "files": names},
    )
    say(f"export: {len(written)} files in {out}")
    return written, False
