"""Writing exports: every file a format needs, atomically, and the CLI's entry point."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from curamix.export._common import slug
from curamix.export.load import as_mixture, load_mixture
from curamix.export.render import FORMATS, MixtureLike, format_name, render, render_notes
from curamix.io.store import write_text_atomic
from curamix.mixture import MixtureError


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
    per-stage format gives one file per stage (``<stem>_<format>_<stage>.<ext>``); formats
    whose files cannot hold comments (Megatron, CSV) also get ``<stem>_<format>.md`` with the
    decision behind the mixture, the schedule, tokens and epochs. For Megatron the files are
    the ``--data-args-path`` form unless ``form=`` says otherwise.

    Returns
    -------
    list of Path
        The files written, in stage order, the notes last.
    """
    name = format_name(fmt)
    m = as_mixture(mixture)
    if name == "megatron":
        options.setdefault("form", "data-args")
    texts = render(m, name, **options)
    files = {key: export_file_name(name, key, stem) for key in texts}
    out: dict[Path, str] = {Path(out_dir) / files[k]: t for k, t in texts.items()}
    if FORMATS[name].sidecar:
        notes = render_notes(m, name, files)
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
    **options
        Further options of the format's renderer (``total_steps``, ``seed``, ...); ``None``
        values are dropped.
    """
    mixture = load_mixture(source)
    opts = {k: v for k, v in options.items() if v is not None}
    if prefix_template is not None:
        opts["template"] = prefix_template
    if paths_json is not None:
        opts["paths"] = _read_paths(paths_json)
    if stage is not None:
        opts["stage"] = int(stage) if str(stage).isdigit() else stage
    return export_mixture(mixture, fmt, out, **opts)
