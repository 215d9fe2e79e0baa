"""The Adapt-infty stage on a small slice of ../shared/data (6 domains x 30 documents): every
input document accounted for with its reason, the per-cluster counts of the report and
manifest are the ledger's, pruning keeps each cluster's least redundant documents before the
selection, the stored proxy reproduces the features and the selection, the same output from
the Spark engine on local[2] and the local engine on a local[1] session, rerun skip, and bad
input named; the flow's stage task finds the stage's output."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curamix.config import ConfigError, build_config
from curamix.pipelines.adapt import KEPT_PREFIX, NOT_SAMPLED, PRUNED, TOO_SHORT
from curamix.pipelines.registry import get_stage
from curamix.runner import run_pipeline
from tests.conftest import write_jsonl

pytestmark = [pytest.mark.spark, pytest.mark.realdata]

DOMAINS = ("math", "qa", "commonsense", "wiki", "news", "code")
PER_DOMAIN = 30
N = PER_DOMAIN * len(DOMAINS)
SMALL_PROXY = {
    "sample": 180,
    "total_tokens": 8_192,
    "seq_len": 64,
    "vocab_size": 512,
    "batch_size": 16,
    "device": "cpu",
}
"""A proxy that trains in seconds on 2 cores (the stage's numbers, not its quality)."""
ADAPT_SCORERS = ("log_ppl", "el2n", "grand")
ADAPT = {
    "n_clusters": 4,
    "n_bins": 5,
    "proj_dim": 64,
    "prune_fraction": 0.6,
    "proxy": SMALL_PROXY,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def slice_dir(shared_data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("adaptdata")
    for d in DOMAINS:
        with gzip.open(shared_data / "corpus" / f"{d}.jsonl.gz", "rt", encoding="utf-8") as fh:
            rows = [json.loads(next(fh)) for _ in range(PER_DOMAIN)]
        write_jsonl(
            root / "pool" / f"{d}.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows]
        )
    # Two documents the proxy cannot score (under 2 tokens).
    write_jsonl(
        root / "pool" / "tiny.jsonl", [{"id": "t1", "text": "a"}, {"id": "t2", "text": "."}]
    )
    return root


def _cfg(root: Path, run: str, **adapt):
    return build_config(
        {
            "run_dir": str(root / run),
            "seed": 3,
            "stages": ["ingest", "adapt"],
            "ingest": {"inputs": [{"path": str(root / "pool")}]},
            "adapt": {**ADAPT, **adapt},
        },
        use_env=False,
    )


@pytest.fixture(scope="module")
def run(spark, slice_dir):
    cfg = _cfg(slice_dir, "run-spark", engine="spark")
    return cfg, run_pipeline(cfg, spark=spark)


def _ledger(res) -> list[dict]:
    return sorted(pq.read_table(res.ledger_path).to_pylist(), key=lambda r: r["id"])


def test_every_document_is_accounted_for(run):
    _, res = run
    r = res["adapt"]
    n_in = N + 2
    pool = pq.read_table(res["ingest"].data_path, columns=["id"])["id"].to_pylist()
    led = _ledger(r)
    assert sorted(x["id"] for x in led) == sorted(pool) and len(led) == n_in
    pattern = re.compile(
        rf"^({re.escape(KEPT_PREFIX)}\d|({NOT_SAMPLED}|{PRUNED}) cluster=\d|{TOO_SHORT})$"
    )
    assert all(pattern.match(x["reason"]) for x in led), {x["reason"] for x in led}
    kept = [x for x in led if x["decision"] == "kept"]
    assert all(x["reason"].startswith(KEPT_PREFIX) for x in kept)
    assert {x["id"] for x in led if x["reason"] == TOO_SHORT} == {"t1", "t2"}
    c = r.counts
    assert (c["in"], c["kept"], c["removed"]) == (n_in, len(kept), n_in - len(kept))
    assert sum(c["removed_reasons"].values()) == n_in - len(kept)
    # data/ holds the kept documents with their cluster, score and scorer (the ledger's).
    data = {x["id"]: x for x in pq.read_table(r.data_path).to_pylist()}
    assert set(data) == {x["id"] for x in kept}
    a = r.manifest["adapt"]
    scorer = {x["cluster"]: x["scorer"] for x in a["clusters"]}
    for x in kept:
        d = data[x["id"]]
        assert x["reason"] == f"{KEPT_PREFIX}{d['cluster']}"
        assert d["score"] == pytest.approx(x["score"]) and d["scorer"] == scorer[d["cluster"]]
    # Per cluster: the manifest's counts are the ledger's; pruning kept each cluster's prune
    # budget; the selection kept at most each cluster's budget (trim) and what CCS drew.
    budget = a["budget"]["value"]
    keep = a["prune"]["value"]
    assert (budget, keep) == (int(0.1 * (N + 2)), int(0.6 * (N + 2)))
    for x in a["clusters"]:
        i = x["cluster"]
        n_i = sum(
            1
            for y in led
            if y["reason"].endswith(f"cluster={i}") or y["reason"] == f"{KEPT_PREFIX}{i}"
        )
        assert n_i == x["size"]
        assert x["pruned"] == sum(1 for y in led if y["reason"] == f"{PRUNED} cluster={i}")
        assert x["size"] - x["pruned"] == x["prune_budget"]
        assert x["kept"] == sum(1 for y in kept if y["reason"] == f"{KEPT_PREFIX}{i}")
        assert x["kept"] == min(x["budget"], x["drawn"]) and x["scorer"] in ADAPT_SCORERS
    assert sum(x["prune_budget"] for x in a["clusters"]) >= keep
    assert budget <= sum(x["budget"] for x in a["clusters"])
    assert len(kept) <= sum(x["budget"] for x in a["clusters"])
    report = (r.path / "report.md").read_text()
    assert "## Clusters" in report and "| cluster | size | pruned | budget |" in report
    for x in a["clusters"]:
        assert f"| {x['cluster']} | {x['size']} | {x['pruned']} | {x['budget']} |" in report


def test_pruned_documents_are_the_most_redundant_of_their_cluster(run):
    _, res = run
    r = res["adapt"]
    s = pq.read_table(r.path / "scores.parquet").to_pandas()
    pos = {i: k for k, i in enumerate(s["id"])}
    led = {x["id"]: x for x in _ledger(r)}
    for c, g in s[s["cluster"] >= 0].groupby("cluster"):
        pruned, kept = g[g["pruned"]], g[~g["pruned"]]
        assert len(pruned) and pruned["max_sim"].min() >= kept["max_sim"].max()
        for i, sim in zip(pruned["id"], pruned["max_sim"], strict=True):
            x = led[i]
            assert x["score"] == pytest.approx(sim)
            ref = x["ref_id"]  # the earlier document of the same cluster it is closest to
            assert ref is not None and pos[ref] < pos[i]
            assert s.loc[pos[ref], "cluster"] == c
    # Only documents that survived the pruning are selected.
    assert not (s["pruned"] & s["selected"]).any() and s["selected"].sum() == r.counts["kept"]


def test_stored_proxy_reproduces_the_features_and_the_selection(run):
    from curamix.proxy.perplexity import load_proxy
    from curamix.selectors.adapt import AdaptSelector, gradient_features

    cfg, res = run
    r = res["adapt"]
    ac = cfg.adapt
    model, tok = load_proxy(r.path / "proxy")
    docs = pq.read_table(res["ingest"].data_path, columns=["id", "text"]).to_pandas()
    s = pq.read_table(r.path / "scores.parquet").to_pandas().set_index("id").loc[docs["id"]]
    f = gradient_features(model, tok, docs["text"].tolist(), proj_dim=ac.proj_dim, seed=cfg.seed)
    for name in ADAPT_SCORERS:
        np.testing.assert_allclose(getattr(f, name), s[name].to_numpy(), rtol=1e-4, atol=1e-6)
    valid = np.flatnonzero(f.n_tokens >= 2)
    sel = AdaptSelector(n_clusters=ac.n_clusters, n_bins=ac.n_bins, random_state=cfg.seed).fit(
        f.vectors[valid]
    )
    assert (sel.labels_ == s["cluster"].to_numpy()[valid]).all()
    keep = r.manifest["adapt"]["prune"]["value"]
    got = sel.select(
        {k: v[valid] for k, v in f.scores().items()},
        r.manifest["adapt"]["budget"]["value"],
        sel.prune(keep).positions,
    )
    chosen = docs["id"].to_numpy()[valid[got.positions]]
    assert sorted(chosen) == sorted(s.index[s["selected"]])


def test_local_engine_on_one_core_writes_the_same_output(run, spark, slice_dir, tmp_path):
    cfg, res = run
    other = tmp_path / "run"
    other.mkdir()
    shutil.copytree(res["ingest"].path, other / res["ingest"].path.name)  # only adapt reruns
    one = _cfg(slice_dir, "unused", engine="local").model_copy(
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
        "assert res['ingest'].skipped and not res['adapt'].skipped\n"
        "led = pq.read_table(res['adapt'].path / 'ledger').to_pylist()\n"
        "print('LEDGER=' + json.dumps(sorted(led, key=lambda r: r['id'])))\n"
        "print('KEY=' + res['adapt'].path.name)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, one.model_dump_json()],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(x.split("=", 1) for x in out.stdout.splitlines() if x[:4] in ("LEDG", "KEY="))
    got, want = json.loads(lines["LEDGER"]), _ledger(res["adapt"])
    assert [(x["id"], x["decision"], x["reason"], x["ref_id"]) for x in got] == [
        (x["id"], x["decision"], x["reason"], x["ref_id"]) for x in want
    ]
    np.testing.assert_allclose(
        [x["score"] if x["score"] is not None else np.nan for x in got],
        [x["score"] if x["score"] is not None else np.nan for x in want],
        rtol=1e-5,
    )
    # The engine is not part of the key; a rerun of the same config is skipped.
    assert lines["KEY"] == res["adapt"].path.name
    key = get_stage("adapt").key
    pool = {"pool": res["ingest"]}
    assert key(_cfg(slice_dir, "x", budget=5), pool) != key(cfg, pool)
    again = run_pipeline(cfg, spark=spark)
    assert again["adapt"].skipped and again["adapt"].path == res["adapt"].path
    # The flow runs the registry's stages generically: its stage task finds the same output.
    from curamix.flows.curate import stage_task

    step = stage_task.fn(cfg, "adapt", {"ingest": res["ingest"]})
    assert step.skipped and step.path == res["adapt"].path


def test_bad_input_is_named(spark, run, slice_dir):
    with pytest.raises(ConfigError, match=r"adapt.budget=5000 documents is larger than the pool"):
        run_pipeline(_cfg(slice_dir, "bad1", engine="local", budget=5000), spark=spark)
    with pytest.raises(ConfigError, match=r"adapt.n_clusters=500 is larger than the pool \(182"):
        run_pipeline(_cfg(slice_dir, "bad2", engine="local", n_clusters=500), spark=spark)
    with pytest.raises(ConfigError, match=r"pruning keeps 10 documents .* fewer than the budget"):
        cfg = _cfg(slice_dir, "bad3", engine="local", prune_budget=10, prune_fraction=None)
        run_pipeline(cfg, spark=spark)
    with pytest.raises(ConfigError, match=r"adapt.scorers.0: Input should be .*\(got 'ppl'\)"):
        _cfg(slice_dir, "bad4", scorers=["ppl"])
    with pytest.raises(ConfigError, match=r"adapt.proj_dim: .*greater than or equal to 1 \(got 0"):
        _cfg(slice_dir, "bad5", proj_dim=0)
    with pytest.raises(ConfigError, match=r"adapt.n_clusters: .*greater than or equal to 1"):
        _cfg(slice_dir, "bad6", n_clusters=0)


def test_cli_builds_the_section_and_names_bad_input(run, monkeypatch):
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from curamix.cli import app
    from curamix.cli import stages as cli_stages

    cfg, res = run
    runner = CliRunner()
    out = runner.invoke(app, ["adapt", cfg.run_dir, "--budget", "5000", "--engine", "local"])
    assert out.exit_code == 2, out.output
    assert "adapt.budget=5000 documents is larger than the pool" in " ".join(out.output.split())
    seen = {}

    def fake_run(c, only=None):
        seen["cfg"], seen["only"] = c, only
        manifest = {"selected": 7, "clusters": [{}] * 3, "scorer_counts": {"grand": 3}, "pruned": 9}
        return {"adapt": SimpleNamespace(manifest={"adapt": manifest}, path=res["adapt"].path)}

    monkeypatch.setattr(cli_stages, "_run", fake_run)
    args = ["adapt", cfg.run_dir, "--budget", "30", "--prune-fraction", "0.5", "--n-clusters",
            "3", "--scorer", "el2n", "--scorer", "grand", "--proj-dim", "32",
            "--entropy-window", "zscore", "--engine", "spark"]  # fmt: skip
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    a = seen["cfg"].adapt
    assert seen["only"] == ["adapt"] and "adapt" in seen["cfg"].stages
    assert (a.budget, a.budget_fraction, a.prune_fraction, a.n_clusters) == (30, None, 0.5, 3)
    assert (a.scorers, a.proj_dim, a.entropy_window, a.engine) == (
        ["el2n", "grand"], 32, "zscore", "spark",
    )  # fmt: skip
    assert "kept 7 documents from 3 clusters (scorers: grand 3; pruned 9)" in out.output
