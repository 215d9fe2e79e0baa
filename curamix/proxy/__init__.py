"""Small proxy language models for mixture search: tokenizer, data, model, training loop.

- :mod:`curamix.proxy.tokenizer`: byte-level BPE trained offline (``tokenizers``).
- :mod:`curamix.proxy.data`: a run's documents by domain, cached token streams, train/val
  split by document, :class:`~curamix.proxy.data.MixtureSampler`.
- :mod:`curamix.proxy.model`: :class:`~curamix.proxy.model.ProxyLM` (pre-norm decoder, RoPE),
  presets, analytic parameter and FLOP counts.
- :mod:`curamix.proxy.train`: :func:`~curamix.proxy.train.train_proxy` with checkpoints,
  resume, metrics and the mixer hook.

The names below are imported on first use, so ``import curamix.proxy`` does not load torch;
``model`` and ``train`` do.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "train_tokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "save_tokenizer": "tokenizer",
    "load_or_train_tokenizer": "tokenizer",
    "load_run_domains": "data",
    "split_documents": "data",
    "tokenize_domains": "data",
    "prepare_run_tokens": "data",
    "MixtureSampler": "data",
    "EpochLimitError": "data",
    "ProxyModelConfig": "model",
    "ProxyLM": "model",
    "PRESETS": "model",
    "count_params": "model",
    "flops_per_token": "model",
    "ProxyTrainConfig": "train",
    "ProxyResult": "train",
    "StepMetrics": "train",
    "NonFiniteLossError": "train",
    "train_proxy": "train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
