"""The coreset job on Spark over the demo corpus: ledger accounting and composition, the same
selection as the in-process kernels for every method, the same coreset on local[1] and
local[2], size errors before any work, and a scoring stage's scores over semdedup's pool."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curamix.config import build_config
from curamix.demo import make_demo_corpus
from curamix.io.store import JobResult
from curamix.pipelines.coreset import read_stage_scores
from curamix.pipelines.embed import load_embeddings
from curamix.pipelines.semdedup import default_clusters
from curamix.runner import run_pipeline
from curamix.selectors.coreset import prototype_scores, select_coreset


def _cfg(run_dir: Path, demo: Path, stages=None, extra=None, **cs) -> object:
    return build_config(
        {
            "run_dir": str(run_dir),
            "seed": 3,
            "stages": stages or ["ingest", "embed", "coreset"],
            "ingest": {
                "max_doc_bytes": 100_000,
                "inputs": [{"path": str(demo / "raw"), "domain_map": {"news*": "news"}}],
            },
            "embed": {"batch_size": 32, "max_seq_length": 64, "index": {"kind": "flat"}},
            "coreset": cs,
            **(extra or {}),
        },
        use_env=False,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coreset_demo")
    make_demo_corpus(root, n_docs=150)
    return root


@pytest.fixture(scope="module")
def run(spark, demo):
    cfg = _cfg(demo / "run", demo, method="ccs", fraction=0.3)
    return cfg, run_pipeline(cfg, spark=spark)


def _ledger(res) -> list[dict]:
    return sorted(pq.read_table(res.path / "ledger").to_pylist(), key=lambda r: r["id"])


@pytest.mark.spark
def test_ledger_accounting_and_composition(run, spark):
    cfg, res = run
    cs, ingest = res["coreset"], res["ingest"]
    led = _ledger(cs)
    n = ingest.counts["out"]
    k = int(0.3 * n)
    assert len(led) == n == len({r["id"] for r in led})  # every pool document once
    kept = [r["id"] for r in led if r["decision"] == "kept"]
    assert len(kept) == k == cs.counts["kept"]
    assert sorted(pq.read_table(cs.data_path, columns=["id"])["id"].to_pylist()) == kept
    assert {r["reason"] for r in led if r["decision"] == "removed"} == {"not_selected"}
    assert all(r["reason"] is None for r in led if r["decision"] == "kept")
    # CCS with beta 0.3 never keeps one of the 30% hardest (highest prototype score)
    scores = np.array([r["score"] for r in led])
    cut = np.sort(scores)[::-1][int(0.3 * n) - 1]
    assert max(r["score"] for r in led if r["decision"] == "kept") < cut
    per = cs.counts["per_domain"]
    assert sum(e["kept"] for e in per.values()) == k
    assert sum(e["in"] for e in per.values()) == n
    report = (cs.path / "report.md").read_text()
    assert "## Composition" in report and "| random, same size |" in report
    for d, e in per.items():
        assert f"| {d} | {e['in']} | {e['pool_share']:.3f} | {e['kept']} |" in report
    assert run_pipeline(cfg, spark=spark)["coreset"].skipped


@pytest.mark.spark
def test_every_method_matches_the_kernels(run, spark, demo):
    _, res0 = run
    emb = load_embeddings(res0["embed"])
    k = int(0.3 * len(emb))
    for method in ("ccs", "prototypes", "kcenter", "facility_location", "dbp", "random"):
        if method == "ccs":
            res = res0["coreset"]
        else:
            cfg = _cfg(demo / "run", demo, method=method, k=k, keep_hard=False)
            res = run_pipeline(cfg, spark=spark)["coreset"]
        scores = (
            prototype_scores(emb.vectors, default_clusters(len(emb)), seed=3)
            if method in ("ccs", "prototypes")
            else None
        )
        want = select_coreset(
            method,
            k,
            vectors=emb.vectors,
            scores=scores,
            random_state=3,
            keep_hard=False,
            n_clusters=default_clusters(len(emb)),
        )
        led = _ledger(res)
        got = [r["id"] for r in led if r["decision"] == "kept"]
        assert got == sorted(emb.ids[want].tolist()), method
        assert res.manifest["config"]["method"] == method
        # the same accounting for every method: each pool document once, k kept
        n = res0["ingest"].counts["out"]
        assert len(led) == n and res.counts["kept"] == k and res.counts["removed"] == n - k
        assert sum(e["kept"] for e in res.counts["per_domain"].values()) == k
        assert {r["reason"] for r in led if r["decision"] == "removed"} <= {
            "not_selected",
            "not_embedded",
        }
        if method == "dbp":
            assert res.manifest["n_clusters"] == default_clusters(len(emb))
            assert "density-based pruning" in (res.path / "report.md").read_text()


@pytest.mark.spark
@pytest.mark.parametrize("method", ["ccs", "facility_location"])
def test_same_coreset_on_one_core(run, spark, demo, tmp_path, method):
    """The selection is computed on the driver from id-sorted arrays: a local[1] session with
    other shuffle settings (in a fresh process) writes the same ledger."""
    cfg, res = run
    if method != "ccs":
        cfg = _cfg(demo / "run", demo, method=method, fraction=0.3)
        res = run_pipeline(cfg, spark=spark)
    other = tmp_path / "run"
    other.mkdir()
    for stage in ("ingest", "embed"):  # reuse the upstream outputs: only coreset runs again
        shutil.copytree(res[stage].path, other / res[stage].path.name)
    one = cfg.model_copy(
        update={
            "run_dir": str(other),
            "spark": cfg.spark.model_copy(update={"master": "local[1]", "shuffle_partitions": 3}),
        }
    )
    script = (
        "import json, sys, pyarrow.parquet as pq\n"
        "from curamix.config import PipelineConfig\n"
        "from curamix.runner import run_pipeline\n"
        "res = run_pipeline(PipelineConfig.model_validate_json(sys.argv[1]))\n"
        "assert res['ingest'].skipped and res['embed'].skipped\n"
        "assert not res['coreset'].skipped\n"
        "led = pq.read_table(res['coreset'].path / 'ledger').to_pylist()\n"
        "print('LEDGER=' + json.dumps(sorted(led, key=lambda r: r['id'])))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, one.model_dump_json()],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("LEDGER="))
    assert json.loads(line[len("LEDGER=") :]) == _ledger(res["coreset"])


@pytest.mark.spark
def test_k_larger_than_the_pool_fails_before_work(run, spark, demo):
    cfg, res = run
    n = res["ingest"].counts["out"]
    before = sorted(Path(cfg.run_dir).glob("coreset-*"))
    big = _cfg(demo / "run", demo, method="kcenter", k=10_000)
    with pytest.raises(ValueError, match=rf"coreset.k=10000 is larger than the {n} pool"):
        run_pipeline(big, spark=spark)
    assert sorted(Path(cfg.run_dir).glob("coreset-*")) == before  # nothing written
    ccs = _cfg(demo / "run", demo, method="ccs", fraction=0.8, beta=0.3)
    with pytest.raises(ValueError, match=r"k=\d+ is larger than the \d+ documents left"):
        run_pipeline(ccs, spark=spark)


@pytest.mark.spark
@pytest.mark.filterwarnings("ignore:.*laplace=0")
def test_dsir_scores_over_the_semdedup_pool(run, spark, demo):
    """With semdedup in the run, DSIR and the coreset both read semdedup's kept documents;
    ``score: dsir`` + hardest prototypes = the top k DSIR scores."""
    extra = {
        "semdedup": {"eps": 0.05},
        "dsir": {
            "target_inputs": [{"path": str(demo / "targets" / "demobench_train.jsonl")}],
            "min_example_length": 20,
        },
    }
    stages = ["ingest", "embed", "semdedup", "dsir", "coreset"]
    cfg = _cfg(demo / "run", demo, stages, extra, method="prototypes", k=40, score="dsir")
    res = run_pipeline(cfg, spark=spark)
    led = _ledger(res["coreset"])
    assert len(led) == res["semdedup"].counts["kept"] == res["coreset"].counts["in"]
    scores = {
        r["id"]: r["score"]
        for r in pq.read_table(res["dsir"].path / "scores", columns=["id", "score"]).to_pylist()
    }
    top = sorted(scores, key=lambda i: (-scores[i], i))[:40]
    assert sorted(r["id"] for r in led if r["decision"] == "kept") == sorted(top)
    assert all(r["score"] == scores[r["id"]] for r in led)


def test_stage_scores_are_checked(tmp_path):
    res = JobResult(stage="betr", path=tmp_path / "betr-x", manifest={})
    with pytest.raises(ValueError, match="has no scores/ folder"):
        read_stage_scores(res, np.array(["a", "b"]))
    (tmp_path / "betr-x" / "scores").mkdir(parents=True)
    pq.write_table(
        pa.table({"id": ["b", "a"], "score": [2.0, 1.0]}),
        tmp_path / "betr-x" / "scores" / "part-00000.parquet",
    )
    assert read_stage_scores(res, np.array(["a", "b"])).tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match=r"1 embedded pool documents have no score .*\['c'\]"):
        read_stage_scores(res, np.array(["a", "b", "c"]))


@pytest.mark.spark
def test_proxy_loss_score_is_the_reference_proxys_loss(run, spark, demo, tmp_path):
    """score: proxy_loss trains the reference proxy on the seeded hash sample of the pool and
    keeps, with prototypes keep_hard false, the k documents of lowest loss under it (perplexity
    pruning); the scores computed one Spark task per part equal the in-process ones."""
    from curamix.pipelines.coreset import proxy_loss_part, proxy_loss_scores, proxy_payload
    from curamix.pipelines.parts import sample_hash
    from curamix.proxy.perplexity import doc_losses, reference_proxy

    _, res0 = run
    run_dir = tmp_path / "run"
    shutil.copytree(res0["ingest"].path, run_dir / res0["ingest"].path.name)
    shutil.copytree(res0["embed"].path, run_dir / res0["embed"].path.name)
    shutil.copy(res0["ingest"].path.parent / "stages.json", run_dir / "stages.json")
    proxy = {"sample": 60, "total_tokens": 8192, "vocab_size": 300, "seq_len": 32,
             "batch_size": 8, "device": "cpu"}  # fmt: skip
    cfg = _cfg(run_dir, demo, method="prototypes", keep_hard=False, fraction=0.2,
               score="proxy_loss", proxy=proxy)  # fmt: skip
    res = run_pipeline(cfg, spark=spark, only=["coreset"])["coreset"]
    led = _ledger(res)
    ids = np.array([r["id"] for r in led])
    parts = [str(p) for p in sorted(res0["ingest"].data_path.glob("*.parquet"))]
    docs = pq.ParquetDataset(parts).read(columns=["id", "text"]).to_pylist()
    text = {d["id"]: d["text"] for d in docs}
    # the same computation by hand: the 60 documents of smallest hash(seed, id), in that
    # order, train the reference proxy; every document's loss under it
    sample = sorted(text, key=lambda i: (sample_hash(3, i), i))[:60]
    model, tok = reference_proxy(
        [text[i] for i in sample], vocab_size=300, seq_len=32, batch_size=8, total_tokens=8192,
        random_state=3, device="cpu",
    )  # fmt: skip
    want = doc_losses(model, tok, [text[i] for i in ids])
    assert np.isfinite(want).all()
    np.testing.assert_allclose([r["score"] for r in led], want, rtol=1e-5)
    kept = {r["id"] for r in led if r["decision"] == "kept"}
    k = int(0.2 * len(ids))
    assert kept == set(ids[np.argsort(want, kind="stable")[:k]].tolist())
    # part by part in this process with that proxy: the Spark tasks' numbers exactly
    here = pa.concat_tables([proxy_loss_part(p, proxy_payload(model, tok), ids) for p in parts])
    here = here.sort_by("id")
    assert here["id"].to_pylist() == ids.tolist()
    np.testing.assert_array_equal(here["score"].to_numpy(), [r["score"] for r in led])
    # and the helper without Spark (it trains the same proxy), on a few of the documents
    few = ids[::20]
    local = proxy_loss_scores(cfg.coreset.proxy, parts, few, 3, lambda _m: None)
    np.testing.assert_array_equal(local, [r["score"] for r in led][::20])
