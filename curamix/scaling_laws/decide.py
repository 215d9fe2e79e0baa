"""Compute-aware decisions: model and data size, keep fraction, mixture weights for a budget C.

``recommend(C, ...)`` combines whatever laws were fitted: Chinchilla for ``N_opt`` and
``D_opt``, but only a fit that is *identified* (:meth:`ScalingLaw.identify`: enough distinct
sizes and budgets, no parameter on a bound or without effect, narrow bootstrap intervals);
otherwise the published approach-3 constants, named in ``size_source`` and ``notes``, or an
:class:`UnidentifiedFitError` when the fallback is forbidden. Data-filtering pools give the
keep fraction of a DSIR/BETR ranking (BETR's rule ``F_opt(C) = 4e-5 C^0.25`` percent as the
fallback); the mixing law's optimum, within availability caps, or a mixer's weights capped at
``max_epochs`` per domain, give the mixture.

Guards, each named in ``notes`` when it acts: ``N`` never below the smallest proxy the law was
fitted on; ``D`` never above ``max_epochs`` times the unique tokens; no domain read more than
``max_epochs`` times. The result carries bootstrap intervals for ``N``, ``D`` and the loss, the
fit's identification, and the extrapolation factors from the largest proxy run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from curamix.mixture import Mixture, MixtureError, cap_epochs, upsampling_stage
from curamix.scaling_laws._base import UnidentifiedFitError
from curamix.scaling_laws.chinchilla import ChinchillaLaw, chinchilla_loss, optimal_allocation
from curamix.scaling_laws.data_filtering import Pool, best_keep_fraction
from curamix.scaling_laws.mixing import MixingLaw

if TYPE_CHECKING:
    from curamix.config import ScalingConfig

# Hoffmann et al. 2022, approach 3 (their Table A3 / eq. 10).
CHINCHILLA_PUBLISHED = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
PUBLISHED_SOURCE = (
    "published Chinchilla constants (Hoffmann et al. 2022, approach 3: E=1.69, A=406.4, "
    "B=410.7, alpha=0.34, beta=0.28)"
)
PUBLISHED_N_RANGE = (7e7, 1.6e10)
"""Model sizes Hoffmann et al.'s approach-3 runs span (70M to 16B parameters)."""
BETR_MIN_COMPUTE = 1e19
"""Below this budget BETR's keep-fraction rule is noted as an extrapolation (Mizrahi et al.
quote it at 1e20-1e22 FLOPs)."""
EXTRAPOLATION_NOTE = 10.0
"""A note is added when N, D or C is more than this many times the largest proxy run's."""


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
    """What to train for compute ``C``, with the source, uncertainty and guards of each number.

    ``intervals`` maps ``n_params``, ``n_tokens``, ``predicted_loss`` to ``[lo, hi]`` at
    ``ci_level`` (bootstrap over the proxy runs; None when the sizes come from published
    constants). ``identification`` is the fitted law's verdict (also when it was refused);
    ``fallback_reason`` says why the published constants were used; ``extrapolation`` has
    ``N``, ``D`` and ``C`` over the largest proxy run's.
    """

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
    intervals: dict[str, list[float]] | None = None
    ci_level: float | None = None
    identification: dict[str, Any] | None = None
    fallback_reason: str | None = None
    extrapolation: dict[str, Any] | None = None
    max_epochs: float | None = None
    min_params: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["mixture"] = self.mixture.to_dict() if self.mixture else None
        d["notes"] = list(self.notes)
        return d

    def summary(self) -> dict[str, Any]:
        """Everything but the mixture: what a run's mixture carries as
        ``provenance["recommendation"]``."""
        return {k: v for k, v in self.to_dict().items() if k != "mixture"}

    def run_mixture(self) -> Mixture:
        """The recommended mixture with this decision in its provenance (``recommendation``),
        as ``RUN/mixture.json`` holds it; raises ``ValueError`` without a mixture."""
        if self.mixture is None:
            raise ValueError("the recommendation has no mixture (no mixing law or mixer weights)")
        m = self.mixture
        return Mixture(
            weights=m.weights, schedule=m.schedule, total_tokens=m.total_tokens,
            domain_tokens=m.domain_tokens,
            provenance={**m.provenance, "recommendation": self.summary()},
        )  # fmt: skip


def _size_law(
    chinchilla: ChinchillaLaw | None, allow_fallback: bool, notes: list[str]
) -> tuple[ChinchillaLaw, bool, str, str | None, dict[str, Any] | None]:
    """(law to size with, whether it is the fitted one, size_source, fallback reason, the
    fitted law's identification as a dict)."""
    published = ChinchillaLaw.from_params(CHINCHILLA_PUBLISHED)
    if chinchilla is None:
        reason = "no fitted Chinchilla law was given"
        notes.append(f"{reason}: sizes use the {PUBLISHED_SOURCE}")
        return published, False, PUBLISHED_SOURCE, reason, None
    if not hasattr(chinchilla, "n_points_"):  # constants given by the caller, not a fit
        return chinchilla, True, "given Chinchilla constants (not fitted here)", None, None
    ident = getattr(chinchilla, "identification_", None)
    if ident is None and hasattr(chinchilla, "_fit_inputs_"):
        ident = chinchilla.identify()
    if ident is None:
        reasons = ["the fit carries no identification record (refit with this curamix version)"]
        ident_d = {"identified": False, "reasons": reasons}
    else:
        reasons, ident_d = list(ident.reasons), ident.to_dict()
    if not reasons:
        n = ident_d.get("distinct", {})
        return (
            chinchilla,
            True,
            f"fitted ChinchillaLaw (identified: {n.get('N', '?')} model sizes x "
            f"{n.get('D', '?')} token budgets, {ident_d.get('n_boot', 0)} bootstrap refits)",
            None,
            ident_d,
        )
    why = "the fitted Chinchilla law is not identified: " + "; ".join(reasons)
    if not allow_fallback:
        raise UnidentifiedFitError(
            f"refusing to size a model from it: {why}. Sweep more model sizes and token "
            "budgets, or allow the published-constants fallback (scaling.allow_fallback: true, "
            "`curamix recommend --allow-fallback`)"
        )
    notes.append(
        f"fallback: the fitted Chinchilla law is not identified ({len(reasons)} reason(s), the "
        f"first: {reasons[0]}); sizes use the {PUBLISHED_SOURCE} instead"
    )
    return published, False, f"{PUBLISHED_SOURCE}; fallback: fit not identified", why, ident_d


def _usable_mixing(
    mixing: MixingLaw, allow_fallback: bool, base: Mixture | None, notes: list[str]
) -> MixingLaw | None:
    """The mixing law when it is identified (or given, not fitted), else None with a note (or
    :class:`UnidentifiedFitError` when no fallback is allowed)."""
    ident = getattr(mixing, "identification_", None)
    if ident is None and hasattr(mixing, "_fit_inputs_"):
        ident = mixing.identify()
    if ident is None or ident.identified:
        return mixing
    why = "the mixing law is not identified: " + "; ".join(ident.reasons)
    if not allow_fallback:
        raise UnidentifiedFitError(
            f"refusing to choose a mixture from it: {why}. Add runs on more mixtures, or "
            "allow the fallback (scaling.allow_fallback: true)"
        )
    method = base.provenance.get("method", "mixer") if base is not None else None
    notes.append(
        f"{why}; the mixture is the {method} weights instead"
        if method
        else f"{why}; no mixture is recommended"
    )
    return None


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
    *,
    base_mixture: Mixture | None = None,
    allow_fallback: bool = True,
    min_params: float | None = None,
) -> Recommendation:
    """Decide sizes, keep fraction and mixture for ``compute`` FLOPs (``C = 6 N D``).

    Parameters
    ----------
    chinchilla : ChinchillaLaw, optional
        A fitted law (bootstrapped and identified: :func:`curamix.scaling_laws.fit.fit_table`
        does both); used only when identified. None: the published constants.
    filtering_pools : mapping keep fraction -> Pool, optional
        Fitted data-filtering laws of the top-x% pools; sizes in tokens.
    mixing : MixingLaw, optional
        A fitted mixing law; its optimum is taken within ``domain_tokens * max_epochs /
        D_opt`` per domain when ``domain_tokens`` is given.
    domain_tokens : mapping, optional
        Unique tokens per domain (default: ``base_mixture``'s).
    max_epochs : float
        Repetition cap per domain (Muennighoff et al. 2023, arXiv:2305.16264: up to ~4
        epochs are worth nearly fresh data); ``D`` and every domain's share respect it.
    upsample : domains to upweight by ``upsample_factor`` for the last ``upsample_last``.
    base_mixture : Mixture, optional
        A mixer's weights, used when there is no mixing law: trained for ``D_opt`` tokens and
        capped at ``max_epochs`` per domain (excess re-spread over the other domains).
    allow_fallback : bool
        When the fitted law is not identified: use the published constants (True) or raise
        :class:`UnidentifiedFitError` (False).
    min_params : float, optional
        Smallest ``N`` to recommend (default: the smallest proxy the law was fitted on).
    """
    try:
        compute = float(compute)
    except (TypeError, ValueError):
        raise ValueError(f"compute must be a number of FLOPs, got {compute!r}") from None
    if not (math.isfinite(compute) and compute > 0):
        raise ValueError(f"compute must be finite and > 0 FLOPs, got {compute!r}")
    if not (math.isfinite(max_epochs) and max_epochs > 0):
        raise ValueError(f"max_epochs must be > 0, got {max_epochs!r}")
    notes: list[str] = []
    law, fitted, size_source, fallback, ident = _size_law(chinchilla, allow_fallback, notes)
    if mixing is not None:
        mixing = _usable_mixing(mixing, allow_fallback, base_mixture, notes)
    fit_range = getattr(chinchilla, "fit_range_", None)
    if min_params is None and fit_range:
        min_params = fit_range["n_params"][0]

    # Unique tokens the decision may draw on: the mixing law's domains, else the mixer's
    # domains with weight > 0, else every domain given.
    dtok = dict(domain_tokens) if domain_tokens is not None else None
    if dtok is None and base_mixture is not None and base_mixture.domain_tokens is not None:
        dtok = dict(base_mixture.domain_tokens)
    if dtok is not None:
        if mixing is not None:
            used = list(mixing.domains_)
        elif base_mixture is not None:
            used = [d for d, w in base_mixture.weights.items() if w > 0]
        else:
            used = list(dtok)
        d_avail = max_epochs * sum(float(dtok.get(d, 0.0)) for d in used)
    else:
        d_avail = math.inf

    def sizes(n: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if min_params is not None:
            n = np.maximum(n, min_params)
            d = compute / (6.0 * n)
        return n, np.minimum(d, d_avail)

    p = law.params_
    n0, d0 = optimal_allocation(compute, p["A"], p["B"], p["alpha"], p["beta"])
    n_opt, d_opt = (float(x) for x in sizes(np.asarray(n0), np.asarray(d0)))
    if min_params is not None and float(n0) < min_params:
        notes.append(
            f"N_opt = {float(n0):.4g} is below the smallest proxy run ({min_params:.4g} "
            f"parameters): N set to {min_params:.4g} and D = C / 6N; the law is not "
            "extrapolated below its runs"
        )
    d_want = compute / (6.0 * n_opt)
    if d_want > d_avail:
        notes.append(
            f"data-limited: D = {d_want:.4g} tokens exceed {max_epochs:g} epochs of the "
            f"{d_avail / max_epochs:.4g} unique tokens; D capped at {d_avail:.4g} "
            f"(6 N D = {6 * n_opt * d_opt:.3g} of C = {compute:.3g} FLOPs used)"
        )

    loss: float | None = None
    intervals = None
    level = None
    if fitted:
        loss = float(law.predict(n_opt, d_opt))
        draws = getattr(law, "params_boot_", None)
        if draws is not None and len(draws):
            level = float(law.ci_level_)
            E, A, B, alpha, beta = (draws[:, j] for j in range(5))
            ok = (alpha > 0) & (beta > 0)
            bn, bd = optimal_allocation(compute, A[ok], B[ok], alpha[ok], beta[ok])
            bn, bd = sizes(bn, bd)
            bl = chinchilla_loss(bn, bd, E[ok], A[ok], B[ok], alpha[ok], beta[ok])
            q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
            intervals = {
                k: [float(v) for v in np.nanpercentile(arr, q)]
                for k, arr in (("n_params", bn), ("n_tokens", bd), ("predicted_loss", bl))
            }
        else:
            notes.append("no bootstrap draws: N, D and loss come without intervals")
    else:
        notes.append(
            "no loss prediction and no intervals: the published constants predict loss on "
            "Chinchilla's data and tokenizer, not this run's, and carry no bootstrap draws here"
        )
        lo, hi = PUBLISHED_N_RANGE
        if not lo <= n_opt <= hi:
            notes.append(
                f"N = {n_opt:.4g} is outside the {lo:.0e}-{hi:.0e} parameters the published "
                "constants were fitted on: they are extrapolated"
            )

    extrapolation = None
    if fit_range:
        big = {k: fit_range[k][1] for k in ("n_params", "tokens", "compute")}
        extrapolation = {
            "n_params": n_opt / big["n_params"],
            "tokens": d_opt / big["tokens"],
            "compute": compute / big["compute"],
            "largest_run": big,
        }
        far = {k: v for k, v in extrapolation.items() if k != "largest_run"}
        if max(far.values()) > EXTRAPOLATION_NOTE:
            notes.append(
                "extrapolation from the largest proxy run: "
                + ", ".join(f"{k} x{v:.3g}" for k, v in far.items())
            )

    if filtering_pools:
        frac, errs = best_keep_fraction(d_opt, filtering_pools)
        keep_source = "data-filtering law: lowest predicted error at D_opt among " + ", ".join(
            f"{k:g}: {v:.4g}" for k, v in sorted(errs.items())
        )
    else:
        frac = betr_keep_percent(compute) / 100.0
        keep_source = "BETR rule F_opt(C) = 4e-5 C^0.25 % (no data-filtering fit given)"
        if compute < BETR_MIN_COMPUTE:
            notes.append(
                f"the keep fraction {frac:.3g} is BETR's rule far below the budgets it was "
                f"derived at (~3% at 1e20, ~10% at 1e22 FLOPs): at C = {compute:.3g} it is an "
                "extrapolation"
            )

    mixture = None
    mixture_source = None
    extra = dict(provenance or {})
    if mixing is not None:
        caps = None
        if dtok is not None:
            caps = {
                d: min(1.0, float(dtok.get(d, 0.0)) * max_epochs / d_opt) for d in mixing.domains_
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
            domain_tokens=({d: float(dtok.get(d, 0.0)) for d in weights} if dtok else None),
            provenance={
                "method": "mixing_law",
                "compute": compute,
                "predicted_target_loss": pred,
                "max_epochs": max_epochs,
                "target_weights": dict(target_weights) if target_weights else None,
                **extra,
            },
        )
        if mixture.domain_tokens is not None and upsample:
            mixture, changed = cap_epochs(mixture, max_epochs)
            _epoch_notes(changed, max_epochs, d_opt, notes)
        mixture_source = f"data-mixing law optimum (predicted target loss {pred:.4g})"
    elif base_mixture is not None:
        bp = base_mixture.provenance
        schedule = list(base_mixture.schedule)
        if upsample and not schedule:
            schedule = [
                upsampling_stage(base_mixture.weights, upsample, upsample_factor, upsample_last)
            ]
        method = bp.get("method", "mixer")
        mixture = Mixture(
            weights=base_mixture.weights,
            schedule=schedule,
            total_tokens=d_opt,
            domain_tokens={d: float(dtok.get(d, 0.0)) for d in base_mixture.weights}
            if dtok
            else None,
            provenance={
                **{k: v for k, v in extra.items() if k not in ("method", "seed")},
                "method": method,
                "seed": bp.get("seed"),
                "compute": compute,
                "max_epochs": max_epochs,
                "weights_from": f"{method} (the mixer's weights at the recommended budget)",
            },
        )
        mixture_source = f"{method} weights"
        if mixture.domain_tokens is not None:
            # a staged schedule is capped on what the whole schedule reads, so its short
            # stages keep their shape (issue 23); a single stage is the same either way
            try:
                mixture, changed = cap_epochs(mixture, max_epochs, budget="schedule")
            except MixtureError as err:  # a stage drawing only on capped domains
                notes.append(f"epochs capped stage by stage: {err}")
                mixture, changed = cap_epochs(mixture, max_epochs)
            _epoch_notes(changed, max_epochs, d_opt, notes)
            if changed:
                mixture_source += f", re-spread within {max_epochs:g} epochs per domain"
        else:
            notes.append("no unique-token counts per domain: epochs are not checked")
    elif upsample:
        notes.append("upsampling asked for, but no mixing law was given: no mixture to schedule")
    return Recommendation(
        compute=float(compute),
        n_params=n_opt,
        n_tokens=d_opt,
        predicted_loss=loss,
        keep_fraction=float(frac),
        keep_fraction_source=keep_source,
        size_source=size_source,
        mixture=mixture,
        mixture_source=mixture_source,
        notes=notes,
        intervals=intervals,
        ci_level=level,
        identification=ident,
        fallback_reason=fallback,
        extrapolation=extrapolation,
        max_epochs=max_epochs,
        min_params=min_params,
    )


def _epoch_notes(
    changed: Mapping[str, float], max_epochs: float, d_opt: float, notes: list[str]
) -> None:
    if changed:
        notes.append(
            f"epoch cap ({max_epochs:g} per domain over D = {d_opt:.4g} tokens): "
            + ", ".join(f"{d} would be read {e:.3g} times" for d, e in sorted(changed.items()))
            + "; their weights are capped and the rest re-spread over the other domains"
        )


def fit_and_recommend(
    df: Any,
    out_dir: str | Path,
    cfg: ScalingConfig,
    base_mixture: Mixture | None = None,
    seed: int = 0,
    mixing_target: str = "loss",
    provenance: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], Recommendation]:
    """The flow's decision path: fit ``cfg.laws`` on a sweep's results ``df`` into ``out_dir``
    (bootstrapped, ``cfg.n_boot`` resamples at ``cfg.ci_level``, identified), read the fits
    back as the CLI does, and :func:`recommend` for ``cfg.compute`` with ``base_mixture`` (the
    mixer's weights and unique tokens), ``cfg.max_epochs`` and ``cfg.allow_fallback``.
    Returns ``(fits, recommendation)``."""
    from curamix.scaling_laws.fit import fit_table, load_fits

    fits = fit_table(
        df, out_dir, laws=tuple(cfg.laws), n_boot=cfg.n_boot, random_state=seed,
        mixing_target=mixing_target, ci_level=cfg.ci_level,
    )  # fmt: skip
    laws = load_fits(out_dir)
    rec = recommend(
        cfg.compute,
        chinchilla=laws.get("chinchilla"),
        mixing=laws.get("mixing"),
        max_epochs=cfg.max_epochs,
        provenance=provenance,
        base_mixture=base_mixture,
        allow_fallback=cfg.allow_fallback,
    )
    return fits, rec
