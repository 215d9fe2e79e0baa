"""resolve_device: the one place that picks CUDA or CPU."""

from __future__ import annotations

import pytest
import torch

from curamix.device import resolve_device


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device().type == expected


def test_cuda_requested_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'cuda' was requested but CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="'cuda:1' was requested"):
        resolve_device("cuda:1")
    assert resolve_device("auto") == torch.device("cpu")


def test_unknown_preference():
    with pytest.raises(ValueError, match="got 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="got 'cuda:x'"):
        resolve_device("cuda:x")
