"""export_mixture writes every file atomically; export_command is what the CLI runs."""

from __future__ import annotations

import json

import pytest
import yaml

from curamix.export import FORMATS, export_command, export_mixture, load_mixture
from curamix.mixture import MixtureError
from tests.export import TEMPLATE, WEIGHTS, one_stage, two_stage


def test_export_megatron_every_stage_plus_notes(tmp_path):
    out = tmp_path / "exports"
    paths = export_mixture(two_stage(), "megatron", out, template=TEMPLATE)
    assert [p.name for p in paths] == [
        "mixture_megatron_main.txt",
        "mixture_megatron_upsample.txt",
        "mixture_megatron_run.sh",
        "mixture_megatron.md",
    ]
    main = paths[0].read_text()
    assert main.endswith("\n") and len(main.splitlines()) == 1  # --data-args-path form
    tokens = main.split()
    assert [float(w) for w in tokens[0::2]] == list(WEIGHTS.values())
    up = paths[1].read_text().split()
    assert [float(w) for w in up[0::2]] == list(two_stage().schedule[0].weights.values())
    notes = paths[3].read_text()
    assert "--data-args-path mixture_megatron_upsample.txt" in notes
    assert "epochs" in notes and "unique_tokens" in notes
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)  # no temp files


def test_export_single_file_formats(tmp_path):
    assert [p.name for p in export_mixture(two_stage(), "json", tmp_path)] == ["mixture_json.json"]
    # CSV cannot hold comments: its notes (and the decision behind the mixture) go beside it
    csv_file, notes = export_mixture(two_stage(), "csv", tmp_path)
    assert (csv_file.name, notes.name) == ("mixture_csv.csv", "mixture_csv.md")
    assert csv_file.read_text().startswith("domain,weight,") and "epochs" in notes.read_text()
    assert load_mixture(tmp_path / "mixture_json.json") == two_stage()
    (p,) = export_mixture(two_stage(), "levanter", tmp_path, total_steps=100, stem="run7")
    assert p.name == "run7_levanter.yaml"
    assert len(yaml.safe_load(p.read_text())["train_weights"]) == 2
    (p,) = export_mixture(one_stage(), "hf", tmp_path, template=TEMPLATE)
    assert p.name == "mixture_hf.py"
    compile(p.read_text(), str(p), "exec")


def test_export_validates_before_writing(tmp_path):
    out = tmp_path / "exports"
    with pytest.raises(MixtureError, match="no entry for domain 'books'"):
        export_mixture(
            two_stage(), "megatron", out, paths={d: "/x" for d in WEIGHTS if d != "books"}
        )
    with pytest.raises(MixtureError, match="sum to 1"):
        export_mixture({"web": 0.9}, "json", out)
    assert not out.exists()


def test_export_overwrites_atomically(tmp_path):
    old = export_mixture(one_stage(), "megatron", tmp_path, template="/old/{domain}")
    new = export_mixture(one_stage(), "megatron", tmp_path, template=TEMPLATE)
    assert [p.name for p in new] == ["mixture_megatron.txt", "mixture_megatron.md"]
    assert old == new and "/old/" not in new[0].read_text()
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]


def test_export_command_from_run_folder(tmp_path):
    run = tmp_path / "RUN"
    two_stage().write_json(run / "mixture.json")
    paths_file = tmp_path / "paths.json"
    paths_file.write_text(json.dumps({"math": "/special/math_text_document"}))
    files = export_command(
        run, "megatron", tmp_path / "out", prefix_template=TEMPLATE, paths_json=paths_file
    )
    assert [f.name for f in files][:2] == [
        "mixture_megatron_main.txt",
        "mixture_megatron_upsample.txt",
    ]
    assert "/special/math_text_document" in files[0].read_text()
    (one,) = export_command(
        run, "olmo", tmp_path / "out1", prefix_template=TEMPLATE, stage="upsample", seed=None
    )
    assert one.name == "mixture_olmo_core_upsample.yaml"
    assert "upsample" in one.read_text()
    (idx,) = export_command(run, "hf", tmp_path / "out2", prefix_template=TEMPLATE, stage="1")
    assert idx.name == "mixture_hf_upsample.py"
    inline = export_command(
        run,
        "llm-foundry",
        tmp_path / "out3",
        paths_json=json.dumps({d: f"/l/{d}" for d in WEIGHTS}),
    )
    assert [f.name for f in inline] == [
        "mixture_llm_foundry_main.yaml",
        "mixture_llm_foundry_upsample.yaml",
        "mixture_llm_foundry.md",  # the stages' token boundaries and how to resume
    ]


def test_export_command_errors_name_the_input(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"weights": {"web": 0.7, "code": 0.7}}')
    with pytest.raises(MixtureError, match=r"bad\.json") as err:
        export_command(bad, "megatron", tmp_path / "out", prefix_template=TEMPLATE)
    assert "sum to 1" in str(err.value)
    good = two_stage().write_json(tmp_path / "mix.json")
    broken = tmp_path / "paths.json"
    broken.write_text("{web: /x}")
    with pytest.raises(MixtureError, match=r"paths\.json: not valid JSON"):
        export_command(good, "megatron", tmp_path / "out", paths_json=broken)
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        export_command(good, "megatron", tmp_path / "out", paths_json=tmp_path / "missing.json")
    with pytest.raises(MixtureError, match="unknown export format"):
        export_command(good, "deepspeed", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_every_format_exports(tmp_path):
    for fmt in FORMATS:
        opts = {} if fmt in ("json", "yaml", "csv") else {"template": TEMPLATE}
        files = export_mixture(one_stage(), fmt, tmp_path / fmt, **opts)
        assert files and all(f.read_text() for f in files)
        assert files[0].suffix == "." + FORMATS[fmt].ext
