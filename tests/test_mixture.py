"""The mixture artifact refuses invalid weights and schedules, and accounts tokens and epochs."""

from __future__ import annotations

import math

import pytest

from curamix.mixture import Mixture, MixtureError, Stage, upsampling_stage


def test_valid_mixture_tokens_epochs_roundtrip(tmp_path):
    m = Mixture(
        {"web": 0.6, "code": 0.3, "math": 0.1},
        schedule=[upsampling_stage({"web": 0.6, "code": 0.3, "math": 0.1}, ["math"], 3.0, 0.2)],
        total_tokens=1000.0,
        domain_tokens={"web": 10_000.0, "code": 100.0, "math": 50.0},
        provenance={"method": "test", "seed": 1},
    )
    up = m.schedule[0]
    assert up.start == pytest.approx(0.8)
    assert up.weights["math"] == pytest.approx(0.3 / 1.2)
    assert sum(up.weights.values()) == pytest.approx(1.0)
    tok = m.tokens_per_domain()
    assert sum(tok.values()) == pytest.approx(1000.0)
    assert tok["math"] == pytest.approx(0.1 * 800 + 0.25 * 200)
    assert m.epochs()["code"] == pytest.approx(tok["code"] / 100.0)
    path = m.write_json(tmp_path / "mix.json")
    back = Mixture.read_json(path)
    assert back.to_dict() == m.to_dict()
    with pytest.raises(TypeError):
        m.weights["web"] = 1.0  # frozen


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ({"a": 0.5, "b": 0.6}, "sum to 1"),
        ({"a": 1.2, "b": -0.2}, "'b' must be finite and >= 0"),
        ({"a": math.nan, "b": 1.0}, "'a' must be finite"),
        ({}, "no domains"),
        ({"a": "x"}, "not a number"),
    ],
)
def test_invalid_weights_are_refused_not_renormalised(weights, match):
    with pytest.raises(MixtureError, match=match):
        Mixture(weights)


def test_invalid_schedules_are_refused():
    w = {"a": 0.5, "b": 0.5}
    with pytest.raises(MixtureError, match="unknown domains"):
        Mixture(w, schedule=[Stage(0.9, {"a": 0.5, "c": 0.5})])
    with pytest.raises(MixtureError, match="must start after"):
        Mixture(w, schedule=[Stage(0.9, w), Stage(0.8, w)])
    with pytest.raises(MixtureError, match="start must be in"):
        Stage(1.0, w)
    with pytest.raises(MixtureError, match="domain_tokens lacks"):
        Mixture(w, total_tokens=10.0, domain_tokens={"a": 1.0})
    with pytest.raises(MixtureError, match="unknown domains"):
        upsampling_stage(w, ["zzz"])
