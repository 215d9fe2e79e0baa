"""The ``gpu`` marker (tests/conftest.py): GPU tests are deselected where the device is missing
(never skipped), run where it is there, and fail with CURAMIX_REQUIRE_GPU=1 on a machine
without it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests import conftest


class FakeItem:
    def __init__(self, name: str, mark: pytest.MarkDecorator | None = None):
        self.nodeid = name
        self._mark = mark.mark if mark is not None else None

    def get_closest_marker(self, name: str):
        return self._mark if name == "gpu" else None


def _collect(monkeypatch, have: dict[str, bool], require: str | None = None):
    monkeypatch.setattr(conftest, "gpu_capabilities", lambda: have)
    if require is None:
        monkeypatch.delenv(conftest.REQUIRE_GPU_ENV, raising=False)
    else:
        monkeypatch.setenv(conftest.REQUIRE_GPU_ENV, require)
    items = [
        FakeItem("plain"),
        FakeItem("cuda", pytest.mark.gpu),
        FakeItem("faiss", pytest.mark.gpu("faiss")),
    ]
    deselected: list[FakeItem] = []
    hook = SimpleNamespace(pytest_deselected=lambda items: deselected.extend(items))
    config = SimpleNamespace(hook=hook)
    conftest.pytest_collection_modifyitems(config, items)
    return [i.nodeid for i in items], [i.nodeid for i in deselected]


def test_gpu_tests_are_deselected_where_the_device_is_missing(monkeypatch):
    none = {"cuda": False, "faiss": False}
    assert _collect(monkeypatch, none) == (["plain"], ["cuda", "faiss"])
    cuda_only = {"cuda": True, "faiss": False}  # a CUDA machine with faiss-cpu
    assert _collect(monkeypatch, cuda_only) == (["plain", "cuda"], ["faiss"])
    both = {"cuda": True, "faiss": True}
    assert _collect(monkeypatch, both) == (["plain", "cuda", "faiss"], [])


def test_require_gpu_keeps_them_and_they_fail_without_the_device(monkeypatch):
    none = {"cuda": False, "faiss": False}
    assert _collect(monkeypatch, none, require="1") == (["plain", "cuda", "faiss"], [])
    with pytest.raises(pytest.fail.Exception, match=r"faiss needs a CUDA device that FAISS sees"):
        conftest.pytest_runtest_setup(FakeItem("faiss", pytest.mark.gpu("faiss")))
    conftest.pytest_runtest_setup(FakeItem("plain"))  # other tests are untouched
    monkeypatch.setattr(conftest, "gpu_capabilities", lambda: {"cuda": True, "faiss": False})
    conftest.pytest_runtest_setup(FakeItem("cuda", pytest.mark.gpu))  # the device is there


def test_unknown_gpu_requirement_is_a_usage_error():
    with pytest.raises(pytest.UsageError, match=r"gpu\('tpu'\)"):
        conftest.gpu_need(FakeItem("x", pytest.mark.gpu("tpu")))
