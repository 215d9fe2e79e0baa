"""Running the stages a config lists, and reporting where a run stands.

Orchestration only: what each stage reads, its key and its runner come from
:mod:`curamix.pipelines.registry`. The CLI, notebooks and the Prefect flows call these same
functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curamix.config import (
    KNOWN_STAGES,
    ConfigError,
    PipelineConfig,
    dump_config,
    load_config,
    pool_stage,
)
from curamix.io.fs import AnyPath, as_path
from curamix.io.store import (
    JobResult,
    load_completed,
    read_stages_index,
    run_lock,
    write_json_atomic,
    write_text_atomic,
)
from curamix.pipelines.registry import get_stage

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "MissingUpstreamError",
    "StageStatus",
    "extend_run_config",
    "pool_stage",
    "require_upstream",
    "run_pipeline",
    "run_stage",
    "run_status",
    "stage_inputs",
    "stage_key",
]

RUN_CONFIG = "pipeline.yaml"


def extend_run_config(run_dir: str | Path, stage: str, section: dict[str, Any]) -> PipelineConfig:
    """The run's saved config with ``stage`` added to its stages and its section replaced."""
    path = as_path(run_dir) / RUN_CONFIG
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


class MissingUpstreamError(ConfigError):
    """A stage needs the output of a stage that has not completed for this config."""


def require_upstream(
    cfg: PipelineConfig, stage: str, given: Mapping[str, JobResult] | None = None
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


def stage_inputs(
    cfg: PipelineConfig, stage: str, given: Mapping[str, JobResult] | None = None
) -> dict[str, JobResult]:
    """The completed upstream outputs ``stage`` reads for ``cfg``, by role (see the registry)."""
    spec = get_stage(stage)
    if getattr(cfg, spec.section, None) is None:
        raise ConfigError(f"the '{stage}' stage needs a '{spec.section}:' section in the config")
    return {role: require_upstream(cfg, up, given) for role, up in spec.upstream(cfg).items()}


def stage_key(cfg: PipelineConfig, stage: str) -> str:
    """The key a stage's output folder will carry for ``cfg`` (config + inputs hash).

    Raises :class:`MissingUpstreamError` when a stage it reads has not completed yet."""
    return get_stage(stage).key(cfg, stage_inputs(cfg, stage))


STORE_READY = ("ingest", "dedup", "decontam", "embed", "dsir", "select")
"""Stages that run with ``run_dir`` on an object store (docs/deploy.md); the others open
their outputs by local path in places, and are refused there rather than written wrongly."""


def check_store_ready(cfg: PipelineConfig, stages: list[str]) -> None:
    """:class:`ConfigError` naming the stages that cannot yet run into an object-store
    ``run_dir``, before any of them starts."""
    from curamix.io.fs import is_remote

    if not is_remote(cfg.run_dir):
        return
    waiting = [s for s in stages if s not in STORE_READY]
    if waiting:
        raise ConfigError(
            f"run_dir {cfg.run_dir} is on an object store, where only {', '.join(STORE_READY)} "
            f"can run in this release; {', '.join(waiting)} cannot yet: use a local or shared "
            "run folder for them (docs/deploy.md, 'Object storage')"
        )


def run_stage(
    spark: SparkSession,
    cfg: PipelineConfig,
    stage: str,
    upstream: Mapping[str, JobResult] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> JobResult:
    """Run one stage of ``cfg`` (skipped when its output for this config and inputs is already
    complete); ``upstream``: this run's results so far (others come from the run folder)."""
    spec = get_stage(stage)
    check_store_ready(cfg, [stage])
    say = on_step or (lambda _msg: None)
    inputs = stage_inputs(cfg, stage, upstream)
    key = spec.key(cfg, inputs)
    done = load_completed(cfg.run_dir, stage, key)
    if done is not None:
        say(f"{stage}: skipped, already complete at {done.path}")
        return done
    return spec.run(spark, cfg, inputs, key, say)


def run_pipeline(
    cfg: PipelineConfig,
    spark: SparkSession | None = None,
    on_step: Callable[[str], None] | None = None,
    only: list[str] | None = None,
) -> dict[str, JobResult]:
    """Run ``cfg.stages`` (or the ``only`` ones among them) in order into ``cfg.run_dir``;
    finished stages are skipped, and upstream stages not run here come from the run folder.

    The run folder is locked for the duration (:func:`curamix.io.store.run_lock`): a second
    run on the same folder is refused with an error naming this one."""
    from curamix.io.fs import configure

    configure(cfg.storage.model_dump() if cfg.storage else None)
    check_store_ready(cfg, [s for s in cfg.stages if only is None or s in only])
    with run_lock(cfg.run_dir):
        return _run_pipeline(cfg, spark, on_step, only)


def _run_pipeline(
    cfg: PipelineConfig,
    spark: SparkSession | None,
    on_step: Callable[[str], None] | None,
    only: list[str] | None,
) -> dict[str, JobResult]:
    run_dir = as_path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / RUN_CONFIG, dump_config(cfg))
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
        {s: {"folder": r.folder, "skipped": r.skipped} for s, r in results.items()},
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
    from curamix.io.fs import check_store

    check_store(str(run_dir))  # a missing bucket or refused credentials, said as such
    run_dir = as_path(run_dir)
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
            out.append(StageStatus(stage, "done", done.folder, done.counts))
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


def _load(run_dir: AnyPath, folder: str | None) -> JobResult | None:
    if not folder:
        return None
    stage, key = folder.rsplit("-", 1)
    return load_completed(run_dir, stage, key)
