"""The DSIR scoring and selection jobs on Spark: same answers as the in-process estimator."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from curamix.config import build_config
from curamix.runner import MissingUpstreamError, run_pipeline, run_status
from curamix.selectors.dsir import DSIRSelector

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def demo_run(spark, tmp_path_factory):
    from curamix.demo import make_demo_corpus

    root = tmp_path_factory.mktemp("dsirdemo")
    make_demo_corpus(root, n_docs=600, seed=3)
    cfg = build_config(
        {
            "run_dir": str(root / "run"),
            "seed": 11,
            "stages": ["ingest", "dsir", "select"],
            "ingest": {
                "inputs": [{"path": str(root / "raw"), "domain_map": {"news*": "news"}}],
                "max_doc_bytes": 100_000,
            },
            "dsir": {
                "target_domains": ["science"],
                "target_inputs": [{"path": str(root / "targets" / "demobench_train.jsonl")}],
                "min_example_length": 20,
            },
            "select": {"fraction": 0.2},
        },
        use_env=False,
    )
    return cfg, run_pipeline(cfg, spark=spark)


def _pool(res):
    docs = pq.read_table(res["ingest"].data_path, columns=["id", "text", "domain"]).to_pylist()
    return [d["id"] for d in docs], [d["text"] for d in docs], [d["domain"] for d in docs]


def test_spark_scores_and_selection_equal_the_estimator(demo_run):
    cfg, res = demo_run
    ids, texts, domains = _pool(res)
    import json

    target = [t for t, d in zip(texts, domains, strict=True) if d == "science"]
    with open(cfg.dsir.target_inputs[0].path) as fh:
        bench = [json.loads(x)["text"] for x in fh]
    sel = DSIRSelector(min_example_length=20).fit(target + bench, texts)
    scores, lengths = sel.score_batch(texts)
    spark_scores = {r["id"]: r for r in pq.read_table(res["dsir"].path / "scores").to_pylist()}
    assert np.allclose([spark_scores[i]["score"] for i in ids], scores, rtol=1e-9, atol=1e-9)
    assert [spark_scores[i]["length"] for i in ids] == lengths.tolist()

    k = res["select"].counts["kept"]
    assert k == int(0.2 * len(ids))
    mine = {ids[i] for i in sel.select(scores, k, ids=ids, random_state=cfg.seed, lengths=lengths)}
    chosen = set(pq.read_table(res["select"].data_path, columns=["id"])["id"].to_pylist())
    assert chosen == mine


def test_selection_outputs_and_report(demo_run):
    _, res = demo_run
    s = res["select"]
    ledger = pq.read_table(s.ledger_path).to_pylist()
    n_pool = res["ingest"].counts["out"]
    assert len(ledger) == n_pool and len({r["id"] for r in ledger}) == n_pool
    kept = [r for r in ledger if r["decision"] == "kept"]
    assert len(kept) == s.counts["kept"]
    reasons = {r["reason"] for r in ledger if r["decision"] == "removed"}
    assert reasons == {"not_selected", "below_min_example_length"}
    dsir_ledger = pq.read_table(res["dsir"].ledger_path).to_pylist()
    short = {r["id"] for r in dsir_ledger if r["reason"] == "below_min_example_length"}
    assert short == {r["id"] for r in ledger if r["reason"] == "below_min_example_length"}
    assert not short & {r["id"] for r in kept}
    data = pq.read_table(s.data_path)
    assert {"id", "text", "domain", "score"} <= set(data.column_names) and data.num_rows == len(
        kept
    )
    assert s.manifest["kl_reduction"]["selected"] > s.manifest["kl_reduction"]["random_same_size"]
    comp = s.counts["per_domain"]
    assert comp["science"]["selected_share"] > 2 * comp["science"]["pool_share"]
    assert (s.path / "scores_hist.png").stat().st_size > 1000
    assert "KL reduction" in (s.path / "report.md").read_text()
    assert res["dsir"].manifest["fit"]["targets"]["demobench_train"]["docs"] == 200


def test_rerun_skips_and_new_seed_reselects(spark, demo_run):
    cfg, res = demo_run
    again = run_pipeline(cfg, spark=spark)
    assert all(r.skipped for r in again.values())
    other = run_pipeline(cfg.model_copy(update={"seed": 12}), spark=spark)
    assert other["dsir"].skipped and not other["select"].skipped
    assert other["select"].path != res["select"].path
    # The seed-12 selection is the estimator's seed-12 selection (seeds change the Gumbel keys;
    # with scores this far apart the two samples may still coincide).
    scored = pq.read_table(res["dsir"].path / "scores").to_pylist()
    sel = DSIRSelector(min_example_length=20).fit(["x"], ["x"])
    idx = sel.select(
        np.array([r["score"] for r in scored]),
        other["select"].counts["kept"],
        ids=[r["id"] for r in scored],
        random_state=12,
        lengths=np.array([r["length"] for r in scored]),
    )
    b = set(pq.read_table(other["select"].data_path, columns=["id"])["id"].to_pylist())
    assert b == {scored[i]["id"] for i in idx}
    # The run folder's pipeline.yaml is the seed-12 run's now: every stage is done for it.
    assert [(st.stage, st.state) for st in run_status(cfg.run_dir)] == [
        ("ingest", "done"),
        ("dsir", "done"),
        ("select", "done"),
    ]


def test_band_top_k_is_exact_whatever_the_partitioning(spark):
    from curamix.pipelines.select import band_top_k

    rng = np.random.default_rng(0)
    keys = np.round(rng.normal(size=5000), 2)  # many ties: broken by id
    ids = [f"d{i:05d}" for i in range(5000)]
    df = spark.createDataFrame(list(zip(ids, keys.tolist(), strict=True)), "id string, key double")
    want = sorted(range(5000), key=lambda i: (-keys[i], ids[i]))[:700]
    for parts in (1, 7):
        hi, band = band_top_k(df.repartition(parts), "key", 700)
        got = {ids[i] for i in range(5000) if keys[i] > hi} | set(band)
        assert got == {ids[i] for i in want}


def test_bad_inputs_name_the_value(spark, demo_run, tmp_path):
    cfg, _ = demo_run
    too_many = cfg.model_copy(
        update={"select": cfg.select.model_copy(update={"fraction": None, "k": 10_000_000})}
    )
    with pytest.raises(ValueError, match=r"select\.k=10000000 is larger than the"):
        run_pipeline(too_many, spark=spark)
    missing = cfg.model_copy(
        update={
            "dsir": cfg.dsir.model_copy(update={"target_domains": ["poetry"]}),
            "stages": ["ingest", "dsir"],
        }
    )
    with pytest.raises(ValueError, match=r"target_domains: \['poetry'\] not found in the pool"):
        run_pipeline(missing, spark=spark)
    alone = cfg.model_copy(update={"run_dir": str(tmp_path / "empty"), "stages": ["select"]})
    with pytest.raises(
        MissingUpstreamError, match=r"needs the 'ingest' stage's output.*run it first"
    ):
        run_pipeline(alone, spark=spark)
    with pytest.raises(Exception, match="exactly one of k"):
        build_config({"select": {"k": 3, "fraction": 0.1}, "stages": []}, use_env=False)
    with pytest.raises(Exception, match="DSIR needs a target"):
        build_config({"dsir": {}, "stages": []}, use_env=False)


@pytest.mark.slow
def test_same_selection_on_one_core(demo_run, tmp_path):
    """The local[2] fixture run and a local[1] run in a fresh process select the same ids."""
    import json
    import subprocess
    import sys

    cfg, res = demo_run
    one = cfg.model_copy(
        update={
            "run_dir": str(tmp_path / "run1"),
            "spark": cfg.spark.model_copy(update={"master": "local[1]"}),
        }
    )
    script = (
        "import json, sys, pyarrow.parquet as pq\n"
        "from curamix.config import PipelineConfig\n"
        "from curamix.runner import run_pipeline\n"
        "cfg = PipelineConfig.model_validate_json(sys.argv[1])\n"
        "res = run_pipeline(cfg)\n"
        "print('IDS=' + json.dumps(sorted(pq.read_table(res['select'].data_path, columns=['id'])['id'].to_pylist())))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, one.model_dump_json()],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ids = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("IDS="))[4:])
    assert ids == sorted(pq.read_table(res["select"].data_path, columns=["id"])["id"].to_pylist())
