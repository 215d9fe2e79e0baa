"""DoReMi: domain weights from the proxy's excess loss over a reference model.

At each update (the proxy hook, every ``update_every`` steps):

    lambda_i = max(loss_i - ref_i, 0)                   (clipped per-domain excess loss)
    alpha'   = softmax(log alpha + eta * lambda)        (exponentiated-gradient ascent)
    alpha    = (1 - c) alpha' + c / k                   (smoothing toward uniform, c = 1e-3)

and the output is the **average** of ``alpha`` over all updates. ``partial_fit`` returns the
current ``alpha`` (what the proxy should train on next); ``weights_`` is the running average
(DoReMi's answer).

Departures from the paper, forced by the hook: the excess loss is per domain, on the hook's
micro-batch of each domain (the paper averages per-token excess losses over each training
batch), and ``ref_i`` is a fixed number per domain (e.g. the reference proxy's final
validation loss, ``ProxyResult.val_losses``) rather than the reference model's loss on the
same tokens.

References
----------
Xie et al. 2023, "DoReMi: Optimizing Data Mixtures Speeds Up Language Model Pretraining",
arXiv:2305.10429.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from curamix.mixers.base import (
    DomainStats,
    OnlineMixer,
    check_finite,
    finalize_weights,
    init_weights,
)
from curamix.mixers.dga import eg_step


def doremi_step(
    alpha: np.ndarray,
    losses: np.ndarray,
    reference: np.ndarray,
    eta: float = 1.0,
    smoothing: float = 1e-3,
) -> np.ndarray:
    """One DoReMi update: ``softmax(log alpha + eta * max(loss - ref, 0))`` smoothed."""
    excess = np.maximum(np.asarray(losses, dtype=np.float64) - reference, 0.0)
    return eg_step(alpha, excess, eta, ema=0.0, smoothing=smoothing)


class DoReMiMixer(OnlineMixer):
    """DoReMi (online; pass the instance as the ``train_proxy`` hook).

    Parameters
    ----------
    eta : float
        Step size of the log-weight update (1.0 in the paper).
    smoothing : float in [0, 1)
        Mix toward uniform after each update (``c = 1e-3`` in the paper).
    init : "uniform", "natural" or mapping
        Starting weights.

    Attributes
    ----------
    weights_ : dict of str to float
        The average of the weights over the updates so far (the initial weights before any).
    current_weights_ : dict of str to float
        The latest ``alpha``.
    excess_ : ndarray
        The last update's clipped excess losses.

    References
    ----------
    Xie et al. 2023, arXiv:2305.10429.
    """

    method = "doremi"
    reference = "Xie et al. 2023, DoReMi, arXiv:2305.10429"
    needs_gradients = False
    _state_attrs = ("alpha_", "alpha_sum_", "excess_")

    def __init__(
        self, eta: float = 1.0, smoothing: float = 1e-3, init: str | Mapping[str, float] = "uniform"
    ) -> None:
        self.eta = eta
        self.smoothing = smoothing
        self.init = init

    def fit(self, domain_stats: DomainStats | Mapping[str, float]) -> DoReMiMixer:
        """Take the reference losses (``domain_stats.reference_losses``) and the start."""
        if not 0 <= self.smoothing < 1:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing!r}")
        if not np.isfinite(self.eta):
            raise ValueError(f"eta must be finite, got {self.eta!r}")
        stats = self._set_stats(domain_stats)
        if stats.reference_losses is None:
            raise ValueError(
                "DoReMi needs domain_stats.reference_losses: per-domain losses of a reference "
                "proxy (e.g. ProxyResult.val_losses of a run on uniform weights)"
            )
        self.reference_ = np.array([stats.reference_losses[d] for d in stats.domains])
        self.alpha_ = init_weights(self.init, stats)
        self.alpha_sum_ = np.zeros(len(self.alpha_))
        self.excess_ = np.zeros(len(self.alpha_))
        self._start_online()
        self._publish()
        return self

    def _publish(self) -> None:
        avg = self.alpha_sum_ / self.n_updates_ if self.n_updates_ else self.alpha_
        self.weights_ = finalize_weights(avg, self.domains_, "DoReMi average weights")
        self.current_weights_ = finalize_weights(self.alpha_, self.domains_, "DoReMi weights")

    def partial_fit(self, step_metrics: Any) -> dict[str, float]:
        """One update from the hook's per-domain losses; returns the current ``alpha``."""
        self._check_fitted()
        losses = step_metrics.domain_losses
        self._check_step_domains(losses, "domain_losses")
        check_finite(losses, "loss", step_metrics.step)
        x = np.array([float(losses[d]) for d in self.domains_])
        self.excess_ = np.maximum(x - self.reference_, 0.0)
        self.alpha_ = doremi_step(self.alpha_, x, self.reference_, self.eta, self.smoothing)
        self.alpha_sum_ = self.alpha_sum_ + self.alpha_
        self._record(step_metrics, finalize_weights(self.alpha_, self.domains_, "DoReMi weights"))
        self._publish()
        return dict(self.current_weights_)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._publish()

    def _extra_provenance(self) -> dict[str, Any]:
        out = super()._extra_provenance()
        out["reference_losses"] = dict(zip(self.domains_, self.reference_.tolist(), strict=True))
        out["output"] = "average of the weights over the updates"
        return out
