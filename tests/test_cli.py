import json

import pytest
from typer.testing import CliRunner

from curamix.cli import app
from tests.conftest import write_jsonl

runner = CliRunner()


def test_bad_config_exits_2_with_the_field(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("ingest:\n  inputs: [{path: x}]\n  oversize: explode\n")
    out = runner.invoke(app, ["run", str(cfg)])
    assert out.exit_code == 2
    assert "ingest.oversize" in out.output and "'explode'" in out.output


def test_status_of_missing_run(tmp_path):
    out = runner.invoke(app, ["status", str(tmp_path / "nope")])
    assert out.exit_code == 2 and "no run folder" in out.output


def test_demo_without_run_prints_its_outputs(tmp_path):
    out = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--n-docs", "200", "--no-run"])
    assert out.exit_code == 0, out.output
    assert "synthetic" in out.output and str(tmp_path / "d" / "raw") in out.output.replace("\n", "")
    assert (tmp_path / "d" / "pipeline.yaml").is_file()


@pytest.mark.spark
def test_ingest_then_status(spark, tmp_path):
    write_jsonl(
        tmp_path / "in" / "web.jsonl",
        [{"id": f"w{i}", "text": f"page {i}"} for i in range(10)] + [b"{oops"],
    )
    out = runner.invoke(app, ["ingest", str(tmp_path / "in"), "--run-dir", str(tmp_path / "run")])
    assert out.exit_code == 0, out.output
    assert "invalid_json=1" in out.output and "manifest" in out.output
    status = runner.invoke(app, ["status", str(tmp_path / "run"), "--json"])
    rows = json.loads(status.output)
    assert rows[0]["stage"] == "ingest" and rows[0]["state"] == "done"
    assert rows[0]["counts"]["in"] == 11 and rows[0]["counts"]["quarantined"] == 1
    text = runner.invoke(app, ["status", str(tmp_path / "run")]).output
    assert "remaining: nothing" in text


@pytest.mark.spark
def test_score_dsir_then_select(spark, tmp_path):
    rows = [
        {"id": f"m{i}", "text": f"add {i} and {i + 1} to get {2 * i + 1} apples"} for i in range(30)
    ]
    rows += [
        {"id": f"p{i}", "text": f"the poem number {i} sings of rivers and moons"} for i in range(30)
    ]
    write_jsonl(tmp_path / "in" / "pool.jsonl", rows)
    write_jsonl(tmp_path / "target.jsonl", [{"text": "add 3 and 4 to get 7 apples"}])
    assert (
        runner.invoke(
            app, ["ingest", str(tmp_path / "in"), "--run-dir", str(tmp_path / "run")]
        ).exit_code
        == 0
    )
    out = runner.invoke(
        app,
        [
            "score",
            "dsir",
            str(tmp_path / "run"),
            "--target",
            str(tmp_path / "target.jsonl"),
            "--min-example-length",
            "0",
            "--laplace",
            "1",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "eligible" in out.output and "scores" in out.output
    out = runner.invoke(app, ["select", str(tmp_path / "run"), "--k", "20", "--top-k"])
    assert out.exit_code == 0, out.output
    assert "report.md" in out.output and "KL reduction" in out.output
    rows = json.loads(runner.invoke(app, ["status", str(tmp_path / "run"), "--json"]).output)
    assert [(r["stage"], r["state"]) for r in rows] == [
        ("ingest", "done"),
        ("dsir", "done"),
        ("select", "done"),
    ]
    import pyarrow.parquet as pq

    from curamix.io.store import latest_result

    picked = pq.read_table(latest_result(tmp_path / "run", "select").data_path, columns=["id"])[
        "id"
    ].to_pylist()
    assert len(picked) == 20 and all(p.startswith("m") for p in picked)
    bad = runner.invoke(app, ["select", str(tmp_path / "run"), "--k", "5", "--fraction", "0.1"])
    assert bad.exit_code == 2 and "exactly one of k" in bad.output


@pytest.mark.spark
def test_decontam_then_dsir_reads_the_decontaminated_pool(spark, tmp_path):
    leaked = "the quick brown fox jumps over the lazy dog while seven tired judges count the golden coins"
    rows = [
        {"id": f"d{i}", "text": f"ordinary document number {i} about rivers and hills"}
        for i in range(20)
    ]
    rows.append({"id": "leak", "text": f"Intro words. {leaked.upper()}! and more text after it"})
    write_jsonl(tmp_path / "in" / "pool.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", [{"id": "q1", "text": leaked}])
    run = tmp_path / "run"
    assert (
        runner.invoke(app, ["ingest", str(tmp_path / "in"), "--run-dir", str(run)]).exit_code == 0
    )
    out = runner.invoke(app, ["decontam", str(run), "--test", str(tmp_path / "test.jsonl")])
    assert out.exit_code == 0, out.output
    assert "contaminated: 1 of 21 documents, removed 1, kept 20" in " ".join(out.output.split())
    # DSIR now scores the decontaminated pool: 20 documents, not 21.
    out = runner.invoke(app, ["score", "dsir", str(run), "--target-domain", "pool",
                              "--min-example-length", "0"])  # fmt: skip
    assert out.exit_code == 0, out.output
    status = json.loads(runner.invoke(app, ["status", str(run), "--json"]).output)
    by_stage = {r["stage"]: r for r in status}
    assert by_stage["decontam"]["counts"]["removed"] == 1
    assert by_stage["dsir"]["counts"]["in"] == 20


def test_safety_gates_exit_3_with_the_message(capsys):
    import typer

    from curamix.cli._common import _friendly_errors
    from curamix.pipelines.dedup import DedupGateError
    from curamix.pipelines.semdedup import SemDedupGateError

    for exc in (DedupGateError("domain a: 0.9"), SemDedupGateError("domain forum: 0.502")):
        with pytest.raises(typer.Exit) as err, _friendly_errors():
            raise exc
        assert err.value.exit_code == 3
        assert str(exc) in capsys.readouterr().err
