"""Mixture methods: domain weights for pretraining, each returned as a validated Mixture.

One estimator shape: ``fit(domain_stats)`` (token counts per domain, and what else the method
needs), ``partial_fit(step_metrics)`` for online methods (returns the new weights, so the
mixer itself is the :func:`curamix.proxy.train.train_proxy` hook), ``weights_``, and
``mixture()`` -> :class:`curamix.mixture.Mixture` with provenance.

- Baselines (:mod:`~curamix.mixers.baselines`): :class:`UniformMixer`,
  :class:`NaturalMixer`, :class:`TemperatureMixer`.
- :class:`DGAMixer` (:mod:`~curamix.mixers.dga`): online gradient alignment with a target,
  exponentiated-gradient steps smoothed by an EMA; distribution reweighting over bases.
- :class:`TiKMiXMixer` (:mod:`~curamix.mixers.tikmix`): stage-wise group influence,
  TiKMiX-D (direct) and TiKMiX-M (regression over sampled mixtures).
- :class:`RegMixMixer` (:mod:`~curamix.mixers.regmix`): regression of the target loss on
  proxy-run mixtures, then a sampled search.
- :func:`choose_regressor` and :func:`fit_mixture_regressor` (:mod:`~curamix.mixers.regressor`):
  the mixture regressor RegMix and TiKMiX-M fit, chosen by run count and cross-validated.
- :class:`DoReMiMixer` (:mod:`~curamix.mixers.doremi`): excess loss over a reference model.
- :class:`SkillItMixer` (:mod:`~curamix.mixers.skillit`): Skill-it's multiplicative weights
  over a skills graph (:class:`SkillsGraph`), estimated by :func:`estimate_skills_graph`.
- :func:`compress_trajectory`, :func:`staged_mixture`, :class:`ScheduleReplay`
  (:mod:`~curamix.mixers.schedule`): an online mixer's weight trajectory as K stages, as a
  Mixture, and replayed on a proxy; :func:`with_upsampling`: end-of-training upsampling.

Names are imported on first use, so ``import curamix.mixers`` stays light (torch, scipy and
scikit-learn load only inside the functions that need them).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BaseMixer": "base",
    "OnlineMixer": "base",
    "DomainStats": "base",
    "NotFittedError": "base",
    "UniformMixer": "baselines",
    "NaturalMixer": "baselines",
    "TemperatureMixer": "baselines",
    "temperature_weights": "baselines",
    "DGAMixer": "dga",
    "eg_step": "dga",
    "alignment_scores": "dga",
    "TiKMiXMixer": "tikmix",
    "group_influence": "tikmix",
    "tikmix_objective": "tikmix",
    "tikmix_d_weights": "tikmix",
    "tikmix_m_weights": "tikmix",
    "tikmix_m_search": "tikmix",
    "RegMixMixer": "regmix",
    "dirichlet_mixtures": "regmix",
    "epoch_caps": "regmix",
    "mixture_regressor": "regressor",
    "choose_regressor": "regressor",
    "make_regressor": "regressor",
    "cross_val_spearman": "regressor",
    "fit_mixture_regressor": "regressor",
    "RegressorFit": "regressor",
    "RegressorFallbackWarning": "regressor",
    "DoReMiMixer": "doremi",
    "doremi_step": "doremi",
    "SkillItMixer": "skillit",
    "SkillsGraph": "skillit",
    "skillit_weights": "skillit",
    "estimate_skills_graph": "skillit",
    "resolve_skills_graph": "skillit",
    "plot_skills_graph": "skillit",
    "graph_density": "skillit",
    "with_upsampling": "schedule",
    "compress_trajectory": "schedule",
    "staged_mixture": "schedule",
    "StagedSchedule": "schedule",
    "ScheduleReplay": "schedule",
    "schedule_stages": "schedule",
    "time_averaged_weights": "schedule",
    "trajectory_segments": "schedule",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
