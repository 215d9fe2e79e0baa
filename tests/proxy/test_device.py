"""resolve_device: the one place that picks CUDA or CPU; device_name, its form for cache keys;
proxy training on CUDA (marked ``gpu``): repeatable, and in agreement with the CPU."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from curamix.device import device_name, resolve_device
from curamix.proxy.train import eval_windows, evaluate_loss, train_proxy
from tests.proxy.test_train import WEIGHTS, cfg, noise_stream, pattern_stream

PROXY_BF16_EVAL_ATOL = 1e-2
"""One trained model's mean validation loss (nats) under CUDA's bf16 autocast against fp32 on
the CPU. bf16 autocast emulated on the CPU moves it by <= 1.5e-4 here (7-bit mantissa inputs,
fp32 accumulation and loss); 1e-2 is 0.25% of the untrained loss ln 64 = 4.16."""
PROXY_CUDA_REPEAT_ATOL = 0.05
"""Two CUDA runs with one seed, per final validation loss (nats): kernels may reduce in
another order from run to run (docs/proxy.md). Perturbing every weight of the CPU run by a
relative 1e-3 (far above reduction-order noise) moves these losses by <= 0.01."""
PROXY_DEVICE_LOSS_ATOL = 0.1
"""A CUDA run (bf16 autocast, fused AdamW) against the CPU run of the same seed, per final
validation loss (nats): 10x the 1e-3 perturbation above, and far below the gap between a
learned domain (< 0.3) and an unlearned one (> 3.5)."""


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


def test_device_name_resolves_auto_for_cache_keys(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_name("auto") == device_name() == device_name(" AUTO ") == "cpu"
    assert device_name("cuda") == "cuda"  # no error: a key can be computed anywhere
    assert device_name("cuda:1") == "cuda:1" and device_name("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_name("auto") == "cuda" and device_name("cpu") == "cpu"


def _streams() -> tuple[dict, dict, np.ndarray]:
    """tests/proxy/test_train.py's data: two learnable cycles and a noise domain."""
    rng = np.random.default_rng(0)
    p7, p11 = rng.permutation(np.arange(1, 33))[:7].tolist(), list(range(40, 51))
    train = {
        "cyc7": pattern_stream(p7, 6000),
        "cyc11": pattern_stream(p11, 6000),
        "noise": noise_stream(6000, 1),
    }
    val = {
        "cyc7": pattern_stream(p7[3:] + p7[:3], 600),
        "cyc11": pattern_stream(p11, 600),
        "noise": noise_stream(600, 2),
    }
    return train, val, pattern_stream(p7, 600)


def _learned(r) -> None:
    assert r.val_losses["cyc7"] < 0.3 and r.val_losses["cyc11"] < 0.3 and r.target_loss < 0.3
    assert r.val_losses["noise"] > 3.5  # uniform over 63 ids: not learnable


@pytest.mark.gpu
def test_proxy_on_cuda_is_repeatable_and_agrees_with_the_cpu():
    train, val, target = _streams()
    run = cfg(total_tokens=8 * 32 * 80, seed=3)
    on_cpu = train_proxy(run, train, val, WEIGHTS, target, progress=False)
    on_cuda = run.model_copy(update={"device": "cuda"})
    a = train_proxy(on_cuda, train, val, WEIGHTS, target, progress=False)
    b = train_proxy(on_cuda, train, val, WEIGHTS, target, progress=False)
    assert a.model is not None and next(a.model.parameters()).device.type == "cuda"
    for r in (on_cpu, a, b):
        _learned(r)
    for d, loss in a.val_losses.items():
        assert abs(loss - b.val_losses[d]) <= PROXY_CUDA_REPEAT_ATOL, d  # per device
        assert abs(loss - on_cpu.val_losses[d]) <= PROXY_DEVICE_LOSS_ATOL, d  # across devices
    # One model (the CPU's), evaluated on both devices: bf16 autocast on CUDA, fp32 on CPU.
    assert on_cpu.model is not None
    model_cuda = copy.deepcopy(on_cpu.model).to("cuda")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for d, stream in val.items():
        rows = eval_windows(stream, 32, 256)
        want = evaluate_loss(on_cpu.model, rows, 8, cpu)
        assert abs(evaluate_loss(model_cuda, rows, 8, cuda) - want) <= PROXY_BF16_EVAL_ATOL, d
