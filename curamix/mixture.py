"""The mixture artifact: validated domain weights with a schedule and provenance.

Every mixer and the scaling-law recommender produce one ``Mixture``; trainer formats
(``curamix.export``) are renderings of it. It is frozen and checked when built: weights are
finite, non-negative and sum to 1 (within 1e-6; nothing is renormalised silently), every
stage of the schedule names only known domains and starts strictly later than the one
before.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

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
    """

    weights: Mapping[str, float]
    schedule: Sequence[Stage] = ()
    total_tokens: float | None = None
    domain_tokens: Mapping[str, float] | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)

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
