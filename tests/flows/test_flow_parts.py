"""The flow's parts without a full run: retries, artifact builders, the mixture search kernel."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (OSError("disk"), True),
        (RuntimeError("executor lost"), True),
        (ValueError("bad"), False),
        (KeyError("k"), False),
        (FloatingPointError("nan loss"), False),
    ],
)
def test_only_failures_a_retry_can_fix_are_retried(exc, retry):
    from prefect.states import Failed

    from curamix.config import ConfigError
    from curamix.flows.curate import is_retryable, should_retry

    assert is_retryable(exc) is retry
    assert should_retry(None, None, Failed(data=exc)) is retry
    assert not is_retryable(ConfigError("x"))


def test_gates_and_missing_java_are_not_retried():
    from curamix.flows.curate import is_retryable
    from curamix.pipelines.dedup import DedupGateError
    from curamix.pipelines.semdedup import SemDedupGateError
    from curamix.pipelines.session import JavaMissingError

    assert not is_retryable(DedupGateError("domain x would lose 90%"))
    assert not is_retryable(SemDedupGateError("domain x would lose 60%"))
    assert not is_retryable(JavaMissingError("no java"))


def test_stage_task_retries_transient_failures_only(prefect_harness, monkeypatch, tmp_path):
    import curamix.runner
    from curamix.config import build_config
    from curamix.flows.curate import stage_task
    from curamix.io.store import JobResult

    cfg = build_config({"run_dir": str(tmp_path), "stages": []}, use_env=False)
    calls: list[str] = []

    def flaky(spark, cfg, stage, upstream=None, on_step=None):
        calls.append(stage)
        if len(calls) == 1:
            raise OSError("transient: executor lost")
        return JobResult(stage, tmp_path, {}, skipped=False)

    monkeypatch.setattr(curamix.runner, "run_stage", flaky)
    monkeypatch.setattr("curamix.flows.curate.spark_session", lambda cfg: None)
    res = stage_task.with_options(retries=1, retry_delay_seconds=0)(cfg, "ingest", {})
    assert res.stage == "ingest" and calls == ["ingest", "ingest"]

    def broken(spark, cfg, stage, upstream=None, on_step=None):
        calls.append(stage)
        raise ValueError("bad record in file x")

    calls.clear()
    monkeypatch.setattr(curamix.runner, "run_stage", broken)
    with pytest.raises(ValueError, match="bad record"):
        stage_task.with_options(retries=3, retry_delay_seconds=0)(cfg, "dedup", {})
    assert calls == ["dedup"]


def test_artifact_markdown(tmp_path):
    from curamix.flows.artifacts import artifact_key, embed_images, stage_markdown
    from curamix.io.store import JobResult

    assert artifact_key("curamix", "Mixture_Search", "fits/chinchilla") == (
        "curamix-mixture-search-fits-chinchilla"
    )
    png = bytes.fromhex("89504e470d0a1a0a") + b"fake"
    (tmp_path / "plot.png").write_bytes(png)
    (tmp_path / "report.md").write_text("# Report\n\n![sizes](plot.png)\n![gone](missing.png)\n")
    md = embed_images((tmp_path / "report.md").read_text(), tmp_path)
    assert "![sizes](data:image/png;base64,iVBORw0KGgpmYWtl)" in md and "(missing.png)" in md
    manifest = {
        "counts": {
            "in": 10, "kept": 7, "removed": 3, "removed_reasons": {"exact_duplicate": 3},
            "per_domain": {"a": {"in": 6, "kept": 4, "removed": 2}, "b": {"in": 4, "kept": 3,
                                                                         "removed": 1}},
        },
        "gates": {"max_removal_rate": 0.5, "domains_over_rate": {}},
        "timings": {"total_s": 1.25},
    }  # fmt: skip
    text = stage_markdown(JobResult("dedup", tmp_path, manifest, skipped=True))
    assert text.startswith("# dedup: skipped (already complete)")
    assert "| domain | in | kept | removed |" in text and "| a | 6 | 4 | 2 |" in text
    assert "**removed reasons:** exact_duplicate 3" in text and "- max_removal_rate: 0.5" in text
    assert "## Report" in text and "data:image/png;base64," in text


def test_artifacts_never_fail_a_run(monkeypatch):
    """Publishing outside a run, with no API reachable, logs and goes on."""
    from curamix.flows import artifacts

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens there
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert artifacts.publish_markdown("curamix-x", "# x") is None
        assert artifacts.publish_table("curamix-y", [{"a": 1}]) is None


def test_make_mixer_defaults_and_bad_parameters():
    from curamix.mixers.search import DEFAULT_PARAMS, make_mixer

    dga = make_mixer("dga", {"eta": 2.0})
    assert dga.eta == 2.0 and dga.normalize == DEFAULT_PARAMS["dga"]["normalize"]
    assert make_mixer("regmix", seed=7).random_state == 7
    with pytest.raises(ValueError, match=r"takes no parameter\(s\) \['tau'\]"):
        make_mixer("uniform", {"tau": 1})
    with pytest.raises(ValueError, match="unknown mixture method 'best'"):
        make_mixer("best")


def test_search_on_a_pool_writes_a_mixture_and_skips_on_rerun(tmp_path):
    """run_mixture_search on a hand-made pool: valid mixture, trajectory, skip on rerun."""
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    from curamix.config import MixtureSearchConfig
    from curamix.demo import DOMAINS
    from curamix.io.store import JobResult
    from curamix.mixers.search import run_mixture_search
    from curamix.mixture import Mixture

    r = random.Random(0)
    rows = [
        {"id": f"{d}-{i}", "domain": d, "text": make(r)}
        for d, make in list(DOMAINS.items())[:3]
        for i in range(12)
    ]
    pool = tmp_path / "select-x"
    (pool / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), pool / "data" / "part-00000.parquet")
    (pool / "manifest.json").write_text("{}")
    res = JobResult("select", pool, {}, skipped=True)
    cfg = MixtureSearchConfig(
        method="natural", vocab_size=300, seq_len=32, batch_size=4, total_tokens=128 * 5,
        eval_tokens=512, checkpoint_every=None,
    )  # fmt: skip
    out = run_mixture_search(tmp_path / "run", cfg, res, seed=1)
    assert not out.skipped and out.stage == "mixture"
    mix = Mixture.read_json(out.path / "mixture.json")
    assert list(mix.weights) == sorted({r["domain"] for r in rows})
    shares = {d: t / sum(mix.domain_tokens.values()) for d, t in mix.domain_tokens.items()}
    assert dict(mix.weights) == pytest.approx(shares)  # natural = token shares
    assert mix.provenance["search"]["proxy"]["model"] == "nano"
    search = json.loads((out.path / "search.json").read_text())
    assert set(search["val_losses"]) == set(mix.weights)
    again = run_mixture_search(tmp_path / "run", cfg, res, seed=1)
    assert again.skipped and again.path == out.path
    assert not (tmp_path / "run" / "proxy" / f"search-{out.path.name.split('-', 1)[1]}").exists()
    with pytest.raises(ValueError, match="follows a target's gradient"):
        run_mixture_search(tmp_path / "run", cfg.model_copy(update={"method": "dga"}), res)
