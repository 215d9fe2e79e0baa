"""Writing exports: every file a format needs, atomically, and the CLI's entry point."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from curamix.export._common import slug
from curamix.export.load import as_mixture, load_mixture
from curamix.export.render import (
    FORMATS,
    MixtureLike,
    format_name,
    render,
    render_megatron_script,
    render_notes,
)
from curamix.io.store import write_text_atomic
from curamix.mixture import Mixture, MixtureError, cap_epochs


def export_file_name(fmt: str, key: str = "", stem: str = "mixture") -> str:
    """``<stem>_<format>[_<stage>].<ext>``, e.g. ``mixture_megatron_upsample.txt``."""
    name = format_name(fmt)
    base = f"{stem}_{slug(name)}" + (f"_{slug(key)}" if key else "")
    return f"{base}.{FORMATS[name].ext}"


def export_mixture(
    mixture: MixtureLike,
    fmt: str,
    out_dir: str | Path,
    *,
    stem: str = "mixture",
    **options: Any,
) -> list[Path]:
    """Render ``mixture`` for ``fmt`` and write the files into ``out_dir``.

    Everything is rendered (and so validated) before anything is written; each file is
    written atomically (a temporary file, then ``os.replace``). A multi-stage mixture in a
    per-stage format gives one file per stage (``<stem>_<format>_<stage>.<ext>``) and a README
    ``<stem>_<format>.md`` with the token boundaries and how to resume from stage to stage;
    for Megatron also ``<stem>_megatron_run.sh``, which trains the phases in order. Formats
    whose files cannot hold comments (Megatron, CSV) always get ``<stem>_<format>.md`` with
    the decision behind the mixture, the schedule, tokens and epochs. For Megatron the files
    are the ``--data-args-path`` form unless ``form=`` says otherwise.

    Returns
    -------
    list of Path
        The files written, in stage order, then the run script, the notes last.
    """
    name = format_name(fmt)
    m = as_mixture(mixture)
    if name == "megatron":
        options.setdefault("form", "data-args")
    texts = render(m, name, **options)
    files = {key: export_file_name(name, key, stem) for key in texts}
    out: dict[Path, str] = {Path(out_dir) / files[k]: t for k, t in texts.items()}
    staged = FORMATS[name].schedule == "per-stage" and len(texts) > 1
    script = None
    if staged and name == "megatron":
        script = f"{stem}_{slug(name)}_run.sh"
        out[Path(out_dir) / script] = render_megatron_script(m, files)
    if FORMATS[name].sidecar or staged:
        notes = render_notes(m, name, files, script)
        out[Path(out_dir) / f"{stem}_{slug(name)}.md"] = notes
    return [write_text_atomic(p, t) for p, t in out.items()]


def _read_paths(paths_json: str | Path) -> Mapping[str, Any]:
    text = str(paths_json)
    path = Path(text)
    if text.lstrip().startswith("{"):
        where = "paths_json"
    elif path.is_file():
        where, text = str(path), path.read_text(encoding="utf-8")
    else:
        raise FileNotFoundError(f"{paths_json}: no such paths file (a JSON object domain -> path)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise MixtureError(f"{where}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise MixtureError(
            f"{where}: expected a JSON object domain -> path, got {type(data).__name__}"
        )
    return data


def export_command(
    source: str | Path,
    fmt: str,
    out: str | Path,
    prefix_template: str | None = None,
    paths_json: str | Path | None = None,
    stage: str | None = None,
    total_tokens: float | None = None,
    max_epochs: float | None = None,
    **options: Any,
) -> list[Path]:
    """What ``curamix export --format FMT SOURCE`` does: load, render, write.

    Parameters
    ----------
    source
        A Mixture JSON, a recommendation JSON, or a run folder (``RUN/mixture.json``).
    fmt
        A name in :data:`~curamix.export.FORMATS` (or an alias).
    out
        The folder to write into.
    prefix_template
        The data location of each domain, e.g. ``/data/{domain}_text_document``.
    paths_json
        A JSON file (or an inline JSON object) ``{domain: path or [paths]}``; it wins over
        the template for the domains it names.
    stage
        Export one stage only (a label, or an index given as digits).
    total_tokens
        The real run's tokens: the stage boundaries are fractions, so they carry over; the
        tokens and epochs in the notes (and OLMo-core's ``requested_tokens``) follow it.
    max_epochs
        Cap every domain at this many epochs over the whole schedule
        (:func:`curamix.mixture.cap_epochs` with ``budget="schedule"``: a stage that asks for
        more of a domain than exists is capped, the excess spread over its other domains, and
        the mixture's notes name it). Needs the mixture's ``domain_tokens``.
    **options
        Further options of the format's renderer (``total_steps``, ``seed``, ...); ``None``
        values are dropped.
    """
    mixture = scale_mixture(load_mixture(source), total_tokens, max_epochs)
    opts = {k: v for k, v in options.items() if v is not None}
    if prefix_template is not None:
        opts["template"] = prefix_template
    if paths_json is not None:
        opts["paths"] = _read_paths(paths_json)
    if stage is not None:
        opts["stage"] = int(stage) if str(stage).isdigit() else stage
    return export_mixture(mixture, fmt, out, **opts)


def scale_mixture(
    mixture: Mixture, total_tokens: float | None = None, max_epochs: float | None = None
) -> Mixture:
    """``mixture`` for a run of ``total_tokens`` (boundaries are fractions, so they carry over),
    capped at ``max_epochs`` per domain over the whole schedule (notes name what was capped)."""
    from dataclasses import replace

    if total_tokens is not None:
        if not (total_tokens > 0):
            raise MixtureError(f"total_tokens must be > 0, got {total_tokens!r}")
        mixture = replace(mixture, total_tokens=float(total_tokens))
    if max_epochs is not None:
        if mixture.total_tokens is None or mixture.domain_tokens is None:
            raise MixtureError(
                "max_epochs needs the mixture's total_tokens (give total_tokens) and "
                "domain_tokens (unique tokens per domain)"
            )
        mixture, _ = cap_epochs(mixture, float(max_epochs), budget="schedule")
    return mixture
