"""Data mixing laws: a domain's loss as a function of the training mixture, and its optimum.

``L_i(r) = c_i + k_i exp(sum_j t_ij r_j)`` for each validation domain (or target) ``i``,
fitted with the Huber loss (delta 0.01) by L-BFGS-B from many starts; the mixture minimising
a weighted sum of the predicted losses is found on the simplex, within per-domain caps
(availability: a domain cannot be drawn more than its unique tokens times the allowed epochs).

References
----------
Ye et al. 2024, "Data Mixing Laws: Optimizing Data Mixtures by Predicting Language Modeling
Performance", arXiv:2403.16952.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from curamix.optim import minimize_on_simplex
from curamix.scaling_laws._base import (
    MAX_DECADES,
    MAX_REL_WIDTH,
    Identification,
    NotFittedError,
    ScalingLawFitError,
    check_positive,
    huber,
    multistart_lbfgsb,
)


def _check_mixtures(R: ArrayLike, name: str = "R") -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (runs x domains), got shape {R.shape}")
    if not np.isfinite(R).all() or (R < 0).any():
        i = int(np.flatnonzero((~np.isfinite(R) | (R < 0)).any(axis=1))[0])
        raise ValueError(f"{name} row {i} has a negative or non-finite weight: {R[i].tolist()}")
    sums = R.sum(axis=1)
    dev = np.abs(sums - 1.0)
    bad = np.flatnonzero(dev > 0.01)
    if bad.size:
        raise ValueError(
            f"{name} rows must sum to 1; row {int(bad[0])} sums to {sums[bad[0]]:.6g} "
            f"({bad.size} such rows)"
        )
    if dev.max() > 1e-9:
        warnings.warn(
            f"{name}: renormalized {int((dev > 1e-9).sum())} rows whose sums deviate from 1 by "
            f"up to {dev.max():.3g} (rounded weights)",
            stacklevel=3,
        )
        R = R / sums[:, None]
    return R


class MixingLaw:
    """``L_i(r) = c_i + k_i exp(t_i . r)`` for one or more targets.

    Parameters
    ----------
    huber_delta : float
        Huber threshold on loss residuals (0.01 as in the paper).
    n_starts : int
        Random starts per target (plus one from ``t = 0``).
    random_state : int or None
        Seeds the random starts (resolved at fit time).

    Attributes
    ----------
    c_, k_ : ndarray (n_targets,)
        ``t_`` is reported centred (each row has mean 0): as mixtures sum to 1, ``(k, t)``
        and ``(k e^s, t - s)`` are the same law.
    t_ : ndarray (n_targets, n_domains)
    domains_, targets_ : list of str
    """

    def __init__(self, huber_delta: float = 0.01, n_starts: int = 20,
                 random_state: int | None = 0, maxiter: int = 2000):  # fmt: skip
        self.huber_delta = huber_delta
        self.n_starts = n_starts
        self.random_state = random_state
        self.maxiter = maxiter

    def fit(
        self,
        R: ArrayLike,
        L: ArrayLike,
        domains: Sequence[str] | None = None,
        targets: Sequence[str] | None = None,
    ) -> MixingLaw:
        R = _check_mixtures(R)
        L = np.asarray(L, dtype=np.float64)
        L2 = L[:, None] if L.ndim == 1 else L
        if L2.shape[0] != R.shape[0]:
            raise ValueError(f"R has {R.shape[0]} runs but L has {L2.shape[0]}")
        check_positive("L", L2)
        n, m = R.shape
        if n <= m + 2:
            raise ScalingLawFitError(
                f"the mixing law has {m + 2} parameters per target and needs more runs; got {n}"
            )
        rng = np.random.default_rng(self.random_state)
        self.domains_ = list(domains) if domains is not None else [f"d{j}" for j in range(m)]
        self.targets_ = (
            list(targets) if targets is not None else [f"t{i}" for i in range(L2.shape[1])]
        )
        if len(self.domains_) != m or len(self.targets_) != L2.shape[1]:
            raise ValueError("domains/targets do not match the shapes of R and L")
        c, k, t, conv = [], [], [], []
        for i in range(L2.shape[1]):
            y = L2[:, i]
            ymin = float(y.min())
            starts = [np.r_[0.5 * ymin, np.log(0.5 * ymin), np.zeros(m)]]
            for _ in range(self.n_starts):
                c0 = rng.uniform(0.0, 0.9 * ymin)
                starts.append(np.r_[c0, np.log(max(ymin - c0, 1e-3)), rng.normal(0, 1.0, m)])
            x, n_ok = self._fit_one(R, y, np.array(starts))
            c.append(x[0])
            k.append(np.exp(x[1]))
            t.append(x[2:])
            conv.append(n_ok)
        self.c_, self.k_, self.t_ = np.array(c), np.array(k), np.array(t)
        self.n_converged_ = conv
        self._fit_inputs_ = (R, L2)
        for attr in ("params_ci_", "ci_level_", "n_boot_", "identification_"):
            if hasattr(self, attr):
                delattr(self, attr)
        return self

    def _fit_one(
        self, R: np.ndarray, y: np.ndarray, starts: np.ndarray, gtol: float = 1e-5
    ) -> tuple[np.ndarray, int]:
        """Best ``(c, log k, t)`` from ``starts``, in the canonical form (``t`` centred).

        Bootstrap refits start at the optimum of nearby data, where the default gradient
        tolerance would stop them at once: they pass a tight ``gtol``.
        """
        m = R.shape[1]
        delta = self.huber_delta

        def f(x: np.ndarray) -> tuple[float, np.ndarray]:
            ci, lk, ti = x[0], x[1], x[2:]
            ex = np.exp(lk + R @ ti)
            loss, dl = huber(ci + ex - y, delta)
            g = np.r_[dl.sum(), (dl * ex).sum(), R.T @ (dl * ex)]
            return float(loss.sum()) / delta, g / delta

        x, _, n_ok, _ = multistart_lbfgsb(
            f, starts, bounds=[(0.0, None), (None, None)] + [(-50, 50)] * m,
            maxiter=self.maxiter, gtol=gtol, ftol=min(2.2e-9, gtol),
        )  # fmt: skip
        # Mixtures sum to 1, so (k, t) and (k e^s, t - s) give the same law: report the
        # canonical form with mean_j t_ij = 0.
        shift = float(x[2:].mean())
        return np.r_[x[0], x[1] + shift, x[2:] - shift], n_ok

    def bootstrap(
        self, n_boot: int = 200, random_state: int | None = 0, level: float = 0.9
    ) -> dict[str, dict]:
        """Percentile intervals of ``c``, ``k`` and each ``t_j`` per target over refits to
        resampled runs (each refit starts from the full fit; seeded by ``random_state``).
        Sets ``params_ci_`` and ``ci_level_``."""
        self._check_fitted()
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level!r}")
        R, L2 = self._fit_inputs_
        rng = np.random.default_rng(random_state)
        lo_q, hi_q = (1 - level) / 2 * 100, (1 + level) / 2 * 100
        out: dict[str, dict] = {}
        for i, tgt in enumerate(self.targets_):
            x_hat = np.r_[self.c_[i], np.log(self.k_[i]), self.t_[i]]
            draws = []
            for _ in range(n_boot):
                idx = rng.integers(0, len(R), size=len(R))
                try:
                    draws.append(self._fit_one(R[idx], L2[idx, i], x_hat[None, :], gtol=1e-12)[0])
                except ScalingLawFitError:
                    continue
            if len(draws) < max(10, n_boot // 2):
                raise ScalingLawFitError(
                    f"only {len(draws)} of {n_boot} bootstrap refits converged for {tgt!r}"
                )
            d = np.array(draws)
            d[:, 1] = np.exp(d[:, 1])
            lo, hi = np.percentile(d, lo_q, axis=0), np.percentile(d, hi_q, axis=0)
            out[tgt] = {
                "c": (float(lo[0]), float(hi[0])),
                "k": (float(lo[1]), float(hi[1])),
                "t": {dom: (float(lo[2 + j]), float(hi[2 + j]))
                      for j, dom in enumerate(self.domains_)},
            }  # fmt: skip
        self.params_ci_ = out
        self.ci_level_ = level
        self.n_boot_ = n_boot
        if hasattr(self, "identification_"):
            del self.identification_
        return out

    def identify(
        self, max_rel_width: float = MAX_REL_WIDTH, max_decades: float = MAX_DECADES
    ) -> Identification:
        """Whether the runs pin the law down; sets and returns ``identification_``.

        Per target: ``c`` within ``max_rel_width`` of its estimate, ``k`` within
        ``max_decades``, and each ``t_j``'s interval narrower than ``max_rel_width`` times the
        spread of the target's ``t`` (``t`` is centred, so a domain's own ``t_j`` may be 0);
        no parameter on the optimiser's bounds (``c = 0``, ``|t| = 50``). Without
        ``bootstrap()`` nothing is shown and the law is not identified.
        """
        self._check_fitted()
        R, _ = self._fit_inputs_
        reasons: list[str] = []
        rel: dict[str, float] = {}
        dec: dict[str, float] = {}
        at_bounds = []
        for i, tgt in enumerate(self.targets_):
            if self.c_[i] <= 1e-9:
                at_bounds.append(f"{tgt}.c")
            for j, dom in enumerate(self.domains_):
                if abs(self.t_[i, j] - self.t_[i].mean()) >= 49.0:
                    at_bounds.append(f"{tgt}.t[{dom}]")
        reasons += [f"{b} is on a bound of the optimiser's box" for b in at_bounds]
        ci = getattr(self, "params_ci_", None)
        if ci is None:
            reasons.append("no bootstrap intervals (n_boot = 0): identifiability not shown")
        else:
            pct = f"{self.ci_level_:.0%}"
            for i, tgt in enumerate(self.targets_):
                lo, hi = ci[tgt]["c"]
                rel[f"{tgt}.c"] = (hi - lo) / self.c_[i] if self.c_[i] > 0 else float("inf")
                if rel[f"{tgt}.c"] > max_rel_width:
                    reasons.append(f"{tgt}.c: {pct} interval {lo:.3g} - {hi:.3g} is "
                                   f"{rel[f'{tgt}.c']:.3g} times the estimate {self.c_[i]:.3g}")  # fmt: skip
                lo, hi = ci[tgt]["k"]
                dec[f"{tgt}.k"] = float(np.log10(hi / lo)) if lo > 0 else float("inf")
                if dec[f"{tgt}.k"] > max_decades:
                    reasons.append(f"{tgt}.k: {pct} interval {lo:.3g} - {hi:.3g} spans "
                                   f"{dec[f'{tgt}.k']:.2g} decades")  # fmt: skip
                spread = float(np.ptp(self.t_[i]))
                for dom, (lo, hi) in ci[tgt]["t"].items():
                    key = f"{tgt}.t[{dom}]"
                    rel[key] = (hi - lo) / spread if spread > 0 else float("inf")
                    if rel[key] > max_rel_width:
                        reasons.append(f"{key}: {pct} interval {lo:.3g} - {hi:.3g} is wider "
                                       f"than {max_rel_width:g} x the spread of t ({spread:.3g})")  # fmt: skip
        self.identification_ = Identification(
            identified=not reasons,
            reasons=tuple(reasons),
            n_points=len(R),
            n_params=len(self.targets_) * (len(self.domains_) + 2),
            distinct={"mixtures": len(np.unique(np.round(R, 12), axis=0))},
            rel_width=rel,
            decades=dec,
            at_bounds=tuple(at_bounds),
            ci_level=getattr(self, "ci_level_", None),
            n_boot=getattr(self, "n_boot_", 0),
        )
        return self.identification_

    def _check_fitted(self) -> None:
        if not hasattr(self, "t_"):
            raise NotFittedError("MixingLaw is not fitted; call fit() first")

    @property
    def params_(self) -> dict[str, dict]:
        self._check_fitted()
        return {
            tgt: {"c": float(self.c_[i]), "k": float(self.k_[i]),
                  "t": dict(zip(self.domains_, map(float, self.t_[i]), strict=True))}
            for i, tgt in enumerate(self.targets_)
        }  # fmt: skip

    def predict(self, R: ArrayLike) -> np.ndarray:
        """Predicted losses, shape (n_runs, n_targets) (1-D when fitted on one target)."""
        self._check_fitted()
        R = np.atleast_2d(np.asarray(R, dtype=np.float64))
        if R.shape[1] != len(self.domains_):
            raise ValueError(f"R has {R.shape[1]} domains, the law {len(self.domains_)}")
        out = self.c_ + self.k_ * np.exp(R @ self.t_.T)
        return out[:, 0] if out.shape[1] == 1 else out

    def optimize(
        self,
        target_weights: Mapping[str, float] | None = None,
        caps: Mapping[str, float] | None = None,
        floor: Mapping[str, float] | None = None,
        n_starts: int = 20,
        random_state: int | None = 0,
    ) -> tuple[dict[str, float], float]:
        """The mixture minimising ``sum_i w_i L_i(r)`` on the simplex, within ``floor <= r <= caps``.

        ``caps`` (per domain, in [0, 1]) expresses availability and repetition limits, e.g.
        ``unique_tokens * max_epochs / budget_tokens``. Returns ``(mixture, predicted)``;
        raises ``ValueError`` when the caps and floors admit no mixture.
        """
        self._check_fitted()
        m = len(self.domains_)
        w = np.ones(len(self.targets_)) if target_weights is None else np.array(
            [float(target_weights.get(t, 0.0)) for t in self.targets_]
        )  # fmt: skip
        if target_weights is not None:
            unknown = set(target_weights) - set(self.targets_)
            if unknown:
                raise ValueError(f"unknown targets {sorted(unknown)}; known {self.targets_}")
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"target weights must be >= 0 with a positive sum, got {w}")
        w = w / w.sum()
        hi = np.ones(m)
        lo = np.zeros(m)
        for name, vals, arr in (("caps", caps, hi), ("floor", floor, lo)):
            for d, v in (vals or {}).items():
                if d not in self.domains_:
                    raise ValueError(f"{name}: unknown domain {d!r}; known {self.domains_}")
                arr[self.domains_.index(d)] = float(v)
        hi = np.clip(hi, 0.0, 1.0)
        if hi.sum() < 1.0 - 1e-9 or lo.sum() > 1.0 + 1e-9 or (lo > hi).any():
            raise ValueError(
                f"no mixture satisfies the caps (sum {hi.sum():.4g}) and floors "
                f"(sum {lo.sum():.4g}); raise the caps or lower the floors"
            )

        def obj(r: np.ndarray) -> tuple[float, np.ndarray]:
            ex = self.k_ * np.exp(self.t_ @ r)
            return float(w @ (self.c_ + ex)), (w * ex) @ self.t_

        rng = np.random.default_rng(random_state)
        starts = [np.clip(np.full(m, 1.0 / m), lo, hi)]
        starts += [np.clip(rng.dirichlet(np.ones(m)), lo, hi) for _ in range(n_starts)]
        found = minimize_on_simplex(obj, starts, lo, hi)
        if found is None:
            raise ScalingLawFitError("the mixture optimiser found no feasible point")
        best_r, best_f = found
        return dict(zip(self.domains_, map(float, best_r), strict=True)), best_f
