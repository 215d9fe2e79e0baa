"""The mixture artifact: validated domain weights with a schedule and provenance.

Every mixer and the scaling-law recommender produce one ``Mixture``; trainer formats
(``curamix.export``) are renderings of it. It is frozen and checked when built: weights are
finite, non-negative and sum to 1 (within 1e-6; nothing is renormalised silently), every
stage of the schedule names only known domains and starts strictly later than the one
before.

Provenance is free-form JSON, with these fields read by curamix (``RUN/mixture.json``):

- ``method``, ``seed``, ``curamix``: who made the weights;
- ``max_epochs``: the repetition cap the weights respect (exports refuse a mixture whose
  epochs exceed it, :func:`check_epoch_cap`);
- ``schedule``: how a staged schedule was compressed from a mixer's weight trajectory (K,
  epsilon, the L1 error to the continuous weights; :func:`curamix.mixers.compress_trajectory`),
  which of the staged and the final weights the mixture holds (``export``), and both;
- ``recommendation``: the compute-aware decision (``curamix.scaling_laws.decide``): compute,
  ``n_params``, ``n_tokens``, ``predicted_loss``, their ``intervals`` (bootstrap, at
  ``ci_level``), ``size_source`` and ``fallback_reason``, the fit's ``identification``
  (``identified`` and ``reasons``), the ``extrapolation`` factors from the largest proxy run,
  and ``notes``. :func:`decision_lines` renders it for file headers and logs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

SUM_TOLERANCE = 1e-6


class MixtureError(ValueError):
    """Weights or a schedule that cannot be used; the message names the domain and value."""


def check_weights(weights: Mapping[str, float], where: str = "weights") -> dict[str, float]:
    """Return ``weights`` as a plain dict of floats, or raise naming the bad entry."""
    if not weights:
        raise MixtureError(f"{where}: no domains")
    out: dict[str, float] = {}
    for d, v in weights.items():
        if not isinstance(d, str) or not d:
            raise MixtureError(f"{where}: domain names must be non-empty strings, got {d!r}")
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise MixtureError(f"{where}: weight of {d!r} is not a number: {v!r}") from None
        if not math.isfinite(x) or x < 0:
            raise MixtureError(f"{where}: weight of {d!r} must be finite and >= 0, got {v!r}")
        out[d] = x
    total = sum(out.values())
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise MixtureError(
            f"{where}: weights must sum to 1 (within {SUM_TOLERANCE:g}), they sum to {total:.9g}"
        )
    return out


@dataclass(frozen=True)
class Stage:
    """From ``start`` (a fraction of the training tokens, 0 <= start < 1) on, use ``weights``."""

    start: float
    weights: Mapping[str, float]
    name: str = ""

    def __post_init__(self) -> None:
        if not (0.0 <= float(self.start) < 1.0):
            raise MixtureError(f"stage {self.name!r}: start must be in [0, 1), got {self.start!r}")
        w = check_weights(self.weights, f"stage {self.name or self.start}")
        object.__setattr__(self, "weights", MappingProxyType(w))


@dataclass(frozen=True)
class Mixture:
    """Domain weights for a training run.

    Parameters
    ----------
    weights : mapping
        The main weights (the stage starting at 0).
    schedule : sequence of Stage
        Later stages, e.g. end-of-training upsampling from 0.85 on. Empty for one stage.
    total_tokens : float or None
        The training budget in tokens, when known: with ``domain_tokens`` it gives the epochs
        each domain implies.
    domain_tokens : mapping or None
        Unique tokens available per domain.
    provenance : mapping
        Method, parameters, seed, code version, inputs (free-form, JSON-serialisable).
    notes : sequence of str
        What a person should know before training on it, e.g. which stage asked for more of
        a domain than exists and how it was capped (:func:`cap_epochs`). Exports print them.
    """

    weights: Mapping[str, float]
    schedule: Sequence[Stage] = ()
    total_tokens: float | None = None
    domain_tokens: Mapping[str, float] | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)
    notes: Sequence[str] = ()

    def __post_init__(self) -> None:
        w = check_weights(self.weights)
        object.__setattr__(self, "weights", MappingProxyType(w))
        stages = tuple(self.schedule)
        last = 0.0
        for s in stages:
            if not isinstance(s, Stage):
                raise MixtureError(f"schedule entries must be Stage objects, got {s!r}")
            unknown = set(s.weights) - set(w)
            if unknown:
                raise MixtureError(
                    f"stage {s.name or s.start}: unknown domains {sorted(unknown)}; "
                    f"known {sorted(w)}"
                )
            if s.start <= last:
                raise MixtureError(
                    f"schedule stages must start after 0 and after the previous one; "
                    f"{s.start} follows {last}"
                )
            last = s.start
        object.__setattr__(self, "schedule", stages)
        if self.total_tokens is not None and not (
            math.isfinite(self.total_tokens) and self.total_tokens > 0
        ):
            raise MixtureError(f"total_tokens must be > 0, got {self.total_tokens!r}")
        if self.domain_tokens is not None:
            dt = {d: float(v) for d, v in self.domain_tokens.items()}
            missing = set(w) - set(dt)
            if missing:
                raise MixtureError(f"domain_tokens lacks {sorted(missing)}")
            bad = {d: v for d, v in dt.items() if not (math.isfinite(v) and v >= 0)}
            if bad:
                raise MixtureError(f"domain_tokens must be >= 0, got {bad}")
            object.__setattr__(self, "domain_tokens", MappingProxyType(dt))
        object.__setattr__(self, "provenance", MappingProxyType(dict(self.provenance)))
        if isinstance(self.notes, str) or not all(isinstance(n, str) for n in self.notes):
            raise MixtureError(f"notes must be a list of strings, got {self.notes!r}")
        object.__setattr__(self, "notes", tuple(self.notes))

    @property
    def domains(self) -> list[str]:
        return list(self.weights)

    def stages(self) -> list[Stage]:
        """All stages including the first (start 0)."""
        return [Stage(0.0, self.weights, "main"), *self.schedule]

    def tokens_per_domain(self) -> dict[str, float]:
        """Tokens drawn from each domain over the whole schedule (needs ``total_tokens``)."""
        if self.total_tokens is None:
            raise MixtureError("tokens_per_domain needs total_tokens")
        stages = self.stages()
        ends = [s.start for s in stages[1:]] + [1.0]
        out = dict.fromkeys(self.weights, 0.0)
        for s, end in zip(stages, ends, strict=True):
            for d, v in s.weights.items():
                out[d] += v * (end - s.start) * self.total_tokens
        return out

    def epochs(self) -> dict[str, float]:
        """Passes over each domain the budget implies (needs total and domain tokens)."""
        if self.domain_tokens is None:
            raise MixtureError("epochs needs domain_tokens")
        drawn = self.tokens_per_domain()
        return {
            d: (drawn[d] / self.domain_tokens[d]) if self.domain_tokens[d] > 0 else
            (0.0 if drawn[d] == 0 else math.inf)
            for d in self.weights
        }  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "weights": dict(self.weights),
            "schedule": [
                {"start": s.start, "name": s.name, "weights": dict(s.weights)}
                for s in self.schedule
            ],
            "total_tokens": self.total_tokens,
            "domain_tokens": dict(self.domain_tokens) if self.domain_tokens else None,
            "provenance": dict(self.provenance),
        }
        if self.notes:
            out["notes"] = list(self.notes)
        if self.total_tokens is not None:
            out["tokens_per_domain"] = self.tokens_per_domain()
            if self.domain_tokens is not None:
                out["epochs"] = self.epochs()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Mixture:
        if "weights" not in d:
            raise MixtureError(f"a mixture needs 'weights'; got keys {sorted(d)}")
        return cls(
            weights=d["weights"],
            schedule=[
                Stage(s["start"], s["weights"], s.get("name", "")) for s in d.get("schedule", [])
            ],
            total_tokens=d.get("total_tokens"),
            domain_tokens=d.get("domain_tokens"),
            provenance=d.get("provenance", {}),
            notes=d.get("notes", ()),
        )

    def write_json(self, path: str | Path) -> Path:
        """Write atomically (temp file, then rename)."""
        from curamix.io.store import write_json_atomic

        write_json_atomic(path, self.to_dict())
        return Path(path)

    @classmethod
    def read_json(cls, path: str | Path) -> Mixture:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except MixtureError as e:
            raise MixtureError(f"{path}: {e}") from None


def cap_weights(weights: Mapping[str, float], caps: Mapping[str, float]) -> dict[str, float]:
    """``weights`` within per-domain ``caps`` (water-filling): each domain over its cap is set to
    the cap and the excess is spread over the others in proportion to their weights, until
    none is over. Domains with weight 0 stay at 0; a domain ``caps`` does not name is uncapped.

    Raises :class:`MixtureError` when the caps of the domains with weight > 0 sum below 1
    (no mixture of them fits), naming the sum.
    """
    w = check_weights(weights)
    c = {d: min(1.0, max(0.0, float(caps.get(d, 1.0)))) for d in w}
    pos = [d for d in w if w[d] > 0]
    room = sum(c[d] for d in pos)
    if room < 1.0 - 1e-12:
        raise MixtureError(
            f"the caps of the domains with weight > 0 sum to {room:.6g} < 1: no mixture of them "
            f"fits (caps { ({d: round(c[d], 6) for d in pos}) })"
        )
    fixed: set[str] = set()
    while True:
        free = [d for d in pos if d not in fixed]
        mass = 1.0 - sum(c[d] for d in fixed)
        total = sum(w[d] for d in free)
        over = [d for d in free if w[d] * mass / total > c[d]] if free else []
        if not over:
            break
        fixed.update(over)
    out = {d: c[d] if d in fixed else (w[d] * mass / total if d in free else 0.0) for d in w}
    s = sum(out.values())
    return {d: v / s for d, v in out.items()}


def cap_epochs(
    mixture: Mixture, max_epochs: float, budget: Literal["stage", "schedule"] = "stage"
) -> tuple[Mixture, dict[str, float]]:
    """The mixture with no domain read more than ``max_epochs`` times over its schedule.

    ``budget="stage"`` (the default): every stage's weights are capped at
    ``unique_tokens * max_epochs / total_tokens`` per domain (:func:`cap_weights`), as if the
    stage lasted the whole run, so the whole schedule stays within the cap too. Safe and
    simple, but it also caps a short stage that draws little (a 10% stage at weight 0.5 is
    capped like a whole run at 0.5), which flattens a staged schedule.

    ``budget="schedule"``: the cap is on what the whole schedule draws,
    ``total_tokens * sum_s len_s * w_sd <= unique_tokens_d * max_epochs``. A domain over it is
    scaled down by the same factor in every stage that draws it (its schedule keeps its
    shape), each stage's excess spread over that stage's other domains in proportion to their
    weights (:func:`cap_weights`), repeated until no domain is over. Every capped domain gets
    a line in ``notes`` naming it, the epochs it asked for and what each stage asked.

    Returns the capped mixture (``provenance`` gains ``max_epochs``) and, for each domain that
    was over the cap, its epochs before. Needs ``total_tokens`` and ``domain_tokens``; raises
    :class:`MixtureError` when the unique tokens of the mixture's domains, ``max_epochs``
    times, are fewer than ``total_tokens``, or (``"schedule"``) when a stage gives all its
    weight to capped domains, naming the stage.
    """
    if not (math.isfinite(max_epochs) and max_epochs > 0):
        raise MixtureError(f"max_epochs must be > 0, got {max_epochs!r}")
    if budget not in ("stage", "schedule"):
        raise MixtureError(f"budget must be 'stage' or 'schedule', got {budget!r}")
    if mixture.total_tokens is None or mixture.domain_tokens is None:
        raise MixtureError("cap_epochs needs total_tokens and domain_tokens")
    before = mixture.epochs()
    total, unique = mixture.total_tokens, mixture.domain_tokens
    caps = {d: unique[d] * max_epochs / total for d in mixture.weights}
    notes: list[str] = []
    try:
        if budget == "stage":
            stages = [cap_weights(s.weights, caps) for s in mixture.stages()]
        else:
            stages = _cap_schedule(mixture, max_epochs, notes)
    except MixtureError as e:
        raise MixtureError(
            f"{total:.4g} tokens cannot be drawn within {max_epochs:g} epochs per domain: {e}"
        ) from None
    later = zip(mixture.schedule, stages[1:], strict=True)
    out = Mixture(
        weights=stages[0],
        schedule=[Stage(s.start, w, s.name) for s, w in later],
        total_tokens=total,
        domain_tokens=unique,
        provenance={**mixture.provenance, "max_epochs": max_epochs},
        notes=[*mixture.notes, *notes],
    )
    changed = {d: e for d, e in before.items() if e > max_epochs * (1 + 1e-9)}
    return out, changed


def _cap_schedule(mixture: Mixture, max_epochs: float, notes: list[str]) -> list[dict[str, float]]:
    """Stage weights within ``max_epochs`` over the whole schedule (``cap_epochs``' "schedule")."""
    assert mixture.total_tokens is not None and mixture.domain_tokens is not None
    total, unique = mixture.total_tokens, mixture.domain_tokens
    domains = mixture.domains
    if sum(unique[d] for d in domains) * max_epochs < total * (1 - 1e-12):
        raise MixtureError(
            f"the domains hold {sum(unique.values()):.4g} unique tokens in all, "
            f"{max_epochs:g} times that is below {total:.4g}"
        )
    stages = mixture.stages()
    starts = [s.start for s in stages]
    lens = [e - s for s, e in zip(starts, [*starts[1:], 1.0], strict=True)]
    labels = [s.name or ("main" if i == 0 else f"stage{i}") for i, s in enumerate(stages)]
    weights = [{d: float(s.weights.get(d, 0.0)) for d in domains} for s in stages]
    asked = [dict(w) for w in weights]
    stage_caps: list[dict[str, float]] = [{} for _ in stages]

    def epochs(ws: list[dict[str, float]], d: str) -> float:
        drawn = total * sum(n * w[d] for n, w in zip(lens, ws, strict=True))
        return drawn / unique[d] if unique[d] > 0 else (0.0 if drawn == 0 else math.inf)

    capped: dict[str, float] = {}
    spread: set[str] = set()  # domains pushed over the cap by the others' excess
    for round_ in range(len(domains) + 1):
        over = {d: e for d in domains if (e := epochs(weights, d)) > max_epochs * (1 + 1e-12)}
        if not over:
            break
        for d, e in over.items():
            factor = max_epochs / e if math.isfinite(e) else 0.0
            capped.setdefault(d, e)
            if round_:
                spread.add(d)
            for i, w in enumerate(weights):
                if w[d] > 0:
                    stage_caps[i][d] = w[d] * factor
        for i, w in enumerate(weights):
            if not any(d in stage_caps[i] for d in domains if w[d] > 0):
                continue
            try:
                weights[i] = cap_weights(w, stage_caps[i])
            except MixtureError as e:
                raise MixtureError(
                    f"stage {labels[i]!r} [{starts[i]:g}, {starts[i] + lens[i]:g}) gives its "
                    f"weight only to domains over the cap ({sorted(stage_caps[i])}): {e}"
                ) from None
    for d, e in capped.items():
        per_stage = []
        for i, w in enumerate(asked):
            if w[d] <= 0:
                continue
            got = total * lens[i] * w[d] / unique[d] if unique[d] > 0 else math.inf
            alone = " (alone over the cap)" if got > max_epochs * (1 + 1e-12) else ""
            per_stage.append(
                f"{labels[i]} [{starts[i]:g}, {starts[i] + lens[i]:g}) {got:.3g}{alone}"
            )
        now = [f"{labels[i]} {w[d]:.4g}" for i, w in enumerate(weights) if asked[i][d] > 0]
        how = ", with the other domains' excess spread, drew" if d in spread else " asked for"
        notes.append(
            f"epoch cap: the schedule{how} {e:.3g} epochs of {d!r} ({unique[d]:.4g} unique "
            f"tokens), over max_epochs = {max_epochs:g}; epochs asked per stage: "
            + ", ".join(per_stage)
            + f"; capped to {max_epochs:g} epochs (weight now "
            + ", ".join(now)
            + "), the excess spread over each stage's other domains in proportion"
        )
    return weights


def check_epoch_cap(mixture: Mixture, tolerance: float = 1e-6) -> None:
    """Raise :class:`MixtureError` when a domain is read more often than the cap the mixture's
    provenance names (``max_epochs``, or the recommendation's), naming the domain."""
    prov = mixture.provenance
    rec = prov.get("recommendation")
    cap = prov.get("max_epochs", rec.get("max_epochs") if isinstance(rec, Mapping) else None)
    if cap is None or mixture.total_tokens is None or mixture.domain_tokens is None:
        return
    for d, e in mixture.epochs().items():
        if e > float(cap) * (1 + tolerance):
            raise MixtureError(
                f"domain {d!r} would be read {e:.4g} times, over the mixture's cap of "
                f"max_epochs = {float(cap):g}; lower total_tokens or re-cap the weights"
            )


def _interval(iv: Any) -> str:
    if not iv or iv[0] is None:
        return ""
    return f" [{iv[0]:.3g} - {iv[1]:.3g}]"


def decision_lines(provenance: Mapping[str, Any]) -> list[str]:
    """The compute-aware decision in a mixture's provenance as short human lines (for export
    headers, logs and reports): sizes with intervals, where they came from, whether the fit
    is identified (and why not), the extrapolation, and the notes. Empty without one."""
    rec = provenance.get("recommendation")
    if not isinstance(rec, Mapping) or "n_params" not in rec:
        return []
    iv = rec.get("intervals") or {}
    level = rec.get("ci_level")
    pct = f"{level:.0%} " if iv and level else ""
    loss = rec.get("predicted_loss")
    lines = [
        f"recommended for C = {rec['compute']:.3g} FLOPs: N = {rec['n_params']:.4g} parameters"
        f"{_interval(iv.get('n_params'))}, D = {rec['n_tokens']:.4g} tokens"
        f"{_interval(iv.get('n_tokens'))}"
        + (f", predicted loss {loss:.4g}{_interval(iv.get('predicted_loss'))}" if loss else "")
        + (f" ({pct}bootstrap intervals)" if pct else ""),
        f"size source: {rec.get('size_source', '?')}",
    ]
    ident = rec.get("identification")
    if isinstance(ident, Mapping):
        if ident.get("identified"):
            lines.append(f"fit identified ({ident.get('n_boot', 0)} bootstrap refits)")
        else:
            lines.append("fit NOT identified: " + "; ".join(ident.get("reasons", [])))
    ex = rec.get("extrapolation")
    if isinstance(ex, Mapping) and ex.get("n_params") is not None:
        lines.append(
            f"extrapolation from the largest proxy run: N x{ex['n_params']:.3g}, "
            f"D x{ex['tokens']:.3g}, C x{ex['compute']:.3g}"
        )
    lines += [f"note: {n}" for n in rec.get("notes", [])]
    return lines


def upsampling_stage(
    weights: Mapping[str, float],
    domains: Sequence[str],
    factor: float = 2.0,
    last_fraction: float = 0.15,
) -> Stage:
    """End-of-training domain upsampling: multiply ``domains`` by ``factor`` and renormalise,
    for the last ``last_fraction`` of training (Blakeney et al. 2024, "Does your data spark
    joy?", arXiv:2406.03476; default the last 15%)."""
    w = check_weights(weights)
    unknown = set(domains) - set(w)
    if unknown:
        raise MixtureError(f"upsampling: unknown domains {sorted(unknown)}; known {sorted(w)}")
    if not factor > 0:
        raise MixtureError(f"upsampling factor must be > 0, got {factor!r}")
    if not 0 < last_fraction < 1:
        raise MixtureError(f"last_fraction must be in (0, 1), got {last_fraction!r}")
    up = {d: v * (factor if d in domains else 1.0) for d, v in w.items()}
    total = sum(up.values())
    return Stage(1.0 - last_fraction, {d: v / total for d, v in up.items()}, "upsample")
