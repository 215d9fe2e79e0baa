"""``curate_flow``: the whole pipeline as one Prefect flow.

ingest -> dedup -> (embed -> semdedup) -> quality -> decontam -> scoring (dsir, betr) -> select / coreset
(the stages the config lists, in order) -> mixture search (``mixture:``) -> scaling laws
(``scaling:``) -> recommend (``RUN/mixture.json``) -> export (``export:``).

Each step is a thin task over the plain function the CLI and notebooks call
(:func:`curamix.runner.run_stage`, :func:`curamix.mixers.search.run_mixture_search`,
:mod:`curamix.flows.steps`). Every step skips itself when its output for the same config and
inputs is complete, so a killed or failed flow is simply run again. Failures a retry can fix
(I/O, a lost Spark executor) are retried ``flow.retries`` times; bad config or input is not.

Tasks run in the flow's own process and thread, one after the other (plain calls, no task
runner), so they share ONE SparkSession per flow run: the flow opens it and keeps it in a
module-level holder (a session cannot be a task parameter: it does not serialize).

Runs without a Prefect server (ephemeral mode) or against one (``PREFECT_API_URL``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from curamix.config import PipelineConfig, build_config, dump_config, load_config
from curamix.io.store import JobResult, write_json_atomic

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from curamix.mixture import Mixture

log = logging.getLogger("curamix.flows")

NOT_RETRYABLE = frozenset(
    {
        "ValueError",  # ConfigError, MixtureError, bad input named in the message
        "TypeError",
        "KeyError",
        "ArithmeticError",  # NonFiniteLossError
        "AssertionError",
        "NotImplementedError",
        "ImportError",
        "DedupGateError",  # a safety gate: the data, not the machine
        "AccountingError",
        "JavaMissingError",
        "ScalingLawFitError",
        "NotFittedError",
        "EpochLimitError",
        "IndexTooLargeError",
        "GPUUnavailableError",
    }
)
"""Exception classes (by name, through the MRO) that a retry cannot fix."""

_SESSION: dict[str, Any] = {"spark": None, "owned": False}
"""The flow run's SparkSession (set by the flow, read by the stage tasks)."""


# ---------------------------------------------------------------------------------------------
# Helpers


def is_retryable(exc: BaseException | None) -> bool:
    """Whether a failure may pass on a retry: not bad config or input, not a safety gate."""
    if exc is None or not isinstance(exc, Exception):
        return False
    return not ({c.__name__ for c in type(exc).__mro__} & NOT_RETRYABLE)


def should_retry(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only :func:`is_retryable` failures."""
    exc = getattr(state, "data", None)
    return is_retryable(exc if isinstance(exc, BaseException) else None)


def _say(msg: str) -> None:
    """Log a step message to the Prefect run logger (or the module logger outside a run)."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        get_run_logger().info(msg)
    except MissingContextError:
        log.info(msg)


def load_flow_config(
    config: str | os.PathLike[str] | Mapping[str, Any] | PipelineConfig,
    overrides: list[str] | None = None,
) -> PipelineConfig:
    """A validated config from a YAML path, a mapping (paths relative to the working folder) or
    a :class:`PipelineConfig`; raises :class:`ConfigError` naming each bad key."""
    if isinstance(config, PipelineConfig):
        if overrides:
            data = config.model_dump(mode="json")
            return build_config(data, overrides, use_env=False, origin="config + overrides")
        return config
    if isinstance(config, Mapping):
        return build_config(config, overrides or [], base_dir=Path.cwd(), origin="flow parameter")
    return load_config(config, overrides or [])


def open_spark(cfg: PipelineConfig) -> SparkSession:
    """The flow run's one SparkSession (an active one is reused and left running)."""
    from pyspark.sql import SparkSession

    from curamix.pipelines.session import get_spark

    active = SparkSession.getActiveSession()
    spark = get_spark(cfg.spark)
    _SESSION.update(spark=spark, owned=active is None)
    return spark


def spark_session(cfg: PipelineConfig) -> SparkSession:
    """The session the flow opened, else (a task called on its own) ``get_spark``'s."""
    spark = _SESSION.get("spark")
    if spark is None:
        from curamix.pipelines.session import get_spark

        return get_spark(cfg.spark)
    return spark


def close_spark() -> None:
    """Stop the session if this flow run started it."""
    spark, owned = _SESSION.get("spark"), _SESSION.get("owned")
    _SESSION.update(spark=None, owned=False)
    if spark is not None and owned:
        spark.stop()


# ---------------------------------------------------------------------------------------------
# Tasks: thin wrappers over plain functions

_TASK = {"cache_policy": NO_CACHE, "persist_result": False, "retry_condition_fn": should_retry}


@task(name="stage", task_run_name="{stage}", **_TASK)
def stage_task(
    cfg: PipelineConfig, stage: str, upstream: dict[str, JobResult] | None = None
) -> JobResult:
    """One pipeline stage, as ``curamix run`` runs it (skipped when complete)."""
    from curamix.runner import run_stage

    return run_stage(spark_session(cfg), cfg, stage, upstream, on_step=_say)


@task(name="mixture-search", **_TASK)
def mixture_task(cfg: PipelineConfig, pool: JobResult) -> JobResult:
    """Proxy training with the configured mixer (skipped when complete); the pool sample is
    tokenized one Spark task per part (``mixture.engine``)."""
    from functools import partial

    from curamix.mixers.search import read_target_texts, run_mixture_search, target_spec
    from curamix.pipelines.parts import map_parts

    assert cfg.mixture is not None
    paths, domains = target_spec(cfg)
    run_parts = partial(map_parts, spark_session(cfg)) if cfg.mixture.engine != "local" else None
    return run_mixture_search(
        cfg.run_dir, cfg.mixture, pool, cfg.seed, read_target_texts(paths), domains, _say,
        run_parts,
    )  # fmt: skip


@task(name="scaling-laws", **_TASK)
def scaling_task(cfg: PipelineConfig, search: JobResult, pool: JobResult) -> JobResult:
    """Proxy sweep, law fits and recommendation (skipped when complete)."""
    from curamix.flows.steps import run_scaling_step

    assert cfg.scaling is not None
    return run_scaling_step(cfg.run_dir, cfg.scaling, search, pool, cfg.seed, _say)


@task(name="recommend", **_TASK)
def recommend_task(
    cfg: PipelineConfig, search: JobResult, scaling: JobResult | None
) -> tuple[Mixture, Path, bool]:
    """The run's mixture to ``RUN/mixture.json``."""
    from curamix.flows.steps import finalize_mixture

    return finalize_mixture(cfg.run_dir, search, scaling, _say)


@task(name="export", **_TASK)
def export_task(cfg: PipelineConfig, mixture_path: Path) -> tuple[list[Path], bool]:
    """Trainer formats of the mixture into ``RUN/export/`` (skipped when up to date)."""
    from curamix.flows.steps import run_export_step

    assert cfg.export is not None
    return run_export_step(cfg.run_dir, cfg.export, mixture_path, _say)


# ---------------------------------------------------------------------------------------------
# The flow


@flow(name="curate", description="curamix: curate pools, search the mixture, fit laws, export.")
def curate_flow(
    config: str | dict[str, Any] = "pipeline.yaml",
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Run a pipeline config end to end; finished steps are skipped.

    Parameters
    ----------
    config : str or dict
        A pipeline YAML path, or the config itself as a mapping (relative paths resolve
        against the working folder).
    overrides : list of str, optional
        ``section.field=value`` overrides, as ``curamix run --set``.

    Returns
    -------
    dict
        ``run_dir``; ``steps``: step -> ``{"path", "skipped"}`` in run order; ``mixture``:
        path and weights (with a ``mixture:`` section); ``exports``: files; ``artifacts``:
        the Prefect artifact keys published.
    """
    cfg = load_flow_config(config, overrides)
    from curamix.flows.steps import check_plan

    check_plan(cfg)  # every config problem surfaces before a stage runs
    return run_flow_steps(cfg)


def run_flow_steps(cfg: PipelineConfig) -> dict[str, Any]:
    """The flow's body (inside a flow run): the tasks in order, artifacts after each; the run
    folder is locked meanwhile (a second flow or run on it is refused, naming this one)."""
    from curamix.io.store import run_lock

    with run_lock(cfg.run_dir):
        return _run_flow_steps(cfg)


def _run_flow_steps(cfg: PipelineConfig) -> dict[str, Any]:
    from curamix.flows import artifacts as art

    fc = cfg.flow
    retries = {
        "retries": fc.retries if fc else 1,
        "retry_delay_seconds": fc.retry_delay_s if fc else 5.0,
    }
    publish = fc.artifacts if fc else True
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / ".pipeline.yaml.tmp"
    tmp.write_text(dump_config(cfg), encoding="utf-8")
    tmp.replace(run_dir / "pipeline.yaml")

    steps: dict[str, dict[str, Any]] = {}
    keys: list[str] = []
    summary: dict[str, Any] = {"run_dir": str(run_dir), "steps": steps, "artifacts": keys}

    def record(res: JobResult) -> JobResult:
        steps[res.stage] = {"path": str(res.path), "skipped": res.skipped}
        if publish:
            keys.extend(art.publish_step(res))
        return res

    results: dict[str, JobResult] = {}
    if cfg.stages:
        _say(f"run folder {run_dir}; starting Spark ({cfg.spark.master})")
        open_spark(cfg)
    try:
        for stage in cfg.stages:
            task_ = stage_task.with_options(**retries)
            results[stage] = record(task_(cfg, stage, dict(results)))
    finally:
        close_spark()

    if cfg.mixture is not None:
        from curamix.mixers.search import pool_stage_for
        from curamix.runner import require_upstream

        pool = require_upstream(cfg, pool_stage_for(cfg), results)
        search = record(mixture_task.with_options(**retries)(cfg, pool))
        scaling = None
        if cfg.scaling is not None:
            scaling = record(scaling_task.with_options(**retries)(cfg, search, pool))
        mix, path, same = recommend_task.with_options(**retries)(cfg, search, scaling)
        steps["recommend"] = {"path": str(path), "skipped": same}
        summary["mixture"] = {"path": str(path), "weights": dict(mix.weights)}
        if publish:
            keys.extend(art.publish_mixture(mix, path))
        if cfg.export is not None:
            files, same = export_task.with_options(**retries)(cfg, path)
            steps["export"] = {"path": str(run_dir / "export"), "skipped": same}
            summary["exports"] = [str(f) for f in files]
    if publish:
        key = art.publish_markdown("curamix-run", art.run_markdown(summary), str(run_dir))
        if key:
            keys.append(key)
    write_json_atomic(
        run_dir / "last_run.json",
        {s: {"folder": Path(v["path"]).name, "skipped": v["skipped"]} for s, v in steps.items()},
    )
    return summary


__all__ = [
    "curate_flow",
    "export_task",
    "is_retryable",
    "load_flow_config",
    "mixture_task",
    "recommend_task",
    "scaling_task",
    "should_retry",
    "stage_task",
]
