"""What every law shares: input checks, the robust multi-start fit, bootstrap intervals.

A law is a small estimator (``fit`` returns ``self``; learned values end in ``_``). Subclasses
give a parameter vector layout (``_names``), the objective on that vector with its gradient,
and a grid of starting points; this module runs L-BFGS-B from every start, keeps the best,
and refuses (``ScalingLawFitError``) rather than returning a fit that no start could make
converge or that has fewer points than parameters.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

Objective = Callable[[np.ndarray], tuple[float, np.ndarray]]


class ScalingLawFitError(RuntimeError):
    """A fit that cannot be trusted: too few points, or no start converged."""


class NotFittedError(RuntimeError):
    """``predict`` or a decision was asked of a law before ``fit``."""


def check_positive(name: str, values: ArrayLike) -> np.ndarray:
    """Return ``values`` as a float array; raise naming ``name`` and the first bad entry."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    bad = ~np.isfinite(arr) | (arr <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} must be finite and > 0; entry {i} is {arr[i]!r} "
            f"({int(bad.sum())} bad of {arr.size})"
        )
    return arr


def check_same_length(**arrays: np.ndarray) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"inputs differ in length: {lengths}")
    return next(iter(lengths.values()))


def huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of residuals ``r`` and its derivative (torch's convention: 0.5 r^2 inside)."""
    a = np.abs(r)
    inside = a <= delta
    loss = np.where(inside, 0.5 * r * r, delta * (a - 0.5 * delta))
    grad = np.where(inside, r, delta * np.sign(r))
    return loss, grad


def grid_starts(axes: Mapping[str, Sequence[float]], names: Sequence[str]) -> np.ndarray:
    """The Cartesian product of per-parameter start values, as rows in ``names`` order."""
    mesh = np.meshgrid(*[np.asarray(axes[n], dtype=np.float64) for n in names], indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], axis=1)


def multistart_lbfgsb(
    objective: Objective,
    starts: np.ndarray,
    bounds: Sequence[tuple[float | None, float | None]] | None = None,
    maxiter: int = 1000,
    gtol: float = 1e-5,
    ftol: float = 2.2e-9,
) -> tuple[np.ndarray, float, int, int]:
    """Minimise ``objective`` from every row of ``starts`` with L-BFGS-B.

    ``objective(x)`` returns ``(value, gradient)``, or only the value when the function has
    an attribute ``has_grad = False`` (then gradients are finite differences).

    Returns ``(best_x, best_value, n_converged, n_starts)``; ``best`` is taken over the
    starts whose optimiser reported success and whose value is finite. Raises
    ``ScalingLawFitError`` when none did.
    """
    from scipy.optimize import minimize

    best_x: np.ndarray | None = None
    best_f = math.inf
    n_ok = 0
    from threadpoolctl import threadpool_limits

    jac = getattr(objective, "has_grad", True)
    # One BLAS thread: L-BFGS-B's tiny dense algebra is 5-10x slower when OpenBLAS threads
    # spin for cores another process is using (measured on a busy 2-core machine).
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", RuntimeWarning)
        for x0 in starts:
            res = minimize(
                objective, x0, jac=jac, method="L-BFGS-B", bounds=bounds,
                options={"maxiter": maxiter, "gtol": gtol, "ftol": ftol},
            )  # fmt: skip
            if not (res.success and np.isfinite(res.fun) and np.all(np.isfinite(res.x))):
                continue
            n_ok += 1
            if res.fun < best_f:
                best_f, best_x = float(res.fun), np.asarray(res.x, dtype=np.float64)
    if best_x is None:
        raise ScalingLawFitError(
            f"the fit did not converge from any of {len(starts)} starting points; "
            "check the inputs (units, outliers) or widen the start grid"
        )
    return best_x, best_f, n_ok, len(starts)


class ScalingLaw:
    """Shared ``fit``/``predict``/``bootstrap`` plumbing; see the concrete laws."""

    _names: tuple[str, ...] = ()

    params_: dict[str, float]
    params_ci_: dict[str, tuple[float, float]]
    n_points_: int
    n_converged_: int
    n_starts_: int
    objective_: float

    # --- to provide -----------------------------------------------------------------
    def _objective(self, data: dict[str, np.ndarray]) -> Objective:  # pragma: no cover
        raise NotImplementedError

    def _starts(self, data: dict[str, np.ndarray]) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _bounds(self) -> list[tuple[float | None, float | None]] | None:
        return None

    def _set_params(self, x: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _x(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    # --- shared ----------------------------------------------------------------------
    @property
    def n_params(self) -> int:
        return len(self._names)

    def _check_enough(self, n: int) -> None:
        if n <= self.n_params:
            raise ScalingLawFitError(
                f"{type(self).__name__} has {self.n_params} parameters and needs more points "
                f"than that; got {n}"
            )

    def _check_fitted(self) -> None:
        if not hasattr(self, "params_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() first")

    def _solve(
        self, data: dict[str, np.ndarray], starts: np.ndarray | None = None
    ) -> tuple[np.ndarray, float, int, int]:
        return multistart_lbfgsb(
            self._objective(data),
            self._starts(data) if starts is None else starts,
            self._bounds(),
            maxiter=getattr(self, "maxiter", 1000),
        )

    def _fit_data(self, data: dict[str, np.ndarray]) -> None:
        """Solve from the full start grid and store the result and diagnostics."""
        n = len(next(iter(data.values())))
        self._check_enough(n)
        x, f, n_ok, n_starts = self._solve(data)
        self._fit_inputs_ = data
        self.n_points_ = n
        self.n_converged_ = n_ok
        self.n_starts_ = n_starts
        self.objective_ = f
        self._set_params(x)
        if hasattr(self, "params_ci_"):
            del self.params_ci_

    def bootstrap(
        self, n_boot: int = 200, random_state: int | None = 0, level: float = 0.95
    ) -> dict[str, tuple[float, float]]:
        """Percentile intervals of each parameter over fits to resampled points.

        Each resample is refitted from the full fit's solution (a local refit, as is usual
        for bootstrapping these laws), so it costs one optimisation per resample. Sets and
        returns ``params_ci_``.
        """
        self._check_fitted()
        data = self._fit_inputs_
        n = len(next(iter(data.values())))
        rng = np.random.default_rng(random_state)
        x_hat = self._x()
        draws = []
        saved = dict(self.params_)
        for _ in range(n_boot):
            idx = rng.integers(0, n, size=n)
            sub = {k: v[idx] for k, v in data.items()}
            try:
                draws.append(self._solve(sub, starts=x_hat[None, :])[0])
            except ScalingLawFitError:
                continue
        self._set_params(x_hat)
        assert self.params_ == saved
        if len(draws) < max(10, n_boot // 2):
            raise ScalingLawFitError(
                f"only {len(draws)} of {n_boot} bootstrap refits converged; intervals unusable"
            )
        mat = np.array([self._values_of(x) for x in draws])
        lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
        self.params_ci_ = {
            name: (float(np.percentile(mat[:, j], lo)), float(np.percentile(mat[:, j], hi)))
            for j, name in enumerate(self.params_)
        }
        self.n_boot_ = len(draws)
        return self.params_ci_

    def _values_of(self, x: np.ndarray) -> list[float]:
        """The public parameter values (``params_`` order) for an internal vector ``x``."""
        saved = self._x()
        self._set_params(x)
        vals = list(self.params_.values())
        self._set_params(saved)
        return vals

    def to_dict(self) -> dict[str, Any]:
        """Parameters, intervals and fit diagnostics, JSON-ready."""
        self._check_fitted()
        out: dict[str, Any] = {
            "law": type(self).__name__,
            "params": self.params_,
            "n_points": self.n_points_,
            "n_converged": self.n_converged_,
            "n_starts": self.n_starts_,
            "objective": self.objective_,
        }
        if hasattr(self, "params_ci_"):
            out["params_ci95"] = {k: list(v) for k, v in self.params_ci_.items()}
        return out


def as_columns(rows: Iterable[Mapping[str, Any]], names: Sequence[str]) -> list[np.ndarray]:
    rows = list(rows)
    return [np.array([r[n] for r in rows], dtype=np.float64) for n in names]
