"""Helpers the renderers share: stages, data locations, the token/epoch notes."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from curamix.mixture import Mixture, MixtureError, decision_lines


@dataclass(frozen=True)
class StageView:
    """One stage of a mixture as a renderer needs it.

    ``weights`` has every domain of the mixture, in the mixture's order (a domain the stage
    does not name has weight 0); ``tokens`` is what the stage draws from each domain
    (``None`` without ``total_tokens``).
    """

    index: int
    label: str
    start: float
    end: float
    weights: dict[str, float]
    tokens: dict[str, float] | None

    @property
    def stage_tokens(self) -> float | None:
        return None if self.tokens is None else sum(self.tokens.values())


def stage_labels(mixture: Mixture) -> list[str]:
    """A unique label per stage: its name, else ``stage<i>`` (the first is ``main``)."""
    labels: list[str] = []
    for i, s in enumerate(mixture.stages()):
        label = s.name or f"stage{i}"
        if label in labels:
            label = f"{label}_{i}"
        labels.append(label)
    return labels


def stage_views(mixture: Mixture) -> list[StageView]:
    stages = mixture.stages()
    ends = [s.start for s in stages[1:]] + [1.0]
    views = []
    for i, (s, label, end) in enumerate(zip(stages, stage_labels(mixture), ends, strict=True)):
        w = {d: float(s.weights.get(d, 0.0)) for d in mixture.domains}
        tokens = None
        if mixture.total_tokens is not None:
            tokens = {d: v * (end - s.start) * mixture.total_tokens for d, v in w.items()}
        views.append(StageView(i, label, float(s.start), float(end), w, tokens))
    return views


def describe_stages(mixture: Mixture) -> str:
    return ", ".join(f"{v.label!r} from {v.start:g}" for v in stage_views(mixture))


def select_stage(
    mixture: Mixture, stage: str | int | None, fmt: str, ways: str | None = None
) -> StageView:
    """The stage ``stage`` names (label or index); with ``None`` the only stage.

    A multi-stage mixture with ``stage=None`` is refused (never silently the first stage);
    ``ways`` replaces the default advice in that message.
    """
    views = stage_views(mixture)
    if stage is None:
        if len(views) == 1:
            return views[0]
        ways = ways or (
            "pass stage=<label or index> for one stage, or use curamix.export.render / "
            "export_mixture, which render every stage (one file each)"
        )
        raise MixtureError(
            f"{fmt}: the mixture has {len(views)} stages ({describe_stages(mixture)}); {ways}"
        )
    if isinstance(stage, bool):
        raise MixtureError(f"{fmt}: stage must be a label or an index, got {stage!r}")
    if isinstance(stage, int):
        if not 0 <= stage < len(views):
            raise MixtureError(
                f"{fmt}: stage index {stage} out of range; stages: {describe_stages(mixture)}"
            )
        return views[stage]
    for v in views:
        if v.label == stage:
            return v
    raise MixtureError(f"{fmt}: no stage {stage!r}; stages: {describe_stages(mixture)}")


def resolve_locations(
    mixture: Mixture,
    fmt: str,
    paths: Mapping[str, str | Sequence[str]] | None,
    template: str | None,
    *,
    option: str = "paths",
    template_option: str = "template",
    single: bool = False,
    required: bool = True,
) -> dict[str, list[str]] | None:
    """Where each domain's data lives: ``paths[domain]``, else ``template.format(domain=...)``.

    Refuses a mapping that names an unknown domain, or (without a template) lacks one; the
    message names the domain. ``single`` asks for exactly one location per domain.
    Returns ``None`` when neither is given and ``required`` is false.
    """
    domains = mixture.domains
    if paths is None and template is None:
        if not required:
            return None
        raise MixtureError(
            f"{fmt}: needs a data location for every domain ({domains}): give "
            f"{option}={{domain: location}} or {template_option}='/data/{{domain}}'"
        )
    out: dict[str, list[str]] = {}
    if paths is not None:
        if not isinstance(paths, Mapping):
            raise MixtureError(
                f"{fmt}: {option} must map domain -> location, got {type(paths).__name__}"
            )
        unknown = [d for d in paths if d not in mixture.weights]
        if unknown:
            raise MixtureError(
                f"{fmt}: {option} names unknown domain {unknown[0]!r} (all unknown: {unknown}); "
                f"the mixture's domains are {domains}"
            )
        for d, v in paths.items():
            locs = [v] if isinstance(v, str) else list(v) if isinstance(v, Sequence) else None
            if not locs or not all(isinstance(x, str) and x.strip() for x in locs):
                raise MixtureError(
                    f"{fmt}: {option}[{d!r}] must be a non-empty path or list of paths, got {v!r}"
                )
            out[d] = locs
    missing = [d for d in domains if d not in out]
    if missing and template is None:
        raise MixtureError(
            f"{fmt}: {option} has no entry for domain {missing[0]!r} (missing: {missing}) and "
            f"no {template_option} was given"
        )
    if missing:
        if not isinstance(template, str) or "{domain}" not in template:
            raise MixtureError(
                f"{fmt}: {template_option} must contain '{{domain}}', got {template!r}"
            )
        for d in missing:
            try:
                out[d] = [template.format(domain=d)]
            except (KeyError, IndexError, ValueError) as e:
                raise MixtureError(
                    f"{fmt}: {template_option} {template!r} cannot be filled with only "
                    f"{{domain}}: {type(e).__name__}: {e}"
                ) from None
    if single:
        for d in domains:
            if len(out[d]) != 1:
                raise MixtureError(
                    f"{fmt}: domain {d!r} needs exactly one location, got {out[d]!r}"
                )
    return {d: out[d] for d in domains}


def plain(obj: Any) -> Any:
    """JSON-safe plain types (mapping proxies, numpy scalars and tuples become dict/float/list)."""
    return json.loads(json.dumps(obj, default=_default))


def _default(o: Any) -> Any:
    if isinstance(o, Mapping):
        return dict(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def fmt_tokens(x: float) -> str:
    return f"{x:.4g}"


def fmt_epochs(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.3g}"


def slug(text: str) -> str:
    """A file-name-safe form of a stage label or format name."""
    s = re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("._")
    return s or "stage"


def notes_lines(mixture: Mixture, fmt: str, view: StageView | None = None) -> list[str]:
    """Human notes for a rendered file: provenance, the compute-aware decision behind it (sizes
    with intervals, their source, the fit's identification, extrapolation, notes:
    :func:`curamix.mixture.decision_lines`), schedule, per-domain tokens and epochs.

    With ``view`` the notes are for that one stage (its weights and the tokens it draws);
    without, for the whole schedule (one weight column per stage).
    """
    import curamix

    prov = mixture.provenance
    head = f"curamix {curamix.__version__} mixture for {fmt}"
    extra = [f"{k} {prov[k]}" for k in ("method", "seed") if prov.get(k) is not None]
    if extra:
        head += f" ({', '.join(extra)})"
    views = stage_views(mixture)
    lines = [head, *decision_lines(prov)]
    if mixture.provenance.get("max_epochs") is not None:
        lines.append(f"max_epochs: {float(prov['max_epochs']):g} per domain (checked)")
    sched = prov.get("schedule")
    if isinstance(sched, Mapping) and sched.get("source") == "trajectory":
        held = (
            "these stages"
            if sched.get("export") == "staged"
            else "the mixer's final weights (the staged schedule is in provenance)"
        )
        lines.append(
            f"schedule from the mixer's trajectory: {sched.get('n_stages')} stages from "
            f"{sched.get('n_points')} points, max L1 {float(sched.get('max_l1', 0)):.3g} to the "
            f"continuous weights; the mixture holds {held}"
        )
    lines += [f"note: {n}" for n in mixture.notes]
    if len(views) > 1:
        lines.append(
            f"schedule: {len(views)} stages, as fractions of training: "
            + ", ".join(f"{v.label} [{v.start:g}, {v.end:g})" for v in views)
        )
    if view is not None and len(views) > 1:
        nxt = views[view.index + 1].label if view.index + 1 < len(views) else None
        lines.append(
            f"this file: stage {view.label!r}, from {view.start:g} to {view.end:g} of training"
            + (f"; then switch to stage {nxt!r}" if nxt else "")
        )
    if mixture.total_tokens is not None:
        lines.append(f"total_tokens: {fmt_tokens(mixture.total_tokens)}")
    total = mixture.tokens_per_domain() if mixture.total_tokens is not None else None
    epochs = mixture.epochs() if total is not None and mixture.domain_tokens else None
    shown = [view] if view is not None else views
    header = ["domain"] + [f"weight[{v.label}]" if len(views) > 1 else "weight" for v in shown]
    if view is not None and view.tokens is not None and len(views) > 1:
        header.append("tokens[stage]")
    if total is not None:
        header.append("tokens[total]")
    if mixture.domain_tokens is not None:
        header.append("unique_tokens")
    if epochs is not None:
        header.append("epochs")
    rows = [header]
    for d in mixture.domains:
        row = [d] + [f"{v.weights[d]:.6g}" for v in shown]
        if view is not None and view.tokens is not None and len(views) > 1:
            row.append(fmt_tokens(view.tokens[d]))
        if total is not None:
            row.append(fmt_tokens(total[d]))
        if mixture.domain_tokens is not None:
            row.append(fmt_tokens(mixture.domain_tokens[d]))
        if epochs is not None:
            row.append(fmt_epochs(epochs[d]))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if epochs is not None:
        lines.append("epochs: passes over each domain's unique tokens over the whole schedule")
    return lines


def comment_block(lines: Sequence[str], prefix: str = "# ") -> str:
    """``lines`` as comments; line breaks inside a line (say, in a domain name) become spaces."""
    clean = (" ".join(str(line).splitlines()) for line in lines)
    return "".join(f"{prefix}{line}".rstrip() + "\n" for line in clean)


def positive(view: StageView) -> dict[str, float]:
    """The stage's domains with weight > 0, in the mixture's order."""
    return {d: w for d, w in view.weights.items() if w > 0}


def dropped_note(view: StageView) -> list[str]:
    zero = [d for d, w in view.weights.items() if w <= 0]
    return [f"left out (weight 0 in this stage): {', '.join(zero)}"] if zero else []


def stage_steps(
    mixture: Mixture, total_steps: int | None, fmt: str, offset: int = 0
) -> list[int] | None:
    """The optimizer step at which each stage starts (``round(start * total_steps) + offset``)."""
    if total_steps is None:
        return None
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps <= 0:
        raise MixtureError(f"{fmt}: total_steps must be a positive integer, got {total_steps!r}")
    steps = [round(v.start * total_steps) + offset for v in stage_views(mixture)]
    if any(b <= a for a, b in pairwise(steps)):
        raise MixtureError(
            f"{fmt}: total_steps={total_steps} is too few to separate the stage starts "
            f"({describe_stages(mixture)}): they map to steps {steps}"
        )
    return steps
