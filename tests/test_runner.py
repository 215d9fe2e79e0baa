import pytest

from curamix.config import build_config
from curamix.runner import run_pipeline, run_status
from tests.conftest import write_jsonl


@pytest.mark.spark
def test_status_goes_pending_done_stale(spark, tmp_path):
    data = tmp_path / "in" / "a.jsonl"
    write_jsonl(data, [{"text": "one"}, {"text": "two"}])
    cfg = build_config(
        {"run_dir": str(tmp_path / "run"), "ingest": {"inputs": [{"path": str(data)}]}},
        use_env=False,
    )
    (tmp_path / "run").mkdir()
    assert run_status(tmp_path / "run") == []
    res = run_pipeline(cfg, spark=spark)
    assert (tmp_path / "run" / "pipeline.yaml").is_file()
    [st] = run_status(tmp_path / "run")
    assert (st.stage, st.state, st.folder) == ("ingest", "done", res["ingest"].path.name)
    assert st.counts["kept"] == 2
    write_jsonl(data, [{"text": "one"}, {"text": "two"}, {"text": "three"}])
    [st] = run_status(tmp_path / "run")
    assert st.state == "stale" and "changed" in st.detail
    run_pipeline(cfg, spark=spark)
    [st] = run_status(tmp_path / "run")
    assert st.state == "done" and st.counts["kept"] == 3


@pytest.mark.spark
def test_status_survives_an_unreadable_pipeline_yaml(spark, tmp_path):
    data = tmp_path / "a.jsonl"
    write_jsonl(data, [{"text": "one"}])
    cfg = build_config(
        {"run_dir": str(tmp_path / "run"), "ingest": {"inputs": [{"path": str(data)}]}},
        use_env=False,
    )
    run_pipeline(cfg, spark=spark)
    (tmp_path / "run" / "pipeline.yaml").write_text(
        "ingest:\n  inputs: [{path: x}]\n  old_field: 1\n"
    )
    rows = run_status(tmp_path / "run")
    assert rows[0].state == "error" and "old_field" in rows[0].detail
    assert (rows[1].stage, rows[1].state, rows[1].counts["kept"]) == ("ingest", "done", 1)
