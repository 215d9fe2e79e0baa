from pathlib import Path

import pytest
from pydantic import ValidationError

from curamix.config import (
    ConfigError,
    PipelineConfig,
    build_config,
    config_hash,
    env_overrides,
    load_config,
)


def _base(tmp_path: Path) -> dict:
    (tmp_path / "raw").mkdir(parents=True)
    return {"run_dir": "run", "ingest": {"inputs": [{"path": "raw"}]}}


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    cfg_file = tmp_path / "pipeline.yaml"
    cfg_file.write_text("run_dir: run\ningest:\n  inputs:\n    - path: raw\n")
    cfg = load_config(cfg_file, use_env=False)
    assert cfg.run_dir == str((tmp_path / "run").resolve())
    assert cfg.ingest.inputs[0].path == str((tmp_path / "raw").resolve())
    assert cfg.stages == ["ingest"]


def test_errors_name_the_field_and_echo_the_bad_value(tmp_path):
    data = _base(tmp_path)
    data["ingest"]["max_doc_bytes"] = -5
    with pytest.raises(ConfigError) as e:
        build_config(data, base_dir=tmp_path, use_env=False)
    assert "ingest.max_doc_bytes" in str(e.value) and "-5" in str(e.value)


def test_unknown_fields_and_stages_are_rejected(tmp_path):
    data = _base(tmp_path)
    data["ingest"]["max_doc_byts"] = 10
    with pytest.raises(ConfigError, match=r"ingest\.max_doc_byts.*(?i:extra)"):
        build_config(data, base_dir=tmp_path, use_env=False)
    with pytest.raises(ConfigError, match=r"stages.*unknown stage.*'dedupe'"):
        build_config(
            {**_base(tmp_path / "x"), "stages": ["ingest", "dedupe"]},
            base_dir=tmp_path,
            use_env=False,
        )


def test_listed_stage_needs_its_section():
    with pytest.raises(ConfigError, match="has no 'ingest:' section"):
        build_config({"stages": ["ingest"]}, use_env=False)


def test_domain_and_domain_field_are_exclusive(tmp_path):
    data = _base(tmp_path)
    data["ingest"]["inputs"][0].update(domain="a", domain_field="b")
    with pytest.raises(ConfigError, match="either domain"):
        build_config(data, base_dir=tmp_path, use_env=False)


def test_bad_memory_size_is_echoed(tmp_path):
    with pytest.raises(ConfigError, match=r"spark\.driver_memory.*'lots'"):
        build_config(
            {**_base(tmp_path), "spark": {"driver_memory": "lots"}},
            base_dir=tmp_path,
            use_env=False,
        )


def test_cli_overrides_and_env_overrides(tmp_path, monkeypatch):
    data = _base(tmp_path)
    cfg = build_config(
        data,
        ["ingest.max_doc_bytes=2000", "spark.conf={'spark.x': 'y'}"],
        base_dir=tmp_path,
        use_env=False,
    )
    assert cfg.ingest.max_doc_bytes == 2000 and cfg.spark.conf == {"spark.x": "y"}
    env = {
        "CURAMIX_SPARK__MASTER": "local[1]",
        "CURAMIX_SEED": "7",
        "CURAMIX_REQUIRE_REALDATA": "1",
    }
    assert env_overrides(env) == ["seed=7", "spark.master=local[1]"]
    monkeypatch.setenv("CURAMIX_SPARK__MASTER", "local[1]")
    assert build_config(data, base_dir=tmp_path).spark.master == "local[1]"
    with pytest.raises(ConfigError, match="must look like"):
        build_config(data, ["nonsense"], base_dir=tmp_path, use_env=False)


def test_config_is_frozen_and_hash_is_stable(tmp_path):
    cfg = build_config(_base(tmp_path), base_dir=tmp_path, use_env=False)
    with pytest.raises(ValidationError, match="frozen"):
        cfg.seed = 3
    assert config_hash(cfg.ingest) == config_hash(
        build_config(_base(tmp_path / "y"), base_dir=tmp_path, use_env=False).ingest
    )
    assert config_hash(cfg.ingest) != config_hash(
        cfg.ingest.model_copy(update={"max_doc_bytes": 5})
    )


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_dir: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(lst)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_defaults(tmp_path):
    cfg = PipelineConfig.model_validate(
        build_config(_base(tmp_path), base_dir=tmp_path, use_env=False).model_dump()
    )
    assert cfg.spark.master == "local[*]" and not cfg.spark.ui
    assert cfg.ingest.max_doc_bytes == 1_000_000 and cfg.ingest.oversize == "quarantine"
