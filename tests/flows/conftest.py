"""Prefect for the flow tests: settings first (before Prefect is imported), one harness per session.

Settings: a patient ephemeral / test server (``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``),
no analytics (``PREFECT_SERVER_ANALYTICS_ENABLED=false``, ``DO_NOT_TRACK=1``: no connection
leaves loopback) and a private ``PREFECT_HOME``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

PREFECT_ENV = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_HOME": tempfile.mkdtemp(prefix="curamix-prefect-home-"),
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",  # tasks run alone in the retry test
}
os.environ.update(PREFECT_ENV)  # hermetic: whatever the calling shell says


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API (SQLite in a temp folder) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def tiny_overrides(run_dir: Path) -> list[str]:
    """Overrides that make the demo pipeline small enough for a test (seconds per step)."""
    return [
        f"run_dir={run_dir}",
        "spark.master=local[2]",
        "spark.shuffle_partitions=4",
        "embed.max_seq_length=48",
        "betr.sample=100",
        "betr.embed.max_seq_length=48",
        "mixture.vocab_size=300",
        "mixture.seq_len=32",
        "mixture.batch_size=8",
        "mixture.total_tokens=7680",
        "mixture.update_every=10",
        "mixture.eval_tokens=2048",
        "mixture.checkpoint_every=10",
        "scaling.models=[nano, tiny]",
        "scaling.token_budgets=[2560, 5120, 10240]",
        "scaling.batch_size=8",
        "scaling.n_boot=0",
        "export.formats=[json, csv, megatron]",
        "flow.retry_delay_s=0",
    ]
