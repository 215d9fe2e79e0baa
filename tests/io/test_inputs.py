from pathlib import Path

import pytest

from curamix.config import ConfigError, IngestConfig, InputSpec
from curamix.io.inputs import expand_inputs
from tests.conftest import write_jsonl


def test_folder_expansion_domains_and_ignored(bad_inputs):
    folder, expected = bad_inputs
    ex = expand_inputs(IngestConfig(inputs=[InputSpec(path=str(folder))]))
    names = sorted(Path(f).name for f in ex.files)
    assert names == sorted(expected["per_file"])
    assert [Path(f).name for f in ex.ignored_files] == expected[
        "ignored"
    ]  # README.md; .hidden skipped
    domains = {Path(p).name: d for u in ex.units for p, d in zip(u.paths, u.domains, strict=True)}
    assert domains["trunc.jsonl.gz"] == "trunc" and domains["a.txt"] == "texts"
    assert all(fp["size"] > 0 or Path(fp["path"]).name == "c.txt" for fp in ex.fingerprints)


def test_glob_and_domain_map(tmp_path):
    for name in ["news-1.jsonl", "news-2.jsonl", "wiki.jsonl"]:
        write_jsonl(tmp_path / "d" / name, [{"text": "x"}])
    ex = expand_inputs(
        IngestConfig(
            inputs=[InputSpec(path=str(tmp_path / "d" / "*.jsonl"), domain_map={"news-*": "news"})]
        )
    )
    assert sorted(d for u in ex.units for d in u.domains) == ["news", "news", "wiki"]
    ex = expand_inputs(IngestConfig(inputs=[InputSpec(path=str(tmp_path / "d"), domain="all")]))
    assert {d for u in ex.units for d in u.domains} == {"all"}


def test_missing_and_empty_inputs_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"ingest\.inputs\.0\.path: nothing exists at"):
        expand_inputs(IngestConfig(inputs=[InputSpec(path=str(tmp_path / "nope"))]))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("x")
    with pytest.raises(ConfigError, match=r"ingest\.inputs\.0\.path: no data files"):
        expand_inputs(IngestConfig(inputs=[InputSpec(path=str(tmp_path / "empty"))]))
    with pytest.raises(ConfigError, match="not a datasets save_to_disk folder"):
        expand_inputs(IngestConfig(inputs=[InputSpec(path=str(tmp_path / "empty"), format="hf")]))


def test_a_file_read_twice_is_an_error(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}])
    spec = InputSpec(path=str(tmp_path))
    with pytest.raises(ConfigError, match=r"ingest\.inputs\.1\.path: .*already read"):
        expand_inputs(IngestConfig(inputs=[spec, InputSpec(path=str(tmp_path / "a.jsonl"))]))


def test_explicit_format_filters_files(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}])
    (tmp_path / "b.txt").write_text("y")
    ex = expand_inputs(IngestConfig(inputs=[InputSpec(path=str(tmp_path), format="txt")]))
    assert [Path(f).name for f in ex.files] == ["b.txt"] and [
        Path(f).name for f in ex.ignored_files
    ] == ["a.jsonl"]
