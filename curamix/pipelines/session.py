"""The one place that builds the SparkSession (and checks for Java first)."""

from __future__ import annotations

import atexit
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from curamix.config import ConfigError, SparkConfig

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

JAVA_HINT = (
    "PySpark needs a Java 17+ runtime. On Debian/Ubuntu: "
    "sudo apt-get install -y openjdk-17-jre-headless (or set JAVA_HOME to a JDK 17+ install)."
)


LOG4J = Path(__file__).with_name("log4j2.properties")


CONNECT_TIMEOUT_S = 5.0
"""How long :func:`check_master_reachable` waits for a cluster master to accept a connection."""

SPARK_SECRET_ENV = "CURAMIX_SPARK_SECRET"
"""Environment variable with the shared secret of a cluster that authenticates its drivers
(``spark.authenticate``; infra/spark/start-cluster.sh and the compose file's master and workers
read the same variable). Not used in local mode."""

SECRET_KEY = "spark.authenticate.secret"


class JavaMissingError(RuntimeError):
    """No usable Java runtime for Spark."""


class ClusterUnreachableError(ConfigError):
    """The configured cluster master does not accept connections (the message names the URL)."""


def java_version() -> tuple[int, str]:
    """(major version, version string) of the ``java`` Spark will use; raises JavaMissingError."""
    home = os.environ.get("JAVA_HOME")
    java = (
        str(Path(home) / "bin" / "java")
        if home and (Path(home) / "bin" / "java").exists()
        else shutil.which("java")
    )
    if not java:
        raise JavaMissingError(f"no 'java' found on PATH. {JAVA_HINT}")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise JavaMissingError(f"could not run {java} -version ({err}). {JAVA_HINT}") from None
    m = re.search(r'version "([0-9][0-9._]*)', out.stderr + out.stdout)
    if not m:
        raise JavaMissingError(f"could not read the Java version from {java} -version. {JAVA_HINT}")
    version = m.group(1)
    parts = version.split(".")
    major = int(parts[1]) if parts[0] == "1" and len(parts) > 1 else int(parts[0])
    return major, version


def check_java(min_major: int = 17) -> str:
    """Raise JavaMissingError with install advice unless Java ``min_major``+ is present."""
    major, version = java_version()
    if major < min_major:
        raise JavaMissingError(
            f"Java {version} found, but {min_major} or newer is needed. {JAVA_HINT}"
        )
    return version


def _package_zip() -> str:
    """Zip of the curamix package, shipped to cluster executors that lack it."""
    import curamix

    pkg = Path(curamix.__file__).parent
    fd, name = tempfile.mkstemp(prefix="curamix-", suffix=".zip")
    os.close(fd)
    atexit.register(lambda: Path(name).unlink(missing_ok=True))  # served to executors until exit
    with zipfile.ZipFile(name, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in pkg.rglob("*.py"):
            zf.write(f, f.relative_to(pkg.parent).as_posix())
    return name


def master_endpoints(master: str) -> list[tuple[str, int]]:
    """(host, port) of each address a cluster master URL names: ``spark://h:p[,h2:p2]`` (port
    7077 by default) or ``k8s://[https://]h[:p]`` (443, or 80 for ``http``). Empty for
    ``local[...]``, ``yarn`` and other URLs without an address."""
    m = master.strip()
    if m.startswith("spark://"):
        out = []
        for part in m[len("spark://") :].split(","):
            u = urlsplit(f"//{part.strip()}")
            if not u.hostname:
                raise ConfigError(f"spark.master: no host in {master!r}")
            try:
                out.append((u.hostname, u.port or 7077))
            except ValueError:
                raise ConfigError(f"spark.master: bad port in {master!r}") from None
        return out
    if m.startswith("k8s://"):
        rest = m[len("k8s://") :]
        u = urlsplit(rest if "://" in rest else f"https://{rest}")
        if not u.hostname:
            raise ConfigError(f"spark.master: no host in {master!r}")
        try:
            return [(u.hostname, u.port or (80 if u.scheme == "http" else 443))]
        except ValueError:
            raise ConfigError(f"spark.master: bad port in {master!r}") from None
    return []


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP address (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_master_reachable(master: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """Fail fast, before any JVM starts, when no address of a cluster master accepts a TCP
    connection within ``timeout`` seconds (Spark itself would retry for a minute or more).

    Returns the local address the connection left from (an address the cluster can reach this
    driver at), or None for masters without an address (``local[...]``, ``yarn``)."""
    endpoints = master_endpoints(master)
    if not endpoints:
        return None
    errors = []
    for host, port in endpoints:
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                return str(sock.getsockname()[0])
        except OSError as err:
            reason = (
                f"no answer within {timeout:g} s"
                if isinstance(err, TimeoutError)
                else (err.strerror or str(err))
            )
            errors.append(f"{host}:{port}: {reason}")
    start = (
        "Start it with infra/spark/start-cluster.sh, or set"
        if all(is_loopback(h) for h, _ in endpoints)
        else "Set"
    )
    raise ClusterUnreachableError(
        f"cannot reach the Spark master {master} ({'; '.join(errors)}). Is the cluster up? "
        f"{start} spark.master in the pipeline YAML (or CURAMIX_SPARK__MASTER) to a master "
        "that is running, or to local[*]."
    )


def local_cores(master: str) -> int:
    """Worker threads of a ``local``, ``local[N]``, ``local[*]`` or ``local[N,F]`` master."""
    m = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", master.strip())
    if not m or m.group(1) in (None, "*"):
        return (os.cpu_count() or 1) if m and m.group(1) == "*" else 1
    return int(m.group(1))


def _start_jvm_without_secret(options: dict[str, str]) -> None:
    """Start the driver JVM (spark-submit) now with ``options`` but not the secret: spark-submit
    gets its settings as ``--conf`` arguments, which any local user can read (``ps``). The
    session's settings, the secret included, then reach the running JVM through py4j."""
    from pyspark import SparkConf, SparkContext

    if SparkContext._gateway is None:
        conf = SparkConf(loadDefaults=False)
        conf.setAll([(k, str(v)) for k, v in options.items() if k != SECRET_KEY])
        SparkContext._ensure_initialized(conf=conf)


def get_spark(cfg: SparkConfig | None = None) -> SparkSession:
    """Build (or return the active) SparkSession from ``cfg``.

    Local mode by default, any master URL for a cluster; a cluster master that does not answer
    fails within seconds (:class:`ClusterUnreachableError`, naming the URL). Arrow on; UI off
    unless asked for, and then bound to 127.0.0.1; local and loopback clusters keep the driver
    on 127.0.0.1 too; workers run this interpreter (so they find pandas and pyarrow). With
    ``CURAMIX_SPARK_SECRET`` set, the driver authenticates to the cluster with that secret
    (``spark.authenticate``), which stays off the JVM's command line.
    """
    cfg = cfg or SparkConfig()
    check_java()
    driver_addr = check_master_reachable(cfg.master)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    is_local = cfg.master.startswith("local")
    endpoints = master_endpoints(cfg.master)
    on_loopback = is_local or (bool(endpoints) and all(is_loopback(h) for h, _ in endpoints))
    reachable_at = cfg.conf.get("spark.driver.host") or driver_addr
    if on_loopback or (cfg.ui and reachable_at):
        # Spark binds its web UI to SPARK_LOCAL_IP, and to 0.0.0.0 when that is unset.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    b = (
        SparkSession.builder.master(cfg.master)
        .appName(cfg.app_name)
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "2048")
        .config("spark.ui.enabled", str(cfg.ui).lower())
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs", "false")
        .config("spark.sql.parquet.compression.codec", "zstd")
        .config("spark.python.worker.reuse", "true")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{LOG4J}")
    )
    if on_loopback:
        b = b.config("spark.driver.host", "127.0.0.1").config(
            "spark.driver.bindAddress", "127.0.0.1"
        )
    elif cfg.ui and reachable_at:
        # SPARK_LOCAL_IP (set for the UI) would also become the driver's address: advertise the
        # configured driver host, or the address the master was reached from, so that
        # executors can connect back.
        b = b.config("spark.driver.host", reachable_at)
    if cfg.executor_memory:
        b = b.config("spark.executor.memory", cfg.executor_memory)
    shuffle = cfg.shuffle_partitions or (2 * local_cores(cfg.master) if is_local else None)
    if shuffle:
        b = b.config("spark.sql.shuffle.partitions", str(shuffle))
    if cfg.local_dir:
        b = b.config("spark.local.dir", cfg.local_dir)
    secret = "" if is_local else os.environ.get(SPARK_SECRET_ENV, "")
    if secret:
        b = b.config("spark.authenticate", "true")
    if not is_local:  # executors reach object stores with the driver's settings
        from curamix.io.fs import STORE_ENV

        for name in STORE_ENV:
            if os.environ.get(name):
                b = b.config(f"spark.executorEnv.{name}", os.environ[name])
    for k, v in cfg.conf.items():
        b = b.config(k, v)
    if secret or SECRET_KEY in cfg.conf:
        _start_jvm_without_secret(b._options)
    if secret:
        b = b.config(SECRET_KEY, secret)
    spark = b.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    if not is_local:
        spark.sparkContext.addPyFile(_package_zip())
    return spark
