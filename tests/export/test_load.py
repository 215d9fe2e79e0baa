"""load_mixture reads a Mixture file, a recommendation, or a run folder, and names bad files."""

from __future__ import annotations

import json

import pytest

from curamix.export import as_mixture, load_mixture, render_yaml
from curamix.mixture import Mixture, MixtureError
from curamix.scaling_laws.decide import Recommendation
from tests.export import WEIGHTS, two_stage


def _recommendation(mixture: Mixture | None) -> dict:
    rec = Recommendation(
        compute=1e20,
        n_params=1e9,
        n_tokens=2e9,
        predicted_loss=2.5,
        keep_fraction=0.3,
        keep_fraction_source="test",
        size_source="test",
        mixture=mixture,
        mixture_source="test" if mixture else None,
    )
    return rec.to_dict()


def test_load_mixture_file_roundtrips(tmp_path):
    m = two_stage()
    path = m.write_json(tmp_path / "mix.json")
    back = load_mixture(path)
    assert back == m
    assert back.domains == list(WEIGHTS)
    assert back.schedule[0].name == "upsample"


def test_load_recommendation_takes_its_mixture(tmp_path):
    m = two_stage()
    path = tmp_path / "recommendation.json"
    path.write_text(json.dumps(_recommendation(m)))
    back = load_mixture(path)
    assert back == m


def test_load_run_folder_reads_run_mixture_json(tmp_path):
    run = tmp_path / "RUN"
    two_stage().write_json(run / "mixture.json")
    assert load_mixture(run) == two_stage()
    assert load_mixture(str(run)) == two_stage()


def test_load_yaml_export_roundtrips(tmp_path):
    path = tmp_path / "mix.yaml"
    path.write_text(render_yaml(two_stage()))
    assert load_mixture(path) == two_stage()


def test_load_mixer_output(tmp_path):
    from curamix.mixers import TemperatureMixer, with_upsampling

    mixer = TemperatureMixer(tau=2.0).fit({"web": 9e9, "code": 1e9, "math": 2e8})
    m = with_upsampling(mixer, ["math"], factor=2.0)
    m.write_json(tmp_path / "RUN" / "mixture.json")
    back = load_mixture(tmp_path / "RUN")
    assert back.weights == m.weights and back.schedule == m.schedule
    assert back.provenance["method"] == m.provenance["method"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"weights": {"a": 0.5, "b": 0.6}}', "sum to 1"),
        ('{"weights": {"a": 1.2, "b": -0.2}}', "'b' must be finite and >= 0"),
        (
            '{"weights": {"a": 0.5, "b": 0.5}, "schedule": [{"start": 0.5, "weights": {"z": 1}}]}',
            "unknown domains",
        ),
        ('{"weights": {"a": 1.0}, "schedule": [{"weights": {"a": 1}}]}', "malformed"),
        ("{not json", "not valid JSON"),
        ("[0.5, 0.5]", "expected a JSON object"),
        ('{"domains": ["a"]}', "neither a mixture"),
        ('{"mixture": {"weights": {"a": 0.7}}}', "sum to 1"),
    ],
)
def test_invalid_mixture_file_is_refused_naming_the_file(tmp_path, content, match):
    path = tmp_path / "bad_mixture.json"
    path.write_text(content)
    with pytest.raises(MixtureError, match=match) as err:
        load_mixture(path)
    assert str(path) in str(err.value)


def test_recommendation_without_mixture_is_refused(tmp_path):
    path = tmp_path / "rec.json"
    path.write_text(json.dumps(_recommendation(None)))
    with pytest.raises(MixtureError, match="has no mixture") as err:
        load_mixture(path)
    assert str(path) in str(err.value)


def test_missing_inputs_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mixture\.json"):
        load_mixture(tmp_path)  # a folder without RUN/mixture.json
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        load_mixture(tmp_path / "nope.json")


def test_as_mixture_validates_plain_mappings():
    assert as_mixture(WEIGHTS).domains == list(WEIGHTS)
    with pytest.raises(MixtureError, match="'web' must be finite and >= 0"):
        as_mixture({"web": -0.1, "code": 1.1})
    with pytest.raises(MixtureError, match="sum to 1"):
        as_mixture({"web": 0.3, "code": 0.3})
