"""The exploration notebook runs, cell by cell, on a fresh demo run."""

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore_run.ipynb"


@pytest.mark.spark
def test_explore_run_notebook_executes(spark, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from curamix.config import load_config
    from curamix.demo import make_demo_corpus, write_demo_pipeline
    from curamix.runner import run_pipeline

    make_demo_corpus(tmp_path, n_docs=200, seed=0)
    run_pipeline(load_config(write_demo_pipeline(tmp_path), use_env=False), spark=spark)
    monkeypatch.setenv("CURAMIX_RUN", str(tmp_path / "run"))
    ns: dict = {}
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    for cell in cells:
        exec(compile("".join(cell["source"]), str(NOTEBOOK), "exec"), ns)
    assert ns["docs"].height == ns["ingest"].counts["out"]
    assert ns["quarantine"].height == ns["ingest"].counts["quarantined"] == 8
    assert set(ns["ledger"]["decision"].unique()) == {"kept", "quarantined"}
