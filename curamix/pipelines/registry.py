"""The stage registry: every stage of a run, in run order, with what it reads and how it runs.

``Stage(name, upstream, key, run, writes_pool)``: ``name`` is also the config section;
``upstream(cfg)`` maps roles (``pool``, ``embed``, ``scores``) to the stages read, which the
runner resolves to completed outputs and hands to ``key(cfg, inputs)`` (the output folder's
key) and ``run(spark, cfg, inputs, key, say)`` (called only when that folder is not complete);
``writes_pool``: the stage's ``data/`` is the pool later stages read. The registry's ``key``
sees the stage's section with ``device: auto`` / ``gpu: auto`` resolved to this machine's
devices (:func:`_device_resolved`). Stage modules import nothing from the runner. Adding a stage: its module, its config section, one line here
(CONTRIBUTING.md; the layers: docs/architecture.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from curamix.config import KNOWN_STAGES, POOL_STAGES, PipelineConfig, config_hash, pool_stage
from curamix.embeddings.devices import resolve_auto_devices
from curamix.embeddings.index import gpu_setting
from curamix.io.store import JobResult
from curamix.pipelines import (
    adapt,
    betr,
    coreset,
    decontam,
    dedup,
    dsir,
    embed,
    ingest,
    quality,
    rds,
    select,
    semdedup,
)

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
    Stage("quality", quality.quality_upstream, quality.quality_key, quality.run_quality, True),
    Stage("decontam", _pool("decontam"), decontam.decontam_key, decontam.run_decontam, True),
    Stage("dsir", _pool("dsir"), dsir.dsir_key, dsir.run_dsir),
    Stage("betr", _pool("betr"), betr.betr_key, betr.run_betr),
    Stage("rds", rds.rds_upstream, rds.rds_key, rds.run_rds),
    Stage("select", select.select_upstream, select.select_key, select.run_select),
    Stage("coreset", coreset.coreset_upstream, coreset.coreset_key, coreset.run_coreset),
    Stage("adapt", adapt.adapt_upstream, adapt.adapt_key, adapt.run_adapt),
)
"""Every stage, in run order."""

DEVICE_EXTRAS: dict[str, Callable[[PipelineConfig], dict[str, str]]] = {
    # The coreset's k-means (curamix.selectors.coreset) runs with gpu='auto', a setting that
    # is in no config section: the key names the device it resolves to.
    "coreset": lambda _cfg: {"kmeans_gpu": gpu_setting("auto")},
}
"""Devices a stage's output depends on that its config section does not name."""


def _device_resolved(stage: Stage) -> Stage:
    """``stage`` with a key that hashes its section with ``device: auto`` / ``gpu: auto``
    resolved to this machine's device (:func:`resolve_auto_devices`), plus its
    :data:`DEVICE_EXTRAS`: a CPU run and a GPU run never share a cache entry. Downstream
    stages that reuse the embed section's devices (semdedup's k-means, quality's embedding
    head) inherit the difference through the embed stage's manifest hash in their key."""
    inner, extra = stage.key, DEVICE_EXTRAS.get(stage.name)

    @functools.wraps(inner)  # still the stage module's key (``key.__wrapped__``)
    def key(cfg: PipelineConfig, inputs: Inputs) -> str:
        section = getattr(cfg, stage.section, None)
        if section is not None:
            resolved = resolve_auto_devices(section)
            if resolved is not section:
                cfg = cfg.model_copy(update={stage.section: resolved})
        k = inner(cfg, inputs)
        return k if extra is None else config_hash(k, extra(cfg))

    return replace(stage, key=key)


STAGES = tuple(_device_resolved(s) for s in STAGES)

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
