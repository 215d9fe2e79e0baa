"""DoReMi: excess loss raises a domain's weight, smoothing, the averaged output, checks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from curamix.mixers import DomainStats, DoReMiMixer, doremi_step
from tests.mixers import assert_valid, make_metrics

DOMAINS = ["web", "code", "math"]
REF = {"web": 3.0, "code": 2.0, "math": 2.5}
STATS = DomainStats({"web": 5e6, "code": 3e6, "math": 1e6}, reference_losses=REF)


def test_constant_positive_excess_raises_that_domain():
    mixer = DoReMiMixer(eta=1.0).fit(STATS)
    assert mixer.weights_ == pytest.approx(dict.fromkeys(DOMAINS, 1 / 3))
    losses = {"web": 3.0, "code": 1.5, "math": 3.0}  # only math is above its reference (+0.5)
    current = []
    for step in range(1, 6):
        w = mixer(make_metrics(losses=losses, step=step * 10))
        assert_valid(w, DOMAINS)
        current.append(w["math"])
    assert all(a < b for a, b in itertools.pairwise(current))
    assert mixer.excess_ == pytest.approx([0.0, 0.0, 0.5])
    # the output is the average of the weights over the updates, not the last one
    assert mixer.weights_["math"] == pytest.approx(np.mean(current))
    assert mixer.weights_["math"] < mixer.current_weights_["math"]
    assert mixer.weights_["math"] > 1 / 3
    assert mixer.weights_["web"] == pytest.approx(mixer.weights_["code"])  # both at 0 excess
    mix = mixer.mixture()
    assert mix.provenance["output"].startswith("average")
    assert mix.provenance["reference_losses"] == REF


def test_step_formula_and_smoothing():
    a = np.array([0.5, 0.3, 0.2])
    out = doremi_step(a, np.array([2.0, 1.0, 4.0]), np.array([1.5, 1.2, 3.0]), eta=1.0,
                      smoothing=1e-3)  # fmt: skip
    z = a * np.exp([0.5, 0.0, 1.0])
    z /= z.sum()
    assert out == pytest.approx((1 - 1e-3) * z + 1e-3 / 3)
    # smoothing keeps a domain alive even when the others' excess is enormous
    out = doremi_step(np.full(3, 1 / 3), np.array([1e4, 0, 0]), np.zeros(3))
    assert out.min() >= 1e-3 / 3 - 1e-15


def test_needs_reference_and_rejects_nan():
    with pytest.raises(ValueError, match=r"needs domain_stats\.reference_losses"):
        DoReMiMixer().fit({"web": 1e6, "code": 1e6})
    mixer = DoReMiMixer().fit(STATS)
    with pytest.raises(ValueError, match="loss of domain 'code' is nan at step 7"):
        mixer(make_metrics(losses={"web": 3.0, "code": float("nan"), "math": 2.0}, step=7))
    with pytest.raises(ValueError, match=r"lack domains \['math'\]"):
        mixer(make_metrics(losses={"web": 3.0, "code": 2.0}))
    with pytest.raises(ValueError, match=r"not fitted on; known"):
        mixer(make_metrics(losses={"web": 3.0, "code": 2.0, "math": 2.0, "wiki": 1.0}))
    assert mixer.n_updates_ == 0
    assert not DoReMiMixer.needs_gradients


def test_state_round_trip(tmp_path):
    a = DoReMiMixer().fit(STATS)
    a(make_metrics(losses={"web": 3.5, "code": 2.0, "math": 2.0}, step=1))
    torch.save(a.state_dict(), tmp_path / "s.pt")
    b = DoReMiMixer().fit(STATS)
    b.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert b.weights_ == pytest.approx(a.weights_)
    m = make_metrics(losses={"web": 3.0, "code": 2.4, "math": 2.0}, step=2)
    assert a(m) == pytest.approx(b(m)) and a.weights_ == pytest.approx(b.weights_)
