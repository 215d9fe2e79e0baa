"""The semdedup job on Spark over the demo corpus: ledger accounting, exact copies removed with
a kept twin, agreement with the in-process kernels (clustering every vector on the driver, and,
with a sampled k-means, the kernel given the same centroids), the removal-vs-eps report,
documents without an embedding, local scope, the removal-rate gate and rerun skip."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curamix.config import build_config
from curamix.demo import make_demo_corpus
from curamix.filters.semdedup import semdedup
from curamix.io.store import load_completed
from curamix.pipelines.embed import load_embeddings
from curamix.pipelines.semdedup import STAGE, SemDedupGateError, cluster_pool, semdedup_key
from curamix.runner import pool_stage, require_upstream, run_pipeline

pytestmark = pytest.mark.spark


def _cfg(run_dir: Path, raw: Path, embed: dict | None = None, **sd) -> object:
    return build_config(
        {
            "run_dir": str(run_dir),
            "seed": 0,
            "stages": ["ingest", "embed", "semdedup"],
            "ingest": {
                "max_doc_bytes": 100_000,
                "inputs": [{"path": str(raw), "domain_map": {"news*": "news"}}],
            },
            "embed": {
                "batch_size": 32,
                "max_seq_length": 64,
                "index": {"kind": "flat"},
                **(embed or {}),
            },
            "semdedup": sd,
        },
        use_env=False,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("semdedup_demo")
    make_demo_corpus(root, n_docs=150)
    return root


@pytest.fixture(scope="module")
def run(spark, demo):
    cfg = _cfg(demo / "run", demo / "raw", eps=0.05)
    return cfg, run_pipeline(cfg, spark=spark)


def _ledger(res) -> dict[str, dict]:
    return {r["id"]: r for r in pq.read_table(res.path / "ledger").to_pylist()}


def test_ledger_accounting_and_exact_copies(run):
    _, res = run
    sd, ingest = res["semdedup"], res["ingest"]
    led = _ledger(sd)
    docs = pq.read_table(ingest.data_path, columns=["id", "text", "domain"]).to_pylist()
    assert sorted(led) == sorted(d["id"] for d in docs)  # every pool document once
    kept = set(pq.read_table(sd.data_path, columns=["id"])["id"].to_pylist())
    assert kept == {i for i, r in led.items() if r["decision"] == "kept"}
    removed = {i: r for i, r in led.items() if r["decision"] == "removed"}
    c = sd.counts
    assert (c["in"], c["kept"], c["removed"]) == (len(docs), len(kept), len(removed))
    assert c["removed_reasons"] == {"semantic_duplicate": len(removed)} and c["not_embedded"] == 0
    for r in removed.values():
        assert r["reason"] == "semantic_duplicate" and r["score"] > 1 - 0.05
        assert r["ref_id"] in kept  # the kept twin
    # identical texts (the corpus's exact duplicates): exactly one of each group is kept
    groups: dict[str, list[str]] = {}
    for d in docs:
        groups.setdefault(hashlib.sha256(d["text"].encode()).hexdigest(), []).append(d["id"])
    copies = [g for g in groups.values() if len(g) > 1]
    assert len(copies) >= 5
    for g in copies:
        alive = [i for i in g if i in kept]
        assert len(alive) == 1
        assert all(removed[i]["ref_id"] == alive[0] for i in g if i != alive[0])
    assert sd.manifest["seed"] == 0


def test_same_decisions_as_the_kernels(run):
    cfg, res = run
    emb = load_embeddings(res["embed"])
    # k-means on the device the stage used (embed.index.gpu: auto -> the GPU where FAISS sees
    # one): decisions are deterministic per device, not across devices
    gpu = cfg.embed.index.gpu
    assign, cos, _ = cluster_pool(emb.vectors, emb.domains, "global", None, 20, cfg.seed, gpu)
    want = semdedup(emb.vectors, assign, cos, eps=0.05)
    led = _ledger(res["semdedup"])
    got = np.array([led[i]["decision"] == "removed" for i in emb.ids])
    assert (got == want.removed).all()
    refs = {emb.ids[i]: emb.ids[want.ref[i]] for i in np.flatnonzero(want.removed)}
    assert {i: r["ref_id"] for i, r in led.items() if r["ref_id"]} == refs


def test_report_curve_and_rerun(run, spark):
    cfg, res = run
    m = res["semdedup"].manifest
    curve = m["removal_curve"]
    eps = [r["eps"] for r in curve]
    assert eps == sorted({0.01, 0.02, 0.05, 0.1, 0.2})
    counts = [r["removed"] for r in curve]
    assert counts == sorted(counts)  # monotone in eps
    assert curve[eps.index(0.05)]["removed"] == m["counts"]["removed"]
    for r in curve:
        assert sum(r["per_domain"].values()) == r["removed"]
    report = (res["semdedup"].path / "report.md").read_text()
    assert "| 0.05 **(configured)** | 0.95 |" in report and "## Per domain" in report
    again = run_pipeline(cfg, spark=spark)
    assert again["semdedup"].skipped and again["semdedup"].path == res["semdedup"].path
    # semdedup is a pool stage: later stages read its kept documents
    assert pool_stage(cfg) == "semdedup"
    assert require_upstream(cfg, "semdedup").path == res["semdedup"].path


def test_not_embedded_documents_are_kept_and_local_scope(run, spark, demo):
    cfg, res = run
    n_pool = res["ingest"].counts["out"]
    cfg2 = _cfg(cfg.run_dir, demo / "raw", embed={"sample": 100}, eps=0.05, scope="local")
    res2 = run_pipeline(cfg2, spark=spark)
    led = _ledger(res2["semdedup"])
    assert len(led) == n_pool
    not_emb = [r for r in led.values() if r["reason"] == "not_embedded"]
    assert len(not_emb) == n_pool - 100 == res2["semdedup"].counts["not_embedded"]
    assert all(r["decision"] == "kept" and r["score"] is None for r in not_emb)
    domain = {
        r["id"]: r["domain"]
        for r in pq.read_table(res["ingest"].data_path, columns=["id", "domain"]).to_pylist()
    }
    removed = [r for r in led.values() if r["decision"] == "removed"]
    assert removed and all(domain[r["ref_id"]] == domain[r["id"]] for r in removed)
    assert res2["semdedup"].counts["cross_domain_removed"] == 0


def test_gate_names_the_domain(run, spark, demo):
    cfg, res = run
    strict = _cfg(cfg.run_dir, demo / "raw", eps=0.3, max_removal_rate=0.05)
    with pytest.raises(SemDedupGateError, match=r"max_removal_rate=5% of domain\(s\) \w+: \d"):
        run_pipeline(strict, spark=spark)
    key = semdedup_key(strict, {"pool": res["ingest"], "embed": res["embed"]})
    assert load_completed(strict.run_dir, STAGE, key) is None
    failed = Path(strict.run_dir) / f"{STAGE}-{key}.gate-failed.md"
    assert "over the gate" in failed.read_text()
    json.dumps(res["semdedup"].manifest)  # the manifest is plain JSON


def test_sampled_centroids_then_one_task_per_cluster_is_the_in_driver_kernel(run, spark, demo):
    """kmeans_sample: the centroids come from the 40 embedded documents of smallest hash of
    (seed, id), in id order; every document joins its nearest one and the kernel runs per
    cluster. The same computation in this process, given those centroids, decides the same,
    whatever Spark's shuffle partitioning (3 here, 4 in the fixture)."""
    from curamix.embeddings.index import spherical_kmeans
    from curamix.filters.semdedup import assign_to_centroids
    from curamix.pipelines.parts import sample_hash

    cfg, res = run
    sampled = _cfg(cfg.run_dir, demo / "raw", eps=0.05, kmeans_sample=40)
    before = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "3")
    try:
        out = run_pipeline(sampled, spark=spark)["semdedup"]
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", before)
    assert out.path != res["semdedup"].path  # a set kmeans_sample is part of the key
    assert out.manifest["clusters"]["kmeans_trained_on"] == 40
    emb = load_embeddings(res["embed"])
    first = sorted(range(len(emb)), key=lambda i: (sample_hash(0, emb.ids[i]), emb.ids[i]))[:40]
    train = np.sort(np.asarray(first))  # id order, as the whole pool would be
    k = out.manifest["clusters"]["n"]
    c, _, _ = spherical_kmeans(emb.vectors[train], k, niter=20, seed=0, gpu=cfg.embed.index.gpu)
    assign, cos = assign_to_centroids(emb.vectors, c)
    want = semdedup(emb.vectors, assign, cos, eps=0.05)
    led = _ledger(out)
    got = np.array([led[i]["decision"] == "removed" for i in emb.ids])
    assert (got == want.removed).all() and got.any()
    refs = {emb.ids[i]: emb.ids[want.ref[i]] for i in np.flatnonzero(want.removed)}
    assert {i: r["ref_id"] for i, r in led.items() if r["ref_id"]} == refs
    # the same cosines up to float32 rounding (BLAS threads differ between driver and tasks)
    np.testing.assert_allclose([led[i]["score"] for i in emb.ids], want.max_cos, atol=1e-6)
    assert not list(out.path.rglob("_clusters*"))  # the per-cluster decisions are not kept
