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
