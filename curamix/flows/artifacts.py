"""Prefect artifacts for a person watching a run in the UI.

Per stage a markdown summary (counts in and out per domain, removal and quarantine reasons,
gates, then the stage's own ``report.md`` with its plots), a table of the mixture weights, and
the plots (component sizes, score histograms, weight trajectories, scaling-law fits).

Plots: Prefect 3.8's ``create_image_artifact(image_url=...)`` stores a URL, not the image. A
``file://`` URL of the PNG in the run folder records where it is, but a browser will not load a
local file into the UI served over http, so each plot is ALSO embedded in the markdown
artifacts as a base64 ``data:image/png`` URI (the bundled UI renders markdown with ``marked``,
sanitizing off). Both are published.

Publishing never fails a run: without a reachable API (or outside a flow run) a warning is
logged and the run goes on. The markdown builders are plain functions (tested without
Prefect).
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from curamix.io.store import JobResult
    from curamix.mixture import Mixture

log = logging.getLogger(__name__)

PLOTS = ("component_sizes.png", "scores_hist.png", "weights.png", "schedule.png",
         "skills_graph.png", "fits/chinchilla.png", "fits/mixing.png")  # fmt: skip
"""Plot files a step folder may hold (relative to it)."""
MAX_EMBED_BYTES = 400_000
"""Larger PNGs are linked, not embedded."""


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes."""
    key = "-".join(p for p in parts if p)
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", key.lower())).strip("-")


def data_uri(png: str | Path) -> str:
    """The PNG as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(Path(png).read_bytes()).decode("ascii")


def embed_images(markdown: str, folder: str | Path) -> str:
    """Replace ``![alt](relative.png)`` links with data URIs of the files in ``folder``."""
    folder = Path(folder)

    def sub(m: re.Match[str]) -> str:
        alt, target = m.group(1), m.group(2)
        p = folder / target
        if "://" in target or target.startswith("data:") or not p.is_file():
            return m.group(0)
        if p.stat().st_size > MAX_EMBED_BYTES:
            return f"![{alt}]({p.as_uri()})"
        return f"![{alt}]({data_uri(p)})"

    return re.sub(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)", sub, markdown)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return str(v)


def counts_table(per_domain: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """A markdown table of a manifest's ``counts.per_domain`` (scalar columns only)."""
    cols = list(
        dict.fromkeys(
            k
            for row in per_domain.values()
            for k, v in row.items()
            if isinstance(v, int | float | str) or v is None
        )
    )
    if not cols:
        return []
    lines = ["| domain | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for d, row in per_domain.items():
        lines.append(f"| {d or '?'} | " + " | ".join(_fmt(row.get(c, "")) for c in cols) + " |")
    return lines


def stage_markdown(res: JobResult, embed: bool = True) -> str:
    """A summary of one step's output: state, counts in and out (per domain), reasons, gates,
    then its ``report.md`` (plots embedded when ``embed``)."""
    m = res.manifest
    c = m.get("counts", {})
    state = "skipped (already complete)" if res.skipped else "done"
    lines = [f"# {res.stage}: {state}", "", f"Output: `{res.path}`", ""]
    totals = {k: c[k] for k in ("in", "kept", "removed", "quarantined", "out") if k in c}
    if totals:
        lines += [" | ".join(f"**{k}** {v:,}" for k, v in totals.items()), ""]
    if c.get("per_domain"):
        lines += ["## Per domain", "", *counts_table(c["per_domain"]), ""]
    for name in ("removed_reasons", "quarantine_reasons"):
        if c.get(name):
            label = name.replace("_", " ")
            lines += [f"**{label}:** " + ", ".join(f"{k} {v:,}" for k, v in c[name].items()), ""]
    if m.get("gates"):
        lines += ["## Gates", ""] + [f"- {k}: {_fmt(v)}" for k, v in m["gates"].items()] + [""]
    if "kl_reduction" in m:
        kl = m["kl_reduction"]
        lines += [
            f"KL reduction toward the target: {kl.get('selected', float('nan')):.4f} "
            f"(random selection of the same size: {kl.get('random_same_size', float('nan')):.4f})",
            "",
        ]
    timings = m.get("timings", {})
    if "total_s" in timings:
        lines += [f"Took {timings['total_s']:.1f}s.", ""]
    report = res.path / "report.md"
    if report.is_file():
        text = report.read_text(encoding="utf-8")
        text = re.sub(r"^# ", "## ", text, count=1, flags=re.M)
        lines += ["---", "", embed_images(text, res.path) if embed else text]
    else:
        for plot in step_plots(res.path):
            rel = plot.relative_to(res.path).as_posix()
            lines += [f"![{rel}]({data_uri(plot) if embed else rel})", ""]
    return "\n".join(lines).rstrip() + "\n"


def step_plots(folder: str | Path) -> list[Path]:
    """The plots a step folder holds (see :data:`PLOTS`)."""
    return [Path(folder) / p for p in PLOTS if (Path(folder) / p).is_file()]


def mixture_markdown(mixture: Mixture, path: str | Path) -> str:
    """The final mixture: weights (and later stages), tokens and epochs, where it came from."""
    from curamix.mixers.search import mixture_table
    from curamix.mixture import decision_lines

    rows = mixture_table(mixture)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    prov = mixture.provenance
    lines = [
        "# Mixture",
        "",
        f"`{path}` (method: {prov.get('method', '?')}; render it for a trainer with "
        f"`curamix export --format megatron {Path(path).parent}`).",
        "",
        "| " + " | ".join(cols) + " |",
        "|---|" + "---:|" * (len(cols) - 1),
    ]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    sched = prov.get("schedule")
    if isinstance(sched, Mapping) and sched.get("stages"):
        held = "these stages" if sched.get("export") == "staged" else "the final weights"
        lines += [
            "",
            f"Staged schedule from the mixer's trajectory: {sched['n_stages']} stages, max L1 "
            f"{sched['max_l1']:.3g} to the continuous weights (plot: the search's "
            f"`schedule.png`); the mixture holds {held} (`mixture.schedule.export`).",
        ]
    if mixture.notes:
        lines += ["", *(f"- note: {n}" for n in mixture.notes)]
    decision = decision_lines(prov)
    if decision:
        lines += ["", "## Decision", "", *[f"- {line}" for line in decision]]
    return "\n".join(lines) + "\n"


def run_markdown(summary: Mapping[str, Any]) -> str:
    """The flow run's closing summary: every step, its state and where its outputs are."""
    lines = ["# curamix run", "", f"Run folder: `{summary['run_dir']}`", ""]
    lines += ["| step | state | output |", "|---|---|---|"]
    for name, s in summary["steps"].items():
        lines.append(f"| {name} | {'skipped' if s['skipped'] else 'done'} | `{s['path']}` |")
    if summary.get("mixture"):
        lines += ["", "Mixture: " + _fmt(summary["mixture"]["weights"])]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Publishing (Prefect imported here only)


def _safe(kind: str, fn: Any, /, **kwargs: Any) -> str | None:
    try:
        fn(**kwargs)
    except Exception as err:  # no API, not in a run, ...: artifacts never fail the run
        log.warning(
            "curamix: could not publish the %s artifact %r: %s", kind, kwargs.get("key"), err
        )
        return None
    return kwargs.get("key")


def publish_markdown(key: str, markdown: str, description: str = "") -> str | None:
    from prefect.artifacts import create_markdown_artifact

    return _safe("markdown", create_markdown_artifact, markdown=markdown, key=key,
                 description=description)  # fmt: skip


def publish_table(key: str, rows: list[dict[str, Any]], description: str = "") -> str | None:
    from prefect.artifacts import create_table_artifact

    return _safe("table", create_table_artifact, table=rows, key=key, description=description)


def publish_images(prefix: str, plots: Iterable[Path], description: str = "") -> list[str]:
    """One image artifact per plot (``file://`` URL; the markdown artifacts embed the image)."""
    from prefect.artifacts import create_image_artifact

    keys = []
    for p in plots:
        stem = p.relative_to(p.parent.parent).as_posix() if p.parent.name == "fits" else p.stem
        key = _safe(
            "image",
            create_image_artifact,
            image_url=Path(p).resolve().as_uri(),
            key=artifact_key(prefix, "plot", stem.replace(".png", "")),
            description=description or f"{p.name} in {p.parent}",
        )
        if key:
            keys.append(key)
    return keys


STEP_KEYS = {"mixture": "mixture-search", "scaling": "scaling-laws"}
"""Artifact key names of the flow steps that are not stages."""


def step_key(stage: str) -> str:
    """The markdown artifact key of a step: ``curamix-<stage>`` (``curamix-mixture-search``)."""
    return artifact_key("curamix", STEP_KEYS.get(stage, stage))


def publish_step(res: JobResult) -> list[str]:
    """The markdown summary and the plot images of one step's output; returns the keys."""
    keys = []
    k = publish_markdown(
        step_key(res.stage), stage_markdown(res), f"curamix {res.stage}: {res.path}"
    )
    if k:
        keys.append(k)
    keys += publish_images(step_key(res.stage), step_plots(res.path))
    return keys


def publish_mixture(mixture: Mixture, path: str | Path) -> list[str]:
    """The mixture as a table and as markdown (weights, tokens, epochs, source)."""
    from curamix.mixers.search import mixture_table

    keys = [
        publish_table(
            "curamix-mixture-weights", mixture_table(mixture), f"mixture weights: {path}"
        ),
        publish_markdown("curamix-final-mixture", mixture_markdown(mixture, path), str(path)),
    ]
    return [k for k in keys if k]
