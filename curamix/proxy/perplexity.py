"""Perplexity scores of documents under a small reference proxy LM.

Perplexity-based data pruning (Marion et al. 2023, "When Less is More: Investigating Data
Pruning for Pretraining LLMs at Scale", arXiv:2309.04564; Ankner et al. 2024, "Perplexed by
Perplexity", arXiv:2405.20541): train a small reference model on a random sample of the pool,
score every document by its mean next-token loss under it, and keep a band of the score
distribution (low, middle or high). Here the score is one more difficulty column for the
coreset stage (``coreset.score: proxy_loss``), next to the SSL-prototype distance and the DSIR
and BETR scores.

::

    from curamix.proxy.perplexity import reference_proxy, doc_losses

    model, tok = reference_proxy(sample_texts, total_tokens=300_000, random_state=0)
    losses = doc_losses(model, tok, pool_texts)        # nats per token, one per document
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from curamix.config import ProxyScoreConfig
    from curamix.proxy.model import ProxyLM


def reference_proxy(
    texts: Sequence[str],
    *,
    model: str = "nano",
    vocab_size: int = 1024,
    seq_len: int = 128,
    batch_size: int = 16,
    total_tokens: int = 300_000,
    max_tokenizer_chars: int = 5_000_000,
    random_state: int = 0,
    device: str = "auto",
    cpu_threads: int | None = None,
    progress: bool = False,
) -> tuple[ProxyLM, Tokenizer]:
    """Train a byte-level BPE tokenizer and a proxy LM on ``texts`` (the reference sample).

    Parameters
    ----------
    texts : sequence of str
        The reference sample (a seeded random sample of the pool, as in Marion et al.).
    model : str
        A proxy preset (:data:`curamix.proxy.model.PRESETS`).
    vocab_size, seq_len, batch_size : int
        Tokenizer vocabulary, context length and batch rows of the proxy.
    total_tokens : int
        Training budget in tokens (at least one batch: ``batch_size * seq_len``).
    max_tokenizer_chars : int
        Characters of ``texts`` the tokenizer is trained on.
    random_state : int
        Seeds the tokenizer sample, the weights and the batches.
    device : str
        ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    cpu_threads : int, optional
        Torch threads on CPU (None: torch's default).

    Returns
    -------
    (ProxyLM, tokenizers.Tokenizer)
        The trained model (in eval mode, on ``device``) and its tokenizer.
    """
    from curamix.proxy.tokenizer import encode_stream, tokenizer_sample, train_tokenizer
    from curamix.proxy.train import ProxyTrainConfig, train_proxy

    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("reference_proxy needs at least one non-empty text")
    if total_tokens < batch_size * seq_len:
        raise ValueError(
            f"total_tokens={total_tokens} is smaller than one batch "
            f"(batch_size * seq_len = {batch_size * seq_len})"
        )
    tok = train_tokenizer(
        tokenizer_sample({"pool": texts}, max_tokenizer_chars, random_state), vocab_size
    )
    stream = encode_stream(tok, texts)
    if len(stream) < seq_len + 1:
        raise ValueError(
            f"the reference sample has {len(stream)} tokens, fewer than one sequence "
            f"(seq_len + 1 = {seq_len + 1}); give it more text"
        )
    cfg = ProxyTrainConfig(
        model=model,
        vocab_size=tok.get_vocab_size(),
        seq_len=seq_len,
        batch_size=batch_size,
        total_tokens=total_tokens,
        eval_tokens=min(len(stream) - 1, 4 * seq_len),
        seed=random_state,
        device=device,
        cpu_threads=cpu_threads,
    )
    res = train_proxy(cfg, {"pool": stream}, {"pool": stream}, {"pool": 1.0}, progress=progress)
    assert res.model is not None
    return res.model.eval(), tok


def doc_losses(
    model: ProxyLM,
    tok: Tokenizer,
    texts: Sequence[str],
    max_tokens: int | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """Mean next-token loss (nats per token) of each document under ``model``.

    Each document is scored on its first ``max_tokens + 1`` tokens (default: the model's
    context, ``seq_len + 1``), so long documents cost the same as short ones and the score is
    a per-token average, not a sum that grows with length.

    Parameters
    ----------
    model : ProxyLM
    tok : tokenizers.Tokenizer
        The model's tokenizer.
    texts : sequence of str
    max_tokens : int, optional
        Predicted tokens per document, at most the model's ``seq_len``.
    batch_size : int
        Documents per forward pass.

    Returns
    -------
    ndarray of float64, shape (len(texts),)
        NaN for a document with fewer than 2 tokens (nothing to predict).
    """
    import torch

    seq_len = model.cfg.seq_len
    n_pred = seq_len if max_tokens is None else int(max_tokens)
    if not 1 <= n_pred <= seq_len:
        raise ValueError(f"max_tokens must be in [1, seq_len={seq_len}], got {max_tokens!r}")
    device = next(model.parameters()).device
    out = np.full(len(texts), np.nan, dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            ids = [e.ids[: n_pred + 1] for e in tok.encode_batch(chunk, add_special_tokens=False)]
            rows = [(i, x) for i, x in enumerate(ids) if len(x) >= 2]
            if not rows:
                continue
            width = max(len(x) for _, x in rows)
            batch = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros((len(rows), width - 1), dtype=torch.float32)
            for r, (_, x) in enumerate(rows):
                batch[r, : len(x)] = torch.tensor(x, dtype=torch.long)
                mask[r, : len(x) - 1] = 1.0
            batch, mask = batch.to(device), mask.to(device)
            with torch.no_grad():
                nll = model.loss(batch, reduction="none").reshape(mask.shape)
                per_doc = (nll * mask).sum(1) / mask.sum(1)
            for r, (i, _) in enumerate(rows):
                out[start + i] = float(per_doc[r])
    finally:
        model.train(was_training)
    return out


def train_reference_proxy(
    texts: Sequence[str], proxy: ProxyScoreConfig, random_state: int
) -> tuple[ProxyLM, Tokenizer]:
    """:func:`reference_proxy` on ``texts`` with the settings of a stage's ``proxy:`` block
    (preset, tokens, vocabulary, context, batch rows, device) and ``random_state`` (the run's
    seed). The stages that train a reference proxy on a pool sample (rds, coreset's
    ``proxy_loss``, adapt) share these settings."""
    return reference_proxy(
        texts,
        model=proxy.model,
        vocab_size=proxy.vocab_size,
        seq_len=proxy.seq_len,
        batch_size=proxy.batch_size,
        total_tokens=proxy.total_tokens,
        random_state=random_state,
        device=proxy.device,
    )


def save_proxy(model: ProxyLM, tok: Tokenizer, folder: str | Path) -> None:
    """Write ``folder/model.pt`` (the state dict, on the CPU), ``config.json`` (the model's
    :class:`~curamix.proxy.model.ProxyModelConfig`) and ``tokenizer.json``: the layout the
    rds stage keeps under ``proxy/``, which :func:`load_proxy` reads back."""
    import torch

    from curamix.proxy.tokenizer import save_tokenizer

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tok, out / "tokenizer.json")
    (out / "config.json").write_text(json.dumps(model.cfg.model_dump(mode="json"), indent=2))
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / "model.pt")


def load_proxy(folder: str | Path, device: str = "cpu") -> tuple[ProxyLM, Tokenizer]:
    """The model (eval mode, on ``device``) and tokenizer that :func:`save_proxy` wrote."""
    import torch
    from tokenizers import Tokenizer

    from curamix.device import resolve_device
    from curamix.proxy.model import ProxyLM, ProxyModelConfig

    src = Path(folder)
    model = ProxyLM(ProxyModelConfig(**json.loads((src / "config.json").read_text())))
    model.load_state_dict(torch.load(src / "model.pt", weights_only=True))
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    return model.to(resolve_device(device)).eval(), tok


__all__ = ["doc_losses", "load_proxy", "reference_proxy", "save_proxy", "train_reference_proxy"]
