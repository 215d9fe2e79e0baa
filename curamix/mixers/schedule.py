"""End-of-training domain upsampling for any mixer's weights.

For the last ``last_fraction`` of training (default 15%), multiply the weights of
``domains`` (small, high-value sets: math, QA, code...) by ``factor`` and renormalise; the
stage is :func:`curamix.mixture.upsampling_stage`. The renormalisation is the method, not a
repair of bad input, so it does not warn.

References
----------
Blakeney et al. 2024, "Does your data spark joy? Performance gains from domain upsampling at
the end of training", arXiv:2406.03476.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from curamix.mixers.base import BaseMixer
from curamix.mixture import Mixture, MixtureError, upsampling_stage


def with_upsampling(
    source: BaseMixer | Mixture | Mapping[str, float],
    domains: Sequence[str],
    factor: float = 2.0,
    last_fraction: float = 0.15,
    total_tokens: float | None = None,
) -> Mixture:
    """A mixture that switches to upsampled weights for the last ``last_fraction``.

    Parameters
    ----------
    source : fitted mixer, Mixture, or mapping domain -> weight
        The weights before the switch (a mixer's :meth:`~BaseMixer.mixture`; a plain mapping
        must be valid: non-negative, summing to 1).
    domains : sequence of str
        Domains to upweight (each must be in the mixture).
    factor : float
        Multiplier before renormalisation (> 0).
    last_fraction : float in (0, 1)
        Share of the training tokens the last stage covers.
    total_tokens : float, optional
        Training budget carried by the mixture (a mixer's ``domain_stats.total_tokens`` by
        default).

    Returns
    -------
    Mixture
        The source's weights and schedule plus an ``"upsample"`` stage at
        ``1 - last_fraction``; provenance records the upsampling.
    """
    if isinstance(domains, str):
        raise ValueError(f"domains must be a sequence of domain names, got the string {domains!r}")
    if not domains:
        raise ValueError("with_upsampling needs at least one domain to upsample")
    if isinstance(source, BaseMixer):
        base = source.mixture(total_tokens)
    elif isinstance(source, Mixture):
        base = source
    elif isinstance(source, Mapping):
        try:
            base = Mixture(
                weights=source, total_tokens=total_tokens, provenance={"method": "given"}
            )
        except MixtureError as e:
            raise ValueError(str(e)) from None
    else:
        raise TypeError(
            f"source must be a mixer, a Mixture or a mapping, got {type(source).__name__}"
        )
    start = 1.0 - last_fraction
    late = [s for s in base.schedule if s.start >= start]
    if late:
        raise ValueError(
            f"the mixture already has a stage starting at {late[0].start:g}, at or after the "
            f"upsampling start {start:g}"
        )
    current = base.stages()[-1].weights
    try:
        stage = upsampling_stage(current, domains, factor, last_fraction)
    except MixtureError as e:
        raise ValueError(str(e)) from None
    prov: dict[str, Any] = dict(base.provenance)
    prov["upsampling"] = {
        "domains": list(domains),
        "factor": factor,
        "last_fraction": last_fraction,
        "reference": "Blakeney et al. 2024, arXiv:2406.03476",
    }
    return Mixture(
        weights=base.weights,
        schedule=[*base.schedule, stage],
        total_tokens=base.total_tokens if total_tokens is None else total_tokens,
        domain_tokens=base.domain_tokens,
        provenance=prov,
    )
