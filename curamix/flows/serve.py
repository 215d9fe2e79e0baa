"""Serving ``curate_flow`` as a deployment on a schedule (``curamix serve``).

``serve_pipeline("pipeline.yaml", cron="0 3 * * *")`` registers a deployment of the flow with
that cron schedule at the Prefect API (``PREFECT_API_URL``; start a server first, see
docs/flows.md) and runs its scheduled runs in this process until stopped. No work pool is
needed; for work pools use the repository's ``prefect.yaml`` (``prefect deploy``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

DEFAULT_NAME = "curamix-curate"


def deployment_parameters(
    config: str | os.PathLike[str], overrides: list[str] | None = None
) -> dict[str, Any]:
    """The flow parameters of a deployment: the config's absolute path and the overrides."""
    return {"config": str(Path(config).resolve()), "overrides": list(overrides or [])}


def build_deployment(
    config: str | os.PathLike[str],
    name: str = DEFAULT_NAME,
    cron: str | None = None,
    overrides: list[str] | None = None,
    timezone: str | None = None,
) -> RunnerDeployment:
    """A deployment of ``curate_flow`` for ``config`` (validated first) with a cron schedule.

    Raises :class:`curamix.config.ConfigError` for a bad config, ValueError for a bad cron
    string."""
    from prefect.deployments.runner import EntrypointType

    from curamix.config import load_config
    from curamix.flows.curate import curate_flow
    from curamix.flows.steps import check_plan

    check_plan(load_config(config, overrides or []))
    schedules = None
    if cron is not None:
        from prefect.schedules import Cron

        schedules = [Cron(cron, timezone=timezone or "UTC")]
    return curate_flow.to_deployment(
        name=name,
        schedules=schedules,
        parameters=deployment_parameters(config, overrides),
        description=f"curamix curate_flow on {Path(config).resolve()}",
        tags=["curamix"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def serve_pipeline(
    config: str | os.PathLike[str],
    name: str = DEFAULT_NAME,
    cron: str | None = None,
    overrides: list[str] | None = None,
    timezone: str | None = None,
) -> None:
    """Register the deployment and serve its scheduled runs until interrupted (blocks)."""
    from prefect import serve

    serve(build_deployment(config, name, cron, overrides, timezone))
