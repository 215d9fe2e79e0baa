import os
import stat

import pytest

from curamix.pipelines.session import JavaMissingError, check_java, java_version


def _fake_java(tmp_path, version_line: str):
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    return home


def test_java_present_here():
    major, _ = java_version()
    assert major >= 17


def test_missing_java_names_the_apt_package(monkeypatch, tmp_path):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(JavaMissingError, match="openjdk-17-jre-headless"):
        check_java()


@pytest.mark.parametrize(
    "line,major", [('openjdk version "1.8.0_392"', 8), ('openjdk version "11.0.21" 2023-10-17', 11)]
)
def test_old_java_is_refused(monkeypatch, tmp_path, line, major):
    monkeypatch.setenv("JAVA_HOME", str(_fake_java(tmp_path, line)))
    assert java_version()[0] == major
    with pytest.raises(JavaMissingError, match=r"17 or newer is needed.*apt-get install"):
        check_java()


def test_java_21_is_accepted(monkeypatch, tmp_path):
    monkeypatch.setenv(
        "JAVA_HOME", str(_fake_java(tmp_path, 'openjdk version "21.0.2" 2024-01-16'))
    )
    assert check_java() == "21.0.2"


def test_install_script_refuses_without_java(tmp_path):
    import shutil
    import subprocess

    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("bash", "sed", "head", "cut"):
        os.symlink(shutil.which(tool), bindir / tool)
    script = os.path.join(os.path.dirname(__file__), "..", "..", "infra", "check_java.sh")
    out = subprocess.run(
        [str(bindir / "bash"), script], env={"PATH": str(bindir)}, capture_output=True, text=True
    )
    assert out.returncode == 1 and "openjdk-17-jre-headless" in out.stderr
