"""The mixture -> score regressors RegMix and TiKMiX-M fit, chosen by run count and checked.

Proxy runs are expensive, so the regressor must work at the run counts people can afford
(8 to 512), and say how well it works. Three pieces, all plain functions:

- :func:`choose_regressor`: the rule, run count -> ``"ridge"`` / ``"gp"`` / ``"hgb"``
  (thresholds and the measurement behind them in its docstring);
  :func:`make_regressor` builds that (unfitted) scikit-learn estimator.
- :func:`cross_val_spearman`: leave-one-out (fewer than 64 runs) or 5-fold Spearman of the
  out-of-fold predictions, with a one-sided p-value.
- :func:`fit_mixture_regressor`: both, returning a :class:`RegressorFit` whose ``report()``
  goes into the mixer's provenance; :func:`fallback_reason` says when its predictions must not
  be used (CV Spearman not significantly above 0, or constant predictions).

Why not the reference's gradient-boosted trees everywhere: scikit-learn's
``HistGradientBoostingRegressor`` keeps ``min_samples_leaf=20``, so with fewer than 40 runs no
tree can split and every prediction is the training mean; RegMix's top-k search then averages
the first k candidates (the sampler's prior mean) and reports the mean loss as a prediction.

References
----------
Liu et al. 2024, "RegMix: Data Mixture as Regression for Language Model Pre-training",
arXiv:2407.01492. Rasmussen & Williams 2006, "Gaussian Processes for Machine Learning" (MIT
Press), ch. 2 and 5.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

MIN_RUNS = 4
"""Fewest runs any regressor is fitted on: below, each leave-one-out fold trains on 2 runs and
a rank correlation over 3 runs takes only four values (-1, -0.5, 0.5, 1), so no check is
possible."""
RIDGE_BELOW = 64
"""Below this many runs: ridge regression on sqrt(weights)."""
GP_UP_TO = 1024
"""Up to this many runs: a Gaussian process on sqrt(weights); above: gradient-boosted trees."""
CV_ALPHA = 0.01
"""The regressor is used only when its CV Spearman is above 0 at this nominal one-sided level.
The out-of-fold predictions are not independent, so scipy's nominal p-value is about twice too
small: on pure-noise losses over RegMix's real mixtures (200 data sets per count) a nominal
0.05 passed 10.5% / 11% / 9.5% / 7% of them at 8 / 16 / 32 / 64 runs, a nominal 0.01 passed
4% / 4.5% / 3.5% / 3%, i.e. about the 5% a test at 0.05 should have."""
CV_FOLDS = 5
"""Folds of the K-fold CV from :data:`RIDGE_BELOW` runs on (leave-one-out below)."""

Kind = Literal["ridge", "gp", "hgb"]
KINDS = ("auto", "ridge", "gp", "hgb")
FALLBACKS = ("best_run", "prior", "none")
"""What a mixer returns when its regressor fails the check: the best observed run, the prior
mixture, or the regressor's proposal anyway (with the warning)."""


class RegressorFallbackWarning(UserWarning):
    """A mixer did not use its regressor's proposal (or used it although it failed its check)."""


def mixture_regressor(
    max_iter: int = 1000,
    learning_rate: float = 0.01,
    random_state: int | None = 0,
    min_samples_leaf: int = 20,
) -> Any:
    """The gradient-boosted regressor of the RegMix reference (mixture -> score): scikit-learn
    ``HistGradientBoostingRegressor`` with the reference's LightGBM settings that carry over
    (1000 iterations, learning rate 0.01), no early stopping.

    ``min_samples_leaf`` keeps scikit-learn's 20 by default: no split is possible below 40
    runs (every prediction is the training mean). :func:`make_regressor` passes
    ``min(20, max(2, n_runs // 10))``.
    """
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(
        max_iter=max_iter, learning_rate=learning_rate, early_stopping=False,
        random_state=random_state, min_samples_leaf=min_samples_leaf,
    )  # fmt: skip


def choose_regressor(n_runs: int) -> Kind:
    """The regressor for ``n_runs`` proxy runs: ``"ridge"``, ``"gp"`` or ``"hgb"``.

    - ``n_runs < 4`` (:data:`MIN_RUNS`): ``ValueError`` (no regressor can be checked).
    - ``4 <= n_runs < 64`` (:data:`RIDGE_BELOW`): ``"ridge"``, ridge regression on the
      square roots of the weights, penalty chosen by efficient leave-one-out (``RidgeCV``).
    - ``64 <= n_runs <= 1024`` (:data:`GP_UP_TO`): ``"gp"``, a Gaussian process on the square
      roots of the weights (constant x isotropic RBF + white noise, hyperparameters by
      marginal likelihood, targets standardised).
    - ``n_runs > 1024``: ``"hgb"``, the reference's gradient-boosted trees
      (:func:`mixture_regressor`, leaves of ``min(20, max(2, n_runs // 10))`` runs).

    Evidence (``bench/regmix_small_sample.py --by-kind``, 2026-12-03, 2-core CPU VM; the
    tables in docs/mixers.md, "RegMix and TiKMiX-M at small run counts"): RegMix's real runs
    (17 Pile domains, target Pile-CC loss), 10 random subsets of the 512 1M-parameter
    training runs per count (1 at 512), mean held-out Spearman at 1M, 60M and 1B:

    ====  =================  =================  =================  =================
    runs  ridge, sqrt(w)     GP, sqrt(w)        trees, scaled leaf trees, leaf 20
    ====  =================  =================  =================  =================
    8     0.738 0.723 0.771  0.637 0.625 0.647  0.474 0.471 0.416  constant
    16    0.847 0.840 0.772  0.863 0.855 0.829  0.782 0.775 0.676  constant
    32    0.955 0.949 0.905  0.954 0.948 0.911  0.865 0.863 0.873  constant
    64    0.981 0.977 0.922  0.978 0.974 0.934  0.948 0.942 0.897  0.893 0.883 0.376
    128   0.982 0.978 0.921  0.983 0.980 0.941  0.975 0.970 0.938  0.970 0.964 0.882
    512   0.987 0.983 0.923  0.991 0.988 0.973  0.991 0.986 0.955  0.991 0.986 0.955
    ====  =================  =================  =================  =================

    (trees: leaf ``min(20, max(2, n // 10))``; the last column is the old default.) Ridge is
    the most robust at 8 and 16 runs (on 20 other subsets of 16 runs the GP's worst held-out
    Spearman was 0.23, ridge's 0.56); they tie from 24 to 64 runs; from 64 runs the GP ranks
    the 1B runs better. The square root is a diminishing-returns feature (the loss falls
    fastest for the first few percent of a domain): ridge on the raw weights reached 0.65 /
    0.70 / 0.81 / 0.88 (1M) at 8 / 16 / 32 / 64 runs. Above 1024 runs the GP's cubic cost (3 s
    per fit at 1024 runs, 21 s at 2048 on that VM) makes the trees the choice; no count above
    512 was measured. The thresholds were measured at 17 domains and one target.
    """
    n = int(n_runs)
    if n < MIN_RUNS:
        raise ValueError(
            f"a mixture regressor needs at least {MIN_RUNS} proxy runs to be fitted and "
            f"cross-validated, got {n}"
        )
    if n < RIDGE_BELOW:
        return "ridge"
    if n <= GP_UP_TO:
        return "gp"
    return "hgb"


def _sqrt_weights(X: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(X, 0.0, None))


def make_regressor(
    kind: str,
    n_runs: int,
    random_state: int | None = 0,
    max_iter: int = 1000,
    learning_rate: float = 0.01,
) -> Any:
    """The unfitted scikit-learn estimator of ``kind`` (``"auto"``: :func:`choose_regressor`)
    for ``n_runs`` runs; ``max_iter`` and ``learning_rate`` apply to ``"hgb"`` only."""
    if kind not in KINDS:
        raise ValueError(f"regressor must be one of {list(KINDS)}, got {kind!r}")
    rule = choose_regressor(n_runs)  # raises below MIN_RUNS, whatever the kind
    k = rule if kind == "auto" else kind
    if k == "hgb":
        leaf = min(20, max(2, int(n_runs) // 10))
        return mixture_regressor(max_iter, learning_rate, random_state, min_samples_leaf=leaf)
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    sqrt = FunctionTransformer(_sqrt_weights)
    if k == "ridge":
        from sklearn.linear_model import RidgeCV

        return make_pipeline(sqrt, RidgeCV(alphas=np.logspace(-4, 3, 30)))
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    kernel = ConstantKernel(1.0) * RBF(1.0, (1e-2, 1e2)) + WhiteKernel(0.1, (1e-6, 10.0))
    return make_pipeline(
        sqrt, GaussianProcessRegressor(kernel, normalize_y=True, random_state=random_state)
    )


def fit_estimator(estimator: Any, X: np.ndarray, y: np.ndarray) -> Any:
    """``estimator.fit`` on one thread, without the GP optimiser's bound warnings."""
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(X, y)


def _flat(v: np.ndarray, scale: float) -> bool:
    """True when ``v`` is constant up to float round-off (relative to ``scale``)."""
    return bool(np.ptp(v) <= 1e-9 * max(scale, np.finfo(np.float64).tiny)) if len(v) else True


def cross_val_spearman(
    estimator: Any, X: np.ndarray, y: np.ndarray, random_state: int | None = 0
) -> dict[str, Any]:
    """Cross-validated Spearman of ``estimator`` on runs ``(X, y)``.

    Leave-one-out below :data:`RIDGE_BELOW` runs, else :data:`CV_FOLDS` shuffled folds
    (seeded by ``random_state``). Each held-out prediction is taken relative to the mean of
    the runs it was trained on; the Spearman correlation of those contrasts with ``y`` is
    ``spearman``, ``pvalue`` its one-sided p-value (scipy's t approximation, alternative
    "greater"). The contrast removes the artefact of plain leave-one-out, where a model that
    predicts its training mean scores Spearman -1 (leaving out a high loss lowers the mean);
    with it, that model has constant contrasts, ``spearman = 0`` and ``pvalue = 1``.
    ``rmse`` is the RMSE of the out-of-fold predictions, ``rmse_mean`` that of predicting each
    fold's training mean (the prior-mean predictor).
    """
    from scipy.stats import spearmanr
    from sklearn.base import clone
    from sklearn.model_selection import KFold, LeaveOneOut

    n = len(y)
    if n < RIDGE_BELOW:
        splitter: Any = LeaveOneOut()
        folds = "leave-one-out"
    else:
        splitter = KFold(CV_FOLDS, shuffle=True, random_state=random_state)
        folds = f"{CV_FOLDS}-fold"
    pred = np.empty(n)
    base = np.empty(n)
    for tr, te in splitter.split(X):
        m = fit_estimator(clone(estimator), X[tr], y[tr])
        pred[te] = m.predict(X[te])
        base[te] = y[tr].mean()
    contrast = pred - base
    if _flat(contrast, float(np.ptp(y))) or _flat(y, float(np.abs(y).max())):
        rho, p = 0.0, 1.0
    else:
        r = spearmanr(contrast, y, alternative="greater")
        rho, p = float(r[0]), float(r[1])
        if not np.isfinite(rho):
            rho, p = 0.0, 1.0
    return {
        "spearman": rho,
        "pvalue": p,
        "folds": folds,
        "rmse": float(np.sqrt(np.mean((pred - y) ** 2))),
        "rmse_mean": float(np.sqrt(np.mean((base - y) ** 2))),
    }


@dataclass(frozen=True)
class RegressorFit:
    """A fitted mixture regressor and its cross-validated figures (see
    :func:`cross_val_spearman`); ``kind`` is what was fitted, ``requested`` what was asked."""

    estimator: Any
    kind: str
    requested: str
    n_runs: int
    cv_spearman: float
    cv_pvalue: float
    cv_folds: str
    cv_rmse: float
    cv_rmse_mean: float

    @property
    def significant(self) -> bool:
        """CV Spearman above 0 at the one-sided :data:`CV_ALPHA` level."""
        return self.cv_spearman > 0 and self.cv_pvalue < CV_ALPHA

    def predict(self, X: np.ndarray) -> np.ndarray:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):  # OpenMP threads crawl on a busy machine
            return np.asarray(self.estimator.predict(X), dtype=np.float64)

    def report(self) -> dict[str, Any]:
        """The figures for provenance (JSON-serialisable)."""
        return {
            "kind": self.kind,
            "requested": self.requested,
            "n_runs": self.n_runs,
            "cv_spearman": self.cv_spearman,
            "cv_pvalue": self.cv_pvalue,
            "cv_folds": self.cv_folds,
            "cv_rmse": self.cv_rmse,
            "cv_rmse_mean": self.cv_rmse_mean,
            "rule": (
                f"ridge on sqrt(weights) below {RIDGE_BELOW} runs, Gaussian process on "
                f"sqrt(weights) up to {GP_UP_TO}, gradient-boosted trees above; used only when "
                f"the CV Spearman is above 0 at one-sided p < {CV_ALPHA}"
            ),
        }


def fit_mixture_regressor(
    X: np.ndarray,
    y: np.ndarray,
    kind: str = "auto",
    random_state: int | None = 0,
    max_iter: int = 1000,
    learning_rate: float = 0.01,
) -> RegressorFit:
    """Cross-validate, then fit, the regressor ``kind`` (``"auto"``: :func:`choose_regressor`)
    on runs ``X`` (runs x domains, rows on the simplex) with scores ``y``.

    Raises ``ValueError`` for fewer than :data:`MIN_RUNS` runs, non-finite scores, or scores
    that are all equal (nothing to regress).
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    n = len(y)
    if X.ndim != 2 or len(X) != n:
        raise ValueError(f"need runs x domains mixtures and one score per run, got {X.shape}, {n}")
    estimator = make_regressor(kind, n, random_state, max_iter, learning_rate)
    bad = np.flatnonzero(~np.isfinite(y))
    if bad.size:
        raise ValueError(f"score of run {int(bad[0])} is {float(y[bad[0]])!r}")
    if np.ptp(y) == 0:
        raise ValueError(f"all {n} runs have the same score {float(y[0])!r}: nothing to regress")
    cv = cross_val_spearman(estimator, X, y, random_state)
    fit_estimator(estimator, X, y)
    return RegressorFit(
        estimator=estimator,
        kind=choose_regressor(n) if kind == "auto" else kind,
        requested=kind,
        n_runs=n,
        cv_spearman=cv["spearman"],
        cv_pvalue=cv["pvalue"],
        cv_folds=cv["folds"],
        cv_rmse=cv["rmse"],
        cv_rmse_mean=cv["rmse_mean"],
    )


def check_fallback(fallback: str) -> None:
    """``ValueError`` naming a ``fallback`` that is not one of :data:`FALLBACKS`."""
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {list(FALLBACKS)}, got {fallback!r}")


def apply_fallback(
    who: str,
    fallback: str,
    reason: str,
    fit: RegressorFit,
    proposal: Any,
    best: tuple[np.ndarray, dict[str, Any], str],
    prior: tuple[np.ndarray, str],
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The mixture a mixer returns when its regressor failed the check (``reason``) and the
    provenance record; warns :class:`RegressorFallbackWarning` naming ``who``, the reason and
    what is returned. ``best``: (mixture, provenance fields, description) of the best observed
    run; ``prior``: (mixture, description). ``fallback="none"`` returns ``None`` as the
    mixture: the caller keeps its proposal."""
    info: dict[str, Any] = {"reason": reason, "returned": fallback,
                            "cv_spearman": fit.cv_spearman, "cv_pvalue": fit.cv_pvalue,
                            "regressor_proposal": proposal}  # fmt: skip
    w: np.ndarray | None = None
    if fallback == "best_run":
        w, fields, instead = best
        info.update(fields)
    elif fallback == "prior":
        w, instead = prior
    else:
        instead = "taking its proposal anyway (fallback='none')"
    warnings.warn(f"{who}: {reason}; {instead}", RegressorFallbackWarning, stacklevel=3)
    return w, info


def fallback_reason(fit: RegressorFit, predictions: np.ndarray, scale: float) -> str | None:
    """Why ``fit``'s predictions (on the search candidates) must not choose the mixture, or
    None: constant predictions (relative to ``scale``, the spread of the observed scores), or
    a CV Spearman not above 0 at one-sided p < :data:`CV_ALPHA`. The reason names the figure."""
    if _flat(np.asarray(predictions), scale):
        return (
            f"the {fit.kind} regressor predicts the same score for every candidate "
            f"({fit.n_runs} runs; CV Spearman {fit.cv_spearman:.3f})"
        )
    if not fit.significant:
        return (
            f"the {fit.kind} regressor's {fit.cv_folds} CV Spearman over {fit.n_runs} runs is "
            f"{fit.cv_spearman:.3f} (one-sided p = {fit.cv_pvalue:.3g}), not significantly above "
            f"0 at p < {CV_ALPHA}: it cannot be shown to rank mixtures better than the prior mean"
        )
    return None
