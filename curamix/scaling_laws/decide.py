"""Compute-aware decisions: model and data size, keep fraction, mixture weights for a budget C.

``recommend(C, ...)`` combines whatever laws were fitted: Chinchilla (or the published
approach-3 constants when none was) for ``N_opt`` and ``D_opt``; data-filtering pools for the
keep fraction of a DSIR/BETR ranking (BETR's rule ``F_opt(C) = 4e-5 C^0.25`` percent as the
fallback); the mixing law's optimum, within availability caps, for the weights. The result
names where each number came from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from curamix.mixture import Mixture, upsampling_stage
from curamix.scaling_laws.chinchilla import ChinchillaLaw
from curamix.scaling_laws.data_filtering import Pool, best_keep_fraction
from curamix.scaling_laws.mixing import MixingLaw

# Hoffmann et al. 2022, approach 3 (their Table A3 / eq. 10).
CHINCHILLA_PUBLISHED = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def betr_keep_percent(C: float) -> float:
    """BETR's compute-optimal filtering rate, ``4e-5 * C^0.25`` percent, capped at 100.

    References: Mizrahi et al. 2025, "Language Models Improve When Pretraining Data Matches
    Target Tasks", arXiv:2507.12466.
    """
    if not (math.isfinite(C) and C > 0):
        raise ValueError(f"compute must be > 0 FLOPs, got {C!r}")
    return min(100.0, 4e-5 * C**0.25)


@dataclass
class Recommendation:
    """What to train for compute ``C``, with the source of each number."""

    compute: float
    n_params: float
    n_tokens: float
    predicted_loss: float | None
    keep_fraction: float
    keep_fraction_source: str
    size_source: str
    mixture: Mixture | None = None
    mixture_source: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["mixture"] = self.mixture.to_dict() if self.mixture else None
        d["notes"] = list(self.notes)
        return d


def recommend(
    compute: float,
    chinchilla: ChinchillaLaw | None = None,
    filtering_pools: Mapping[float, Pool] | None = None,
    mixing: MixingLaw | None = None,
    target_weights: Mapping[str, float] | None = None,
    domain_tokens: Mapping[str, float] | None = None,
    max_epochs: float = 4.0,
    upsample: Sequence[str] = (),
    upsample_factor: float = 2.0,
    upsample_last: float = 0.15,
    provenance: Mapping[str, Any] | None = None,
) -> Recommendation:
    """Decide sizes, keep fraction and mixture for ``compute`` FLOPs (``C = 6 N D``).

    Parameters
    ----------
    filtering_pools : mapping keep fraction -> Pool, optional
        Fitted data-filtering laws of the top-x% pools; sizes in tokens.
    mixing : MixingLaw, optional
        A fitted mixing law; its optimum is taken within ``domain_tokens * max_epochs /
        D_opt`` per domain when ``domain_tokens`` is given.
    upsample : domains to upweight by ``upsample_factor`` for the last ``upsample_last``.
    """
    notes: list[str] = []
    if chinchilla is None:
        chinchilla = ChinchillaLaw.from_params(CHINCHILLA_PUBLISHED)
        size_source = "Chinchilla approach 3, published constants (Hoffmann et al. 2022)"
        notes.append("no fitted Chinchilla law given: sizes use the published constants")
    else:
        size_source = "fitted ChinchillaLaw"
    n_opt, d_opt = chinchilla.compute_optimal(compute)
    loss = float(chinchilla.predict(n_opt, d_opt))

    if filtering_pools:
        frac, errs = best_keep_fraction(d_opt, filtering_pools)
        keep_source = "data-filtering law: lowest predicted error at D_opt among " + ", ".join(
            f"{k:g}: {v:.4g}" for k, v in sorted(errs.items())
        )
    else:
        frac = betr_keep_percent(compute) / 100.0
        keep_source = "BETR rule F_opt(C) = 4e-5 C^0.25 % (no data-filtering fit given)"

    mixture = None
    mixture_source = None
    if mixing is not None:
        caps = None
        if domain_tokens is not None:
            caps = {
                d: min(1.0, float(domain_tokens.get(d, 0.0)) * max_epochs / d_opt)
                for d in mixing.domains_
            }
            tight = [d for d, c in caps.items() if c < 1.0]
            if tight:
                notes.append(
                    f"availability caps ({max_epochs:g} epochs over D_opt={d_opt:.3g} tokens) "
                    f"bind for {len(tight)} domains"
                )
        weights, pred = mixing.optimize(target_weights=target_weights, caps=caps)
        schedule = []
        if upsample:
            schedule = [upsampling_stage(weights, upsample, upsample_factor, upsample_last)]
        mixture = Mixture(
            weights=weights,
            schedule=schedule,
            total_tokens=d_opt,
            domain_tokens=(
                {d: float(domain_tokens.get(d, 0.0)) for d in weights} if domain_tokens else None
            ),
            provenance={
                "method": "mixing_law",
                "compute": compute,
                "predicted_target_loss": pred,
                "max_epochs": max_epochs,
                "target_weights": dict(target_weights) if target_weights else None,
                **(provenance or {}),
            },
        )
        mixture_source = f"data-mixing law optimum (predicted target loss {pred:.4g})"
    elif upsample:
        notes.append("upsampling asked for, but no mixing law was given: no mixture to schedule")
    return Recommendation(
        compute=float(compute),
        n_params=float(n_opt),
        n_tokens=float(d_opt),
        predicted_loss=loss,
        keep_fraction=float(frac),
        keep_fraction_source=keep_source,
        size_source=size_source,
        mixture=mixture,
        mixture_source=mixture_source,
        notes=notes,
    )
