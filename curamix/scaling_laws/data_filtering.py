"""Scaling laws for data filtering: quality pools whose utility decays with repetition.

A pool of ``S`` samples has error ``y(n) = a n^b + d`` for the first pass (``b < 0`` is the
pool's *utility*). Each further pass over the same data is worth less: in pass ``k``
(``k = 0`` for fresh data) the local log-log slope of the reducible error is
``b_k = b * 0.5^(k / tau)`` (half-life ``tau`` passes), and the curve stays continuous at
every pass boundary. A mix of pools takes the share-weighted average of the pools' current
slopes (each pool at its own pass count), which gives the quality-quantity trade-off: a
small top-quality pool wins at small budgets and loses once it has been repeated too often.

References
----------
Goyal et al. 2024, "Scaling Laws for Data Filtering -- Data Curation cannot be Compute
Agnostic", CVPR, arXiv:2404.07177.

Notes
-----
Conventions this module fixes where the paper leaves room: for a mix, the scale ``a`` is
the share-weighted geometric mean of the pools' ``a`` and ``d`` the share-weighted mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike

from curamix.scaling_laws._base import (
    Objective,
    ScalingLaw,
    check_positive,
    check_same_length,
    grid_starts,
    huber,
)


@dataclass(frozen=True)
class Pool:
    """A quality pool: its size (samples or tokens) and its law's parameters."""

    size: float
    a: float
    b: float
    d: float
    tau: float

    def __post_init__(self) -> None:
        if not self.size > 0:
            raise ValueError(f"pool size must be > 0, got {self.size!r}")
        if not (self.a > 0 and self.tau > 0 and self.d >= 0):
            raise ValueError(f"pool needs a > 0, tau > 0, d >= 0; got {self}")


def mixed_error(
    n: ArrayLike, pools: Sequence[Pool], shares: Sequence[float] | None = None
) -> np.ndarray:
    """Predicted error after ``n`` samples drawn from ``pools`` in proportions ``shares``.

    Exact for the piecewise law: between pass boundaries (``n = k S_p / w_p``) the mixed slope
    ``sum_p w_p b_p 0.5^(k_p / tau_p)`` is constant, so the log reducible error is integrated
    segment by segment.
    """
    n = check_positive("n", n)
    m = len(pools)
    w = np.full(m, 1.0 / m) if shares is None else np.asarray(shares, dtype=np.float64)
    if w.shape != (m,) or (w < 0).any() or not np.isclose(w.sum(), 1.0):
        raise ValueError(f"shares must be {m} non-negative numbers summing to 1, got {shares!r}")
    active = [(p, wi) for p, wi in zip(pools, w, strict=True) if wi > 0]
    log_a = sum(wi * np.log(p.a) for p, wi in active)
    d = sum(wi * p.d for p, wi in active)
    n_max = float(n.max())
    # Every pass boundary of every pool up to n_max, with the pass count each one starts.
    bounds: list[float] = []
    for p, wi in active:
        step = p.size / wi
        k = np.arange(1, int(n_max // step) + 1)
        bounds.extend((k * step).tolist())
    edges = np.unique(np.array([*bounds, n_max], dtype=np.float64))

    def slope(at: float) -> float:
        # The mixed slope just after ``at`` (passes counted at the segment's start).
        return sum(wi * p.b * 0.5 ** (np.floor(at * wi / p.size + 1e-12) / p.tau)
                   for p, wi in active)  # fmt: skip

    # log r(n) = log a + b_0 log n on the first segment, then continuous piecewise slopes.
    starts = np.r_[0.0, edges[:-1]]
    slopes = np.array([slope(s) for s in starts])
    log_r_at_edge = np.empty(len(edges))
    log_r = log_a + slopes[0] * np.log(edges[0])
    log_r_at_edge[0] = log_r
    for i in range(1, len(edges)):
        log_r = log_r + slopes[i] * (np.log(edges[i]) - np.log(edges[i - 1]))
        log_r_at_edge[i] = log_r
    seg = np.searchsorted(edges, n, side="left")
    seg = np.minimum(seg, len(edges) - 1)
    out = np.empty_like(n)
    first = seg == 0
    out[first] = log_a + slopes[0] * np.log(n[first])
    rest = ~first
    out[rest] = log_r_at_edge[seg[rest] - 1] + slopes[seg[rest]] * (
        np.log(n[rest]) - np.log(edges[seg[rest] - 1])
    )
    return d + np.exp(out)


def best_pool(n: float, pools: Mapping[str, Pool]) -> tuple[str, dict[str, float]]:
    """The pool with the lowest predicted error at budget ``n``, and every pool's error."""
    if not pools:
        raise ValueError("best_pool needs at least one pool")
    errs = {name: float(mixed_error([n], [p])[0]) for name, p in pools.items()}
    return min(errs, key=errs.__getitem__), errs


def best_keep_fraction(
    n: float, pools_by_fraction: Mapping[float, Pool]
) -> tuple[float, dict[float, float]]:
    """The keep fraction (top-x% of a ranked pool) with the lowest predicted error at ``n``."""
    name, errs = best_pool(n, {str(k): v for k, v in pools_by_fraction.items()})
    return float(name), {float(k): v for k, v in errs.items()}


class DataFilteringLaw(ScalingLaw):
    """One pool's law ``y(n) = a n^b + d`` with repetition half-life ``tau``, fitted.

    ``fit(n, pool_size, error)`` takes runs that saw ``n`` samples of pools of
    ``pool_size`` (so some runs repeat data); ``tau`` is only identifiable when some runs
    go past one pass. ``pool()`` returns the fitted ``Pool`` for ``mixed_error`` and
    ``best_pool``.
    """

    _names = ("log_a", "b", "d", "log_tau")
    _public: ClassVar[dict[str, str]] = {"log_a": "a", "log_tau": "tau"}
    _log_scale = frozenset({"a", "tau"})

    def __init__(self, huber_delta: float = 1e-3, maxiter: int = 1000):
        self.huber_delta = huber_delta
        self.maxiter = maxiter

    def fit(self, n: ArrayLike, pool_size: ArrayLike, error: ArrayLike) -> DataFilteringLaw:
        n = check_positive("n", n)
        size = check_positive("pool_size", pool_size)
        error = check_positive("error", error)
        check_same_length(n=n, pool_size=size, error=error)
        self._fit_data({"n": n, "size": size, "logy": np.log(error)})
        return self

    def _log_predict(self, x: np.ndarray, data: dict[str, np.ndarray]) -> np.ndarray:
        la, b, d, lt = x
        n, size = data["n"], data["size"]
        if not (np.isfinite(x).all() and 0 < np.exp(la) < np.inf and 0 < np.exp(lt) < np.inf):
            return np.full_like(n, np.inf)  # under/overflow: no valid pool, an infinite loss
        pred = np.empty_like(n)
        for s in np.unique(size):
            idx = np.flatnonzero(size == s)
            pred[idx] = mixed_error(n[idx], [Pool(s, np.exp(la), b, max(d, 0.0), np.exp(lt))])
        return np.log(pred)

    def _distinct(self, data: dict[str, np.ndarray]) -> dict[str, int]:
        return {"n": len(np.unique(data["n"])), "pool_size": len(np.unique(data["size"]))}

    def _checks(self, data: dict[str, np.ndarray]) -> list[str]:
        if not (data["n"] > data["size"]).any():
            return ["no run passes one epoch of its pool (n > pool_size in none): tau is not "
                    "identified"]  # fmt: skip
        return []

    def _objective(self, data: dict[str, np.ndarray]) -> Objective:
        logy, delta = data["logy"], self.huber_delta

        def f(x: np.ndarray) -> float:
            return float(huber(self._log_predict(x, data) - logy, delta)[0].sum()) / delta

        f.has_grad = False  # type: ignore[attr-defined]
        return f

    def _starts(self, data: dict[str, np.ndarray]) -> np.ndarray:
        ymin = float(np.exp(data["logy"].min()))
        return grid_starts(
            {"log_a": [0.0, 3.0], "b": [-0.1, -0.3, -0.6],
             "d": [0.0, 0.5 * ymin], "log_tau": [np.log(1.0), np.log(5.0)]},
            self._names,
        )  # fmt: skip

    def _bounds(self) -> list[tuple[float | None, float | None]]:
        return [(None, None), (-3.0, -1e-4), (0.0, None), (np.log(0.05), np.log(1e3))]

    def _set_params(self, x: np.ndarray) -> None:
        la, b, d, lt = (float(v) for v in x)
        self.params_ = {"a": float(np.exp(la)), "b": b, "d": d, "tau": float(np.exp(lt))}

    def _x(self) -> np.ndarray:
        p = self.params_
        return np.array([np.log(p["a"]), p["b"], p["d"], np.log(p["tau"])])

    def pool(self, size: float) -> Pool:
        """The fitted law as a ``Pool`` of ``size`` samples."""
        self._check_fitted()
        return Pool(size=size, **self.params_)

    def predict(self, n: ArrayLike, pool_size: float) -> np.ndarray:
        """Predicted error after ``n`` samples from a pool of ``pool_size``."""
        return mixed_error(n, [self.pool(pool_size)])
