"""The dedup job on Spark: exact and MinHash-LSH removal, scope, gates, report, accounting,
and independence from cluster size and partitioning."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curamix.config import ConfigError, build_config
from curamix.filters.dedup import minhash_dedup
from curamix.pipelines.dedup import DedupGateError, check_doc_schema
from curamix.runner import run_pipeline
from tests.conftest import score_near_dups, write_jsonl

pytestmark = pytest.mark.spark

BASE = " ".join(f"token{i}" for i in range(80))


def _variant(k: int) -> str:
    """BASE with one word changed: word-5-gram Jaccard to BASE about 0.88."""
    words = BASE.split()
    words[40 + k % 30] = f"changed{k}"
    return " ".join(words)


def _unique(seed: int, n: int = 60) -> str:
    return " ".join(f"w{seed}x{j}" for j in range(n))


def _cfg(root: Path, inputs: list[dict], **dedup) -> object:
    dedup = {"engine": "spark", **dedup}  # these tests are about the Spark job
    return build_config(
        {
            "run_dir": str(root / "run"),
            "stages": ["ingest", "dedup"],
            "ingest": {"inputs": inputs},
            "dedup": dedup,
        },
        use_env=False,
    )


def _ledger(res) -> dict[str, dict]:
    return {r["id"]: r for r in pq.read_table(res["dedup"].path / "ledger").to_pylist()}


def _removed(res) -> dict[str, str]:
    return {i: r["ref_id"] for i, r in _ledger(res).items() if r["decision"] == "removed"}


@pytest.fixture(scope="module")
def two_domains(tmp_path_factory) -> Path:
    """Domain a: an exact pair (case/space), a near pair; domain b: a copy of a's near doc, a
    short doc and its duplicate, unique docs."""
    root = tmp_path_factory.mktemp("dedup2")
    write_jsonl(
        root / "raw" / "a.jsonl",
        [
            {"id": "a1", "text": BASE},
            {"id": "a2", "text": BASE.upper().replace(" ", "  ")},
            {"id": "a3", "text": _variant(1)},
            *({"id": f"a{9 + k}", "text": _unique(k)} for k in range(6)),
        ],
    )
    write_jsonl(
        root / "raw" / "b.jsonl",
        [
            {"id": "b1", "text": _variant(2)},
            {"id": "b2", "text": "hi there"},
            {"id": "b3", "text": "Hi  there"},
            {"id": "b4", "text": "hi you"},
            *({"id": f"b{9 + k}", "text": _unique(100 + k)} for k in range(6)),
        ],
    )
    return root


def test_exact_near_and_short_documents_with_full_accounting(spark, two_domains, tmp_path):
    cfg = _cfg(tmp_path, [{"path": str(two_domains / "raw")}])
    res = run_pipeline(cfg, spark=spark)
    ledger = _ledger(res)
    assert len(ledger) == 19  # every ingested document has one decision
    removed = _removed(res)
    # a1 keeps; a2 is its exact duplicate after normalization; a3 and b1 are near duplicates
    # of a1 (Jaccard ~0.88 >= 0.8); b3 is an exact duplicate of the short b2; b4 stays.
    assert removed == {"a2": "a1", "a3": "a1", "b1": "a1", "b3": "b2"}
    assert ledger["a2"]["reason"] == "exact_duplicate" and ledger["a2"]["score"] == 1.0
    assert ledger["a3"]["reason"] == "near_duplicate" and 0.8 <= ledger["a3"]["score"] < 1
    kept = pq.read_table(res["dedup"].data_path, columns=["id"])["id"].to_pylist()
    assert sorted(kept) == sorted(i for i in ledger if i not in removed)
    m = res["dedup"].manifest
    assert m["counts"]["in"] == 19 and m["counts"]["kept"] == 15
    assert m["counts"]["removed_reasons"] == {"exact_duplicate": 2, "near_duplicate": 2}
    assert m["counts"]["cross_domain_removed"] == 1  # b1 duplicates a1
    assert {"size": 4, "count": 1} in m["component_sizes"]
    report = (res["dedup"].path / "report.md").read_text()
    assert "| a | 9 | 7 | 1 | 1 |" in report and "removal-rate ceiling 50%: passed" in report
    assert (res["dedup"].path / "component_sizes.png").stat().st_size > 1000
    # A rerun skips the finished stage.
    again = run_pipeline(cfg, spark=spark)
    assert again["dedup"].skipped


def test_local_scope_and_domain_priority(spark, two_domains, tmp_path):
    local = run_pipeline(
        _cfg(tmp_path / "local", [{"path": str(two_domains / "raw")}], scope="local"), spark=spark
    )
    assert _removed(local) == {"a2": "a1", "a3": "a1", "b3": "b2"}  # b1 stays: other domain
    assert local["dedup"].manifest["counts"]["cross_domain_removed"] == 0
    pref = run_pipeline(
        _cfg(tmp_path / "pref", [{"path": str(two_domains / "raw")}], domain_priority=["b"]),
        spark=spark,
    )
    assert _removed(pref) == {"a1": "b1", "a2": "b1", "a3": "b1", "b3": "b2"}


def test_removal_gate_and_giant_component_alarm(spark, tmp_path):
    rows = [{"id": "t00", "text": BASE}] + [
        {"id": f"t{k:02d}", "text": _variant(k)} for k in range(1, 12)
    ]
    rows += [{"id": f"u{k}", "text": _unique(k)} for k in range(4)]
    write_jsonl(tmp_path / "raw" / "tmpl.jsonl", rows[:12])
    write_jsonl(tmp_path / "raw" / "other.jsonl", rows[12:])
    cfg = _cfg(tmp_path, [{"path": str(tmp_path / "raw")}], max_component_size=5)
    with pytest.raises(DedupGateError, match=r"domain\(s\) tmpl: 91\.7%"):
        run_pipeline(cfg, spark=spark)
    # No completed stage; the report of the failed attempt is kept beside the run.
    assert not list((tmp_path / "run").glob("dedup-*/_COMPLETE"))
    failed = next((tmp_path / "run").glob("dedup-*.gate-failed.md")).read_text()
    assert "FAILED" in failed and "12 docs, kept t00" in failed
    ok = run_pipeline(
        _cfg(tmp_path, [{"path": str(tmp_path / "raw")}], max_component_size=5, max_removal_rate=1),
        spark=spark,
    )
    gates = ok["dedup"].manifest["gates"]
    assert gates["components_over_size"][0]["size"] == 12
    assert gates["components_over_size"][0]["sample_members"] == ["t01", "t02", "t03", "t04", "t05"]
    assert ok["dedup"].counts["per_domain"]["tmpl"]["kept"] == 1


def _outputs(res) -> dict:
    """Everything the stage decided and reported (not its timings, keys or engine)."""
    stage = res["dedup"]
    m = {k: stage.manifest[k] for k in ("counts", "component_sizes", "gates", "lsh")}
    ledger = pq.read_table(stage.path / "ledger").sort_by("id").to_pylist()
    kept = sorted(pq.read_table(stage.data_path, columns=["id"])["id"].to_pylist())
    return {
        "manifest": m,
        "ledger": ledger,
        "kept": kept,
        "report": (stage.path / "report.md").read_text(),
    }


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"scope": "local"},
        {"domain_priority": ["b"]},
        {"exact": False},
        {"near": False},
        {"verify": False, "threshold": 0.5},
        {"max_component_size": 2, "max_removal_rate": 1},
    ],
    ids=["default", "local-scope", "priority", "near-only", "exact-only", "unverified", "alarm"],
)
def test_in_process_engine_gives_the_spark_output(spark, two_domains, tmp_path, options):
    """``engine: local`` (the driver, no Spark jobs) decides, writes and reports exactly what
    the Spark job does, and a run on the other engine reuses the finished stage."""
    inputs = [{"path": str(two_domains / "raw")}]
    on_spark = run_pipeline(_cfg(tmp_path / "s", inputs, **options), spark=spark)
    in_process = run_pipeline(_cfg(tmp_path / "l", inputs, engine="local", **options), spark=spark)
    assert on_spark["dedup"].manifest["engine"] == "spark"
    assert in_process["dedup"].manifest["engine"] == "local"
    assert _outputs(in_process) == _outputs(on_spark)
    assert run_pipeline(_cfg(tmp_path / "l", inputs, **options), spark=spark)["dedup"].skipped


def test_bad_parameters_fail_before_any_work(tmp_path):
    for section, msg in [
        ({"threshold": 0}, "dedup.threshold"),
        ({"threshold": 1.5}, "1.5"),
        ({"ngram": 0}, "dedup.ngram"),
        ({"bands": 10, "rows": 10}, "bands x rows must equal num_perm: 10 x 10 != 128"),
        ({"bands": 16}, "set both bands and rows"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            build_config({"stages": ["dedup"], "dedup": section}, use_env=False)
    import pyarrow as pa

    bad = tmp_path / "part-00000.parquet"
    pq.write_table(pa.table({"id": ["x"], "body": ["no text column"]}), bad)
    with pytest.raises(ValueError, match=r"missing \['text', 'domain'\]"):
        check_doc_schema([str(bad)])


def _subset(shared_data: Path, root: Path, n_files: int) -> list[dict]:
    """~2.4k documents of the near-dup benchmark with many duplicate pairs, in n_files files."""
    folder = shared_data / "corpus_with_dups"
    with gzip.open(folder / "labels.jsonl.gz") as fh:
        labels = [json.loads(x) for x in fh]
    copies = [lab for lab in labels if lab["kind"] != "original"][:700]
    want = {lab["id"] for lab in copies} | {lab["original_id"] for lab in copies}
    want |= {lab["id"] for lab in [x for x in labels if x["kind"] == "original"][:1000]}
    with gzip.open(folder / "mixed_20k.jsonl.gz") as fh:
        rows = [r for r in map(json.loads, fh) if r["id"] in want]
    for k in range(n_files):
        write_jsonl(root / f"f{k}.jsonl", rows[k::n_files])
    return rows


@pytest.mark.realdata
@pytest.mark.slow
def test_same_result_on_one_core_other_partitions_and_distributed_components(
    spark, shared_data, tmp_path
):
    rows = _subset(shared_data, tmp_path / "one", 1)
    _subset(shared_data, tmp_path / "three", 3)
    inputs = [{"path": str(tmp_path / "one"), "domain_field": "source"}]
    res = run_pipeline(_cfg(tmp_path / "a", inputs), spark=spark)
    removed = _removed(res)
    assert len(removed) > 300
    # The same kernels in one process give the same removals.
    rep, _ = minhash_dedup([r["id"] for r in rows], [r["text"] for r in rows])
    want = {
        r["id"]: rows[k]["id"] for r, k in zip(rows, rep.tolist(), strict=True) if r is not rows[k]
    }
    assert removed.keys() == want.keys()
    # local[1], 7 shuffle partitions, 3 input files, large-star/small-star rounds.
    other = build_config(
        {
            "run_dir": str(tmp_path / "b" / "run"),
            "stages": ["ingest", "dedup"],
            "spark": {"master": "local[1]", "shuffle_partitions": 7},
            "ingest": {"inputs": [{"path": str(tmp_path / "three"), "domain_field": "source"}]},
            "dedup": {"components": "distributed"},
        },
        use_env=False,
    )
    script = (
        "import json, sys, pyarrow.parquet as pq\n"
        "from curamix.config import PipelineConfig\n"
        "from curamix.runner import run_pipeline\n"
        "res = run_pipeline(PipelineConfig.model_validate_json(sys.argv[1]))\n"
        "led = pq.read_table(res['dedup'].path / 'ledger').to_pylist()\n"
        "print('REMOVED=' + json.dumps({r['id']: r['ref_id'] for r in led if r['decision'] == 'removed'}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, other.model_dump_json()],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("REMOVED="))
    assert json.loads(line[len("REMOVED=") :]) == removed


@pytest.mark.realdata
@pytest.mark.slow
def test_near_duplicate_benchmark_on_spark(spark, shared_data, tmp_path):
    folder = shared_data / "corpus_with_dups"
    cfg = _cfg(tmp_path, [{"path": str(folder / "mixed_20k.jsonl.gz"), "domain_field": "source"}])
    res = run_pipeline(cfg, spark=spark)
    ledger = _ledger(res)
    assert len(ledger) == 20_000
    cluster = {i: (r["ref_id"] if r["decision"] == "removed" else i) for i, r in ledger.items()}
    assert all(ledger[c]["decision"] == "kept" for c in cluster.values())  # refs are kept docs
    pairs = score_near_dups(
        shared_data, tmp_path, [{"id": i, "cluster": c} for i, c in cluster.items()]
    )
    removal = score_near_dups(
        shared_data,
        tmp_path,
        [{"id": i, "keep": r["decision"] == "kept"} for i, r in ledger.items()],
    )
    print("\npair recall by kind:", json.dumps(pairs["pair_recall_by_kind"], indent=1))
    print("pairwise", {k: pairs[k] for k in ("precision", "recall", "f1")}, "removal", removal)
    for kind in ("exact", "whitespace", "case"):
        assert pairs["pair_recall_by_kind"][kind] >= 0.99, kind
    assert removal["precision"] >= 0.98
    with gzip.open(folder / "labels.jsonl.gz") as fh:
        labels = [json.loads(x) for x in fh]
    clear = [
        lab for lab in labels if lab["kind"] != "original" and (lab["jaccard_w5"] or 0) >= 0.85
    ]
    found = sum(cluster[lab["id"]] == cluster[lab["original_id"]] for lab in clear)
    assert found / len(clear) >= 0.97
    gates = res["dedup"].manifest["gates"]
    assert gates["domains_over_rate"] == {} and gates["removed_below_threshold_share"] < 0.02
    # The in-process engine (auto picks it at this size) decides and reports the same.
    local = run_pipeline(
        _cfg(
            tmp_path / "local",
            [{"path": str(folder / "mixed_20k.jsonl.gz"), "domain_field": "source"}],
            engine="auto",
        ),
        spark=spark,
    )
    assert local["dedup"].manifest["engine"] == "local"
    assert _outputs(local) == _outputs(res)


@pytest.mark.realdata
@pytest.mark.slow
def test_real_corpus_report(spark, shared_data, tmp_path):
    """The real corpus: the news domain's ~100 exact duplicate articles are found, templated
    tech/math pages do not chain into giant components, and every gate passes."""
    cfg = _cfg(tmp_path, [{"path": str(shared_data / "corpus")}])
    m = run_pipeline(cfg, spark=spark)["dedup"].manifest
    news = m["counts"]["per_domain"]["news"]
    print(json.dumps(m["counts"]["per_domain"], indent=0))
    assert 90 <= news["exact_duplicate"] <= 130
    assert m["counts"]["in"] == 43_693
    assert all(e["removal_rate"] < 0.05 for e in m["counts"]["per_domain"].values())
    assert m["gates"]["components_over_size"] == [] and m["gates"]["removed_below_threshold"] == 0
