"""RegMix: regress the target loss on the mixture over many small proxy runs, then search.

1. :func:`dirichlet_mixtures` samples proxy mixtures the way the reference does: the token
   share prior raised to ``temperature`` (0.5) and renormalised, a Dirichlet with that
   prior times a concentration drawn from 15 log-spaced values in [0.1, 5], rejecting any
   sample that would read a domain more than ``max_epochs`` (15) times over the token
   budget (``weight_i <= max_epochs * tokens_i / budget``; the reference's budget is the
   pool itself, so the cap is ``15 * share_i``).
2. Train a proxy on each (:func:`curamix.proxy.train.train_proxy`), record the target loss.
3. :class:`RegMixMixer` fits a regressor mixture -> target loss, chosen by the number of
   runs (:func:`curamix.mixers.regressor.choose_regressor`: ridge on sqrt(weights) below 64
   runs, a Gaussian process up to 1024, the reference's gradient-boosted trees above, i.e.
   scikit-learn ``HistGradientBoostingRegressor``, 1000 iterations, learning rate 0.01, for
   the reference's LightGBM, which is not installed here), cross-validates it, predicts the
   loss of 100k fresh samples from the same sampler and returns the mean of the 128 with the
   lowest predicted loss. The average of capped samples is itself within the caps.
4. When the regressor's cross-validated Spearman is not significantly above 0 (or its
   predictions are constant) the mixer says so (:class:`RegressorFallbackWarning`, and a
   ``fallback`` entry in provenance naming the reason and the figure) and returns the best
   observed run instead (``fallback="best_run"``; or the sampler's prior mean, ``"prior"``).

Departures from the reference sampler, on purpose: no rounding of weights to a 2e-4 grid
(that was for writing config files; the optional ``min_weight`` still zeroes smaller weights
and renormalises each sample), hence no de-duplication step either; the regressor is
chosen by run count (the reference's trees cannot split below 40 runs).

References
----------
Liu et al. 2024, "RegMix: Data Mixture as Regression for Language Model Pre-training",
arXiv:2407.01492 (reference code: sail-sg/regmix, ``mixture_config/synthesize_mixture.py``).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from curamix.mixers.base import BaseMixer, DomainStats, finalize_weights
from curamix.mixers.regressor import (
    MIN_RUNS,
    apply_fallback,
    check_fallback,
    fallback_reason,
    fit_mixture_regressor,
    mixture_regressor,
)

__all__ = [
    "RegMixMixer",
    "check_runs",
    "dirichlet_mixtures",
    "epoch_caps",
    "mixture_regressor",
]


def epoch_caps(
    stats: DomainStats, max_epochs: float | None, budget: float | None = None
) -> np.ndarray:
    """Largest weight each domain may take: ``min(1, max_epochs * tokens_i / budget)``.

    ``budget`` defaults to ``stats.total_tokens``, else the pool size (the reference's choice).
    ``max_epochs=None``: no caps (all ones).
    """
    k = len(stats.domains)
    if max_epochs is None:
        return np.ones(k)
    if not max_epochs > 0:
        raise ValueError(f"max_epochs must be > 0 or None, got {max_epochs!r}")
    tokens = np.array(list(stats.tokens.values()), dtype=np.float64)
    b = budget if budget is not None else stats.total_tokens
    b = float(tokens.sum()) if b is None else float(b)
    caps = np.minimum(1.0, max_epochs * tokens / b)
    if caps.sum() < 1.0:
        raise ValueError(
            f"no mixture can train {b:.4g} tokens within {max_epochs:g} epochs per domain: the "
            f"pool holds {tokens.sum():.4g} tokens (caps sum to {caps.sum():.4g}); raise "
            "max_epochs or lower the budget"
        )
    return caps


def dirichlet_mixtures(
    prior: ArrayLike,
    n: int,
    random_state: int | np.random.Generator | None = 0,
    temperature: float = 0.5,
    caps: ArrayLike | None = None,
    min_strength: float = 0.1,
    max_strength: float = 5.0,
    n_strengths: int = 15,
    min_weight: float = 0.0,
    max_draws: int | None = None,
) -> np.ndarray:
    """``n`` mixtures from RegMix's Dirichlet sampler, shape ``(n, k)``, rows summing to 1.

    Parameters
    ----------
    prior : array (k,)
        Token shares (non-negative, positive sum).
    n : int
        Samples to return.
    random_state : int, Generator or None
    temperature : float
        The prior is raised to this power and renormalised (0.5 flattens it; 1 keeps it).
    caps : array (k,), optional
        Reject a sample whose weight exceeds ``caps[i]`` for any domain (see
        :func:`epoch_caps`).
    min_strength, max_strength, n_strengths : float, float, int
        Each sample's concentration is ``prior * s`` with ``s`` drawn uniformly from
        ``n_strengths`` log-spaced values in ``[min_strength, max_strength]``.
    min_weight : float
        Weights below this are set to 0 and the sample renormalised.
    max_draws : int, optional
        Give up (``RuntimeError``) after this many draws; default ``1000 * n``.
    """
    rng = np.random.default_rng(random_state)
    p = np.asarray(prior, dtype=np.float64)
    if p.ndim != 1 or len(p) < 2 or (p < 0).any() or not np.isfinite(p).all() or p.sum() <= 0:
        raise ValueError(f"prior must be a non-negative 1-D vector over >= 2 domains, got {p}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if not 0 < min_strength <= max_strength:
        raise ValueError(
            f"need 0 < min_strength <= max_strength, got {min_strength}, {max_strength}"
        )
    p = p / p.sum()
    p = p**temperature
    p = p / p.sum()
    alive = p > 0
    k = len(p)
    cap = np.ones(k) if caps is None else np.asarray(caps, dtype=np.float64)
    if cap.shape != (k,):
        raise ValueError(f"caps has shape {cap.shape}, expected ({k},)")
    strengths = np.logspace(np.log10(min_strength), np.log10(max_strength), n_strengths)
    max_draws = 1000 * n if max_draws is None else max_draws
    out: list[np.ndarray] = []
    have, drawn = 0, 0
    chunk = max(1024, 2 * n)
    while have < n:
        if drawn >= max_draws:
            raise RuntimeError(
                f"the sampler accepted {have} of {drawn} draws, fewer than the {n} asked; the "
                "caps are too tight for this prior (raise max_epochs or the caps)"
            )
        which = rng.integers(0, n_strengths, size=chunk)
        block = np.zeros((chunk, k))
        for j in np.unique(which):
            rows = np.flatnonzero(which == j)
            block[np.ix_(rows, np.flatnonzero(alive))] = rng.dirichlet(
                p[alive] * strengths[j], size=len(rows)
            )
        drawn += chunk
        ok = np.isfinite(block).all(1) & (block.sum(1) > 0) & (block <= cap + 1e-12).all(1)
        block = block[ok]
        if min_weight > 0:
            block = np.where(block < min_weight, 0.0, block)
            block = block[block.sum(1) > 0]
        block = block / block.sum(1, keepdims=True)
        out.append(block)
        have += len(block)
    return np.concatenate(out)[:n]


def check_runs(
    mixtures: Any,
    losses: ArrayLike,
    domains: Sequence[str],
    what: str = "mixtures",
    min_runs: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Proxy runs as arrays ``(R, y)`` with ``R`` in ``domains`` column order.

    ``mixtures`` is an array (runs x domains, already in ``domains`` order), a pandas
    DataFrame with one column per domain, or a sequence of ``{domain: weight}`` mappings.
    Rows must be non-negative and sum to 1 within 0.01; rows off by more than 1e-9 (rounded
    weights, as in RegMix's files) are renormalised with a warning. Fewer than ``min_runs``
    runs, a NaN or infinite loss, a negative or non-finite weight and a row off 1 by more
    than 0.01 raise ``ValueError`` naming the count, the run and the value.
    """
    if hasattr(mixtures, "columns"):
        cols = [str(c) for c in mixtures.columns]
        unknown = [c for c in cols if c not in set(domains)]
        missing = [d for d in domains if d not in cols]
        if unknown or missing:
            raise ValueError(
                f"{what}: unknown columns {unknown}, missing domains {missing} "
                f"(domains: {list(domains)})"
            )
        R = mixtures[list(domains)].to_numpy(np.float64)
    elif len(mixtures) and isinstance(mixtures[0], Mapping):
        for i, row in enumerate(mixtures):
            unknown = [d for d in row if d not in set(domains)]
            if unknown:
                raise ValueError(f"{what} run {i} names unknown domains {unknown}")
        R = np.array([[float(row.get(d, 0.0)) for d in domains] for row in mixtures])
    else:
        R = np.asarray(mixtures, dtype=np.float64)
    if R.ndim != 2 or R.shape[1] != len(domains):
        raise ValueError(f"{what} must be runs x {len(domains)} domains, got shape {R.shape}")
    y = np.asarray(losses, dtype=np.float64).reshape(-1)
    if len(y) != len(R):
        raise ValueError(f"{len(R)} mixtures but {len(y)} losses")
    if len(R) < min_runs:
        raise ValueError(f"need at least {min_runs} proxy runs, got {len(R)}")
    bad = np.flatnonzero(~np.isfinite(y))
    if bad.size:
        raise ValueError(
            f"loss of run {int(bad[0])} is {float(y[bad[0]])!r} ({bad.size} such runs); "
            "losses must be finite"
        )
    badr = np.flatnonzero(~np.isfinite(R).all(1) | (R < 0).any(1))
    if badr.size:
        i = int(badr[0])
        raise ValueError(f"{what} run {i} has a negative or non-finite weight: {R[i].tolist()}")
    sums = R.sum(1)
    dev = np.abs(sums - 1.0)
    if (dev > 0.01).any():
        i = int(np.argmax(dev))
        raise ValueError(f"{what} run {i} sums to {sums[i]:.6g}, not 1")
    if dev.max() > 1e-9:
        warnings.warn(
            f"{what}: renormalised {int((dev > 1e-9).sum())} runs whose weights sum to 1 only "
            f"within {dev.max():.3g} (rounded weights)",
            stacklevel=3,
        )
        R = R / sums[:, None]
    return R, y


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b)[0])


class RegMixMixer(BaseMixer):
    """RegMix: mixture -> target-loss regression over proxy runs, then a sampled search.

    Parameters
    ----------
    temperature : float
        Exponent on the token-share prior of the Dirichlet sampler (0.5).
    max_epochs : float or None
        Reject samples that would read any domain more than this many times over the token
        budget (``domain_stats.total_tokens``, else the pool size). None: no cap.
    min_strength, max_strength : float
        Range of the Dirichlet concentration (0.1, 5).
    min_weight : float
        Zero weights below this in each sample (0: off).
    n_candidates : int
        Mixtures sampled and scored by the regressor (100k).
    top_k : int
        The proposed mixture is the mean of the ``top_k`` candidates with the lowest predicted
        loss (128).
    max_iter, learning_rate : int, float
        Of the gradient-boosted regressor (1000, 0.01), when it is used (``regressor="hgb"``,
        or ``"auto"`` above 1024 runs).
    regressor : {"auto", "ridge", "gp", "hgb"}
        ``"auto"``: by run count (:func:`curamix.mixers.regressor.choose_regressor`).
    fallback : {"best_run", "prior", "none"}
        What to return when the regressor fails its check (CV Spearman not above 0 at
        one-sided p < 0.01, or constant predictions): the observed run with the lowest loss,
        the sampler's prior mean (the mean of the candidates, within the caps), or the
        regressor's proposal anyway. Every case warns (:class:`RegressorFallbackWarning`) and
        records a ``fallback`` entry in provenance.
    random_state : int or None

    Attributes
    ----------
    weights_ : dict of str to float
        The proposed mixture (the fallback's, when ``fallback_`` is set).
    proposal_ : dict of str to float
        The regressor's top-k mean, used or not.
    predicted_loss_ : float
        The regressor's prediction for ``weights_``.
    top_k_losses_ : ndarray
        Predicted losses of the averaged candidates.
    regressor_ : scikit-learn estimator
        The fitted regressor (``regressor_fit_.kind`` says which).
    regressor_fit_ : RegressorFit
        The regressor with its cross-validated figures.
    cv_spearman_ : float
        Cross-validated Spearman of the regressor on the runs (leave-one-out below 64 runs).
    fallback_ : dict or None
        Why the regressor's proposal was not used, and what was returned instead.
    n_runs_ : int

    References
    ----------
    Liu et al. 2024, "RegMix: Data Mixture as Regression for Language Model Pre-training",
    arXiv:2407.01492.
    """

    method = "regmix"
    reference = "Liu et al. 2024, RegMix, arXiv:2407.01492"

    def __init__(
        self,
        temperature: float = 0.5,
        max_epochs: float | None = 15.0,
        min_strength: float = 0.1,
        max_strength: float = 5.0,
        min_weight: float = 0.0,
        n_candidates: int = 100_000,
        top_k: int = 128,
        max_iter: int = 1000,
        learning_rate: float = 0.01,
        regressor: str = "auto",
        fallback: str = "best_run",
        random_state: int | None = 0,
    ) -> None:
        self.temperature = temperature
        self.max_epochs = max_epochs
        self.min_strength = min_strength
        self.max_strength = max_strength
        self.min_weight = min_weight
        self.n_candidates = n_candidates
        self.top_k = top_k
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.regressor = regressor
        self.fallback = fallback
        self.random_state = random_state

    def _sample(self, stats: DomainStats, n: int, rng: np.random.Generator) -> np.ndarray:
        return dirichlet_mixtures(
            stats.shares(), n, rng, temperature=self.temperature,
            caps=epoch_caps(stats, self.max_epochs), min_strength=self.min_strength,
            max_strength=self.max_strength, min_weight=self.min_weight,
        )  # fmt: skip

    def sample_mixtures(
        self, domain_stats: DomainStats | Mapping[str, float], n: int = 512
    ) -> np.ndarray:
        """``n`` proxy-run mixtures (``(n, k)`` in domain order) from the RegMix sampler:
        step 1, the runs to train before :meth:`fit`. Seeded by ``random_state``."""
        from curamix.mixers.base import as_domain_stats

        stats = as_domain_stats(domain_stats)
        return self._sample(stats, n, np.random.default_rng([_seed(self.random_state), 1]))

    def fit(
        self,
        domain_stats: DomainStats | Mapping[str, float],
        mixtures: Any,
        losses: ArrayLike,
        target: str | None = None,
    ) -> RegMixMixer:
        """Fit the regressor on proxy runs and propose the mixture.

        Parameters
        ----------
        domain_stats : DomainStats or mapping domain -> tokens
            The prior (token shares) and caps of the candidate sampler.
        mixtures : array (runs x domains), DataFrame or list of mappings
            The proxy runs' mixtures (see :func:`check_runs`); at least 4 runs.
        losses : array (runs,)
            Their target losses (lower is better), finite and not all equal.
        target : str, optional
            The target's name, for provenance.
        """
        if self.top_k < 1 or self.n_candidates < self.top_k:
            raise ValueError(
                f"need 1 <= top_k <= n_candidates, got top_k={self.top_k}, "
                f"n_candidates={self.n_candidates}"
            )
        check_fallback(self.fallback)
        stats = self._set_stats(domain_stats)
        R, y = check_runs(mixtures, losses, stats.domains, min_runs=MIN_RUNS)
        seed = _seed(self.random_state)
        self.n_runs_ = len(R)
        self.target_ = target
        self.runs_sha256_ = hashlib.sha256(R.tobytes() + y.tobytes()).hexdigest()
        fit = fit_mixture_regressor(
            R, y, self.regressor, seed, self.max_iter, self.learning_rate
        )  # fmt: skip
        self.regressor_fit_ = fit
        self.regressor_ = fit.estimator
        self.cv_spearman_ = fit.cv_spearman
        cand = self._sample(stats, self.n_candidates, np.random.default_rng([seed, 2]))
        pred = fit.predict(cand)
        top = np.argsort(pred, kind="stable")[: self.top_k]
        self.top_k_losses_ = pred[top]
        self.proposal_ = finalize_weights(cand[top].mean(0), stats.domains, "RegMix top-k mean")
        reason = fallback_reason(fit, pred, float(np.ptp(y)))
        self.fallback_: dict[str, Any] | None = None
        w = cand[top].mean(0)
        if reason is not None:
            i = int(np.argmin(y))
            chosen, self.fallback_ = apply_fallback(
                "RegMix", self.fallback, reason, fit, dict(self.proposal_),
                best=(R[i], {"run": i, "observed_loss": float(y[i])},
                      f"returning the best observed run (run {i}, loss {y[i]:.6g})"),
                prior=(cand.mean(0), "returning the sampler's prior mean (the mean of the candidates)"),
            )  # fmt: skip
            w = w if chosen is None else chosen
        self.weights_ = finalize_weights(w, stats.domains, "RegMix mixture")
        self.predicted_loss_ = float(self.predict(self.weights_array()[None, :])[0])
        return self

    def predict(self, mixtures: Any) -> np.ndarray:
        """Predicted target loss of mixtures (runs x domains in ``domains_`` order, a
        DataFrame, or a list of mappings)."""
        if not hasattr(self, "regressor_"):
            self._check_fitted()
        if hasattr(mixtures, "columns") or (len(mixtures) and isinstance(mixtures[0], Mapping)):
            R, _ = check_runs(mixtures, np.zeros(len(mixtures)), self.domains_)
        else:
            R = np.atleast_2d(np.asarray(mixtures, dtype=np.float64))
        return self.regressor_fit_.predict(R)

    def score(self, mixtures: Any, losses: ArrayLike) -> float:
        """Spearman rank correlation of predicted and observed losses (RegMix's figure of
        merit) on held-out runs."""
        R, y = check_runs(mixtures, losses, self.domains_)
        return _spearman(self.predict(R), y)

    def _extra_provenance(self) -> dict[str, Any]:
        return {
            "predicted_loss": self.predicted_loss_,
            "top_k_predicted": [float(self.top_k_losses_.min()), float(self.top_k_losses_.max())],
            "target": self.target_,
            "proxy_runs": {"n_runs": self.n_runs_, "sha256": self.runs_sha256_},
            "regressor": self.regressor_fit_.report(),
            "fallback": self.fallback_,
            "max_epochs": self.max_epochs,
            "caps": dict(
                zip(self.domains_, epoch_caps(self.domain_stats_, self.max_epochs).tolist(),
                    strict=True)
            ),
        }  # fmt: skip


def _seed(random_state: int | None) -> int:
    """A concrete seed for derived streams (``None`` draws one from the OS)."""
    if random_state is None:
        return int(np.random.SeedSequence().entropy % (2**32))
    return int(random_state)
