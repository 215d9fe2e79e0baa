"""Baselines (uniform, natural, temperature), DomainStats checks, the mixture artifact."""

from __future__ import annotations

import itertools
import json
import math
import warnings

import numpy as np
import pytest

from curamix.mixers import (
    DomainStats,
    NaturalMixer,
    NotFittedError,
    TemperatureMixer,
    UniformMixer,
    temperature_weights,
)
from curamix.mixture import Mixture
from tests.mixers import assert_valid

TOKENS = {"web": 6e6, "code": 3e6, "math": 1e6}


def test_uniform_and_natural():
    u = UniformMixer().fit(TOKENS)
    assert u.weights_ == pytest.approx(dict.fromkeys(TOKENS, 1 / 3))
    n = NaturalMixer().fit(DomainStats(TOKENS))
    assert n.weights_ == pytest.approx({"web": 0.6, "code": 0.3, "math": 0.1})
    assert_valid(u.weights_, TOKENS)
    assert_valid(n.weights_, TOKENS)


def test_temperature_limits():
    nat = NaturalMixer().fit(TOKENS).weights_
    assert TemperatureMixer(tau=1.0).fit(TOKENS).weights_ == pytest.approx(nat)
    assert TemperatureMixer(tau=math.inf).fit(TOKENS).weights_ == pytest.approx(
        dict.fromkeys(TOKENS, 1 / 3)
    )
    # monotone in tau: the smallest domain gains, approaching 1/3 from below
    smalls = [TemperatureMixer(tau=t).fit(TOKENS).weights_["math"] for t in (1, 2, 5, 50, 1e6)]
    assert all(a < b for a, b in itertools.pairwise(smalls))
    assert smalls[-1] == pytest.approx(1 / 3, abs=1e-5)
    # tau = 2 is the square root of the shares, renormalised
    s = np.sqrt([0.6, 0.3, 0.1])
    assert list(TemperatureMixer(tau=2).fit(TOKENS).weights_.values()) == pytest.approx(
        list(s / s.sum())
    )
    # a tiny tau puts (almost) everything on the largest domain without underflowing to NaN
    w = temperature_weights(np.array([0.6, 0.3, 0.1]), 1e-3)
    assert np.isfinite(w).all() and w[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="tau must be > 0"):
        TemperatureMixer(tau=0).fit(TOKENS)


def test_domain_without_tokens_is_named():
    for bad in (0, -5, float("nan")):
        with pytest.raises(ValueError, match=r"domain 'math' has .* tokens"):
            NaturalMixer().fit({"web": 1e6, "math": bad})
    with pytest.raises(ValueError, match="empty"):
        UniformMixer().fit({})
    with pytest.raises(ValueError, match="not a number"):
        DomainStats({"web": "lots"})


def test_reference_losses_checked():
    with pytest.raises(ValueError, match=r"unknown domains \['wiki'\]"):
        DomainStats(TOKENS, reference_losses={"web": 3, "code": 2, "math": 2, "wiki": 3})
    with pytest.raises(ValueError, match=r"lacks domains \['math'\]"):
        DomainStats(TOKENS, reference_losses={"web": 3, "code": 2})
    with pytest.raises(ValueError, match="reference loss of domain 'code'"):
        DomainStats(TOKENS, reference_losses={"web": 3, "code": float("nan"), "math": 2})


def test_mixture_artifact_with_provenance(tmp_path):
    stats = DomainStats(TOKENS, total_tokens=2e7, inputs={"manifest": "abc123"})
    mixer = TemperatureMixer(tau=3).fit(stats)
    mix = mixer.mixture()
    assert isinstance(mix, Mixture)
    assert dict(mix.weights) == mixer.weights_
    assert mix.total_tokens == 2e7 and dict(mix.domain_tokens) == TOKENS
    p = mix.provenance
    assert p["method"] == "temperature" and p["parameters"] == {"tau": 3}
    assert p["inputs"]["manifest"] == "abc123"
    assert p["inputs"]["domain_stats_sha256"] == stats.digest()
    assert "arXiv" in p["reference"]
    json.dumps(mix.to_dict())  # serialisable
    back = Mixture.read_json(mix.write_json(tmp_path / "m.json"))
    assert dict(back.weights) == pytest.approx(dict(mix.weights))
    assert mix.epochs()["math"] == pytest.approx(2e7 * mixer.weights_["math"] / 1e6)


def test_not_fitted_and_no_silent_renormalisation():
    with pytest.raises(NotFittedError):
        UniformMixer().mixture()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the baselines never renormalise input silently
        NaturalMixer().fit({"a": 1, "b": 2})
