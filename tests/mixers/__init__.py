"""Tests of curamix.mixers; helpers shared by the test modules."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def make_metrics(
    grads: Mapping[str, np.ndarray] | None = None,
    target: np.ndarray | None = None,
    losses: Mapping[str, float] | None = None,
    step: int = 100,
    weights: Mapping[str, float] | None = None,
    lr: float = 1e-3,
):
    """A :class:`curamix.proxy.train.StepMetrics` as the proxy hook would pass it."""
    import torch

    from curamix.proxy.train import StepMetrics

    domains = list(grads or losses or {})
    return StepMetrics(
        step=step,
        tokens=step * 1024,
        lr=lr,
        weights=dict(weights or dict.fromkeys(domains, 1.0 / len(domains))),
        domain_losses=dict(losses or dict.fromkeys(domains, 3.0)),
        target_loss=None,
        tokens_seen=dict.fromkeys(domains, 0),
        epochs=dict.fromkeys(domains, 0.0),
        train_loss=3.0,
        domain_grads=(
            None
            if grads is None
            else {d: torch.as_tensor(g, dtype=torch.float32) for d, g in grads.items()}
        ),
        target_grad=None if target is None else torch.as_tensor(target, dtype=torch.float32),
    )


def assert_valid(weights: Mapping[str, float], domains) -> None:
    """Weights over exactly ``domains``, finite, non-negative, summing to 1."""
    assert list(weights) == list(domains)
    w = np.array(list(weights.values()))
    assert np.isfinite(w).all() and (w >= 0).all()
    assert abs(w.sum() - 1.0) < 1e-9
