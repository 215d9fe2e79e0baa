"""The data-constrained scaling law: Chinchilla's form with repeated data discounted.

With ``U_D`` unique tokens seen ``D / U_D`` times, the repetitions ``R_D = max(D/U_D - 1, 0)``
are worth ``D' = U_D + U_D R_D* (1 - exp(-R_D / R_D*))`` fresh tokens; parameters beyond the
compute-optimal size for ``U_D`` decay the same way with ``R_N*``, and
``L = E + A / N'^alpha + B / D'^beta``.

References
----------
Muennighoff et al. 2023, "Scaling Data-Constrained Language Models", arXiv:2305.16264
(fitted constants R_D* = 15.39, R_N* = 5.31; their code: huggingface/datablations).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike

from curamix.scaling_laws._base import (
    Objective,
    ScalingLaw,
    check_positive,
    check_same_length,
    huber,
)

# Published fit (datablations): a, b, e in log space, then alpha, beta, R_D*, R_N*.
PUBLISHED: dict[str, float] = {
    "E": float(np.exp(0.6254804)),
    "A": float(np.exp(6.255414)),
    "B": float(np.exp(7.3049974)),
    "alpha": 0.3526596,
    "beta": 0.3526596,
    "R_D_star": 15.387756,
    "R_N_star": 5.309743,
}


def effective_data(D: ArrayLike, U_D: ArrayLike, R_D_star: float) -> np.ndarray:
    """``D' = U_D + U_D R_D* (1 - exp(-R_D/R_D*))`` with ``R_D = max(D/U_D - 1, 0)``."""
    D = np.asarray(D, dtype=np.float64)
    U_D = np.asarray(U_D, dtype=np.float64)
    R_D = np.maximum(D / U_D - 1.0, 0.0)
    # D <= U_D means one partial pass: every token is fresh, D' = D.
    return np.where(D <= U_D, D, U_D + U_D * R_D_star * (-np.expm1(-R_D / R_D_star)))


def optimal_params_for_tokens(D: ArrayLike, E: float, A: float, B: float, alpha: float,
                              beta: float) -> np.ndarray:  # fmt: skip
    """Chinchilla's compute-optimal ``N`` for ``D`` tokens: ``G (D G)^(beta/alpha)``."""
    G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    return (np.asarray(D, dtype=np.float64) * G) ** (beta / alpha) * G


def effective_params(
    N: ArrayLike, U_D: ArrayLike, R_N_star: float, E: float, A: float, B: float,
    alpha: float, beta: float,
) -> np.ndarray:  # fmt: skip
    """``N' = U_N + U_N R_N* (1 - exp(-R_N/R_N*))``, ``U_N = min(N, N_opt(U_D))``."""
    N = np.asarray(N, dtype=np.float64)
    U_N = np.minimum(N, optimal_params_for_tokens(U_D, E, A, B, alpha, beta))
    R_N = np.maximum(N / U_N - 1.0, 0.0)
    return U_N + U_N * R_N_star * (-np.expm1(-R_N / R_N_star))


def data_constrained_loss(
    N: ArrayLike, D: ArrayLike, U_D: ArrayLike, E: float, A: float, B: float, alpha: float,
    beta: float, R_D_star: float, R_N_star: float,
) -> np.ndarray:  # fmt: skip
    """``E + A / N'^alpha + B / D'^beta`` (Muennighoff et al. 2023, eq. 5).

    ``U_D`` larger than ``D`` (less than one pass) counts as ``U_D = D``.
    """
    U_D = np.minimum(np.asarray(U_D, dtype=np.float64), np.asarray(D, dtype=np.float64))
    Dp = effective_data(D, U_D, R_D_star)
    Np = effective_params(N, U_D, R_N_star, E, A, B, alpha, beta)
    return E + A / Np**alpha + B / Dp**beta


_ALL = ("a", "b", "e", "alpha", "beta", "log_R_D_star", "log_R_N_star")


class DataConstrainedLaw(ScalingLaw):
    """Loss under repeated data, ``L(N, D, U_D)``.

    Parameters
    ----------
    base : mapping or None
        Fixed Chinchilla parameters (``E``, ``A``, ``B``, ``alpha``, ``beta``). When given,
        ``fit`` estimates only ``R_D*`` and ``R_N*`` (the paper's procedure: the base law
        comes from single-epoch runs); when None, all seven are fitted.
    huber_delta : float
        Huber threshold on log-loss residuals.

    Use ``DataConstrainedLaw.published()`` for the paper's fitted law without fitting.
    ``bootstrap()`` and ``identify()`` as for every law: ``R_D*`` is only identified when some
    runs repeat data (``D > U_D``), ``R_N*`` when some models exceed the compute-optimal size
    for their unique data.
    """

    _public: ClassVar[dict[str, str]] = {"a": "A", "b": "B", "e": "E", "log_R_D_star": "R_D_star",
               "log_R_N_star": "R_N_star"}  # fmt: skip
    _log_scale = frozenset({"A", "B", "R_D_star", "R_N_star"})

    def __init__(self, base: Mapping[str, float] | None = None, huber_delta: float = 1e-3,
                 maxiter: int = 1000):  # fmt: skip
        self.base = base
        self.huber_delta = huber_delta
        self.maxiter = maxiter

    @property
    def _names(self) -> tuple[str, ...]:  # type: ignore[override]
        return _ALL[5:] if self.base is not None else _ALL

    @classmethod
    def published(cls) -> DataConstrainedLaw:
        """The law with Muennighoff et al.'s fitted constants."""
        law = cls()
        law.params_ = dict(PUBLISHED)
        law.n_points_ = 0
        law.n_converged_ = law.n_starts_ = 0
        law.objective_ = float("nan")
        return law

    def fit(self, N: ArrayLike, D: ArrayLike, U_D: ArrayLike, loss: ArrayLike
            ) -> DataConstrainedLaw:  # fmt: skip
        N = check_positive("N", N)
        D = check_positive("D", D)
        U_D = check_positive("U_D", U_D)
        loss = check_positive("loss", loss)
        check_same_length(N=N, D=D, U_D=U_D, loss=loss)
        if self.base is not None:
            missing = {"E", "A", "B", "alpha", "beta"} - set(self.base)
            if missing:
                raise ValueError(f"base is missing {sorted(missing)}; got {dict(self.base)}")
        self._fit_data({"N": N, "D": D, "U": U_D, "logL": np.log(loss)})
        return self

    def _full(self, x: np.ndarray) -> np.ndarray:
        if self.base is None:
            return x
        b = self.base
        return np.r_[np.log(b["A"]), np.log(b["B"]), np.log(b["E"]), b["alpha"], b["beta"], x]

    def _log_predict(self, x: np.ndarray, data: dict[str, np.ndarray]) -> np.ndarray:
        a, b, e, alpha, beta, lrd, lrn = self._full(np.asarray(x))
        N, D = data["N"], data["D"]
        A, B, E = np.exp(a), np.exp(b), np.exp(e)
        U = np.minimum(data["U"], D)
        Dp = effective_data(D, U, np.exp(lrd))
        Np = effective_params(N, U, np.exp(lrn), E, A, B, alpha, beta)
        z = np.stack([a - alpha * np.log(Np), b - beta * np.log(Dp), np.full_like(Np, e)])
        m = z.max(axis=0)
        return m + np.log(np.exp(z - m).sum(axis=0))

    def _distinct(self, data: dict[str, np.ndarray]) -> dict[str, int]:
        return {k: len(np.unique(data[v])) for k, v in (("N", "N"), ("D", "D"), ("U_D", "U"))}

    def _checks(self, data: dict[str, np.ndarray]) -> list[str]:
        out = []
        if not (data["D"] > data["U"]).any():
            out.append("no run repeats data (D > U_D in none): R_D_star is not identified")
        if self.base is None:
            for k in ("N", "D"):
                n = len(np.unique(data[k]))
                if n < 3:
                    out.append(f"only {n} distinct {k} values: the base law is not identified")
        return out

    def _objective(self, data: dict[str, np.ndarray]) -> Objective:
        logL, delta = data["logL"], self.huber_delta

        def f(x: np.ndarray) -> float:
            pred = self._log_predict(x, data)
            return float(huber(pred - logL, delta)[0].sum()) / delta

        f.has_grad = False  # type: ignore[attr-defined]
        return f

    def _starts(self, data: dict[str, np.ndarray]) -> np.ndarray:
        rstars = [(np.log(r), np.log(q)) for r in (5.0, 15.0, 50.0) for q in (2.0, 5.0, 20.0)]
        if self.base is not None:
            return np.array(rstars)
        p = PUBLISHED
        bases = [
            (np.log(p["A"]), np.log(p["B"]), np.log(p["E"]), p["alpha"], p["beta"]),
            (5.0, 5.0, 0.0, 0.3, 0.3),
            (10.0, 10.0, 0.5, 0.5, 0.5),
        ]
        return np.array([(*b, *r) for b in bases for r in rstars])

    def _bounds(self) -> list[tuple[float | None, float | None]]:
        rb = [(np.log(0.05), np.log(1e4))] * 2
        if self.base is not None:
            return rb
        return [(None, None)] * 3 + [(1e-3, 3.0)] * 2 + rb

    def _set_params(self, x: np.ndarray) -> None:
        a, b, e, alpha, beta, lrd, lrn = (float(v) for v in self._full(np.asarray(x)))
        self.params_ = {
            "E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)),
            "alpha": alpha, "beta": beta,
            "R_D_star": float(np.exp(lrd)), "R_N_star": float(np.exp(lrn)),
        }  # fmt: skip

    def _x(self) -> np.ndarray:
        p = self.params_
        full = np.array([np.log(p["A"]), np.log(p["B"]), np.log(p["E"]), p["alpha"], p["beta"],
                         np.log(p["R_D_star"]), np.log(p["R_N_star"])])  # fmt: skip
        return full[5:] if self.base is not None else full

    def predict(self, N: ArrayLike, D: ArrayLike, U_D: ArrayLike) -> np.ndarray:
        """Predicted loss for ``N`` parameters, ``D`` tokens trained, ``U_D`` unique tokens."""
        self._check_fitted()
        check_positive("N", N), check_positive("D", D), check_positive("U_D", U_D)
        return data_constrained_loss(N, D, U_D, **self.params_)

    def effective_data(self, D: ArrayLike, U_D: ArrayLike) -> np.ndarray:
        """Fresh-token equivalent ``D'`` of ``D`` tokens drawn from ``U_D`` unique ones."""
        self._check_fitted()
        return effective_data(D, U_D, self.params_["R_D_star"])

    def max_useful_epochs(self, tolerance: float = 0.05) -> float:
        """Epochs after which each further epoch is worth less than ``tolerance`` of a fresh one.

        The marginal value of repetition ``R`` is ``exp(-R/R_D*)``, so this is
        ``1 + R_D* ln(1/tolerance)``.
        """
        self._check_fitted()
        return 1.0 + self.params_["R_D_star"] * np.log(1.0 / tolerance)
