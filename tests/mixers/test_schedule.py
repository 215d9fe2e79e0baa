"""End-of-training upsampling on top of any mixer's weights."""

from __future__ import annotations

import pytest

from curamix.mixers import DomainStats, NaturalMixer, with_upsampling
from curamix.mixture import Mixture, Stage

STATS = DomainStats({"web": 7e6, "code": 2e6, "math": 1e6}, total_tokens=1e7)


def test_upsampling_last_15_percent():
    mixer = NaturalMixer().fit(STATS)
    mix = with_upsampling(mixer, ["math"], factor=3.0)
    assert isinstance(mix, Mixture)
    assert dict(mix.weights) == pytest.approx({"web": 0.7, "code": 0.2, "math": 0.1})
    (stage,) = mix.schedule
    assert stage.start == pytest.approx(0.85) and stage.name == "upsample"
    assert dict(stage.weights) == pytest.approx({"web": 0.7 / 1.2, "code": 0.2 / 1.2,
                                                 "math": 0.3 / 1.2})  # fmt: skip
    # tokens over the whole run: 85% natural, 15% upsampled
    assert mix.tokens_per_domain()["math"] == pytest.approx(1e7 * (0.85 * 0.1 + 0.15 * 0.25))
    assert mix.provenance["method"] == "natural"
    assert mix.provenance["upsampling"]["domains"] == ["math"]


def test_sources_and_errors():
    mix = with_upsampling({"a": 0.5, "b": 0.5}, ["b"], last_fraction=0.2)
    assert mix.schedule[0].start == pytest.approx(0.8)
    staged = Mixture({"a": 0.5, "b": 0.5}, schedule=[Stage(0.5, {"a": 0.9, "b": 0.1})])
    out = with_upsampling(staged, ["b"], factor=2.0)
    assert [s.start for s in out.schedule] == pytest.approx([0.5, 0.85])
    assert dict(out.schedule[1].weights) == pytest.approx({"a": 0.9 / 1.1, "b": 0.2 / 1.1})
    with pytest.raises(ValueError, match="weights must sum to 1"):
        with_upsampling({"a": 0.5, "b": 0.4}, ["b"])
    with pytest.raises(ValueError, match=r"unknown domains \['c'\]"):
        with_upsampling({"a": 0.5, "b": 0.5}, ["c"])
    with pytest.raises(ValueError, match="at least one domain"):
        with_upsampling({"a": 0.5, "b": 0.5}, [])
    with pytest.raises(ValueError, match="sequence of domain names"):
        with_upsampling({"a": 0.5, "b": 0.5}, "b")
    late = Mixture({"a": 0.5, "b": 0.5}, schedule=[Stage(0.9, {"a": 1.0})])
    with pytest.raises(ValueError, match=r"already has a stage starting at 0\.9"):
        with_upsampling(late, ["b"])
