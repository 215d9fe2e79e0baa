"""The RDS+ stage on a small slice of ../shared/data (6 domains x 40 documents; GSM8K, MMLU
and ARC as three tasks): every input document accounted for, ledger reasons and per-task
counts, the local and Spark engines agree, the stored proxy reproduces the scores, a token
budget, the embed representation with unembedded documents, rerun skip and bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curamix.config import ConfigError, build_config
from curamix.pipelines.rds import KEPT_PREFIX, NOT_EMBEDDED, REMOVED_REASON
from curamix.pipelines.registry import get_stage
from curamix.runner import run_pipeline
from tests.conftest import write_jsonl

pytestmark = [pytest.mark.spark, pytest.mark.realdata]

DOMAINS = ("math", "qa", "commonsense", "wiki", "news", "code")
PER_DOMAIN = 40
TASKS = ("gsm8k_train", "mmlu_train", "arc_easy_test")
N_QUERIES = 30
SMALL_PROXY = {
    "sample": 240,
    "total_tokens": 16_384,
    "seq_len": 64,
    "vocab_size": 512,
    "batch_size": 16,
    "device": "cpu",
}
"""A proxy that trains in seconds on 2 cores (the stage's numbers, not its quality)."""


def _read_gz(path: Path, n: int) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(next(fh)) for _ in range(n)]


@pytest.fixture(scope="module")
def slice_dir(shared_data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rdsdata")
    for d in DOMAINS:
        rows = _read_gz(shared_data / "corpus" / f"{d}.jsonl.gz", PER_DOMAIN)
        write_jsonl(
            root / "pool" / f"{d}.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows]
        )
    for t in TASKS:
        rows = _read_gz(shared_data / "targets" / f"{t}.jsonl.gz", N_QUERIES)
        write_jsonl(root / "q" / f"{t}.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows])
    return root


def _cfg(root: Path, run: str, stages=None, embed=None, **rds):
    data = {
        "run_dir": str(root / run),
        "seed": 1,
        "stages": stages or ["ingest", "rds"],
        "ingest": {"inputs": [{"path": str(root / "pool")}]},
        "rds": {
            "query_inputs": [{"path": str(root / "q" / f"{t}.jsonl")} for t in TASKS],
            "proxy": SMALL_PROXY,
            "device": "cpu",
            **rds,
        },
    }
    if embed is not None:
        data["embed"] = embed
    return build_config(data, use_env=False)


@pytest.fixture(scope="module")
def local_run(spark, slice_dir):
    cfg = _cfg(slice_dir, "run-local", engine="local")
    return cfg, run_pipeline(cfg, spark=spark)


def test_every_document_is_accounted_for(local_run):
    _, res = local_run
    r = res["rds"]
    n_in = PER_DOMAIN * len(DOMAINS)
    pool_ids = pq.read_table(res["ingest"].data_path, columns=["id"])["id"].to_pylist()
    led = pq.read_table(r.ledger_path).to_pylist()
    assert sorted(x["id"] for x in led) == sorted(pool_ids) and len(led) == n_in
    kept = [x for x in led if x["decision"] == "kept"]
    removed = [x for x in led if x["decision"] == "removed"]
    assert len(kept) + len(removed) == n_in
    # default budget: 10% of the pool's documents
    assert len(kept) == n_in // 10 and r.counts["kept"] == len(kept)
    assert (r.counts["in"], r.counts["removed"]) == (n_in, len(removed))
    assert r.counts["removed_reasons"] == {REMOVED_REASON: len(removed)}
    data_ids = pq.read_table(r.data_path, columns=["id"])["id"].to_pylist()
    assert sorted(data_ids) == sorted(x["id"] for x in kept)
    # Reasons name the task (kept: the task whose turn chose it) and carry the score; ref_id
    # is that task's nearest query example.
    by_task = {t: 0 for t in TASKS}
    for x in kept:
        task = x["reason"].removeprefix(KEPT_PREFIX)
        assert x["reason"].startswith(KEPT_PREFIX) and task in TASKS
        by_task[task] += 1
        assert x["score"] is not None and -1 <= x["score"] <= 1
        assert x["ref_id"] is not None
    assert all(x["score"] is not None and x["ref_id"] for x in removed)
    # The report's per-task counts are the ledger's; round-robin gives each task a share.
    per = r.manifest["rds"]["tasks"]
    assert {t: v["contributed"] for t, v in per.items()} == by_task
    assert list(per) == list(TASKS) and all(v["queries"] == N_QUERIES for v in per.values())
    assert sum(by_task.values()) == len(kept) and min(by_task.values()) >= 1
    assert max(by_task.values()) - min(by_task.values()) <= 2 + r.manifest["rds"]["duplicate_pops"]
    by_domain = {}
    for e in r.counts["per_domain"].values():
        for t, n in e["by_task"].items():
            by_domain[t] = by_domain.get(t, 0) + n
    assert by_domain == {t: n for t, n in by_task.items() if n}
    report = (r.path / "report.md").read_text()
    assert "## Per task" in report and all(f"| {t} | {N_QUERIES} |" in report for t in TASKS)


def test_scores_file_and_stored_proxy_reproduce_the_selection(local_run, slice_dir):
    import torch
    from tokenizers import Tokenizer

    from curamix.proxy.model import ProxyLM, ProxyModelConfig
    from curamix.selectors.rds import ProxyLMEncoder, RDSSelector

    _, res = local_run
    r = res["rds"]
    s = pq.read_table(r.path / "scores.parquet").to_pandas()
    led = {x["id"]: x for x in pq.read_table(r.ledger_path).to_pylist()}
    chosen = s[s["selected_order"] >= 0].sort_values("selected_order")
    assert len(chosen) == r.counts["kept"]
    assert (
        chosen["selected_by"] == [led[i]["reason"][len(KEPT_PREFIX) :] for i in chosen["id"]]
    ).all()
    # The proxy under proxy/ gives the same per-task scores for the pool.
    p = r.path / "proxy"
    model = ProxyLM(ProxyModelConfig(**json.loads((p / "config.json").read_text())))
    model.load_state_dict(torch.load(p / "model.pt", weights_only=True))
    enc = ProxyLMEncoder(model.eval(), Tokenizer.from_file(str(p / "tokenizer.json")))
    qs = {
        t: [json.loads(x)["text"] for x in (slice_dir / "q" / f"{t}.jsonl").open()] for t in TASKS
    }
    sel = RDSSelector().fit({t: enc.encode(q) for t, q in qs.items()})
    docs = pq.read_table(res["ingest"].data_path, columns=["id", "text"]).to_pandas()
    want = sel.score_samples(enc.encode(docs["text"].tolist()))
    got = s.set_index("id").loc[docs["id"], [f"score__{t}" for t in TASKS]].to_numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    again = sel.select(got, r.counts["kept"])
    assert docs["id"].to_numpy()[again.positions].tolist() == chosen["id"].tolist()


def test_spark_engine_equals_local_and_rerun_skips(spark, local_run, slice_dir):
    cfg, res = local_run
    scfg = _cfg(slice_dir, "run-spark", engine="spark")
    sres = run_pipeline(scfg, spark=spark)
    a = pq.read_table(res["rds"].path / "scores.parquet").to_pandas()
    b = pq.read_table(sres["rds"].path / "scores.parquet").to_pandas()
    assert (a["id"] == b["id"]).all()
    np.testing.assert_array_equal(a["selected_order"], b["selected_order"])
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-6)
    la = sorted(pq.read_table(res["rds"].ledger_path).to_pylist(), key=lambda x: x["id"])
    lb = sorted(pq.read_table(sres["rds"].ledger_path).to_pylist(), key=lambda x: x["id"])
    assert [(x["decision"], x["reason"]) for x in la] == [(x["decision"], x["reason"]) for x in lb]
    # The engine is not in the key (the registry's, which the runner uses); the budget is.
    rds_key = get_stage("rds").key
    pool = {"pool": res["ingest"]}
    assert rds_key(cfg, pool) == rds_key(scfg, pool) == res["rds"].path.name.removeprefix("rds-")
    assert rds_key(_cfg(slice_dir, "run-local", budget=3), pool) != rds_key(cfg, pool)
    again = run_pipeline(cfg, spark=spark)
    assert again["rds"].skipped and again["rds"].path == res["rds"].path


def test_token_budget_and_max_aggregation(spark, slice_dir):
    cfg = _cfg(
        slice_dir, "run-tokens", engine="local", budget_unit="tokens", aggregation="max",
        budget_fraction=0.2,
    )  # fmt: skip
    r = run_pipeline(cfg, spark=spark)["rds"]
    s = pq.read_table(r.path / "scores.parquet").to_pandas()
    budget = 0.2 * s["n_words"].sum()
    chosen = s[s["selected_order"] >= 0].sort_values("selected_order")
    words = chosen["n_words"].to_numpy()
    # Documents are added until their words reach the budget: the last one crosses it.
    assert words.sum() >= budget > words[:-1].sum()
    assert r.counts["tokens_kept"] == words.sum()
    # max aggregation: the kept documents are the best by their best task score.
    assert (chosen["score"].to_numpy()[:-1] >= chosen["score"].to_numpy()[1:]).all()
    assert chosen["score"].min() >= s.loc[s["selected_order"] < 0, "score"].max()


def test_embed_representation_removes_unembedded_documents(spark, slice_dir):
    embed = {"max_seq_length": 32, "batch_size": 64, "device": "cpu", "sample": 200}
    cfg = _cfg(
        slice_dir, "run-embed", stages=["ingest", "embed", "rds"], embed=embed,
        representation="embed", budget=24,
    )  # fmt: skip
    res = run_pipeline(cfg, spark=spark)
    r = res["rds"]
    c = r.counts
    assert c["in"] == PER_DOMAIN * len(DOMAINS) and c["kept"] == 24
    assert c["removed_reasons"] == {REMOVED_REASON: 200 - 24, NOT_EMBEDDED: c["in"] - 200}
    led = pq.read_table(r.ledger_path).to_pylist()
    assert all(x["score"] is None for x in led if x["reason"] == NOT_EMBEDDED)
    assert r.manifest["rds"]["dim"] == 384 and r.manifest["rds"]["candidates"] == 200
    # MiniLM puts math near GSM8K: the GSM8K task's picks are mostly math.
    s = pq.read_table(r.path / "scores.parquet").to_pandas()
    g = s[s["selected_by"] == "gsm8k_train"]
    assert len(g) >= 6 and (g["domain"] == "math").mean() >= 0.5


def test_bad_input_is_named(spark, slice_dir, tmp_path):
    with pytest.raises(
        ConfigError, match=r"rds.budget=100000 documents is larger than the pool \(240"
    ):
        run_pipeline(_cfg(slice_dir, "run-bad1", engine="local", budget=100_000), spark=spark)
    (tmp_path / "empty.jsonl").write_text("")
    queries = [{"path": str(slice_dir / "q" / f"{t}.jsonl")} for t in TASKS]
    queries.append({"path": str(tmp_path / "empty.jsonl")})
    cfg = _cfg(slice_dir, "run-bad2", engine="local", query_inputs=queries)
    with pytest.raises(
        ConfigError, match=r"empty task query set: no query example in .*empty\.jsonl"
    ):
        run_pipeline(cfg, spark=spark)
    with pytest.raises(ConfigError, match=r"unknown representation 'bert'"):
        _cfg(slice_dir, "run-bad3", representation="bert")
    with pytest.raises(ConfigError, match=r"set budget \(5\) or budget_fraction \(0.1\), not both"):
        _cfg(slice_dir, "run-bad4", budget=5, budget_fraction=0.1)
    with pytest.raises(ValueError, match=r"cannot load a causal LM .*no-such-model"):
        run_pipeline(
            _cfg(
                slice_dir, "run-bad5", engine="local", representation=f"hf:{tmp_path}/no-such-model"
            ),
            spark=spark,
        )
