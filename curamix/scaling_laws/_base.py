"""What every law shares: input checks, the robust multi-start fit, bootstrap intervals and
the identifiability verdict.

A law is a small estimator (``fit`` returns ``self``; learned values end in ``_``). Subclasses
give a parameter vector layout (``_names``), the objective on that vector with its gradient,
and a grid of starting points; this module runs L-BFGS-B from every start, keeps the best,
and refuses (``ScalingLawFitError``) rather than returning a fit that no start could make
converge or that has fewer points than parameters. ``bootstrap()`` refits resampled runs for
percentile intervals; ``identify()`` says whether the runs pin the parameters down
(:class:`Identification`), and decisions refuse a fit that is not identified.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike

Objective = Callable[[np.ndarray], tuple[float, np.ndarray]]


class ScalingLawFitError(RuntimeError):
    """A fit that cannot be trusted: too few points, or no start converged."""


class UnidentifiedFitError(ScalingLawFitError):
    """A decision was asked of a fit that is not identified, and no fallback is allowed."""


class NotFittedError(RuntimeError):
    """``predict`` or a decision was asked of a law before ``fit``."""


def check_positive(name: str, values: ArrayLike) -> np.ndarray:
    """Return ``values`` as a float array; raise naming ``name`` and the first bad entry."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    bad = ~np.isfinite(arr) | (arr <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} must be finite and > 0; entry {i} is {float(arr[i])!r} "
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


MAX_REL_WIDTH = 1.0
"""Default largest ``(hi - lo) / |estimate|`` of an identified parameter's interval."""
MAX_DECADES = 1.0
"""Default largest ``log10(hi / lo)`` of an identified scale parameter (``A``, ``B``, ...)."""
FLAT_TOL = 1e-6
"""A parameter whose unit change moves no fitted log-prediction by more than this has no
effect on the fit: the runs say nothing about it."""


@dataclass(frozen=True)
class Identification:
    """Whether a fit's parameters are pinned down by its runs, and the reasons when not.

    A fit can match its points and still say little about the law (Besiroglu et al. 2024,
    arXiv:2404.10102, on Hoffmann et al.'s approach 3): ``identified`` is true only when the
    runs span enough distinct values, no parameter sits on the search box, every parameter
    moves the fitted predictions, and every bootstrap interval is narrow enough.

    Attributes
    ----------
    identified : bool
    reasons : tuple of str
        Why not (empty when identified).
    n_points, n_params : int
    distinct : mapping
        Distinct values per input (``{"N": 3, "D": 3}`` for Chinchilla).
    rel_width : mapping
        ``(hi - lo) / |estimate|`` of each parameter's bootstrap interval.
    decades : mapping
        ``log10(hi / lo)`` of the scale parameters' intervals (judged on that scale).
    at_bounds : tuple of str
        Parameters on a bound of the optimiser's box.
    ci_level : float or None
        Level of the intervals (None: no bootstrap).
    n_boot : int
        Bootstrap refits that converged.
    """

    identified: bool
    reasons: tuple[str, ...]
    n_points: int
    n_params: int
    distinct: Mapping[str, int] = field(default_factory=dict)
    rel_width: Mapping[str, float] = field(default_factory=dict)
    decades: Mapping[str, float] = field(default_factory=dict)
    at_bounds: tuple[str, ...] = ()
    ci_level: float | None = None
    n_boot: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "identified": self.identified,
            "reasons": list(self.reasons),
            "n_points": self.n_points,
            "n_params": self.n_params,
            "distinct": dict(self.distinct),
            "rel_width": dict(self.rel_width),
            "decades": dict(self.decades),
            "at_bounds": list(self.at_bounds),
            "ci_level": self.ci_level,
            "n_boot": self.n_boot,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Identification:
        return cls(
            identified=bool(d["identified"]),
            reasons=tuple(d.get("reasons", ())),
            n_points=int(d.get("n_points", 0)),
            n_params=int(d.get("n_params", 0)),
            distinct=dict(d.get("distinct", {})),
            rel_width=dict(d.get("rel_width", {})),
            decades=dict(d.get("decades", {})),
            at_bounds=tuple(d.get("at_bounds", ())),
            ci_level=d.get("ci_level"),
            n_boot=int(d.get("n_boot", 0)),
        )


def _fmt(v: float) -> str:
    return f"{v:.3g}"


class ScalingLaw:
    """Shared ``fit``/``predict``/``bootstrap``/``identify`` plumbing; see the concrete laws."""

    _names: tuple[str, ...] = ()
    _public: ClassVar[Mapping[str, str]] = MappingProxyType({})
    """Internal parameter name -> public name (``a`` -> ``A``); identity when absent."""
    _log_scale: ClassVar[frozenset[str]] = frozenset()
    """Public parameters judged on the log scale (positive scales fitted as their log)."""

    params_: dict[str, float]
    params_ci_: dict[str, tuple[float, float]]
    params_boot_: np.ndarray
    ci_level_: float
    identification_: Identification
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

    def _log_predict(self, x: np.ndarray, data: dict[str, np.ndarray]) -> np.ndarray | None:
        """Fitted log-predictions at internal ``x`` (for the sensitivity check); None: skip."""
        return None

    def _distinct(self, data: dict[str, np.ndarray]) -> dict[str, int]:
        """Distinct values of each input the law needs several of."""
        return {}

    def _checks(self, data: dict[str, np.ndarray]) -> list[str]:
        """Law-specific reasons the fit is not identified (too few distinct sizes, ...)."""
        return []

    # --- shared ----------------------------------------------------------------------
    @property
    def n_params(self) -> int:
        return len(self._names)

    def _public_name(self, internal: str) -> str:
        return self._public.get(internal, internal)

    def _check_enough(self, n: int) -> None:
        if n <= self.n_params:
            names = ", ".join(self._public_name(k) for k in self._names)
            raise ScalingLawFitError(
                f"{type(self).__name__} has {self.n_params} parameters ({names}) and needs more "
                f"runs than that; got {n}"
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
        for attr in ("params_ci_", "params_boot_", "ci_level_", "n_boot_", "identification_"):
            if hasattr(self, attr):
                delattr(self, attr)

    def bootstrap(
        self, n_boot: int = 200, random_state: int | None = 0, level: float = 0.9
    ) -> dict[str, tuple[float, float]]:
        """Percentile intervals of each parameter over fits to runs resampled with replacement.

        Each resample is refitted from the full fit's solution (a local refit, as Besiroglu
        et al. 2024 do for approach 3), so it costs one optimisation per resample; seeded by
        ``random_state``. Sets ``params_ci_`` (at ``level``), ``params_boot_`` (one row of
        parameters per converged refit, ``params_`` order) and ``ci_level_``; returns the
        intervals. Raises ``ScalingLawFitError`` when fewer than half the refits converge.
        """
        self._check_fitted()
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level!r}")
        if n_boot < 1:
            raise ValueError(f"n_boot must be >= 1, got {n_boot!r}")
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
        self.params_boot_ = mat
        self.ci_level_ = level
        self.n_boot_ = len(draws)
        self.boot_random_state_ = random_state
        if hasattr(self, "identification_"):
            del self.identification_
        return self.params_ci_

    def _values_of(self, x: np.ndarray) -> list[float]:
        """The public parameter values (``params_`` order) for an internal vector ``x``."""
        saved = self._x()
        self._set_params(x)
        vals = list(self.params_.values())
        self._set_params(saved)
        return vals

    def _at_bounds(self) -> dict[str, str]:
        """Parameters on a bound of the optimiser's box -> how (for the reasons)."""
        bounds = self._bounds()
        if not bounds:
            return {}
        out = {}
        for name, v, (lo, hi) in zip(self._names, self._x(), bounds, strict=True):
            for b in (lo, hi):
                if b is not None and abs(v - b) <= 1e-6 * max(1.0, abs(b)):
                    pub = self._public_name(name)
                    how = f"{pub} = {self.params_[pub]:.3g}" if pub in self.params_ else pub
                    if pub != name:
                        how += f" ({name} = {_fmt(v)})"
                    out[pub] = f"{how} is on a bound of the optimiser's box"
        return out

    def _flat(self, data: dict[str, np.ndarray]) -> list[str]:
        """Parameters whose change moves no fitted prediction (central differences)."""
        x = self._x()
        if self._log_predict(x, data) is None:
            return []
        out = []
        with np.errstate(all="ignore"):
            for j, name in enumerate(self._names):
                h = 1e-4 * max(1.0, abs(x[j]))
                up, dn = x.copy(), x.copy()
                up[j] += h
                dn[j] -= h
                d = (self._log_predict(up, data) - self._log_predict(dn, data)) / (2 * h)
                if np.all(np.isfinite(d)) and np.max(np.abs(d)) < FLAT_TOL:
                    out.append(self._public_name(name))
        return out

    def _wrt(self, public: str) -> str:
        """How the fit parameterises ``public``: ``log A`` for a scale fitted as its log."""
        internal = next((k for k in self._names if self._public_name(k) == public), public)
        return public if internal == public else f"log {public}"

    def identify(
        self, max_rel_width: float = MAX_REL_WIDTH, max_decades: float = MAX_DECADES
    ) -> Identification:
        """Decide whether the fit is identified; sets and returns ``identification_``.

        Not identified when: no bootstrap was run (nothing proves it); the law's own checks
        fail (e.g. fewer than 3 distinct model sizes); a parameter sits on a bound of the
        optimiser's box; a parameter moves no fitted prediction by more than ``FLAT_TOL`` per
        unit (its term is negligible at every run); or an interval is too wide: wider than
        ``max_rel_width`` times the estimate, or, for the scale parameters in
        ``_log_scale``, more than ``max_decades`` decades.
        """
        self._check_fitted()
        data = self._fit_inputs_
        reasons = list(self._checks(data))
        at_bounds = self._at_bounds()
        reasons += list(at_bounds.values())
        reasons += [
            f"{p} has no effect on the fitted runs (|d log L / d {self._wrt(p)}| < {FLAT_TOL:g} "
            "at every run): the runs do not constrain it"
            for p in self._flat(data)
        ]
        rel: dict[str, float] = {}
        dec: dict[str, float] = {}
        ci = getattr(self, "params_ci_", None)
        if ci is None:
            reasons.append("no bootstrap intervals (n_boot = 0): identifiability not shown")
        else:
            pct = f"{self.ci_level_:.0%}"
            for k, (lo, hi) in ci.items():
                est = self.params_[k]
                rel[k] = (hi - lo) / abs(est) if est != 0 else math.inf
                if k in self._log_scale and lo > 0:
                    dec[k] = math.log10(hi / lo)
                    if dec[k] > max_decades:
                        reasons.append(
                            f"{k}: {pct} interval {_fmt(lo)} - {_fmt(hi)} spans "
                            f"{dec[k]:.2g} decades (> {max_decades:g})"
                        )
                elif rel[k] > max_rel_width:
                    reasons.append(
                        f"{k}: {pct} interval {_fmt(lo)} - {_fmt(hi)} is {rel[k]:.3g} times "
                        f"the estimate {_fmt(est)} (> {max_rel_width:g})"
                    )
        self.identification_ = Identification(
            identified=not reasons,
            reasons=tuple(dict.fromkeys(reasons)),
            n_points=self.n_points_,
            n_params=self.n_params,
            distinct=self._distinct(data),
            rel_width=rel,
            decades=dec,
            at_bounds=tuple(at_bounds),
            ci_level=getattr(self, "ci_level_", None),
            n_boot=getattr(self, "n_boot_", 0),
        )
        return self.identification_

    def to_dict(self, draws: bool = True) -> dict[str, Any]:
        """Parameters, intervals, bootstrap draws (when ``draws``), identification and fit
        diagnostics, JSON-ready; :meth:`load_state` reads it back."""
        self._check_fitted()
        out: dict[str, Any] = {
            "law": type(self).__name__,
            "params": self.params_,
            "n_points": getattr(self, "n_points_", 0),
            "n_converged": getattr(self, "n_converged_", 0),
            "n_starts": getattr(self, "n_starts_", 0),
            "objective": getattr(self, "objective_", None),
        }
        if hasattr(self, "params_ci_"):
            out["ci_level"] = self.ci_level_
            out["params_ci"] = {k: list(v) for k, v in self.params_ci_.items()}
            boot: dict[str, Any] = {
                "n_ok": int(getattr(self, "n_boot_", 0)),
                "random_state": getattr(self, "boot_random_state_", None),
            }
            if draws and hasattr(self, "params_boot_"):
                boot["draws"] = self.params_boot_.tolist()
            out["bootstrap"] = boot
        if hasattr(self, "identification_"):
            out["identification"] = self.identification_.to_dict()
        return out

    def load_state(self, d: Mapping[str, Any]) -> ScalingLaw:
        """Restore what :meth:`to_dict` wrote (parameters, intervals, draws, identification);
        returns ``self``. The runs themselves are not kept, so a loaded law cannot refit."""
        self.params_ = {k: float(v) for k, v in d["params"].items()}
        self.n_points_ = int(d.get("n_points", 0))
        self.n_converged_ = int(d.get("n_converged", 0))
        self.n_starts_ = int(d.get("n_starts", 0))
        obj = d.get("objective")
        self.objective_ = float("nan") if obj is None else float(obj)
        if "params_ci" in d:
            self.ci_level_ = float(d["ci_level"])
            self.params_ci_ = {k: (float(v[0]), float(v[1])) for k, v in d["params_ci"].items()}
            boot = d.get("bootstrap", {})
            self.n_boot_ = int(boot.get("n_ok", 0))
            self.boot_random_state_ = boot.get("random_state")
            draws = boot.get("draws")
            if draws:
                self.params_boot_ = np.asarray(draws, dtype=np.float64)
                self.n_boot_ = self.params_boot_.shape[0]
        if "identification" in d:
            self.identification_ = Identification.from_dict(d["identification"])
        return self


def as_columns(rows: Iterable[Mapping[str, Any]], names: Sequence[str]) -> list[np.ndarray]:
    rows = list(rows)
    return [np.array([r[n] for r in rows], dtype=np.float64) for n in names]
