"""Test helper: a Spark standalone cluster on 127.0.0.1 started and stopped with the scripts in
``infra/spark/`` (the same ones users run), plus what the tests look at: the master's JSON, the
JVMs' pids, their listening sockets, and killing one worker machine-style."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "infra" / "spark"


def free_port() -> int:
    """A TCP port nobody listens on right now (bound and released on 127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(x) for x in (task / "children").read_text().split()]
    return out


def descendants(pid: int) -> list[int]:
    """All processes below ``pid`` (children first found, depth first)."""
    out, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _hex_addr(h: str) -> str:
    """A /proc/net/tcp[6] address column (hex, little-endian words) as an IP string."""
    raw = bytes.fromhex(h)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def listening(pids: list[int]) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that one of ``pids`` holds (Linux)."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A = LISTEN
                addr, port = f[1].split(":")
                out.append((_hex_addr(addr), int(port, 16)))
    return sorted(out)


def is_loopback_addr(addr: str) -> bool:
    return (
        addr.startswith("127.")
        or addr in ("::1", "::ffff:127.0.0.1")
        or (addr.startswith("::ffff:127."))
    )


@dataclass
class Cluster:
    """A cluster started by ``infra/spark/start-cluster.sh`` into ``state_dir``."""

    state_dir: Path
    port: int
    webui_port: int
    workers: int
    start_output: str = ""

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    @classmethod
    def start(
        cls,
        state_dir: Path,
        workers: int = 2,
        cores: int = 1,
        memory: str = "1536m",
        secret: str | None = None,
    ) -> Cluster:
        """``secret``: CURAMIX_SPARK_SECRET for the script (spark.authenticate on); without
        it, the cluster does not authenticate, whatever the caller's environment says."""
        port, webui = free_port(), free_port()
        env = {**os.environ, "PYTHON": sys.executable}
        env.pop("CURAMIX_SPARK_STATE", None)
        env.pop("CURAMIX_SPARK_SECRET", None)
        if secret is not None:
            env["CURAMIX_SPARK_SECRET"] = secret
        out = subprocess.run(
            [
                "bash",
                str(SCRIPTS / "start-cluster.sh"),
                "--workers",
                str(workers),
                "--cores",
                str(cores),
                "--memory",
                memory,
                "--port",
                str(port),
                "--webui-port",
                str(webui),
                "--worker-webui-port",
                "0",
                "--state-dir",
                str(state_dir),
                "--timeout",
                "180",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        if out.returncode != 0:
            raise RuntimeError(f"start-cluster.sh failed:\n{out.stdout}\n{out.stderr}")
        return cls(state_dir, port, webui, workers, out.stdout)

    def stop(self) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(SCRIPTS / "stop-cluster.sh"), "--state-dir", str(self.state_dir)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    def master_json(self) -> dict:
        url = f"http://127.0.0.1:{self.webui_port}/json/"
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)

    def pid(self, name: str) -> int:
        """Pid of ``master`` or ``worker-<i>`` from the state folder."""
        return int((self.state_dir / f"{name}.pid").read_text())

    def executors_of(self, worker: int) -> dict[str, int]:
        """Executor id -> pid of the executor JVMs worker ``worker`` runs."""
        out = {}
        for child in _children(self.pid(f"worker-{worker}")):
            args = cmdline(child).split()
            if "--executor-id" in args:
                out[args[args.index("--executor-id") + 1]] = child
        return out

    def signal_worker(self, worker: int, sig: int) -> list[int]:
        """Send ``sig`` to worker ``worker`` and everything it runs (executor JVMs, Python
        workers); returns the pids signalled."""
        root = self.pid(f"worker-{worker}")
        pids = [root, *descendants(root)]
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        return pids

    def kill_worker(self, worker: int) -> list[int]:
        """SIGKILL worker ``worker`` and everything it runs, as when its machine is lost.
        Returns the pids killed."""
        root = self.pid(f"worker-{worker}")
        pids = self.signal_worker(worker, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and os.path.exists(f"/proc/{root}/cmdline"):
            if not cmdline(root):  # a zombie until its parent reaps it
                break
            time.sleep(0.1)
        return pids
