"""Scaling laws that turn proxy runs into decisions: model/data sizes, keep fractions, mixtures.

Each law is a small estimator: ``ChinchillaLaw().fit(N, D, loss).predict(N, D)``, parameters
in ``params_``, bootstrap intervals from ``bootstrap()`` (over runs, seeded), and the verdict
on whether the runs pin the parameters down from ``identify()`` (an :class:`Identification`);
decisions (``decide.recommend``) refuse a fit that is not identified. Pure numpy/scipy; no
Spark, no torch.
"""

from curamix.scaling_laws._base import (
    Identification,
    NotFittedError,
    ScalingLawFitError,
    UnidentifiedFitError,
)
from curamix.scaling_laws.chinchilla import EPOCH_GRID, ChinchillaLaw, epoch_outlier_mask
from curamix.scaling_laws.data_constrained import DataConstrainedLaw
from curamix.scaling_laws.data_filtering import (
    DataFilteringLaw,
    Pool,
    best_keep_fraction,
    best_pool,
    mixed_error,
)
from curamix.scaling_laws.mixing import MixingLaw

__all__ = [
    "EPOCH_GRID",
    "ChinchillaLaw",
    "DataConstrainedLaw",
    "DataFilteringLaw",
    "Identification",
    "MixingLaw",
    "NotFittedError",
    "Pool",
    "ScalingLawFitError",
    "UnidentifiedFitError",
    "best_keep_fraction",
    "best_pool",
    "epoch_outlier_mask",
    "mixed_error",
]
