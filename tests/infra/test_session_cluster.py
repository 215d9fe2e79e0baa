"""Cluster URLs in the session builder: parsing, and an unreachable master failing fast (in
seconds, before a JVM starts, naming the URL) from the library and from the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from curamix.config import ConfigError, SparkConfig
from curamix.pipelines.session import (
    ClusterUnreachableError,
    check_master_reachable,
    get_spark,
    is_loopback,
    master_endpoints,
)
from tests.infra.cluster import REPO, free_port


@pytest.mark.parametrize(
    "master,endpoints",
    [
        ("spark://127.0.0.1:7077", [("127.0.0.1", 7077)]),
        ("spark://10.0.0.5", [("10.0.0.5", 7077)]),
        ("spark://m1:7077,m2:7078", [("m1", 7077), ("m2", 7078)]),
        ("spark://[::1]:7079", [("::1", 7079)]),
        ("k8s://https://kubernetes.default.svc", [("kubernetes.default.svc", 443)]),
        ("k8s://https://10.1.2.3:6443", [("10.1.2.3", 6443)]),
        ("k8s://api.example:6443", [("api.example", 6443)]),
        ("k8s://http://127.0.0.1", [("127.0.0.1", 80)]),
        ("local[*]", []),
        ("local[2]", []),
        ("yarn", []),
    ],
)
def test_master_endpoints(master, endpoints):
    assert master_endpoints(master) == endpoints


@pytest.mark.parametrize("master", ["spark://:7077", "spark://host:notaport", "k8s://"])
def test_bad_master_urls_are_config_errors(master):
    with pytest.raises(ConfigError, match=r"spark\.master"):
        master_endpoints(master)


def test_loopback_hosts():
    assert all(map(is_loopback, ["localhost", "127.0.0.1", "127.1.2.3", "::1"]))
    assert not any(map(is_loopback, ["10.0.0.1", "spark-master", "0.0.0.0"]))


def test_reachable_master_gives_the_local_address():
    import socket

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        assert check_master_reachable(f"spark://127.0.0.1:{port}") == "127.0.0.1"
        # HA form: the first address is down, the second answers.
        dead = free_port()
        assert check_master_reachable(f"spark://127.0.0.1:{dead},127.0.0.1:{port}") == "127.0.0.1"
    assert check_master_reachable("local[2]") is None


def test_unreachable_master_fails_fast_naming_the_url():
    """A spark:// URL nobody listens on fails in seconds, before a JVM starts, naming it."""
    url = f"spark://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(ClusterUnreachableError, match=url.replace(".", r"\.")) as err:
        get_spark(SparkConfig(master=url))
    assert time.monotonic() - t0 < 10
    msg = str(err.value)
    assert "Connection refused" in msg or "refused" in msg.lower()
    assert "start-cluster.sh" in msg and "CURAMIX_SPARK__MASTER" in msg
    assert isinstance(err.value, ConfigError)  # the CLI reports it as a bad config (exit 2)


def test_cli_run_with_unreachable_master_exits_2_naming_the_url(tmp_path):
    from curamix.demo import write_demo_pipeline

    pipeline = write_demo_pipeline(tmp_path)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.jsonl").write_text('{"id": "1", "text": "hello"}\n')
    url = f"spark://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURAMIX_")}
    env["CURAMIX_SPARK__MASTER"] = url
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "curamix.cli", "run", str(pipeline)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - t0
    assert out.returncode == 2, out.stdout + out.stderr
    assert url in " ".join(out.stderr.split())  # rich may wrap the line
    assert "Traceback" not in out.stderr
    assert elapsed < 60, elapsed  # python start + imports; no Spark retries (those take minutes)
