"""DGA: online data mixing by dynamic gradient alignment with a target set.

Every update (every ``update_every`` proxy steps, when the hook calls
:meth:`DGAMixer.partial_fit`) the weights take one exponentiated-gradient step on the
alignment of each domain's gradient with the target's, then an exponential moving average
smooths them:

    s_i       = <g_i, g_target>                                  (normalize="none")
    alpha_hat = softmax(log alpha + eta * s)                     (alpha * exp(eta s), normalised)
    alpha     <- ema * alpha + (1 - ema) * alpha_hat
    alpha     <- (1 - smoothing) * alpha + smoothing / k         (optional floor, default off)

Conventions chosen here (METHODS.md marks DGA's update-frequency and EMA conventions as
unverified): the EMA is part of the recursion (the next step starts from the smoothed
weights, so the EMA damps the multiplicative steps rather than only the reported weights),
``ema`` is the weight on the *old* weights, and the step uses one gradient estimate per update
(the hook's micro-batches at that step).

Normalisations of the score ``s`` (``normalize``):

- ``"none"``: the raw dot product (the paper); ``eta`` then depends on the gradient scale.
- ``"doge"``: ``lr * <g_i, g_t> / mean_j ||g_j||`` (DoGE's reference update, with ``eta``
  playing ``1 / mu``; DoGE uses ``mu = 0.05``, i.e. ``eta = 20``).
- ``"cosine"``: ``<g_i, g_t> / (||g_i|| ||g_t||)``, scale-free (this package's addition).

``clip`` then bounds ``|s|``.

Distribution reweighting (``bases``): with many fine-grained domains (e.g. k-means clusters
of embeddings) the weights live on N fixed basis distributions ``B`` (N x k, each row a
distribution over the domains) and the domain mixture is ``beta @ B``. A basis's gradient is
``sum_i B_ji g_i`` (the expected gradient of a batch drawn from it), so its alignment is
``B @ <g_i, g_t>``; the same step and EMA act on ``beta``.

References
----------
Fan, Grangier, Ablin 2024, "Dynamic Gradient Alignment for Online Data Mixing",
arXiv:2410.02498. Fan, Pagliardini, Jaggi 2023, "DoGE: Domain Reweighting with Generalization
Estimation", arXiv:2310.15393. Kivinen & Warmuth 1997 (exponentiated gradient).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from curamix.mixers.base import (
    DomainStats,
    OnlineMixer,
    check_domain_weights,
    check_finite,
    finalize_weights,
    init_weights,
    stack_gradients,
)


def eg_step(
    alpha: np.ndarray, scores: np.ndarray, eta: float, ema: float = 0.0, smoothing: float = 0.0
) -> np.ndarray:
    """One exponentiated-gradient step on the simplex, then EMA and smoothing.

    ``alpha_hat = alpha * exp(eta * scores)`` normalised (computed in log space: no overflow,
    a weight at 0 stays 0), ``ema * alpha + (1 - ema) * alpha_hat``, then
    ``(1 - smoothing) * . + smoothing / k``. Returns a new array summing to 1.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    with np.errstate(divide="ignore"):
        z = np.log(alpha) + eta * np.asarray(scores, dtype=np.float64)
    z = z - np.max(z)
    hat = np.exp(z)
    hat /= hat.sum()
    out = ema * alpha + (1.0 - ema) * hat
    out = (1.0 - smoothing) * out + smoothing / len(out)
    return out / out.sum()


def alignment_scores(
    G: Any,
    g_t: Any,
    normalize: Literal["none", "doge", "cosine"] = "none",
    lr: float = 1.0,
    bases: np.ndarray | None = None,
) -> np.ndarray:
    """Alignment of each domain (or basis) gradient with the target gradient.

    Parameters
    ----------
    G : tensor (k, P)
        Per-domain gradients.
    g_t : tensor (P,)
    normalize : {"none", "doge", "cosine"}
        See the module docstring.
    lr : float
        The model's learning rate at this step (``"doge"`` only).
    bases : ndarray (N, k), optional
        Basis distributions: scores are for ``B @ G``.
    """
    import torch

    if bases is not None:
        G = torch.as_tensor(bases, dtype=G.dtype, device=G.device) @ G
    dots = (G @ g_t).cpu().numpy()
    if normalize == "none":
        return dots
    norms = torch.linalg.vector_norm(G, dim=1).cpu().numpy()
    if normalize == "doge":
        mean = float(norms.mean())
        return lr * dots / mean if mean > 0 else np.zeros_like(dots)
    if normalize == "cosine":
        tn = float(torch.linalg.vector_norm(g_t))
        den = norms * tn
        return np.divide(dots, den, out=np.zeros_like(dots), where=den > 0)
    raise ValueError(f"normalize must be 'none', 'doge' or 'cosine', got {normalize!r}")


class DGAMixer(OnlineMixer):
    """Dynamic Gradient Alignment (online; pass the instance as the ``train_proxy`` hook).

    Parameters
    ----------
    eta : float
        Step size of the exponentiated-gradient update (scale it to the score: with
        ``normalize="none"`` the raw dot products of the proxy's gradients).
    ema : float in [0, 1)
        Weight on the previous weights in the moving average (0: no smoothing).
    normalize : {"none", "doge", "cosine"}
        How the alignment score is scaled (module docstring).
    clip : float, optional
        Clip every score to ``[-clip, clip]`` before the step.
    bases : mapping of str to mapping, optional
        Distribution reweighting: basis name -> distribution over the domains (each summing
        to 1; a missing domain is 0). The learnt weights are over the bases.
    init : "natural", "uniform", mapping or None
        Starting weights over the domains, or with ``bases`` over the bases ("uniform" or a
        mapping there). None: "natural" without bases, "uniform" with them.
    smoothing : float in [0, 1)
        Mix each update with uniform by this much (keeps every domain or basis reachable).

    Attributes
    ----------
    weights_ : dict of str to float
        The current domain mixture.
    basis_weights_ : dict of str to float or None
        The weights over the bases (``bases`` given), else None.
    scores_ : ndarray
        The last update's scores (after normalisation and clipping).
    n_updates_, history_ : int, list
        Updates so far and ``(step, tokens, weights)`` after each.

    References
    ----------
    Fan, Grangier, Ablin 2024, arXiv:2410.02498 (DGA). Fan et al. 2023, arXiv:2310.15393
    (DoGE's normalised score).
    """

    method = "dga"
    reference = "Fan, Grangier, Ablin 2024, Dynamic Gradient Alignment, arXiv:2410.02498"
    needs_gradients = True
    _state_attrs = ("alpha_", "scores_")

    def __init__(
        self,
        eta: float = 1.0,
        ema: float = 0.5,
        normalize: Literal["none", "doge", "cosine"] = "none",
        clip: float | None = None,
        bases: Mapping[str, Mapping[str, float]] | None = None,
        init: str | Mapping[str, float] | None = None,
        smoothing: float = 0.0,
    ) -> None:
        self.eta = eta
        self.ema = ema
        self.normalize = normalize
        self.clip = clip
        self.bases = bases
        self.init = init
        self.smoothing = smoothing

    def _check_params(self) -> None:
        if not np.isfinite(self.eta):
            raise ValueError(f"eta must be finite, got {self.eta!r}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema!r}")
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing!r}")
        if self.normalize not in ("none", "doge", "cosine"):
            raise ValueError(
                f"normalize must be 'none', 'doge' or 'cosine', got {self.normalize!r}"
            )
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip must be > 0 or None, got {self.clip!r}")

    def fit(self, domain_stats: DomainStats | Mapping[str, float]) -> DGAMixer:
        """Set the starting weights (and the basis matrix) for the domains of ``domain_stats``."""
        self._check_params()
        stats = self._set_stats(domain_stats)
        if self.bases is None:
            self.basis_names_: list[str] | None = None
            self.bases_: np.ndarray | None = None
            self.alpha_ = init_weights(self.init or "natural", stats, "init")
        else:
            if not self.bases:
                raise ValueError("bases is empty: give at least one basis distribution")
            self.basis_names_ = list(self.bases)
            self.bases_ = np.stack(
                [
                    check_domain_weights(self.bases[b], stats.domains, f"basis {b!r}")
                    for b in self.basis_names_
                ]
            )
            unused = [d for d, c in zip(stats.domains, self.bases_.sum(0), strict=True) if c == 0]
            if unused:
                raise ValueError(f"no basis distribution puts weight on domains {unused}")
            n = len(self.basis_names_)
            if self.init is None or self.init == "uniform":
                self.alpha_ = np.full(n, 1.0 / n)
            elif isinstance(self.init, Mapping):
                self.alpha_ = check_domain_weights(self.init, self.basis_names_, "init (bases)")
            else:
                raise ValueError(
                    f"with bases, init must be 'uniform' or a mapping over the bases, got {self.init!r}"
                )
        self.scores_ = np.zeros(len(self.alpha_))
        self._start_online()
        self._publish()
        return self

    def _publish(self) -> None:
        w = self.alpha_ if self.bases_ is None else self.alpha_ @ self.bases_
        self.weights_ = finalize_weights(w, self.domains_, "DGA weights")
        self.basis_weights_ = (
            None
            if self.basis_names_ is None
            else {b: float(a) for b, a in zip(self.basis_names_, self.alpha_, strict=True)}
        )

    def partial_fit(self, step_metrics: Any) -> dict[str, float]:
        """One DGA update from the hook's gradients; returns the new domain weights."""
        self._check_fitted()
        G, g_t = stack_gradients(step_metrics, self.domains_, "DGAMixer")
        s = alignment_scores(
            G, g_t, self.normalize, lr=float(getattr(step_metrics, "lr", 1.0)), bases=self.bases_
        )
        names = self.domains_ if self.basis_names_ is None else self.basis_names_
        check_finite(dict(zip(names, s, strict=True)), "alignment score", step_metrics.step)
        if self.clip is not None:
            s = np.clip(s, -self.clip, self.clip)
        self.scores_ = s
        self.alpha_ = eg_step(self.alpha_, s, self.eta, self.ema, self.smoothing)
        self._publish()
        self._record(step_metrics, self.weights_)
        return dict(self.weights_)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._publish()

    def _extra_provenance(self) -> dict[str, Any]:
        out = super()._extra_provenance()
        out["basis_weights"] = self.basis_weights_
        return out
