"""Running the stages a config lists, and reporting where a run stands.

The CLI, notebooks and (later) the Prefect flows call these same functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curamix.config import KNOWN_STAGES, ConfigError, PipelineConfig, dump_config, load_config
from curamix.io.store import JobResult, load_completed, read_stages_index, write_json_atomic

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

RUN_CONFIG = "pipeline.yaml"


def _stage_runner(stage: str) -> Callable[..., JobResult]:
    """The ``run_<stage>`` function of ``curamix.pipelines.<stage>`` (imported on first use)."""
    import importlib

    if stage not in KNOWN_STAGES:
        raise ValueError(f"unknown stage {stage!r}; known stages: {list(KNOWN_STAGES)}")
    return getattr(importlib.import_module(f"curamix.pipelines.{stage}"), f"run_{stage}")


POOL_STAGES: tuple[str, ...] = ("decontam", "semdedup", "dedup")
"""Stages that write a filtered pool, latest first."""


def pool_stage(cfg: PipelineConfig, before: str | None = None) -> str:
    """The stage whose documents a later stage reads: the latest of decontam and dedup that the
    run has (listed in ``stages`` with its section), else ingest. ``before``: only stages that
    run before that one (decontam reads ``pool_stage(cfg, before="decontam")``)."""
    for stage in POOL_STAGES:
        if before is not None and KNOWN_STAGES.index(stage) >= KNOWN_STAGES.index(before):
            continue
        if stage in cfg.stages and getattr(cfg, stage, None) is not None:
            return stage
    return "ingest"


def extend_run_config(run_dir: str | Path, stage: str, section: dict[str, Any]) -> PipelineConfig:
    """The run's saved config with ``stage`` added to its stages and its section replaced."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise ConfigError(
            f"no {RUN_CONFIG} in {run_dir}: run `curamix ingest` or `curamix run` there first"
        )
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    data["stages"] = sorted(set(data.get("stages", [])) | {stage}, key=list(KNOWN_STAGES).index)
    data[stage] = section
    from curamix.config import build_config

    return build_config(data, base_dir=run_dir, origin=f"{path} + command line")


def stage_key(cfg: PipelineConfig, stage: str) -> str:
    """The key a stage's output folder will carry for ``cfg`` (config + inputs hash).

    Raises :class:`MissingUpstreamError` when a stage it reads has not completed yet."""
    if stage == "ingest":
        from curamix.io.inputs import expand_inputs
        from curamix.pipelines.ingest import ingest_key

        assert cfg.ingest is not None
        return ingest_key(cfg, expand_inputs(cfg.ingest).fingerprints)
    if stage == "dsir":
        from curamix.config import IngestConfig
        from curamix.io.inputs import expand_inputs
        from curamix.pipelines.dsir import dsir_key

        assert cfg.dsir is not None
        targets = (
            expand_inputs(IngestConfig(inputs=cfg.dsir.target_inputs)).fingerprints
            if cfg.dsir.target_inputs
            else []
        )
        return dsir_key(cfg, require_upstream(cfg, pool_stage(cfg)), targets)
    if stage == "dedup":
        from curamix.pipelines.dedup import dedup_key

        return dedup_key(cfg, require_upstream(cfg, "ingest"))
    if stage == "decontam":
        from curamix.config import IngestConfig
        from curamix.io.inputs import expand_inputs
        from curamix.pipelines.decontam import decontam_key

        assert cfg.decontam is not None
        tests = expand_inputs(IngestConfig(inputs=cfg.decontam.test_inputs)).fingerprints
        return decontam_key(cfg, require_upstream(cfg, pool_stage(cfg, before="decontam")), tests)
    if stage == "embed":
        from curamix.pipelines.embed import embed_key

        return embed_key(cfg, require_upstream(cfg, pool_stage(cfg, before="embed")))
    if stage == "semdedup":
        from curamix.pipelines.semdedup import semdedup_key

        return semdedup_key(
            cfg,
            require_upstream(cfg, pool_stage(cfg, before="semdedup")),
            require_upstream(cfg, "embed"),
        )
    if stage == "betr":
        from curamix.config import IngestConfig
        from curamix.io.inputs import expand_inputs
        from curamix.pipelines.betr import betr_key

        assert cfg.betr is not None
        bench = expand_inputs(IngestConfig(inputs=cfg.betr.benchmark_inputs)).fingerprints
        return betr_key(cfg, require_upstream(cfg, pool_stage(cfg)), bench)
    if stage == "coreset":
        from curamix.pipelines.coreset import coreset_key

        assert cfg.coreset is not None
        score = cfg.coreset.score
        return coreset_key(
            cfg,
            require_upstream(cfg, pool_stage(cfg)),
            require_upstream(cfg, "embed"),
            None if score == "prototype" else require_upstream(cfg, score),
        )
    if stage == "select":
        from curamix.pipelines.select import select_key

        assert cfg.select is not None
        return select_key(cfg, require_upstream(cfg, cfg.select.scores))
    raise ValueError(f"no key rule for stage {stage!r}")


class MissingUpstreamError(ConfigError):
    """A stage needs the output of a stage that has not completed for this config."""


def require_upstream(
    cfg: PipelineConfig, stage: str, given: dict[str, JobResult] | None = None
) -> JobResult:
    """The completed output of ``stage`` for ``cfg``: from ``given`` (this run's results), or the
    run folder's output whose key matches the current config and inputs."""
    if given and stage in given:
        return given[stage]
    if getattr(cfg, stage, None) is None:
        raise MissingUpstreamError(
            f"this step needs the '{stage}' stage, and the config has no '{stage}:' section"
        )
    done = load_completed(cfg.run_dir, stage, stage_key(cfg, stage))
    if done is None:
        raise MissingUpstreamError(
            f"this step needs the '{stage}' stage's output for the current config and inputs in {cfg.run_dir}; "
            f"run it first (add '{stage}' to stages)"
        )
    return done


def run_stage(
    spark: SparkSession,
    cfg: PipelineConfig,
    stage: str,
    upstream: dict[str, JobResult] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> JobResult:
    """Run one stage of ``cfg`` as :func:`run_pipeline` does (skipped when already complete);
    ``upstream``: this run's results so far (others come from the run folder)."""
    kwargs = {} if stage == "ingest" else {"upstream": upstream if upstream is not None else {}}
    return _stage_runner(stage)(spark, cfg, on_step=on_step, **kwargs)


def run_pipeline(
    cfg: PipelineConfig,
    spark: SparkSession | None = None,
    on_step: Callable[[str], None] | None = None,
    only: list[str] | None = None,
) -> dict[str, JobResult]:
    """Run ``cfg.stages`` (or the ``only`` ones among them) in order into ``cfg.run_dir``;
    finished stages are skipped, and upstream stages not run here come from the run folder."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{RUN_CONFIG}.tmp"
    tmp.write_text(dump_config(cfg), encoding="utf-8")
    tmp.replace(run_dir / RUN_CONFIG)
    if spark is None:
        from curamix.pipelines.session import get_spark

        spark = get_spark(cfg.spark)
    results: dict[str, JobResult] = {}
    for stage in cfg.stages:
        if only is not None and stage not in only:
            continue
        results[stage] = run_stage(spark, cfg, stage, results, on_step)
    write_json_atomic(
        run_dir / "last_run.json",
        {s: {"folder": r.path.name, "skipped": r.skipped} for s, r in results.items()},
    )
    return results


@dataclass(frozen=True)
class StageStatus:
    stage: str
    state: str
    """``done`` (output matches config and inputs), ``stale`` (an output exists, but the config
    or the inputs changed since), ``pending`` (never run) or ``error`` (cannot tell)."""
    folder: str | None
    counts: dict[str, Any]
    detail: str = ""


def run_status(run_dir: str | Path) -> list[StageStatus]:
    """Each stage of a run's config with its state and counts."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"no run folder at {run_dir}")
    index = read_stages_index(run_dir)
    cfg_path = run_dir / RUN_CONFIG
    stages: list[str] = list(index)
    cfg: PipelineConfig | None = None
    out = []
    if cfg_path.is_file():
        try:
            cfg = load_config(cfg_path, use_env=False)
            stages = list(cfg.stages) + [s for s in index if s not in cfg.stages]
        except ConfigError as err:  # e.g. written by another curamix version
            out.append(StageStatus("pipeline.yaml", "error", None, {}, str(err).replace("\n", " ")))
    for stage in stages:
        latest = index.get(stage, {}).get("folder")
        if cfg is None or stage not in cfg.stages:
            res = _load(run_dir, latest)
            out.append(
                StageStatus(
                    stage,
                    "done" if res else "pending",
                    latest,
                    res.counts if res else {},
                    "not in pipeline.yaml",
                )
            )
            continue
        try:
            key = stage_key(cfg, stage)
        except MissingUpstreamError as err:
            res = _load(run_dir, latest)
            state = "stale" if res else "pending"
            out.append(
                StageStatus(
                    stage, state, latest, res.counts if res else {}, f"waits for upstream: {err}"
                )
            )
            continue
        except (ConfigError, OSError) as err:
            out.append(StageStatus(stage, "error", latest, {}, str(err)))
            continue
        done = load_completed(run_dir, stage, key)
        if done is not None:
            out.append(StageStatus(stage, "done", done.path.name, done.counts))
        elif latest:
            res = _load(run_dir, latest)
            out.append(
                StageStatus(
                    stage,
                    "stale",
                    latest,
                    res.counts if res else {},
                    "config or inputs changed since",
                )
            )
        else:
            out.append(StageStatus(stage, "pending", None, {}))
    return out


def _load(run_dir: Path, folder: str | None) -> JobResult | None:
    if not folder:
        return None
    stage, key = folder.rsplit("-", 1)
    return load_completed(run_dir, stage, key)
