"""The stage registry: every stage of a run, in run order, with what it reads and how it runs.

One line per stage. A line names the stage (also its config section, ``cfg.<name>``), its
upstream (``role -> stage`` for a config: what the stage reads), its key function (the output
folder's key: config + upstream manifests + input fingerprints) and its runner::

    Stage(name, upstream, key, run, writes_pool)

- ``upstream(cfg) -> {"pool": "dedup", "embed": "embed", ...}``: the runner resolves each
  name to the completed :class:`~curamix.io.store.JobResult` (this run's, or the run folder's
  whose key matches) and hands them to ``key`` and ``run`` as ``inputs``.
- ``key(cfg, inputs) -> str``.
- ``run(spark, cfg, inputs, key, say) -> JobResult``: called only when no completed output
  with that key exists (:func:`curamix.runner.run_stage` skips finished stages).
- ``writes_pool``: the stage's ``data/`` is the run's pool, read by the stages after it
  (:func:`curamix.config.pool_stage`).

Stage modules import nothing from the runner, so the layers stay acyclic: ``runner`` ->
``registry`` -> ``pipelines.<stage>`` -> algorithms -> foundation (docs/architecture.md).
Adding a stage: a module here with its ``<stage>_key`` and ``run_<stage>``, its config
section in :class:`~curamix.config.PipelineConfig` and its name in
:data:`~curamix.config.KNOWN_STAGES`, and one line below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from curamix.config import KNOWN_STAGES, POOL_STAGES, PipelineConfig, pool_stage
from curamix.io.store import JobResult
from curamix.pipelines import betr, coreset, decontam, dedup, dsir, embed, ingest, select, semdedup

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

Inputs = Mapping[str, JobResult]
"""A stage's resolved upstream outputs by role (``pool``, ``embed``, ``scores``)."""
Say = Callable[[str], None]


@dataclass(frozen=True)
class Stage:
    """One stage: its name (= config section), upstream rule, key function and runner."""

    name: str
    upstream: Callable[[PipelineConfig], dict[str, str]]
    key: Callable[[PipelineConfig, Inputs], str]
    run: Callable[[SparkSession, PipelineConfig, Inputs, str, Say], JobResult]
    writes_pool: bool = False

    @property
    def section(self) -> str:
        """The config section (``cfg.<section>``) the stage needs."""
        return self.name


def _pool(stage: str) -> Callable[[PipelineConfig], dict[str, str]]:
    """Upstream = the run's pool as it stands before ``stage``."""
    return lambda cfg: {"pool": pool_stage(cfg, before=stage)}


def _pool_and_embed(stage: str) -> Callable[[PipelineConfig], dict[str, str]]:
    return lambda cfg: {"pool": pool_stage(cfg, before=stage), "embed": "embed"}


STAGES: tuple[Stage, ...] = (
    Stage("ingest", lambda _cfg: {}, ingest.ingest_key, ingest.write_ingest),
    Stage("dedup", lambda _cfg: {"pool": "ingest"}, dedup.dedup_key, dedup.run_dedup, True),
    Stage("embed", _pool("embed"), embed.embed_key, embed.run_embed),
    Stage(
        "semdedup", _pool_and_embed("semdedup"), semdedup.semdedup_key, semdedup.run_semdedup, True
    ),
    Stage("decontam", _pool("decontam"), decontam.decontam_key, decontam.run_decontam, True),
    Stage("dsir", _pool("dsir"), dsir.dsir_key, dsir.run_dsir),
    Stage("betr", _pool("betr"), betr.betr_key, betr.run_betr),
    Stage("select", select.select_upstream, select.select_key, select.run_select),
    Stage("coreset", coreset.coreset_upstream, coreset.coreset_key, coreset.run_coreset),
)
"""Every stage, in run order."""

REGISTRY: dict[str, Stage] = {s.name: s for s in STAGES}

if tuple(REGISTRY) != KNOWN_STAGES or tuple(s.name for s in STAGES if s.writes_pool) != POOL_STAGES:
    raise RuntimeError(
        "curamix.pipelines.registry and curamix.config disagree on the stages: "
        f"{list(REGISTRY)} vs {list(KNOWN_STAGES)} (pool: {list(POOL_STAGES)})"
    )


def get_stage(name: str) -> Stage:
    """The registry entry of ``name``; ``ValueError`` listing the known stages otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; known stages: {list(REGISTRY)}") from None
