"""The decontam job on Spark: ledger and accounting, flag-only mode, rerun skip, agreement with
the in-process kernel and across cluster sizes, and the MATH-in-MMLU overlap of the real data."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curamix.config import build_config
from curamix.filters.decontam import build_index, find_contamination
from curamix.pipelines.decontam import read_test_items
from curamix.runner import pool_stage, run_pipeline
from tests.conftest import write_jsonl

pytestmark = pytest.mark.spark

ITEM = "the quick brown fox jumps over the lazy dog while seven tired farmers watch the sunrise"


def _cfg(root: Path, inputs: list[dict], tests: list[str], stages=None, **dc) -> object:
    return build_config(
        {
            "run_dir": str(root / "run"),
            "stages": stages or ["ingest", "decontam"],
            "ingest": {"inputs": inputs},
            "decontam": {"test_inputs": [{"path": t} for t in tests], **dc},
        },
        use_env=False,
    )


def _ledger(res) -> dict[str, dict]:
    return {r["id"]: r for r in pq.read_table(res["decontam"].path / "ledger").to_pylist()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("decontam")
    write_jsonl(
        root / "bench" / "quiz_test.jsonl",
        [
            {"id": "q/1", "text": ITEM + "?\nA. yes\nB. no\nAnswer: A. yes"},
            {"id": "q/2", "text": "name the capital city of the country that hosted the games"},
        ],
    )
    write_jsonl(
        root / "raw" / "a.jsonl",
        [
            {"id": "a1", "text": "Copied: " + ITEM.upper() + "! Then more text follows."},
            {"id": "a2", "text": "A clean document about gardening and tomatoes in summer."},
            {
                "id": "a3",
                "text": "Please name the capital city of the country that hosted the games.",
            },
        ],
    )
    write_jsonl(
        root / "raw" / "b.jsonl",
        [{"id": f"b{k}", "text": f"unrelated text number {k} with some words"} for k in range(4)],
    )
    return root


def test_ledger_accounting_report_and_rerun(spark, tiny, tmp_path):
    cfg = _cfg(tmp_path, [{"path": str(tiny / "raw")}], [str(tiny / "bench")])
    res = run_pipeline(cfg, spark=spark)
    led = _ledger(res)
    assert len(led) == 7  # every input document once
    removed = {i: r["ref_id"] for i, r in led.items() if r["decision"] == "removed"}
    assert removed == {"a1": "q/1", "a3": "q/2"}
    assert led["a1"]["reason"] == "contaminated" and 0 < led["a1"]["score"] <= 1
    assert led["a2"]["decision"] == "kept" and led["a2"]["reason"] is None
    kept = pq.read_table(res["decontam"].data_path, columns=["id"])["id"].to_pylist()
    assert sorted(kept) == sorted(i for i in led if i not in removed)
    c = res["decontam"].counts
    assert (c["in"], c["kept"], c["removed"], c["flagged"]) == (7, 5, 2, 2)
    assert c["per_domain"]["a"] == {"in": 3, "flagged": 2, "removed": 2, "kept": 1}
    assert c["per_benchmark"]["quiz_test"] == {"items": 2, "matched_items": 2, "docs": 2}
    report = (res["decontam"].path / "report.md").read_text()
    assert "| a | 3 | 2 | 2 | 1 |" in report and "| quiz_test | 2 | 2 | 2 |" in report
    assert run_pipeline(cfg, spark=spark)["decontam"].skipped


def test_flag_only_keeps_everything(spark, tiny, tmp_path):
    cfg = _cfg(tmp_path, [{"path": str(tiny / "raw")}], [str(tiny / "bench")], remove=False)
    res = run_pipeline(cfg, spark=spark)
    led = _ledger(res)
    assert all(r["decision"] == "kept" for r in led.values())
    assert {i for i, r in led.items() if r["reason"] == "contaminated_kept"} == {"a1", "a3"}
    assert led["a1"]["ref_id"] == "q/1"
    assert pq.read_table(res["decontam"].data_path).num_rows == 7


def test_pool_stage_follows_decontam(tiny):
    base = {"ingest": {"inputs": [{"path": str(tiny / "raw")}]}, "dedup": {}}
    tests = {"test_inputs": [{"path": str(tiny / "bench")}]}
    cfg = build_config(
        {**base, "stages": ["ingest", "dedup", "decontam"], "decontam": tests}, use_env=False
    )
    assert pool_stage(cfg) == "decontam"
    assert pool_stage(cfg, before="decontam") == "dedup"
    assert (
        pool_stage(build_config({**base, "stages": ["ingest", "dedup"]}, use_env=False)) == "dedup"
    )
    plain = build_config({**base, "stages": ["ingest"]}, use_env=False)
    assert pool_stage(plain) == "ingest"


def test_same_ledger_as_the_kernel_and_on_one_core(spark, tiny, tmp_path):
    cfg = _cfg(tmp_path / "a", [{"path": str(tiny / "raw")}], [str(tiny / "bench")])
    res = run_pipeline(cfg, spark=spark)
    led = sorted(pq.read_table(res["decontam"].path / "ledger").to_pylist(), key=lambda r: r["id"])
    one = cfg.model_copy(
        update={
            "run_dir": str(tmp_path / "b" / "run"),
            "spark": cfg.spark.model_copy(update={"master": "local[1]", "shuffle_partitions": 3}),
        }
    )
    script = (
        "import json, sys, pyarrow.parquet as pq\n"
        "from curamix.config import PipelineConfig\n"
        "from curamix.runner import run_pipeline\n"
        "res = run_pipeline(PipelineConfig.model_validate_json(sys.argv[1]))\n"
        "led = pq.read_table(res['decontam'].path / 'ledger').to_pylist()\n"
        "print('LEDGER=' + json.dumps(sorted(led, key=lambda r: r['id'])))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, one.model_dump_json()],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("LEDGER="))
    assert json.loads(line[len("LEDGER=") :]) == led


@pytest.mark.realdata
def test_math_problems_in_mmlu_test(spark, shared_data, tmp_path):
    """MMLU's high-school mathematics questions reuse MATH test problems: 74 MATH documents
    (README: "about 74"); 63 of them contain the whole MMLU question, the rest share sentences
    of it (e.g. "... at random from a standard 52-card deck. What is the probability that")."""
    mmlu = str(shared_data / "targets" / "mmlu_test.jsonl.gz")
    cfg = _cfg(tmp_path, [{"path": str(shared_data / "corpus" / "math.jsonl.gz")}], [mmlu])
    res = run_pipeline(cfg, spark=spark)
    led = _ledger(res)
    assert len(led) == 8_528
    flagged = {i: r for i, r in led.items() if r["reason"] == "contaminated"}
    print("flagged:", len(flagged))
    assert 70 <= len(flagged) <= 78
    assert sum(i.startswith("math/hendrycks-math/") for i in flagged) >= len(flagged) - 1
    subjects = [r["ref_id"].split("/")[2] for r in flagged.values()]
    assert subjects.count("high_school_mathematics") >= 70
    # The Spark job gives what the kernel gives in one process.
    items, _ = read_test_items(cfg.decontam)
    idx = build_index(items)
    docs = pq.read_table(res["ingest"].data_path, columns=["id", "text"]).to_pylist()
    found = find_contamination([d["text"] for d in docs], idx)
    want = {d["id"]: (f.ref_id, f.fraction) for d, f in zip(docs, found, strict=True) if f.ref_id}
    assert {i: (r["ref_id"], r["score"]) for i, r in flagged.items()} == want
    c = res["decontam"].counts
    assert c["in"] == c["kept"] + c["removed"] and c["per_benchmark"]["mmlu_test"]["docs"] == len(
        flagged
    )
