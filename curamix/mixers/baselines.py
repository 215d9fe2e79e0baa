"""Static baselines: uniform, natural (token share) and temperature-scaled token share.

References
----------
Temperature sampling over token shares: Arivazhagan et al. 2019, "Massively Multilingual
Neural Machine Translation in the Wild", arXiv:1907.05019; Conneau et al. 2020 (XLM-R),
arXiv:1911.02116.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from curamix.mixers.base import BaseMixer, DomainStats, finalize_weights


def temperature_weights(shares: np.ndarray, tau: float) -> np.ndarray:
    """``shares ** (1 / tau)``, renormalised: ``tau = 1`` is the token share itself,
    ``tau -> inf`` (``math.inf`` allowed) is uniform, ``tau < 1`` sharpens toward the largest.

    Parameters
    ----------
    shares : ndarray
        Non-negative token shares (summing to 1; zeros stay zero for finite ``tau``).
    tau : float
        Temperature, > 0.
    """
    if not (tau > 0):
        raise ValueError(f"tau must be > 0 (math.inf for uniform), got {tau!r}")
    s = np.asarray(shares, dtype=np.float64)
    if math.isinf(tau):
        return np.full(len(s), 1.0 / len(s))
    # in log space, so a small tau does not underflow every share to 0
    with np.errstate(divide="ignore"):
        logw = np.log(s) / tau
    logw -= logw.max()
    w = np.exp(logw)
    return w / w.sum()


class UniformMixer(BaseMixer):
    """Every domain gets ``1 / k``.

    Attributes
    ----------
    weights_ : dict of str to float
    """

    method = "uniform"
    reference = "baseline"

    def __init__(self) -> None:
        pass

    def fit(self, domain_stats: DomainStats | Mapping[str, float]) -> UniformMixer:
        stats = self._set_stats(domain_stats)
        k = len(stats.domains)
        self.weights_ = finalize_weights(np.full(k, 1.0 / k), stats.domains, "uniform")
        return self


class NaturalMixer(BaseMixer):
    """Each domain's share of the tokens (the pool as it is).

    Attributes
    ----------
    weights_ : dict of str to float
    """

    method = "natural"
    reference = "baseline"

    def __init__(self) -> None:
        pass

    def fit(self, domain_stats: DomainStats | Mapping[str, float]) -> NaturalMixer:
        stats = self._set_stats(domain_stats)
        self.weights_ = finalize_weights(stats.shares(), stats.domains, "natural")
        return self


class TemperatureMixer(BaseMixer):
    """Token share raised to ``1 / tau`` and renormalised.

    Parameters
    ----------
    tau : float
        ``1``: natural; larger flattens toward uniform (``math.inf``: uniform); below 1
        sharpens toward the largest domains.

    Attributes
    ----------
    weights_ : dict of str to float

    References
    ----------
    Arivazhagan et al. 2019, arXiv:1907.05019 (temperature-based sampling).
    """

    method = "temperature"
    reference = "Arivazhagan et al. 2019, arXiv:1907.05019"

    def __init__(self, tau: float = 2.0) -> None:
        self.tau = tau

    def fit(self, domain_stats: DomainStats | Mapping[str, float]) -> TemperatureMixer:
        stats = self._set_stats(domain_stats)
        w = temperature_weights(stats.shares(), float(self.tau))
        self.weights_ = finalize_weights(w, stats.domains, f"temperature tau={self.tau}")
        return self
