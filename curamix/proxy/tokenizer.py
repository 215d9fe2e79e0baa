"""A byte-level BPE tokenizer for the proxy models, trained offline with HF ``tokenizers``.

Byte-level BPE (GPT-2 style: every byte is a base symbol, so any text round-trips and nothing
is unknown) with one special token, :data:`EOS`, id 0, placed between documents. Training is
deterministic: the same texts in the same order and the same vocabulary size give the same
JSON file byte for byte. A run keeps its tokenizer as ``RUN/proxy/tokenizer-v<vocab>.json``
and reuses it when present (:func:`load_or_train_tokenizer`).

References: Sennrich, Haddow, Birch, "Neural Machine Translation of Rare Words with Subword
Units", ACL 2016, arXiv:1508.07909; Radford et al., "Language Models are Unsupervised
Multitask Learners" (GPT-2, byte-level BPE), 2019.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer

EOS = "<|endoftext|>"
"""The one special token (id 0): ends every document in a token stream."""


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8000) -> Tokenizer:
    """Train a byte-level BPE tokenizer on ``texts``.

    Parameters
    ----------
    texts : iterable of str
        The training sample (see :func:`tokenizer_sample`). Order matters only for ties, and
        the result is the same for the same input.
    vocab_size : int
        Target vocabulary size, :data:`EOS` and the 256 byte symbols included (at least 257).
        A small sample can stop short of it: ``get_vocab_size()`` tells the real size.

    Returns
    -------
    tokenizers.Tokenizer
        With :data:`EOS` at id 0 and a byte-level decoder (``decode(encode(t).ids) == t``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if int(vocab_size) < 257:
        raise ValueError(f"vocab_size must be at least 257 (256 bytes + EOS), got {vocab_size!r}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(vocab_size),
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((t for t in texts if t), trainer)
    return tok


def save_tokenizer(tok: Tokenizer, path: str | Path) -> Path:
    """Write ``tok`` as JSON to ``path`` (temporary file + atomic rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(tok.to_str(), encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a tokenizer JSON file written by :func:`save_tokenizer`; check it has :data:`EOS`."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    if tok.token_to_id(EOS) is None:
        raise ValueError(f"tokenizer {path} has no {EOS!r} token: not a curamix proxy tokenizer")
    return tok


def tokenizer_hash(tok: Tokenizer) -> str:
    """SHA-256 of the tokenizer's JSON: what token caches are keyed by."""
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()


def eos_id(tok: Tokenizer) -> int:
    """The id of :data:`EOS` in ``tok``."""
    i = tok.token_to_id(EOS)
    if i is None:
        raise ValueError(f"tokenizer has no {EOS!r} token")
    return int(i)


def tokenizer_sample(
    domains: Mapping[str, list[str]], max_chars: int = 20_000_000, random_state: int = 0
) -> list[str]:
    """Documents to train the tokenizer on: up to ``max_chars`` characters, split evenly over
    domains (a small domain's unused share goes to the others), drawn in a seeded random order.

    Domains are taken in sorted order, so the sample does not depend on dict order.
    """
    rng = np.random.default_rng(random_state)
    names = sorted(domains)
    order = {d: rng.permutation(len(domains[d])) for d in names}
    left = int(max_chars)
    sample: list[str] = []
    pending = [d for d in names if len(domains[d])]
    while pending and left > 0:
        share = max(1, left // len(pending))
        still = []
        for d in pending:
            texts, idx = domains[d], order[d]
            used = 0
            while len(idx) and used < share:
                t = texts[int(idx[0])]
                idx = idx[1:]
                sample.append(t)
                used += len(t)
            order[d] = idx
            left -= used
            if len(idx):
                still.append(d)
        pending = still
    return sample


def tokenizer_path(run_dir: str | Path, vocab_size: int) -> Path:
    """Where a run keeps its proxy tokenizer of a given vocabulary size."""
    return Path(run_dir) / "proxy" / f"tokenizer-v{int(vocab_size)}.json"


def load_or_train_tokenizer(
    path: str | Path,
    domains: Mapping[str, list[str]],
    vocab_size: int = 8000,
    max_chars: int = 20_000_000,
    random_state: int = 0,
) -> Tokenizer:
    """The tokenizer saved at ``path``, or one trained on a :func:`tokenizer_sample` of
    ``domains`` and saved there. A saved file is reused as is (delete it to retrain)."""
    path = Path(path)
    if path.is_file():
        return load_tokenizer(path)
    tok = train_tokenizer(tokenizer_sample(domains, max_chars, random_state), vocab_size)
    save_tokenizer(tok, path)
    return tok


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits (vocabulary up to 65,536), else ``uint32``."""
    return np.dtype(np.uint16) if int(vocab_size) <= 1 << 16 else np.dtype(np.uint32)


def encode_stream(tok: Tokenizer, texts: list[str], batch_size: int = 1024) -> np.ndarray:
    """One token stream for ``texts``: each document's ids followed by :data:`EOS`.

    Empty input gives an empty array. The dtype is :func:`token_dtype` of the vocabulary.
    """
    dtype = token_dtype(tok.get_vocab_size())
    eos = np.array([eos_id(tok)], dtype=dtype)
    parts: list[np.ndarray] = []
    for i in range(0, len(texts), batch_size):
        for enc in tok.encode_batch(texts[i : i + batch_size], add_special_tokens=False):
            parts.append(np.asarray(enc.ids, dtype=dtype))
            parts.append(eos)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
