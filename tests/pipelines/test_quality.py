"""The quality stage: rules in order with named reasons, a trained fastText classifier with a
token-weighted keep rule, Nemotron-CC buckets as mixture domains, identical outputs on both
engines, accounting, rerun skip, and errors that name the bad value."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curamix.config import ConfigError, build_config
from curamix.pipelines.quality import quality_key
from curamix.runner import run_pipeline
from tests.conftest import write_jsonl

pytestmark = [pytest.mark.spark, pytest.mark.realdata]

DOMAINS = ("math", "web", "wiki", "reviews")
FRENCH = (
    "Le comité se réunira de nouveau mardi prochain pour examiner le budget de la nouvelle "
    "bibliothèque municipale, puis il publiera un rapport détaillé sur les dépenses prévues. "
) * 6


def _take(path: Path, n: int) -> list[dict]:
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            rows.append({"id": d["id"], "text": d["text"]})
            if len(rows) == n:
                break
    return rows


@pytest.fixture(scope="module")
def pool(tmp_path_factory, shared_data) -> Path:
    root = tmp_path_factory.mktemp("quality")
    for d in DOMAINS:
        write_jsonl(
            root / "raw" / f"{d}.jsonl", _take(shared_data / "corpus" / f"{d}.jsonl.gz", 60)
        )
    write_jsonl(
        root / "raw" / "odd.jsonl",
        [
            {"id": "fr", "text": FRENCH},
            {"id": "junk", "text": bytes(range(1, 250)).decode("latin-1") * 40},
            {"id": "oneline", "text": "word " * 180_000},
            {
                "id": "short",
                "text": "The weather in the city was cold and windy today, so we stayed at home "
                "and read books.",
            },
        ],
    )
    return root


def _cfg(root: Path, run: Path, **quality) -> object:
    q = {
        "classifiers": [
            {
                "name": "dclm",
                "positive_domains": ["math"],
                "max_positives": 50,
                "negative_sample": 120,
                "bucket": 20_000,
                "lr": 0.5,  # DCLM's lr 0.1 and 5 epochs are for 400k examples; these are 170
                "epoch": 25,
                "keep_top": 0.5,
            }
        ],
        "buckets": {"as_domains": True, "groups": [0, 10, 15, 18]},
        **quality,
    }
    return build_config(
        {
            "run_dir": str(run),
            "stages": ["ingest", "quality"],
            "ingest": {"inputs": [{"path": str(root / "raw")}]},
            "quality": q,
        },
        use_env=False,
    )


def _read(res, sub: str) -> list[dict]:
    return sorted(pq.read_table(res["quality"].path / sub).to_pylist(), key=lambda r: r["id"])


@pytest.fixture(scope="module")
def local_run(pool, tmp_path_factory, spark):
    cfg = _cfg(pool, tmp_path_factory.mktemp("run-local"), engine="local")
    return run_pipeline(cfg, spark=spark)


def test_rules_reasons_and_accounting(local_run):
    res = local_run["quality"]
    led = {r["id"]: r for r in _read(local_run, "ledger")}
    assert len(led) == 4 * 60 + 4 == res.counts["in"]
    assert led["junk"]["reason"].startswith("not_text:control_char_frac=")
    assert led["oneline"]["reason"] == "not_text:longest_line=900000>100000"
    assert led["fr"]["reason"] == "langid:lang=fr"
    assert led["short"]["reason"].startswith("gopher_")  # the first failing heuristic
    scores = {r["id"]: r for r in _read(local_run, "scores")}
    assert "gopher_quality:n_words=18<50" in scores["short"]["heuristics"].split("; ")
    reasons = {r["reason"].split(":")[0] for r in led.values() if r["reason"]}
    assert {"not_text", "langid", "gopher_quality", "dclm"} <= reasons
    data = _read(local_run, "data")
    kept = {i for i, r in led.items() if r["decision"] == "kept"}
    assert {r["id"] for r in data} == kept and res.counts["kept"] == len(kept)
    assert sorted(scores) == sorted(led)
    assert (res.path / "models" / "dclm.bin").is_file()
    assert "## Removals by rule" in (res.path / "report.md").read_text()


def test_keep_top_is_token_weighted_and_math_scores_high(local_run):
    res = local_run["quality"]
    m = json.loads((res.path / "manifest.json").read_text())
    thr = m["classifiers"]["dclm"]["threshold"]
    words = {
        r["id"]: r["n_words"]
        for r in pq.read_table(local_run["ingest"].data_path, columns=["id", "n_words"]).to_pylist()
    }
    led = {r["id"]: r for r in _read(local_run, "ledger")}
    passed = [r for r in _read(local_run, "scores") if r["rule"] is None]
    for r in passed:  # every rule-passing document: kept iff its score reaches the threshold
        assert (led[r["id"]]["decision"] == "kept") == (r["score_dclm"] >= thr)
    total = sum(words[r["id"]] for r in passed)
    kept = sum(words[r["id"]] for r in passed if r["score_dclm"] >= thr)
    best_removed = max((r for r in passed if r["score_dclm"] < thr), key=lambda r: r["score_dclm"])
    # the top half of the tokens: at most 50%, and one more document would pass 50%
    assert kept <= 0.5 * total < kept + words[best_removed["id"]]
    # positives came from math: the classifier scores math above the other domains
    # (every document is scored, also those a rule removed, e.g. LaTeX failing C4's braces)
    by_domain: dict[str, list[float]] = {}
    for r in _read(local_run, "scores"):
        by_domain.setdefault(r["id"].split("/")[0], []).append(r["score_dclm"])
    mean = {d: sum(v) / len(v) for d, v in by_domain.items() if d in DOMAINS}
    assert mean["math"] > 0.5 > max(mean[d] for d in DOMAINS if d != "math")
    assert m["classifiers"]["dclm"]["positives"] == 50
    assert m["classifiers"]["dclm"]["negatives"] == 120


def test_buckets_become_domains(local_run):
    data = _read(local_run, "data")
    assert all("/q" in r["domain"] for r in data)
    assert {r["domain"].split("/")[0] for r in data} <= set(DOMAINS)
    assert all(0 <= r["quality_bucket"] <= 19 for r in data)
    assert all(r["domain"].endswith(("q0-9", "q10-14", "q15-17", "q18-19")) for r in data)
    m = json.loads((local_run["quality"].path / "manifest.json").read_text())
    assert sum(e["docs"] for e in m["buckets"].values()) == m["counts"]["in"]
    assert len(m["classifiers"]["dclm"]["bin_edges"]) == 19


def test_spark_engine_writes_the_same_outputs_and_rerun_skips(pool, local_run, spark, tmp_path):
    cfg = _cfg(pool, tmp_path / "run", engine="spark")
    res = run_pipeline(cfg, spark=spark)
    local_cfg = _cfg(pool, tmp_path / "other", engine="local")
    pool_in = {"pool": local_run["ingest"]}
    assert quality_key(local_cfg, pool_in) == quality_key(cfg, pool_in)  # engine: not in the key
    for sub in ("ledger", "data", "scores"):
        assert _read(res, sub) == _read(local_run, sub), sub
    again = run_pipeline(cfg, spark=spark)
    assert again["quality"].skipped


def test_errors_name_the_value(pool, tmp_path, spark):
    with pytest.raises(ConfigError, match="unknown filter"):
        _cfg(pool, tmp_path / "a", heuristics={"gopher_qualty": True})
    with pytest.raises(ConfigError, match="keep_top"):
        _cfg(
            pool,
            tmp_path / "b",
            classifiers=[{"name": "x", "positive_domains": ["math"], "keep_top": 1.5}],
        )
    with pytest.raises(ConfigError, match="probability"):
        _cfg(
            pool,
            tmp_path / "c",
            classifiers=[{"name": "x", "positive_domains": ["math"], "threshold": 3}],
        )
    cfg = _cfg(
        pool,
        tmp_path / "d",
        classifiers=[{"name": "x", "positive_domains": ["nope"]}],
        buckets=None,
    )
    with pytest.raises(ValueError, match="positive set is empty"):
        run_pipeline(cfg, spark=spark)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00" * 64)
    cfg = _cfg(pool, tmp_path / "e", classifiers=[{"name": "x", "model": str(bad)}], buckets=None)
    with pytest.raises(ValueError, match="not a fastText model"):
        run_pipeline(cfg, spark=spark)
    cfg = _cfg(pool, tmp_path / "f", heuristics={"gopher_quality": {"min_doc_wordz": 5}})
    with pytest.raises(ValueError, match="min_doc_wordz"):
        run_pipeline(cfg, spark=spark)


def test_buckets_are_mixture_domains_end_to_end(local_run, tmp_path):
    """Quality buckets as domains feed the mixture half: the mixer weighs e.g. ``wiki/q18-19``
    against ``web/q0-9``."""
    from curamix.config import MixtureSearchConfig
    from curamix.mixers.search import run_mixture_search
    from curamix.mixture import Mixture

    res = local_run["quality"]
    domains = set(pq.read_table(res.data_path, columns=["domain"])["domain"].to_pylist())
    cfg = MixtureSearchConfig(
        method="dga",
        vocab_size=300,
        seq_len=32,
        batch_size=8,
        total_tokens=4096,
        update_every=8,
        eval_tokens=1024,
        checkpoint_every=None,
    )
    math = pq.read_table(local_run["ingest"].data_path, columns=["domain", "text"]).to_pylist()
    target = [r["text"] for r in math if r["domain"] == "math"][:20]
    out = run_mixture_search(tmp_path / "mix", cfg, res, seed=0, target_texts=target)
    mix = Mixture.read_json(out.path / "mixture.json")
    assert set(mix.weights) <= domains and len(mix.weights) >= 4
    assert all("/q" in d for d in mix.weights)  # topic x quality bucket
    assert sum(mix.weights.values()) == pytest.approx(1.0)


def test_exempt_domains_skip_langid_and_heuristics(pool, tmp_path, spark):
    cfg = _cfg(pool, tmp_path / "run", classifiers=[], buckets=None, exempt_domains=["math"])
    res = run_pipeline(cfg, spark=spark)
    led = {r["id"]: r for r in _read(res, "ledger")}
    scores = {r["id"]: r for r in _read(res, "scores")}
    math = [i for i in led if i.startswith("math/")]
    assert all(led[i]["decision"] == "kept" and scores[i]["heuristics"] is None for i in math)
    assert all(scores[i]["lang"] is not None for i in math)  # language still recorded
    web = [i for i in led if i.startswith("web/")]
    assert any(led[i]["decision"] == "removed" for i in web)
    assert led["fr"]["reason"] == "langid:lang=fr"
    # counts are by rule; the ledger keeps the value
    assert all("=" not in r for r in res["quality"].counts["removed_reasons"])


def test_embedding_head_scores_the_embed_stage_vectors(shared_data, tmp_path, spark):
    """FineWeb-Edu's path: a linear head on the embed stage's vectors, trained on labelled
    texts (DCLM's human labels here), keeps ``round(score) >= threshold``."""
    with gzip.open(shared_data / "corpus" / "web.jsonl.gz", "rt") as f:
        web = [json.loads(x) for x in f]
    labelled = [r for r in web if "dclm_majority_label" in (r.get("meta") or {})]
    write_jsonl(
        tmp_path / "labels.jsonl",
        [
            {"id": r["id"], "text": r["text"], "edu": 5 * r["meta"]["dclm_majority_label"]}
            for r in labelled[:320]
        ],
    )
    write_jsonl(
        tmp_path / "raw" / "web.jsonl",
        [{"id": r["id"], "text": r["text"]} for r in labelled[320:420]],
    )
    cfg = build_config(
        {
            "run_dir": str(tmp_path / "run"),
            "stages": ["ingest", "embed", "quality"],
            "ingest": {"inputs": [{"path": str(tmp_path / "raw")}]},
            "embed": {"max_seq_length": 128},
            "quality": {
                "heuristics": {},
                "langid": None,
                "classifiers": [
                    {
                        "name": "edu",
                        "kind": "embedding_head",
                        "label_inputs": [{"path": str(tmp_path / "labels.jsonl")}],
                        "label_field": "edu",
                        "threshold": 3,
                    }
                ],
            },
        },
        use_env=False,
    )
    res = run_pipeline(cfg, spark=spark)["quality"]
    m = json.loads((res.path / "manifest.json").read_text())
    assert m["classifiers"]["edu"]["labels"] == 320 and m["classifiers"]["edu"]["threshold"] == 3
    led = {r["id"]: r for r in pq.read_table(res.path / "ledger").to_pylist()}
    scores = {r["id"]: r["score_edu"] for r in pq.read_table(res.path / "scores").to_pylist()}
    assert len(scores) == 100 and all(0 <= s <= 5 for s in scores.values())
    for i, s in scores.items():  # FineWeb-Edu's rule on every document
        assert (led[i]["decision"] == "kept") == (round(s) >= 3), (i, s)
    # the head ranks the held-out human labels better than chance
    from sklearn.metrics import roc_auc_score

    truth = {r["id"]: r["meta"]["dclm_majority_label"] for r in labelled[320:420]}
    assert roc_auc_score([truth[i] for i in scores], [scores[i] for i in scores]) > 0.6
