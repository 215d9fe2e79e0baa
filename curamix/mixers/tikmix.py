"""TiKMiX: stage-wise mixtures from each domain's Group Influence on the target loss.

Group Influence of domain ``S`` on the target loss ``f`` (Koh & Liang's influence function,
summed over a group): upweighting ``S`` by ``eps`` moves the target loss by
``df/deps = -grad f^T H^-1 g_S``, with ``g_S`` the domain's accumulated loss gradient (here
the hook's per-domain micro-batch gradient). A negative value helps the target, so this
module reports the **benefit** ``I_S = grad f^T H^-1 g_S`` (minus METHODS.md's expression,
which is the loss change): positive = upweighting the domain lowers the target loss. That is
the quantity TiKMiX maximises.

``H^-1`` (``hessian``):

- ``"identity"``: ``I_S = <g_f, g_S>``.
- ``"adam"``: diagonal, Adam's own preconditioner ``H^-1 ~ diag(1 / (sqrt(v) + eps))`` with
  ``v`` the training loop's AdamW second moments (``exp_avg_sq`` bias-corrected, flattened in
  ``model.parameters()`` order): :func:`~curamix.proxy.train.train_proxy` passes them in
  ``StepMetrics.adam_v`` when the hook asks (``needs_adam_moments``, set by this mixer), and a
  caller outside the loop gives them as ``partial_fit(..., precond=v)``. Without either it
  raises rather than silently using something else.
- ``"ema"``: the same diagonal form with the mixer's own running average instead of the
  optimizer's: ``v <- b2 v + (1 - b2) sum_i w_i g_i^2`` over the per-domain gradients it sees
  at each update (weighted by the current mixture), bias-corrected. What ``"adam"`` meant
  before the loop passed the optimizer state; it needs nothing but the hook's gradients.
- ``"kfac"``: K-FAC blocks of the linear layers (:mod:`curamix.proxy.kfac`), the factors
  gathered by the training loop on the hook's domain micro-batches (weighted by the current
  mixture), damped by ``kfac_damping`` times each block's mean curvature; influences and
  similarities are over the linear layers' weights only (embeddings and norm gains have no
  K-FAC block). The paper uses EK-FAC, i.e. this plus an eigenvalue correction.

Next-stage weights (re-estimated at each stage boundary, i.e. each ``partial_fit``):

- **TiKMiX-D** (:func:`tikmix_d_weights`): maximise on the simplex
  ``sum_i w_i I~_i + uniformity * H(w) / log k + diversity * (1 - w^T C w)``, with ``I~``
  the influences divided by ``max |I|`` (so the coefficients are scale-free), ``H`` the
  entropy (1 at uniform after dividing by ``log k``) and ``C`` the cosine similarity of the
  (preconditioned) domain gradients: ``1 - w^T C w`` is large when the weighted gradients
  point in different directions (a diverse mixture), 0 when all weight sits on one domain.
  Optionally within a trust region ``|w_i - w_current_i| <= trust_region``. SLSQP.
- **TiKMiX-M** (:func:`tikmix_m_weights`): sample candidate mixtures around the current one
  (Dirichlet), score them (by default with the TiKMiX-D objective; any ``score_fn`` such as
  measured influences can replace it), fit a regressor mixture -> score (the paper's is
  gradient-boosted; here chosen by the number of scored mixtures, as RegMix's:
  :func:`curamix.mixers.regressor.choose_regressor`), predict on fresh candidates and take the
  argmax (``top_k=1``) or the mean of the top-k. When the regressor's cross-validated
  Spearman is not significantly above 0 the stage says so (a warning and a provenance entry)
  and takes the best scored mixture instead (or keeps the current one, ``fallback="prior"``).

The entropy / diversity forms and the max-|I| scaling are this package's choices: the paper
names the three terms but their exact form is not verified here.

References
----------
Wang et al. 2025, "TiKMiX: Take Data Influence into Dynamic Mixture for Language Model
Pre-training", arXiv:2508.17677. Koh & Liang 2017, "Understanding Black-box Predictions via
Influence Functions", arXiv:1703.04730.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from curamix.mixers.base import (
    DomainStats,
    OnlineMixer,
    check_finite,
    check_keys,
    finalize_weights,
    init_weights,
    stack_gradients,
)
from curamix.mixers.regmix import dirichlet_mixtures
from curamix.mixers.regressor import (
    MIN_RUNS,
    RegressorFit,
    apply_fallback,
    check_fallback,
    fallback_reason,
    fit_mixture_regressor,
)
from curamix.optim import minimize_on_simplex

ADAM_EPS = 1e-8
"""Adam's ``eps`` (torch's AdamW default, which the proxy's optimizer uses)."""
HESSIANS = ("identity", "adam", "ema", "kfac")
"""The ``H^-1`` approximations of :class:`TiKMiXMixer` (module docstring)."""


def group_influence(G: Any, g_t: Any, precond: Any | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Influence benefit of each domain and the cosine similarity of the domain gradients.

    Parameters
    ----------
    G : tensor (k, P)
        Per-domain gradients.
    g_t : tensor (P,)
        Target gradient.
    precond : tensor (P,), optional
        Diagonal ``H^-1`` (e.g. ``1 / (sqrt(v) + eps)``); None: identity.

    Returns
    -------
    influence : ndarray (k,)
        ``g_t^T H^-1 g_i`` (positive: upweighting domain i lowers the target loss).
    similarity : ndarray (k, k)
        ``<g_i, H^-1 g_j> / (||g_i||_H ||g_j||_H)`` (0 where a gradient is 0).
    """
    Gp = G if precond is None else G * precond.to(G.dtype)
    infl = (Gp @ g_t).cpu().numpy()
    gram = (G @ Gp.T).cpu().numpy()
    n = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    den = np.outer(n, n)
    sim = np.divide(gram, den, out=np.zeros_like(gram), where=den > 0)
    return infl, sim


def kfac_group_influence(G: Any, g_t: Any, kfac: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`group_influence` with ``H^-1`` the damped inverse K-FAC curvature ``kfac`` (a
    :class:`~curamix.proxy.kfac.KFACPreconditioner`), over the linear layers' weights."""
    Gl = kfac.restrict(G)
    Gp = kfac.apply(Gl).to(Gl.dtype)
    infl = (Gp @ kfac.restrict(g_t)).cpu().numpy()
    gram = (Gl @ Gp.T).cpu().numpy()
    gram = 0.5 * (gram + gram.T)
    n = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    den = np.outer(n, n)
    sim = np.divide(gram, den, out=np.zeros_like(gram), where=den > 0)
    return infl, sim


def tikmix_objective(
    W: np.ndarray,
    influence: np.ndarray,
    uniformity: float = 0.0,
    diversity: float = 0.0,
    similarity: np.ndarray | None = None,
) -> np.ndarray:
    """The TiKMiX-D objective of each row of ``W`` (higher is better); see the module doc."""
    W = np.atleast_2d(W)
    k = W.shape[1]
    scale = float(np.max(np.abs(influence)))
    inf = influence / scale if scale > 0 else np.zeros_like(influence)
    out = W @ inf
    if uniformity:
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(W > 0, W * np.log(W), 0.0).sum(1)
        out = out + uniformity * h / np.log(k)
    if diversity:
        C = np.eye(k) if similarity is None else similarity
        out = out + diversity * (1.0 - np.einsum("ni,ij,nj->n", W, C, W))
    return out


def tikmix_d_weights(
    influence: np.ndarray,
    current: np.ndarray | None = None,
    uniformity: float = 0.1,
    diversity: float = 0.0,
    similarity: np.ndarray | None = None,
    trust_region: float | None = None,
) -> np.ndarray:
    """TiKMiX-D: the mixture maximising :func:`tikmix_objective` on the simplex (SLSQP).

    With ``trust_region`` every weight stays within that distance of ``current``. Ties
    (equal influences, no regulariser) resolve to whichever vertex SLSQP reaches first from
    the starts (the current mixture and uniform); with ``uniformity > 0`` the optimum is
    unique. Without diversity and trust region the optimum is known in closed form,
    ``softmax(I~ log k / uniformity)``, and used directly.
    """
    infl = np.asarray(influence, dtype=np.float64)
    k = len(infl)
    cur = np.full(k, 1.0 / k) if current is None else np.asarray(current, dtype=np.float64)
    if uniformity < 0 or diversity < 0:
        raise ValueError(f"uniformity and diversity must be >= 0, got {uniformity}, {diversity}")
    scale = float(np.max(np.abs(infl)))
    inf = infl / scale if scale > 0 else np.zeros(k)
    if trust_region is None and diversity == 0 and uniformity > 0:
        z = inf * np.log(k) / uniformity
        z = np.exp(z - z.max())
        return z / z.sum()
    lo, hi = np.zeros(k), np.ones(k)
    if trust_region is not None:
        if not trust_region > 0:
            raise ValueError(f"trust_region must be > 0 or None, got {trust_region!r}")
        lo, hi = np.clip(cur - trust_region, 0, 1), np.clip(cur + trust_region, 0, 1)
    C = np.eye(k) if similarity is None else np.asarray(similarity, dtype=np.float64)
    logk = np.log(k)

    def neg(w: np.ndarray) -> tuple[float, np.ndarray]:
        wc = np.clip(w, 1e-12, None)
        f = inf @ w
        g = inf.copy()
        if uniformity:
            f += uniformity * float(-(wc * np.log(wc)).sum()) / logk
            g += uniformity * (-(np.log(wc) + 1.0)) / logk
        if diversity:
            f += diversity * (1.0 - w @ C @ w)
            g += diversity * (-(C + C.T) @ w)
        return -float(f), -g

    starts = [cur]
    if trust_region is None:
        starts.append(np.full(k, 1.0 / k))
    found = minimize_on_simplex(neg, starts, lo, hi)
    if found is None:
        raise RuntimeError("TiKMiX-D: the optimiser found no feasible mixture")
    return found[0]


@dataclass(frozen=True)
class TiKMiXMResult:
    """One TiKMiX-M search: the mixture, its predicted score, the regressor with its
    cross-validated figures, and the fallback (None when the regressor's proposal was used)."""

    weights: np.ndarray
    predicted_score: float
    fit: RegressorFit
    fallback: dict[str, Any] | None

    def report(self) -> dict[str, Any]:
        """The regressor's figures and the fallback, for provenance."""
        return {**self.fit.report(), "fallback": self.fallback}


def tikmix_m_search(
    score_fn: Callable[[np.ndarray], np.ndarray],
    current: np.ndarray,
    rng: np.random.Generator,
    n_fit: int = 512,
    n_search: int = 20_000,
    top_k: int = 1,
    max_iter: int = 1000,
    learning_rate: float = 0.01,
    regressor: str = "auto",
    fallback: str = "best_run",
) -> TiKMiXMResult:
    """TiKMiX-M: regress ``score_fn`` on sampled mixtures, return the best predicted one.

    Candidates come from :func:`dirichlet_mixtures` around a prior that is half the current
    mixture and half uniform (so domains at 0 are still explored), concentrations
    ``k * [0.5, 20]`` (no temperature, no caps). ``n_fit`` (>= 4) of them are scored and
    fitted with :func:`curamix.mixers.regressor.fit_mixture_regressor` (``regressor``:
    ``"auto"`` chooses by ``n_fit``; ``max_iter`` and ``learning_rate`` are the
    gradient-boosted trees'); ``n_search`` fresh ones are predicted and the mean of the
    ``top_k`` highest is returned with its predicted score.

    When the regressor fails its check (cross-validated Spearman not above 0 at one-sided
    p < 0.01, or constant predictions), a :class:`RegressorFallbackWarning` names the reason
    and the figure, and the result is the best scored mixture (``fallback="best_run"``), the
    current mixture (``"prior"``) or the regressor's proposal anyway (``"none"``); the reason
    is in ``result.fallback``. A non-finite score raises ``ValueError`` naming the mixture.
    """
    if n_fit < MIN_RUNS:
        raise ValueError(
            f"n_fit must be >= {MIN_RUNS} (TiKMiX-M fits and cross-validates a regressor on "
            f"n_fit scored mixtures), got {n_fit}"
        )
    check_fallback(fallback)
    k = len(current)
    prior = 0.5 * np.asarray(current, dtype=np.float64) + 0.5 / k

    def sample(n: int) -> np.ndarray:
        return dirichlet_mixtures(prior, n, rng, temperature=1.0, min_strength=0.5 * k,
                                  max_strength=20.0 * k)  # fmt: skip

    if not 1 <= top_k <= n_search:
        raise ValueError(f"need 1 <= top_k <= n_search, got {top_k}, {n_search}")
    X = sample(n_fit)
    y = np.asarray(score_fn(X), dtype=np.float64).reshape(-1)
    if y.shape != (n_fit,):
        raise ValueError(f"score_fn returned shape {y.shape} for {n_fit} mixtures")
    if not np.isfinite(y).all():
        i = int(np.flatnonzero(~np.isfinite(y))[0])
        raise ValueError(f"score_fn gave {float(y[i])!r} for mixture {X[i].tolist()}")
    seed = int(rng.integers(2**31))
    fit = fit_mixture_regressor(X, y, regressor, seed, max_iter, learning_rate)
    C = sample(n_search)
    pred = fit.predict(C)
    top = np.argsort(-pred, kind="stable")[:top_k]
    w = C[top].mean(0)
    w = w / w.sum()
    reason = fallback_reason(fit, pred, float(np.ptp(y)))
    info: dict[str, Any] | None = None
    if reason is not None:
        i = int(np.argmax(y))
        chosen, info = apply_fallback(
            "TiKMiX-M", fallback, reason, fit, w.tolist(),
            best=(X[i] / X[i].sum(), {"mixture": i, "observed_score": float(y[i])},
                  f"taking the best scored mixture (score {y[i]:.6g})"),
            prior=(np.asarray(current, dtype=np.float64) / np.sum(current),
                   "keeping the current mixture"),
        )  # fmt: skip
        w = w if chosen is None else chosen
    return TiKMiXMResult(w, float(fit.predict(w[None, :])[0]), fit, info)


def tikmix_m_weights(
    score_fn: Callable[[np.ndarray], np.ndarray],
    current: np.ndarray,
    rng: np.random.Generator,
    n_fit: int = 512,
    n_search: int = 20_000,
    top_k: int = 1,
    max_iter: int = 1000,
    learning_rate: float = 0.01,
    regressor: str = "auto",
    fallback: str = "best_run",
) -> tuple[np.ndarray, float]:
    """:func:`tikmix_m_search`'s mixture and predicted score (its other figures dropped)."""
    r = tikmix_m_search(
        score_fn, current, rng, n_fit, n_search, top_k, max_iter, learning_rate, regressor,
        fallback,
    )  # fmt: skip
    return r.weights, r.predicted_score


class TiKMiXMixer(OnlineMixer):
    """TiKMiX (online, stage-wise; pass the instance as the ``train_proxy`` hook).

    Every call of :meth:`partial_fit` is a stage boundary (``update_every`` steps): it
    measures each domain's influence on the target from the hook's gradients and sets the
    next stage's weights with TiKMiX-D or TiKMiX-M.

    Parameters
    ----------
    mode : {"D", "M"}
        Direct optimisation (D) or regression over sampled mixtures (M).
    hessian : {"identity", "adam", "ema", "kfac"}
        The ``H^-1`` approximation (module docstring): ``"adam"`` uses the training loop's
        AdamW second moments, ``"ema"`` the mixer's own average of squared gradients.
    kfac_damping : float
        ``hessian="kfac"``: damping relative to each block's mean curvature.
    uniformity, diversity : float
        Coefficients of the entropy and gradient-diversity terms (>= 0).
    trust_region : float, optional
        Largest change of any weight per stage (D only).
    init : "natural", "uniform" or mapping
        First-stage weights.
    influence_ema : float in [0, 1)
        Average the influences (and similarities) over stages with this weight on the past
        (0: each stage uses only its own measurement).
    beta2 : float
        Decay of the mixer's own squared-gradient average (``hessian="ema"``).
    score_fn : callable, optional
        TiKMiX-M score of candidate mixtures ``(n, k) -> (n,)``, higher is better; default
        the TiKMiX-D objective with the current influences.
    n_fit, n_search, top_k : int
        TiKMiX-M: mixtures scored and fitted (>= 4), candidates searched, best ones averaged
        (``top_k=1``: the argmax, as in the paper).
    max_iter, learning_rate : int, float
        TiKMiX-M's gradient-boosted regressor (1000, 0.01, as RegMix), when it is used.
    regressor : {"auto", "ridge", "gp", "hgb"}
        TiKMiX-M's regressor; ``"auto"`` chooses by ``n_fit`` as RegMix does.
    fallback : {"best_run", "prior", "none"}
        TiKMiX-M, when the regressor fails its check: the best scored mixture, the current
        mixture, or the regressor's proposal anyway (always with a warning and a provenance
        entry; see :func:`tikmix_m_search`).
    random_state : int or None
        TiKMiX-M's candidate sampling (stage ``s`` uses the stream ``(random_state, s)``,
        so a resumed run samples the same candidates).

    Attributes
    ----------
    weights_ : dict of str to float
    influence_ : ndarray
        The last stage's (averaged) influence benefit per domain, in ``domains_`` order.
    similarity_ : ndarray (k, k)
    predicted_score_ : float or None
        TiKMiX-M: the regressor's prediction for ``weights_``.
    m_reports_ : list of dict
        TiKMiX-M, one per stage: the regressor's kind, its cross-validated Spearman and the
        fallback (None when the regressor's proposal was used).

    References
    ----------
    Wang et al. 2025, arXiv:2508.17677 (TiKMiX). Koh & Liang 2017, arXiv:1703.04730.
    """

    method = "tikmix"
    reference = "Wang et al. 2025, TiKMiX, arXiv:2508.17677"
    needs_gradients = True
    _state_attrs = ("influence_", "similarity_", "sq_avg_", "n_sq_", "m_reports_")

    def __init__(
        self,
        mode: Literal["D", "M"] = "D",
        hessian: Literal["identity", "adam", "ema", "kfac"] = "identity",
        kfac_damping: float = 0.1,
        uniformity: float = 0.1,
        diversity: float = 0.0,
        trust_region: float | None = None,
        init: str | Mapping[str, float] = "natural",
        influence_ema: float = 0.0,
        beta2: float = 0.9,
        score_fn: Callable[[np.ndarray], np.ndarray] | None = None,
        n_fit: int = 512,
        n_search: int = 20_000,
        top_k: int = 1,
        max_iter: int = 1000,
        learning_rate: float = 0.01,
        regressor: str = "auto",
        fallback: str = "best_run",
        random_state: int | None = 0,
    ) -> None:
        self.mode = mode
        self.hessian = hessian
        self.kfac_damping = kfac_damping
        self.uniformity = uniformity
        self.diversity = diversity
        self.trust_region = trust_region
        self.init = init
        self.influence_ema = influence_ema
        self.beta2 = beta2
        self.score_fn = score_fn
        self.n_fit = n_fit
        self.n_search = n_search
        self.top_k = top_k
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.regressor = regressor
        self.fallback = fallback
        self.random_state = random_state

    def fit(self, domain_stats: DomainStats | Mapping[str, float]) -> TiKMiXMixer:
        """Set the first stage's weights for the domains of ``domain_stats``."""
        if self.mode not in ("D", "M"):
            raise ValueError(f"mode must be 'D' or 'M', got {self.mode!r}")
        if self.hessian not in HESSIANS:
            raise ValueError(f"hessian must be one of {list(HESSIANS)}, got {self.hessian!r}")
        if not self.kfac_damping > 0:
            raise ValueError(f"kfac_damping must be > 0, got {self.kfac_damping!r}")
        if not 0 <= self.influence_ema < 1:
            raise ValueError(f"influence_ema must be in [0, 1), got {self.influence_ema!r}")
        if not 0 < self.beta2 < 1:
            raise ValueError(f"beta2 must be in (0, 1), got {self.beta2!r}")
        stats = self._set_stats(domain_stats)
        k = len(stats.domains)
        self.weights_ = finalize_weights(init_weights(self.init, stats), stats.domains, "init")
        self.influence_ = np.zeros(k)
        self.similarity_ = np.eye(k)
        self.sq_avg_: Any = None
        self.n_sq_ = 0
        self.predicted_score_: float | None = None
        self.m_reports_: list[dict[str, Any]] = []
        self.random_state_ = self.random_state
        if self.random_state_ is None:
            self.random_state_ = int(np.random.SeedSequence().entropy % (2**32))
        self._start_online()
        return self

    @property
    def needs_kfac(self) -> bool:
        """Ask the training loop for K-FAC factors (``hessian="kfac"``)."""
        return self.hessian == "kfac"

    @property
    def needs_adam_moments(self) -> bool:
        """Ask the training loop for the optimizer's second moments (``hessian="adam"``)."""
        return self.hessian == "adam"

    # -- the stage update ---------------------------------------------------------------------
    def _preconditioner(self, G: Any, precond: Any | None) -> Any | None:
        import torch

        if self.hessian == "identity":
            return None
        if self.hessian == "adam":
            if precond is None:
                raise ValueError(
                    "TiKMiXMixer(hessian='adam') needs the optimizer's second moments: pass the "
                    "mixer itself as train_proxy's hook (it sets needs_adam_moments), give "
                    "partial_fit(..., precond=v), or use hessian='ema' for the mixer's own "
                    "running average of squared gradients"
                )
            v = torch.as_tensor(precond).detach().reshape(-1).to(G.device, G.dtype)
            if v.numel() != G.shape[1]:
                raise ValueError(f"precond has {v.numel()} entries, the gradients {G.shape[1]}")
            if not bool(torch.isfinite(v).all()) or bool((v < 0).any()):
                raise ValueError("precond must be finite and non-negative (Adam's second moments)")
        else:  # "ema"
            w = torch.as_tensor(self.weights_array(), dtype=G.dtype, device=G.device)
            sq = (w[:, None] * G.square()).sum(0)
            self.sq_avg_ = sq * (1 - self.beta2) if self.sq_avg_ is None else (
                self.beta2 * self.sq_avg_.to(G.device) + (1 - self.beta2) * sq
            )  # fmt: skip
            self.n_sq_ += 1
            v = self.sq_avg_ / (1 - self.beta2**self.n_sq_)
        return 1.0 / (v.sqrt() + ADAM_EPS)

    def partial_fit(self, step_metrics: Any, precond: Any | None = None) -> dict[str, float]:
        """Measure the influences at this stage boundary and set the next stage's weights.

        ``precond``: Adam's (bias-corrected) second moments, flattened in parameter order, for
        ``hessian="adam"``; default ``step_metrics.adam_v`` (what ``train_proxy`` passes).
        """
        self._check_fitted()
        if precond is not None and self.hessian != "adam":
            raise ValueError(f"precond is for hessian='adam', got it with {self.hessian!r}")
        G, g_t = stack_gradients(step_metrics, self.domains_, "TiKMiXMixer")
        if self.hessian == "kfac":
            kfac = getattr(step_metrics, "kfac", None)
            if kfac is None:
                raise ValueError(
                    "TiKMiXMixer(hessian='kfac') needs K-FAC factors: pass the mixer itself as "
                    "train_proxy's hook (it sets needs_kfac) or give step_metrics.kfac"
                )
            from curamix.proxy.kfac import KFACPreconditioner

            layout, factors = kfac
            infl, sim = kfac_group_influence(
                G, g_t, KFACPreconditioner(layout, factors, self.kfac_damping)
            )
            check_finite(
                dict(zip(self.domains_, infl, strict=True)), "influence", step_metrics.step
            )
            return self.update_from_influence(infl, sim, step_metrics)
        if precond is None:
            precond = getattr(step_metrics, "adam_v", None)
        P = self._preconditioner(G, precond)
        infl, sim = group_influence(G, g_t, P)
        check_finite(dict(zip(self.domains_, infl, strict=True)), "influence", step_metrics.step)
        return self.update_from_influence(infl, sim, step_metrics)

    def update_from_influence(
        self,
        influence: Mapping[str, float] | np.ndarray,
        similarity: np.ndarray | None = None,
        step_metrics: Any = None,
    ) -> dict[str, float]:
        """Set the next stage's weights from given influences (benefit, higher = better) and
        gradient similarities; the kernel :meth:`partial_fit` calls after measuring them."""
        self._check_fitted()
        k = len(self.domains_)
        if isinstance(influence, Mapping):
            check_finite(influence, "influence")
            infl = np.array(list(check_keys(influence, self.domains_, "influence").values()))
        else:
            infl = np.asarray(influence, dtype=np.float64)
            if infl.shape != (k,):
                raise ValueError(f"influence has shape {infl.shape}, expected ({k},)")
            check_finite(dict(zip(self.domains_, infl, strict=True)), "influence")
        sim = np.eye(k) if similarity is None else np.asarray(similarity, dtype=np.float64)
        b = self.influence_ema if self.n_updates_ else 0.0
        self.influence_ = b * self.influence_ + (1 - b) * infl
        self.similarity_ = b * self.similarity_ + (1 - b) * sim
        cur = self.weights_array()
        if self.mode == "D":
            w = tikmix_d_weights(
                self.influence_, cur, self.uniformity, self.diversity, self.similarity_,
                self.trust_region,
            )  # fmt: skip
        else:
            score = self.score_fn
            if score is None:
                infl_now, sim_now = self.influence_.copy(), self.similarity_.copy()

                def score(W: np.ndarray) -> np.ndarray:
                    return tikmix_objective(W, infl_now, self.uniformity, self.diversity, sim_now)

            rng = np.random.default_rng([int(self.random_state_), self.n_updates_])
            res = tikmix_m_search(
                score, cur, rng, self.n_fit, self.n_search, self.top_k, self.max_iter,
                self.learning_rate, self.regressor, self.fallback,
            )  # fmt: skip
            w, self.predicted_score_ = res.weights, res.predicted_score
            self.m_reports_.append({"stage": self.n_updates_, **res.report()})
        self.weights_ = finalize_weights(w, self.domains_, f"TiKMiX-{self.mode} weights")
        self._record(step_metrics, self.weights_)
        return dict(self.weights_)

    def _extra_provenance(self) -> dict[str, Any]:
        out = super()._extra_provenance()
        out["influence"] = dict(zip(self.domains_, self.influence_.tolist(), strict=True))
        out["predicted_score"] = self.predicted_score_
        if self.mode == "M":
            out["tikmix_m"] = list(self.m_reports_)
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # checkpoints written before TiKMiX-M kept its per-stage reports
        super().load_state_dict({"m_reports_": [], **state})
