import json

import pytest

from curamix.io.store import (
    MANIFEST,
    MARKER,
    latest_result,
    load_completed,
    read_stages_index,
    stage_writer,
)


def test_commit_is_atomic_and_marker_comes_last(tmp_path):
    with stage_writer(tmp_path, "ingest", "abc") as w:
        (w.path("data")).mkdir()
        (w.path("data") / "part-0.parquet").write_bytes(b"x")
        assert not (tmp_path / "ingest-abc").exists()  # nothing visible before commit
        res = w.commit({"counts": {"in": 1}})
    assert res.path == tmp_path / "ingest-abc" and not res.skipped
    assert (res.path / MARKER).is_file() and (res.path / "data" / "part-0.parquet").is_file()
    m = json.loads((res.path / MANIFEST).read_text())
    assert (
        m["stage"] == "ingest"
        and m["key"] == "abc"
        and m["counts"] == {"in": 1}
        and "curamix_version" in m
    )
    assert (res.path / MARKER).stat().st_mtime_ns >= (res.path / MANIFEST).stat().st_mtime_ns
    assert list((tmp_path / ".tmp").iterdir()) == []
    again = load_completed(tmp_path, "ingest", "abc")
    assert again.skipped and again.manifest == m
    assert read_stages_index(tmp_path)["ingest"]["folder"] == "ingest-abc"
    assert latest_result(tmp_path, "ingest").path == res.path


def test_failure_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), stage_writer(tmp_path, "ingest", "k") as w:
        w.path("data").mkdir()
        raise RuntimeError("boom")
    assert not (tmp_path / "ingest-k").exists()
    assert list((tmp_path / ".tmp").iterdir()) == []
    assert load_completed(tmp_path, "ingest", "k") is None


def test_folder_without_marker_is_not_complete_and_is_replaced(tmp_path):
    (tmp_path / "ingest-k" / "data").mkdir(parents=True)  # a crash between rename and marker
    assert load_completed(tmp_path, "ingest", "k") is None
    with stage_writer(tmp_path, "ingest", "k") as w:
        res = w.commit({})
    assert (res.path / MARKER).exists() and not (res.path / "data").exists()


def test_names_read_from_files_stay_inside_the_folder(tmp_path):
    from curamix.io.store import inside

    assert inside(tmp_path, "mixture_megatron.txt") == (tmp_path / "mixture_megatron.txt").resolve()
    assert inside(tmp_path, "sub/../x.json") == (tmp_path / "x.json").resolve()
    for bad in ("../outside.txt", "/etc/passwd", "a/../../b"):
        with pytest.raises(ValueError, match="leads outside"):
            inside(tmp_path, bad)
    (tmp_path / "link").symlink_to("/tmp")
    with pytest.raises(ValueError, match="leads outside"):
        inside(tmp_path, "link/x")
