"""Servers are not open by default: a real Prefect server with PREFECT_SERVER_API_AUTH_STRING
refuses API requests without that string (401) and serves clients that send it
(PREFECT_API_AUTH_STRING); a real Spark standalone cluster started with CURAMIX_SPARK_SECRET
(spark.authenticate) refuses drivers without the secret or with another one, and runs the jobs
of a driver that has it. Everything listens on 127.0.0.1 only, and the secret is on no command
line and in no log."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.infra.cluster import (
    REPO,
    Cluster,
    cmdline,
    descendants,
    free_port,
    is_loopback_addr,
    listening,
)

PREFECT_AUTH = f"curamix:{secrets.token_hex(16)}"
SPARK_SECRET = secrets.token_hex(32)


def _basic(auth: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group ``proc`` leads, SIGKILL it if it is still there after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# ----------------------------------------------------------------------------- Prefect


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """`prefect server start` on 127.0.0.1 with an auth string, as the compose file and the
    manifests run it. Yields (API URL, server process)."""
    import httpx

    home = tmp_path_factory.mktemp("prefect-auth")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_HOME": str(home / "home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_API_AUTH_STRING": PREFECT_AUTH,
    }
    prefect = Path(sys.executable).with_name("prefect")
    log_path = home / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log_path.read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                # The health check needs no auth (compose healthcheck, k8s probes).
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the server was not healthy within 120 s"
            time.sleep(0.5)
        yield url, server
    finally:
        _stop_group(server)


@pytest.mark.slow
def test_prefect_api_refuses_requests_without_the_auth_string(prefect_server):
    import httpx

    url, _ = prefect_server
    wrong = PREFECT_AUTH[:-1] + ("0" if PREFECT_AUTH[-1] != "0" else "1")
    refused = {
        "no header": {},
        "wrong string": _basic(wrong),
        "user only": _basic(PREFECT_AUTH.split(":")[0] + ":"),
        "bearer token": {"Authorization": f"Bearer {PREFECT_AUTH}"},
        "not base64": {"Authorization": "Basic %%%"},
    }
    for what, headers in refused.items():
        for method, path in [("POST", "/flows/filter"), ("GET", "/admin/settings")]:
            r = httpx.request(method, f"{url}{path}", headers=headers, json={}, timeout=30)
            assert r.status_code == 401, (what, method, path, r.status_code, r.text[:200])
    r = httpx.post(f"{url}/flows/filter", headers=_basic(PREFECT_AUTH), json={}, timeout=30)
    assert r.status_code == 200 and isinstance(r.json(), list), r.text[:200]
    # The UI knows that it must ask for the string.
    ui = httpx.get(url.removesuffix("/api") + "/ui-settings", timeout=30)
    assert ui.status_code == 200 and ui.json()["auth"] == "BASIC", ui.text[:200]


@pytest.mark.slow
def test_prefect_clients_with_the_auth_string_work(prefect_server, tmp_path):
    """A flow run from a process that has PREFECT_API_URL and PREFECT_API_AUTH_STRING in its
    environment (as the compose services and pods do) is recorded by the server; the same
    process without the auth string cannot reach the API."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    url, _ = prefect_server
    script = (
        "from prefect import flow\n"
        "@flow(name='curamix-auth-check')\n"
        "def f(x: int) -> int:\n"
        "    return x + 1\n"
        "s = f(41, return_state=True)\n"
        "print('RUN', s.state_details.flow_run_id, s.result(), flush=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "client-home"),
        PREFECT_API_URL=url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
    )
    ok = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "PREFECT_API_AUTH_STRING": PREFECT_AUTH},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-4000:]
    run_line = next(x for x in ok.stdout.splitlines() if x.startswith("RUN "))
    run_id, result = run_line.split()[1:]
    assert result == "42"
    denied = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert denied.returncode != 0 and "RUN " not in denied.stdout
    assert "401" in denied.stdout + denied.stderr, denied.stderr[-3000:]

    auth = {PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: PREFECT_AUTH}
    with temporary_settings(auth), get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        flows = client.read_flows()
    assert run.state.is_completed(), run.state
    assert [f.name for f in flows] == ["curamix-auth-check"]  # the refused run left nothing
    no_auth = temporary_settings({PREFECT_API_URL: url}, restore_defaults={PREFECT_API_AUTH_STRING})
    denied_client = pytest.raises(httpx.HTTPStatusError)
    with no_auth, get_client(sync_client=True) as client, denied_client as err:
        client.read_flows()
    assert err.value.response.status_code == 401


@pytest.mark.slow
def test_prefect_server_listens_on_loopback_only(prefect_server):
    _, server = prefect_server
    socks = listening([server.pid, *descendants(server.pid)])
    assert socks and all(is_loopback_addr(a) for a, _ in socks), socks


# ----------------------------------------------------------------------------- Spark

DRIVER = """
import json, os, sys
from pathlib import Path
from curamix.config import SparkConfig
from curamix.pipelines.session import get_spark
from tests.infra.cluster import cmdline, descendants, listening

spark = get_spark(SparkConfig(master=sys.argv[1], driver_memory="512m", executor_memory="512m",
                              shuffle_partitions=2))
sc = spark.sparkContext
print("SESSION", sc.applicationId, flush=True)
total = spark.range(100).selectExpr("sum(id) AS s").collect()[0]["s"]
jvms = [p for p in descendants(os.getpid()) if "java" in cmdline(p)]
execs = [int(p.name) for p in Path("/proc").glob("[0-9]*")
         if "CoarseGrainedExecutorBackend" in cmdline(int(p.name))
         and f"--app-id {sc.applicationId}" in cmdline(int(p.name))]
out = {"app_id": sc.applicationId, "sum": total,
       "conf": {k: v for k, v in sc.getConf().getAll() if k == "spark.authenticate"},
       "cmdlines": [cmdline(p) for p in jvms + execs], "executors": len(execs),
       "listening": {"driver": listening(jvms), "executors": listening(execs)}}
print("RESULT " + json.dumps(out), flush=True)
spark.stop()
"""


def _driver_env(secret: str | None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CURAMIX_") and k not in ("SPARK_LOCAL_IP", "PYSPARK_SUBMIT_ARGS")
    }
    if secret is not None:
        env["CURAMIX_SPARK_SECRET"] = secret
    return env


@pytest.fixture(scope="module")
def auth_cluster(tmp_path_factory):
    """One master and one worker on 127.0.0.1, started by start-cluster.sh with a secret."""
    c = Cluster.start(
        tmp_path_factory.mktemp("spark-auth"), workers=1, cores=1, memory="1g", secret=SPARK_SECRET
    )
    yield c
    out = c.stop()
    assert out.returncode == 0, out.stderr


def _apps(cluster: Cluster) -> list[str]:
    state = cluster.master_json()
    return [a["id"] for a in state["activeapps"] + state["completedapps"]]


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.parametrize(
    "secret,cause",
    [
        (None, "Expected SaslMessage"),  # spark.authenticate off: no handshake at all
        ("0" * 64, "SaslException"),  # a handshake with another secret
    ],
    ids=["no-secret", "wrong-secret"],
)
def test_driver_without_the_secret_is_refused(auth_cluster, secret, cause, tmp_path):
    """The master refuses the driver's first connection (the driver logs why); the driver is
    stopped there, before Spark's own retries, and the master never saw an application."""
    before = _apps(auth_cluster)
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, auth_cluster.url],
        cwd=REPO,
        env=_driver_env(secret),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            seen.append(line)
            if line == "" or "Failed to connect to master" in line:
                break
        # The cause follows the warning; read what the driver logged next for a moment.
        with contextlib.suppress(queue.Empty):
            while seen and seen[-1] != "" and cause not in "".join(seen):
                seen.append(lines.get(timeout=10))
    finally:
        _stop_group(proc)
    text = "".join(seen)
    (tmp_path / "driver.log").write_text(text)
    assert f"Failed to connect to master {auth_cluster.url.removeprefix('spark://')}" in text, text[
        -4000:
    ]
    assert cause in text, text[-4000:]
    assert "RESULT " not in text and "SESSION " not in text
    assert _apps(auth_cluster) == before  # no application was ever registered


@pytest.mark.spark
@pytest.mark.slow
def test_driver_with_the_secret_runs_a_job_and_the_secret_stays_hidden(auth_cluster):
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, auth_cluster.url],
        cwd=REPO,
        env=_driver_env(SPARK_SECRET),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    res = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))[7:])
    assert res["sum"] == 4950
    assert res["conf"] == {"spark.authenticate": "true"}
    assert res["executors"] == 1, res["cmdlines"]  # the job ran on the worker's executor
    done = next(a for a in auth_cluster.master_json()["completedapps"] if a["id"] == res["app_id"])
    assert done["state"] == "FINISHED"
    # Master and worker authenticate (their logs say so); the secret is on no command line
    # (master, worker, driver and executor JVMs) and in no log or work file; the conf file that
    # holds it is readable by its owner only.
    state = auth_cluster.state_dir
    for name in ("master", "worker-1"):
        log = (state / "logs" / f"{name}.log").read_text()
        assert "SecurityManager: authentication enabled" in log, name
    daemons = [auth_cluster.pid("master"), auth_cluster.pid("worker-1")]
    cmdlines = [cmdline(p) for p in daemons] + res["cmdlines"]
    assert len(cmdlines) >= 4 and all(cmdlines), cmdlines
    assert not [c for c in cmdlines if SPARK_SECRET in c]
    leaked = [
        p
        for p in (state / "logs").rglob("*")
        if p.is_file() and SPARK_SECRET in p.read_text(errors="replace")
    ]
    leaked += [
        p
        for p in (state / "work").rglob("*")
        if p.is_file() and SPARK_SECRET in p.read_text(errors="replace")
    ]
    assert not leaked, leaked
    assert SPARK_SECRET not in out.stdout + out.stderr
    conf = state / "conf" / "spark-defaults.conf"
    assert f"spark.authenticate.secret {SPARK_SECRET}" in conf.read_text()
    assert conf.stat().st_mode & 0o777 == 0o600
    assert (state / "conf").stat().st_mode & 0o777 == 0o700
    # Everything listens on 127.0.0.1 only.
    seen = {
        "master": listening([auth_cluster.pid("master")]),
        "worker": listening([auth_cluster.pid("worker-1")]),
        "driver": [tuple(x) for x in res["listening"]["driver"]],
        "executors": [tuple(x) for x in res["listening"]["executors"]],
    }
    for who, socks in seen.items():
        assert socks, f"no listening sockets found for {who}"
        assert all(is_loopback_addr(a) for a, _ in socks), (who, socks)


def test_start_cluster_refuses_a_weak_secret(tmp_path):
    for bad in ("short", "with space and more than 16", "quote'" + "x" * 20):
        out = subprocess.run(
            ["bash", str(REPO / "infra/spark/start-cluster.sh"), "--state-dir", str(tmp_path)],
            env={**os.environ, "CURAMIX_SPARK_SECRET": bad},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2 and "CURAMIX_SPARK_SECRET must be" in out.stderr, out.stderr
    assert not list(tmp_path.iterdir())  # nothing started, nothing written
