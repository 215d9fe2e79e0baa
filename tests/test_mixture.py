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


def test_cap_weights_water_fills_in_proportion():
    from curamix.mixture import cap_weights

    w = {"a": 0.5, "b": 0.3, "c": 0.2, "z": 0.0}
    # a is capped at 0.3; its 0.2 excess goes to b and c in proportion 3:2; z stays at 0.
    assert cap_weights(w, {"a": 0.3}) == pytest.approx({"a": 0.3, "b": 0.42, "c": 0.28, "z": 0})
    # spreading pushes c over its own cap: both are capped, b takes the rest
    assert cap_weights(w, {"a": 0.3, "c": 0.25}) == pytest.approx(
        {"a": 0.3, "b": 0.45, "c": 0.25, "z": 0.0}
    )
    assert cap_weights(w, {}) == pytest.approx(w)
    with pytest.raises(MixtureError, match=r"caps of the domains with weight > 0 sum to 0\.9 < 1"):
        cap_weights(w, {"a": 0.3, "b": 0.3, "c": 0.3, "z": 1.0})


def test_cap_epochs_bounds_every_domain_over_the_schedule():
    from curamix.mixture import cap_epochs, check_epoch_cap

    w = {"web": 0.6, "code": 0.3, "math": 0.1}
    m = Mixture(
        w,
        schedule=[upsampling_stage(w, ["math"], 4.0, 0.2)],
        total_tokens=1000.0,
        domain_tokens={"web": 10_000.0, "code": 100.0, "math": 40.0},
        provenance={"method": "dga"},
    )
    before = m.epochs()
    assert before["code"] > 2 and before["math"] > 2
    capped, over = cap_epochs(m, 2.0)
    assert set(over) == {"code", "math"} and over["code"] == pytest.approx(before["code"])
    assert max(capped.epochs().values()) <= 2.0 + 1e-9
    assert capped.epochs()["code"] == pytest.approx(2.0)
    assert capped.provenance == {"method": "dga", "max_epochs": 2.0}
    assert [s.start for s in capped.schedule] == [0.8]
    check_epoch_cap(capped)  # within its cap
    with pytest.raises(MixtureError, match=r"domain 'code' would be read 3 times, over .* 2"):
        check_epoch_cap(Mixture(w, total_tokens=1000.0, domain_tokens=dict(m.domain_tokens),
                                provenance={"max_epochs": 2.0}))  # fmt: skip
    with pytest.raises(MixtureError, match=r"1e\+05 tokens cannot be drawn within 2 epochs"):
        cap_epochs(Mixture(w, total_tokens=1e5, domain_tokens=dict(m.domain_tokens)), 2.0)


def test_decision_lines_render_the_recommendation():
    from curamix.mixture import decision_lines

    assert decision_lines({"method": "dga"}) == []
    rec = {
        "compute": 1e21, "n_params": 2.5e9, "n_tokens": 6.7e10, "predicted_loss": 2.1,
        "intervals": {"n_params": [2e9, 3e9], "n_tokens": [5.5e10, 8e10],
                      "predicted_loss": [2.05, 2.15]},
        "ci_level": 0.9, "size_source": "fitted ChinchillaLaw",
        "identification": {"identified": False, "reasons": ["only 2 distinct N values"]},
        "extrapolation": {"n_params": 25.0, "tokens": 6.7, "compute": 170.0},
        "notes": ["epoch cap: code capped"],
    }  # fmt: skip
    lines = decision_lines({"recommendation": rec})
    assert lines[0] == (
        "recommended for C = 1e+21 FLOPs: N = 2.5e+09 parameters [2e+09 - 3e+09], "
        "D = 6.7e+10 tokens [5.5e+10 - 8e+10], predicted loss 2.1 [2.05 - 2.15] "
        "(90% bootstrap intervals)"
    )
    assert lines[1:] == [
        "size source: fitted ChinchillaLaw",
        "fit NOT identified: only 2 distinct N values",
        "extrapolation from the largest proxy run: N x25, D x6.7, C x170",
        "note: epoch cap: code capped",
    ]
