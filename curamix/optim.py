"""Small numerical helpers shared by the mixers and the scaling laws."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

SimplexObjective = Callable[[np.ndarray], tuple[float, np.ndarray]]


def minimize_on_simplex(
    objective: SimplexObjective,
    starts: Sequence[np.ndarray],
    lo: np.ndarray,
    hi: np.ndarray,
) -> tuple[np.ndarray, float] | None:
    """Minimise ``objective(w) -> (value, gradient)`` over ``{w : sum w = 1, lo <= w <= hi}``.

    SLSQP from every start (clipped into the box and normalised); the best feasible result,
    clipped and renormalised against round-off, is returned as ``(w, value)``, or None when
    no start reached a feasible point. Runs on one BLAS thread (tiny dense algebra is much
    slower when OpenBLAS threads compete for a busy machine's cores).
    """
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    k = len(lo)
    cons = [{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(k)}]
    bounds = list(zip(lo, hi, strict=True))
    best: np.ndarray | None = None
    best_f = np.inf
    with threadpool_limits(limits=1):
        for w0 in starts:
            x0 = np.clip(np.asarray(w0, dtype=np.float64), lo, hi)
            if x0.sum() > 0:
                x0 = x0 / x0.sum()
            res = minimize(objective, x0, jac=True, method="SLSQP", bounds=bounds,
                           constraints=cons, options={"maxiter": 500, "ftol": 1e-12})  # fmt: skip
            w = np.clip(res.x, lo, hi)
            if abs(w.sum() - 1.0) > 1e-6:
                continue
            w = w / w.sum()
            f = objective(w)[0]
            if f < best_f:
                best, best_f = w, f
    return None if best is None else (best, float(best_f))
