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
    params_ci_ : dict
        95% bootstrap intervals, after ``bootstrap()``.
    n_converged_, n_starts_ : int
        How many starts converged (the best converged one is kept).

    Notes
    -----
    ``N`` is the parameter count and ``D`` the training tokens; when only compute is known,
    use ``D = C / (6 N)``. Points with ``N``, ``D`` or loss <= 0 are rejected (not dropped).
    """

    _names = ("a", "b", "e", "alpha", "beta")

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

    def fit(self, N: ArrayLike, D: ArrayLike, loss: ArrayLike) -> ChinchillaLaw:
        N = check_positive("N", N)
        D = check_positive("D", D)
        loss = check_positive("loss", loss)
        check_same_length(N=N, D=D, loss=loss)
        self._fit_data({"logN": np.log(N), "logD": np.log(D), "logL": np.log(loss)})
        return self

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
        alpha, beta = p["alpha"], p["beta"]
        if alpha <= 0 or beta <= 0:
            raise ValueError(f"compute-optimal allocation needs alpha, beta > 0; got {p}")
        G = (alpha * p["A"] / (beta * p["B"])) ** (1 / (alpha + beta))
        c6 = C / flops_per_param_token
        n_opt = G * c6 ** (beta / (alpha + beta))
        d_opt = c6 / n_opt
        if n_opt.size == 1:
            return float(n_opt[0]), float(d_opt[0])
        return n_opt, d_opt
