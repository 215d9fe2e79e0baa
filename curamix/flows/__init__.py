"""Prefect flows that wire the jobs together (nothing in curamix imports this package).

- :func:`~curamix.flows.curate.curate_flow`: the whole pipeline, from ingest to trainer
  exports, with skip-when-complete steps, retries and artifacts (docs/flows.md).
- :mod:`~curamix.flows.serve`: a deployment of it on a cron schedule (``curamix serve``).
- :mod:`~curamix.flows.steps`, :mod:`~curamix.flows.artifacts`: the plain functions behind the
  steps after the stages, and the artifact builders.

Names are imported on first use, so ``import curamix.flows`` does not load Prefect.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "curate_flow": "curate",
    "load_flow_config": "curate",
    "build_deployment": "serve",
    "serve_pipeline": "serve",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
