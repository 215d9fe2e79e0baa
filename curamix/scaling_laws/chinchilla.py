"""Chinchilla's parametric loss law, fitted by approach 3.

``L(N, D) = E + A / N**alpha + B / D**beta``, fitted in log space: the Huber loss (delta 1e-3)
of ``LSE(a - alpha log N, b - beta log D, e) - log L`` summed over the points, minimised by
L-BFGS-B from a grid of starts, with ``A = exp(a)``, ``B = exp(b)``, ``E = exp(e)``.

References
----------
Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", arXiv:2203.15556.
Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt", arXiv:2404.10102
(the refit E=1.817, A=477.8, B=2143.9, alpha=0.347, beta=0.367 on the 245 published points).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike

from curamix.scaling_laws._base import (
    Objective,
    ScalingLaw,
    ScalingLawFitError,
    check_positive,
    check_same_length,
    grid_starts,
    huber,
)

PLAUSIBLE_EXPONENTS = (0.05, 1.5)
"""alpha and beta outside this range are not believed: published approach-3 fits give
0.28-0.37 (Hoffmann et al. 2022; Besiroglu et al. 2024)."""
MIN_DISTINCT = 3
"""Distinct model sizes (and token budgets) a fit needs before its terms are identified."""

# Epoch's grid (arXiv:2404.10102, their code): alpha, beta in 0..2, e in -1..1, a, b in 0..25:
# 4,500 starts, ~50 s on one core.
EPOCH_GRID: dict[str, Sequence[float]] = {
    "a": np.arange(0, 30, 5.0),
    "b": np.arange(0, 30, 5.0),
    "e": np.arange(-1, 1.5, 0.5),
    "alpha": np.arange(0, 2.5, 0.5),
    "beta": np.arange(0, 2.5, 0.5),
}
# The same ranges at 3 values each (243 starts, ~5 s): on the 240 Epoch points it lands on the
# same optimum as the full grid (tested), so it is the default; pass ``grid=EPOCH_GRID`` for more.
DEFAULT_GRID: dict[str, Sequence[float]] = {
    "a": [0.0, 12.5, 25.0],
    "b": [0.0, 12.5, 25.0],
    "e": [-1.0, 0.0, 1.0],
    "alpha": [0.0, 1.0, 2.0],
    "beta": [0.0, 1.0, 2.0],
}


def epoch_outlier_mask(loss: ArrayLike, n_excluded: int = 5) -> np.ndarray:
    """Epoch's protocol for the Chinchilla points: drop the ``n_excluded`` highest losses.

    Their refit (E=1.817, A=477.8, B=2143.9, alpha=0.347, beta=0.367) keeps the points with
    ``loss < sorted(loss)[-n_excluded]`` (240 of 245); the dropped ones are the far left of
    the paper's Figure 4, which a 5-parameter law cannot follow.
    """
    loss = np.asarray(loss, dtype=np.float64)
    if n_excluded <= 0:
        return np.ones(loss.shape, dtype=bool)
    return loss < np.sort(loss)[-n_excluded]


def chinchilla_loss(
    N: ArrayLike, D: ArrayLike, E: float, A: float, B: float, alpha: float, beta: float
) -> np.ndarray:
    """``E + A / N**alpha + B / D**beta``."""
    N = np.asarray(N, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    return E + A / N**alpha + B / D**beta


def optimal_allocation(
    C: ArrayLike, A: ArrayLike, B: ArrayLike, alpha: ArrayLike, beta: ArrayLike,
    flops_per_param_token: float = 6.0,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Loss-minimising ``(N_opt, D_opt)`` for compute ``C = 6 N D`` (broadcast over arrays of
    parameters, e.g. bootstrap draws).

    ``N_opt = G (C/6)^(beta/(alpha+beta))``, ``D_opt = (C/6) / N_opt`` with
    ``G = (alpha A / (beta B))^(1/(alpha+beta))`` (Hoffmann et al. 2022, eq. 4). ``E`` does
    not enter. Needs ``alpha, beta > 0``.
    """
    A, B = np.asarray(A, dtype=np.float64), np.asarray(B, dtype=np.float64)
    alpha, beta = np.asarray(alpha, dtype=np.float64), np.asarray(beta, dtype=np.float64)
    c6 = np.asarray(C, dtype=np.float64) / flops_per_param_token
    with np.errstate(all="ignore"):
        G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
        n_opt = G * c6 ** (beta / (alpha + beta))
    return n_opt, c6 / n_opt


def _lse3_predict(x: np.ndarray, logN: np.ndarray, logD: np.ndarray) -> np.ndarray:
    a, b, e, alpha, beta = x
    z = np.stack([a - alpha * logN, b - beta * logD, np.full_like(logN, e)])
    m = z.max(axis=0)
    return m + np.log(np.exp(z - m).sum(axis=0))


def _lse3_objective(
    logN: np.ndarray, logD: np.ndarray, logL: np.ndarray, delta: float
) -> Objective:
    def f(x: np.ndarray) -> tuple[float, np.ndarray]:
        a, b, e, alpha, beta = x
        z = np.stack([a - alpha * logN, b - beta * logD, np.full_like(logN, e)])
        m = z.max(axis=0)
        ez = np.exp(z - m)
        s = ez.sum(axis=0)
        pred = m + np.log(s)
        w = ez / s
        loss, dl = huber(pred - logL, delta)
        g = np.array(
            [
                (dl * w[0]).sum(),
                (dl * w[1]).sum(),
                (dl * w[2]).sum(),
                -(dl * w[0] * logN).sum(),
                -(dl * w[1] * logD).sum(),
            ]
        )
        # Divided by delta so that gradients are O(1) per point: with the raw sum (~1e-3) the
        # optimiser's absolute gradient tolerance stops bootstrap refits at their start.
        return float(loss.sum()) / delta, g / delta

    return f


class ChinchillaLaw(ScalingLaw):
    """Chinchilla approach 3: ``L = E + A/N^alpha + B/D^beta``.

    Parameters
    ----------
    huber_delta : float
        Huber threshold on log-loss residuals (1e-3 as in the paper).
    grid : mapping or None
        Start values per internal parameter (``a``, ``b``, ``e``, ``alpha``, ``beta``), whose
        Cartesian product seeds L-BFGS-B; default 3 values per parameter over Epoch's
        ranges (243 starts); ``EPOCH_GRID`` is their full 4,500-start grid.
    maxiter : int
        L-BFGS-B iterations per start.

    Attributes
    ----------
    params_ : dict
        ``E``, ``A``, ``B``, ``alpha``, ``beta``.
    params_ci_, params_boot_ : dict, ndarray
        Bootstrap intervals (at ``ci_level_``) and draws, after ``bootstrap()``.
    identification_ : Identification
        After ``identify()``: whether the runs pin the parameters down, and why not.
    fit_range_ : dict
        ``[min, max]`` of the fitted runs' ``n_params``, ``tokens`` and ``compute`` (6ND):
        what a decision extrapolates from.
    n_converged_, n_starts_ : int
        How many starts converged (the best converged one is kept).

    Notes
    -----
    ``N`` is the parameter count and ``D`` the training tokens; when only compute is known,
    use ``D = C / (6 N)``. Points with ``N``, ``D`` or loss <= 0 or NaN are rejected (not
    dropped), and so are runs with a single distinct ``N`` or ``D`` (a term that cannot be
    fitted at all); with fewer than 3 distinct values the fit is made but not identified.
    """

    _names = ("a", "b", "e", "alpha", "beta")
    _public: ClassVar[dict[str, str]] = {"a": "A", "b": "B", "e": "E"}
    _log_scale = frozenset({"A", "B"})

    def __init__(
        self,
        huber_delta: float = 1e-3,
        grid: Mapping[str, Sequence[float]] | None = None,
        maxiter: int = 1000,
    ):
        self.huber_delta = huber_delta
        self.grid = grid
        self.maxiter = maxiter

    @classmethod
    def from_params(cls, params: Mapping[str, float]) -> ChinchillaLaw:
        """A law with given ``E``, ``A``, ``B``, ``alpha``, ``beta`` (published or saved)."""
        missing = {"E", "A", "B", "alpha", "beta"} - set(params)
        if missing:
            raise ValueError(f"Chinchilla parameters lack {sorted(missing)}; got {dict(params)}")
        law = cls()
        law.params_ = {k: float(params[k]) for k in ("E", "A", "B", "alpha", "beta")}
        return law

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChinchillaLaw:
        """A law from :meth:`to_dict` output (``fits.json``): parameters, intervals,
        bootstrap draws, identification and the fitted runs' range."""
        law = cls.from_params(d["params"])
        law.load_state(d)
        if d.get("fit_range"):
            law.fit_range_ = {k: (float(v[0]), float(v[1])) for k, v in d["fit_range"].items()}
        return law

    def fit(self, N: ArrayLike, D: ArrayLike, loss: ArrayLike) -> ChinchillaLaw:
        N = check_positive("N", N)
        D = check_positive("D", D)
        loss = check_positive("loss", loss)
        check_same_length(N=N, D=D, loss=loss)
        for name, v, term in (("N", N, "A/N^alpha"), ("D", D, "B/D^beta")):
            if len(np.unique(v)) == 1:
                raise ScalingLawFitError(
                    f"{name} has one distinct value ({v[0]:.6g}) in all {v.size} runs: the "
                    f"{term} term cannot be fitted; sweep at least {MIN_DISTINCT} values of {name}"
                )
        self._fit_data({"logN": np.log(N), "logD": np.log(D), "logL": np.log(loss)})
        C = 6.0 * N * D
        self.fit_range_ = {
            "n_params": (float(N.min()), float(N.max())),
            "tokens": (float(D.min()), float(D.max())),
            "compute": (float(C.min()), float(C.max())),
        }
        return self

    def _log_predict(self, x: np.ndarray, data: dict[str, np.ndarray]) -> np.ndarray:
        return _lse3_predict(x, data["logN"], data["logD"])

    def _distinct(self, data: dict[str, np.ndarray]) -> dict[str, int]:
        return {"N": len(np.unique(data["logN"])), "D": len(np.unique(data["logD"]))}

    def _checks(self, data: dict[str, np.ndarray]) -> list[str]:
        out = []
        for name, k, term in (("N", "logN", "A and alpha"), ("D", "logD", "B and beta")):
            vals = np.unique(np.exp(data[k]))
            if len(vals) < MIN_DISTINCT:
                shown = ", ".join(f"{v:.4g}" for v in vals)
                out.append(
                    f"only {len(vals)} distinct {name} values ({shown}): {term} are not "
                    f"identified (sweep at least {MIN_DISTINCT})"
                )
        lo, hi = PLAUSIBLE_EXPONENTS
        for k, what in (("alpha", "model sizes"), ("beta", "token budgets")):
            v = self.params_[k]
            if not lo <= v <= hi:
                out.append(
                    f"{k} = {v:.3g} is outside {lo:g}-{hi:g} (published fits: 0.28-0.37); the "
                    f"runs probably do not span enough {what} for this term"
                )
        return out

    def to_dict(self, draws: bool = True) -> dict[str, Any]:
        out = super().to_dict(draws)
        if hasattr(self, "fit_range_"):
            out["fit_range"] = {k: list(v) for k, v in self.fit_range_.items()}
        return out

    def _objective(self, data: dict[str, np.ndarray]) -> Objective:
        return _lse3_objective(data["logN"], data["logD"], data["logL"], self.huber_delta)

    def _starts(self, data: dict[str, np.ndarray]) -> np.ndarray:
        return grid_starts(self.grid or DEFAULT_GRID, self._names)

    def _bounds(self) -> list[tuple[float | None, float | None]]:
        # Generous boxes (published exponents are 0.2-0.6) that keep A, B, E finite: without
        # them an unidentified term drifts until exp(a) overflows and predictions are NaN.
        return [(-50.0, 100.0), (-50.0, 100.0), (-20.0, 20.0), (0.0, 5.0), (0.0, 5.0)]

    def _set_params(self, x: np.ndarray) -> None:
        a, b, e, alpha, beta = (float(v) for v in x)
        self.params_ = {
            "E": float(np.exp(e)),
            "A": float(np.exp(a)),
            "B": float(np.exp(b)),
            "alpha": alpha,
            "beta": beta,
        }

    def _x(self) -> np.ndarray:
        p = self.params_
        return np.array([np.log(p["A"]), np.log(p["B"]), np.log(p["E"]), p["alpha"], p["beta"]])

    def predict(self, N: ArrayLike, D: ArrayLike) -> np.ndarray:
        """Predicted loss at parameters ``N`` and tokens ``D`` (broadcast)."""
        self._check_fitted()
        return chinchilla_loss(
            check_positive("N", N).reshape(np.shape(N)),
            check_positive("D", D).reshape(np.shape(D)),
            **self.params_,
        )

    def compute_optimal(self, C: ArrayLike, flops_per_param_token: float = 6.0) -> tuple:
        """Loss-minimising ``(N_opt, D_opt)`` for compute ``C = 6 N D``.

        ``N_opt = G (C/6)^(beta/(alpha+beta))``, ``D_opt = G^-1 (C/6)^(alpha/(alpha+beta))``
        with ``G = (alpha A / (beta B))^(1/(alpha+beta))`` (Hoffmann et al. 2022, eq. 4).
        """
        self._check_fitted()
        p = self.params_
        C = check_positive("C", C)
        if p["alpha"] <= 0 or p["beta"] <= 0:
            raise ValueError(f"compute-optimal allocation needs alpha, beta > 0; got {p}")
        n_opt, d_opt = optimal_allocation(
            C, p["A"], p["B"], p["alpha"], p["beta"], flops_per_param_token
        )
        if n_opt.size == 1:
            return float(n_opt[0]), float(d_opt[0])
        return n_opt, d_opt
