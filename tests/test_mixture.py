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


def test_notes_are_validated_and_round_trip(tmp_path):
    m = Mixture({"a": 0.5, "b": 0.5}, notes=["stage 'x' capped"])
    assert m.notes == ("stage 'x' capped",)
    back = Mixture.read_json(m.write_json(tmp_path / "m.json"))
    assert back == m and back.to_dict()["notes"] == ["stage 'x' capped"]
    assert "notes" not in Mixture({"a": 1.0}).to_dict()  # absent when there are none
    with pytest.raises(MixtureError, match="notes must be a list of strings"):
        Mixture({"a": 1.0}, notes="one string")


def staged_over_cap() -> Mixture:
    """Three stages; math asks for 3.2 epochs over the run, most of them in the short middle
    stage; code's share stays within its cap."""
    from curamix.mixture import Stage

    return Mixture(
        {"web": 0.7, "code": 0.2, "math": 0.1},
        schedule=[Stage(0.5, {"web": 0.3, "code": 0.2, "math": 0.5}, "stage1"),
                  Stage(0.7, {"web": 0.6, "code": 0.3, "math": 0.1}, "stage2")],
        total_tokens=1000.0,
        domain_tokens={"web": 10_000.0, "code": 200.0, "math": 50.0},
        provenance={"method": "dga"},
    )  # fmt: skip


def test_cap_epochs_over_the_whole_schedule_keeps_the_shape_and_names_the_stages():
    from curamix.mixture import cap_epochs, check_epoch_cap

    m = staged_over_cap()
    before = m.epochs()
    assert before["math"] == pytest.approx((0.5 * 0.1 + 0.2 * 0.5 + 0.3 * 0.1) * 1000 / 50)
    capped, over = cap_epochs(m, 2.0, budget="schedule")
    assert over == {"math": pytest.approx(before["math"])}
    after = capped.epochs()
    assert after["math"] == pytest.approx(2.0) and max(after.values()) <= 2.0 + 1e-9
    # math is scaled by the same factor in every stage: its schedule keeps its shape
    factor = 2.0 / before["math"]
    for s0, s1 in zip(m.stages(), capped.stages(), strict=True):
        assert s1.weights["math"] == pytest.approx(s0.weights["math"] * factor)
        # the stage's excess goes to its other domains in proportion to their weights
        rest0 = {d: w for d, w in s0.weights.items() if d != "math"}
        rest1 = {d: w for d, w in s1.weights.items() if d != "math"}
        scale = (1 - s1.weights["math"]) / (1 - s0.weights["math"])
        assert rest1 == pytest.approx({d: w * scale for d, w in rest0.items()})
    (note,) = capped.notes
    assert note.startswith("epoch cap: the schedule asked for 3.6 epochs of 'math'")
    assert "stage1 [0.5, 0.7) 2 " not in note and "stage1 [0.5, 0.7) 2" in note
    assert "max_epochs = 2" in note and capped.provenance["max_epochs"] == 2.0
    check_epoch_cap(capped)
    # the per-stage budget caps the short stage as if it lasted the whole run: flatter
    flat, _ = cap_epochs(m, 2.0)
    assert flat.schedule[0].weights["math"] == pytest.approx(0.1)
    assert capped.schedule[0].weights["math"] > 0.25 and not flat.notes


def test_cap_epochs_schedule_budget_spreads_and_refuses_what_cannot_fit():
    from curamix.mixture import Stage, cap_epochs

    m = staged_over_cap()
    # spreading math's excess pushes code over its own cap too: both capped, both named
    assert m.epochs()["code"] == pytest.approx(1.15)
    capped, over = cap_epochs(m, 1.2, budget="schedule")
    assert set(over) == {"math"} and max(capped.epochs().values()) <= 1.2 + 1e-9
    assert capped.epochs()["code"] == pytest.approx(1.2)
    math_note, code_note = capped.notes
    assert math_note.startswith("epoch cap: the schedule asked for 3.6 epochs of 'math'")
    assert code_note.startswith("epoch cap: the schedule, with the other domains' excess spread, "
                                "drew 1.35 epochs of 'code'")  # fmt: skip
    with pytest.raises(MixtureError, match="budget must be 'stage' or 'schedule', got 'run'"):
        cap_epochs(m, 2.0, budget="run")
    with pytest.raises(MixtureError, match=r"cannot be drawn within 2 epochs"):
        cap_epochs(Mixture(dict(m.weights), total_tokens=1e6,
                           domain_tokens=dict(m.domain_tokens)), 2.0, budget="schedule")  # fmt: skip
    only = Mixture(
        {"web": 0.5, "math": 0.5}, schedule=[Stage(0.5, {"math": 1.0}, "math-only")],
        total_tokens=1000.0, domain_tokens={"web": 1e4, "math": 100.0},
    )  # fmt: skip
    with pytest.raises(MixtureError, match=r"stage 'math-only' \[0\.5, 1\) gives its weight only"):
        cap_epochs(only, 2.0, budget="schedule")
