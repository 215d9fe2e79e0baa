"""The one place that builds the SparkSession (and checks for Java first)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from curamix.config import SparkConfig

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

JAVA_HINT = (
    "PySpark needs a Java 17+ runtime. On Debian/Ubuntu: "
    "sudo apt-get install -y openjdk-17-jre-headless (or set JAVA_HOME to a JDK 17+ install)."
)


LOG4J = Path(__file__).with_name("log4j2.properties")


class JavaMissingError(RuntimeError):
    """No usable Java runtime for Spark."""


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
    with zipfile.ZipFile(name, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in pkg.rglob("*.py"):
            zf.write(f, f.relative_to(pkg.parent).as_posix())
    return name


def local_cores(master: str) -> int:
    """Worker threads of a ``local``, ``local[N]``, ``local[*]`` or ``local[N,F]`` master."""
    m = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", master.strip())
    if not m or m.group(1) in (None, "*"):
        return (os.cpu_count() or 1) if m and m.group(1) == "*" else 1
    return int(m.group(1))


def get_spark(cfg: SparkConfig | None = None) -> SparkSession:
    """Build (or return the active) SparkSession from ``cfg``.

    Local mode by default, any master URL for a cluster; Arrow on; UI off unless asked for, and
    then bound to 127.0.0.1; workers run this interpreter (so they find pandas and pyarrow).
    """
    cfg = cfg or SparkConfig()
    check_java()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    is_local = cfg.master.startswith("local")
    if is_local:
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
    if cfg.ui:
        b = b.config("spark.driver.bindAddress", "127.0.0.1").config("spark.ui.host", "127.0.0.1")
    if is_local:
        b = b.config("spark.driver.host", "127.0.0.1").config(
            "spark.driver.bindAddress", "127.0.0.1"
        )
    if cfg.executor_memory:
        b = b.config("spark.executor.memory", cfg.executor_memory)
    shuffle = cfg.shuffle_partitions or (2 * local_cores(cfg.master) if is_local else None)
    if shuffle:
        b = b.config("spark.sql.shuffle.partitions", str(shuffle))
    if cfg.local_dir:
        b = b.config("spark.local.dir", cfg.local_dir)
    for k, v in cfg.conf.items():
        b = b.config(k, v)
    spark = b.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    if not is_local:
        spark.sparkContext.addPyFile(_package_zip())
    return spark
