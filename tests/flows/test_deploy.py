"""Scheduling: the deployment `curamix serve --cron` builds, and the repository's prefect.yaml."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def pipeline(tmp_path):
    from curamix.demo import write_demo_pipeline

    return write_demo_pipeline(tmp_path)


def test_serve_deployment_has_the_cron_schedule(pipeline):
    from curamix.flows.serve import build_deployment

    dep = build_deployment(pipeline, name="nightly", cron="0 3 * * *", overrides=["seed=3"])
    assert dep.name == "nightly" and dep.flow_name == "curate"
    assert [s.schedule.cron for s in dep.schedules] == ["0 3 * * *"]
    assert dep.schedules[0].schedule.timezone == "UTC" and dep.schedules[0].active
    assert dep.parameters == {"config": str(pipeline.resolve()), "overrides": ["seed=3"]}
    assert dep.entrypoint == "curamix.flows.curate.curate_flow"
    module, name = dep.entrypoint.rsplit(".", 1)
    assert getattr(importlib.import_module(module), name).name == "curate"


def test_serve_refuses_a_bad_cron_or_config(pipeline, tmp_path):
    from curamix.config import ConfigError
    from curamix.flows.serve import build_deployment

    with pytest.raises(ValueError, match="Invalid cron string"):
        build_deployment(pipeline, cron="every night")
    bad = tmp_path / "bad.yaml"
    bad.write_text(pipeline.read_text().replace("seed: 0", "seed: 0\nsead: 1"))
    with pytest.raises(ConfigError, match="sead: Extra inputs are not permitted"):
        build_deployment(bad, cron="0 3 * * *")


def test_serve_command_needs_a_server(pipeline, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from typer.testing import CliRunner

    import curamix.flows.serve
    from curamix.cli import app

    def must_not_serve(*args, **kwargs):
        raise AssertionError("serve_pipeline called without a server")

    monkeypatch.setattr(curamix.flows.serve, "serve_pipeline", must_not_serve)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # also inside the harness
        out = CliRunner().invoke(app, ["serve", str(pipeline), "--cron", "0 3 * * *"])
    assert out.exit_code == 2, out.output
    assert "prefect server start --host 127.0.0.1" in " ".join(out.output.split())


def test_prefect_yaml_deploys_the_flow():
    from prefect.schedules import Cron

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (dep,) = spec["deployments"]
    path, name = dep["entrypoint"].split(":")
    assert (REPO / path).is_file()
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, name)
    assert flow.name == "curate"
    params = inspect.signature(flow.fn).parameters
    assert set(dep["parameters"]) <= set(params)
    required = {p for p, v in params.items() if v.default is inspect.Parameter.empty}
    assert required <= set(dep["parameters"])
    flow.validate_parameters(dep["parameters"])  # the types match the flow's signature
    for s in dep["schedules"]:
        Cron(s["cron"], timezone=s["timezone"])  # a valid cron string and time zone
    assert dep["work_pool"]["name"]
