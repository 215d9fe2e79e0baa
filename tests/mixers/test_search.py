"""The search step's schedule: the DGA trajectory compressed to stages, recorded in provenance,
drawn over the trajectory, and held by mixture.json only when asked (``export: staged``)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curamix.config import MixtureSearchConfig, ScheduleConfig
from curamix.io.store import JobResult
from curamix.mixers import compress_trajectory, schedule_stages
from curamix.mixture import Mixture


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> tuple[JobResult, list[str]]:
    """Three demo domains, 12 documents each, and target texts like the first domain's."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curamix.demo import DOMAINS

    root = tmp_path_factory.mktemp("pool")
    r = random.Random(0)
    makers = list(DOMAINS.items())[:3]
    rows = [
        {"id": f"{d}-{i}", "domain": d, "text": make(r)} for d, make in makers for i in range(12)
    ]
    (root / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), root / "data" / "part-00000.parquet")
    (root / "manifest.json").write_text("{}")
    return JobResult("select", root, {}, skipped=True), [makers[0][1](r) for _ in range(8)]


def config(**kwargs) -> MixtureSearchConfig:
    base = dict(
        method="dga", vocab_size=300, seq_len=32, batch_size=4, total_tokens=128 * 40,
        update_every=5, eval_tokens=512, checkpoint_every=None,
    )  # fmt: skip
    return MixtureSearchConfig(**{**base, **kwargs})


def test_search_records_the_staged_schedule_and_keeps_the_final_weights_by_default(pool, tmp_path):
    from curamix.mixers.search import run_mixture_search

    res, target = pool
    out = run_mixture_search(tmp_path / "run", config(), res, seed=0, target_texts=target)
    mix = Mixture.read_json(out.path / "mixture.json")
    rec = mix.provenance["schedule"]
    # the default: the mixer's final weights, the staged schedule only in provenance
    assert rec["export"] == "final" and not mix.schedule
    assert dict(mix.weights) == pytest.approx(rec["final_weights"])
    traj = pl.read_parquet(out.path / "trajectory.parquet")
    assert traj.height == 9  # the start and one row per update (40 steps, every 5)
    again = compress_trajectory(traj, 128 * 40, epsilon=0.05)
    assert rec["n_stages"] == again.n_stages and rec["max_l1"] == pytest.approx(again.max_l1)
    assert rec["epsilon"] == 0.05 and rec["n_points"] == 9 and rec["max_l1"] <= 0.05 + 1e-12
    assert [s for s, _ in schedule_stages(mix)] == again.starts
    assert (out.path / "schedule.png").stat().st_size > 1000
    report = (out.path / "report.md").read_text()
    assert f"The trajectory as {rec['n_stages']} stages" in report
    assert "![schedule](schedule.png)" in report and "holds the final weights" in report
    assert json.loads((out.path / "manifest.json").read_text())["outputs"]["schedule_plot"]


def test_staged_export_holds_the_stages_and_upsampling_composes_after(pool, tmp_path):
    from curamix.mixers.search import run_mixture_search

    res, target = pool
    cfg = config(schedule={"stages": 3, "export": "staged"}, upsample=["code"],
                 upsample_factor=2.0)  # fmt: skip
    out = run_mixture_search(tmp_path / "run", cfg, res, seed=0, target_texts=target)
    mix = Mixture.read_json(out.path / "mixture.json")
    rec = mix.provenance["schedule"]
    assert rec["export"] == "staged" and rec["n_stages"] == 3 and rec["n_stages_requested"] == 3
    starts = [s["start"] for s in rec["stages"]]
    stages = mix.stages()
    # the three stages, then the upsampling stage at 0.85 (splitting the one running there)
    assert [s.start for s in stages[:3]] == starts and stages[3].start == pytest.approx(0.85)
    assert stages[3].name == "upsample" and mix.provenance["upsampling"]["domains"] == ["code"]
    for s, want in zip(stages[:3], rec["stages"], strict=True):
        assert dict(s.weights) == pytest.approx(want["weights"])
    w, up = rec["stages"][-1]["weights"], stages[3].weights
    assert up["code"] / up["news"] == pytest.approx(2 * w["code"] / w["news"])
    assert rec["final_weights"] != dict(mix.weights)  # both kept: the final ones in provenance


def test_the_schedule_section_counts_in_the_key_only_when_set(pool):
    from curamix.mixers.search import search_key

    res, _ = pool
    res = JobResult("select", Path(res.path), {}, skipped=True)
    default = search_key(config(), 0, res, "t")
    assert search_key(config(schedule=ScheduleConfig()), 0, res, "t") == default
    assert search_key(config(schedule={"export": "staged"}), 0, res, "t") != default
    assert search_key(config(schedule={"stages": 4}), 0, res, "t") != default
    with pytest.raises(ValueError, match="stages"):
        config(schedule={"stages": 0})
    with pytest.raises(ValueError, match="epsilon"):
        config(schedule={"epsilon": -0.1})
    with pytest.raises(ValueError, match="export"):
        config(schedule={"export": "both"})


def _split(res: JobResult, root: Path, n_parts: int) -> JobResult:
    """The same pool written as ``n_parts`` Parquet parts."""
    import pyarrow.parquet as pq

    t = pq.read_table(res.path / "data")
    (root / "data").mkdir(parents=True)
    for k in range(n_parts):
        pq.write_table(
            t.take(list(range(k, t.num_rows, n_parts))), root / "data" / f"part-{k:05d}.parquet"
        )
    (root / "manifest.json").write_text("{}")
    return JobResult("select", root, {}, skipped=True)


@pytest.mark.spark
def test_the_sample_tokenized_on_spark_equals_the_one_in_process(pool, spark, tmp_path):
    """The sample (and the tokenizer trained on it) does not depend on the parts or on where
    the per-part tasks run; the engine is not part of the key, the sample margin is."""
    from functools import partial

    from curamix.mixers.search import read_pool_sample, search_key
    from curamix.pipelines.parts import map_parts

    res, _ = pool
    three = _split(res, tmp_path / "three", 3)
    cfg = config(sample_margin=1.0, eval_tokens=32)
    tok1, here = read_pool_sample(
        tmp_path / "a",
        cfg.model_copy(update={"engine": "local"}),
        res,
        0,
        tmp_path / "a" / "tok.json",
    )
    tok3, there = read_pool_sample(
        tmp_path / "b", cfg.model_copy(update={"engine": "spark"}), three, 0,
        tmp_path / "b" / "tok.json", partial(map_parts, spark),
    )  # fmt: skip
    assert tok1.to_str() == tok3.to_str() and here.digest == there.digest
    for d in here.train:
        assert np.array_equal(here.train[d], there.train[d])
        assert not here.domains[d]["covered"] and here.domains[d]["sample_docs"] < 12
    with pytest.raises(ValueError, match=r"mixture\.engine='spark' needs a Spark session"):
        read_pool_sample(
            tmp_path / "c",
            cfg.model_copy(update={"engine": "spark"}),
            res,
            0,
            tmp_path / "c" / "t.json",
        )
    key = search_key(cfg, 0, res, "t")
    assert (
        search_key(cfg.model_copy(update={"engine": "spark", "local_max_docs": 1}), 0, res, "t")
        == key
    )
    assert search_key(cfg.model_copy(update={"sample_margin": 2.0}), 0, res, "t") != key


def test_a_sampled_search_weighs_the_whole_pools_tokens(pool, tmp_path):
    """With a small budget the proxy trains on a sample of each domain; the natural mixture and
    the mixture's domain tokens still count the whole pool (estimated from the sample); a
    second method on the same pool reuses the token shards."""
    from curamix.mixers.search import run_mixture_search

    res, _ = pool
    cfg = config(method="natural", total_tokens=128 * 5, eval_tokens=32, sample_margin=1.0)
    out = run_mixture_search(tmp_path / "run", cfg, res, seed=0)
    per = out.manifest["counts"]["per_domain"]
    mix = Mixture.read_json(out.path / "mixture.json")
    for d, row in per.items():
        assert row["docs"] == 12 and row["sample_docs"] < 12 and not row["covered"]
        assert row["sample_train_tokens"] < row["train_tokens"] == round(mix.domain_tokens[d])
    total = sum(mix.domain_tokens.values())
    assert dict(mix.weights) == pytest.approx({d: t / total for d, t in mix.domain_tokens.items()})
    assert out.manifest["inputs"]["sample_tokens_per_domain"] == 674  # ceil(640 / 0.95)
    assert "seeded sample of each domain" in (out.path / "report.md").read_text()
    shards = list((tmp_path / "run" / "proxy" / "tokens").glob("sample-*"))
    assert len(shards) == 1
    uni = run_mixture_search(tmp_path / "run", cfg.model_copy(update={"method": "uniform"}), res)
    assert uni.manifest["inputs"]["sample_sha256"] == out.manifest["inputs"]["sample_sha256"]
    assert list((tmp_path / "run" / "proxy" / "tokens").glob("sample-*")) == shards
