"""``auto`` device settings resolved to what they mean on this machine, for cache keys.

A stage whose output depends on the device (fp16 CUDA embeddings differ from fp32 CPU ones in
the fourth digit; FAISS GPU indices and k-means from CPU ones in ties and float order) must
not share a cache entry between a CPU run and a GPU run. Its config says ``device: auto`` or
``gpu: auto`` either way, so before hashing, :func:`resolve_auto_devices` replaces

- every ``device: auto`` field by ``"cuda"`` or ``"cpu"`` (:func:`curamix.device.device_name`,
  the rule the code that runs the model uses),
- every ``gpu: auto`` of an :class:`~curamix.config.IndexConfig` by ``"on"`` or ``"off"``
  (:func:`curamix.embeddings.index.gpu_setting`: whether FAISS sees a GPU; HNSW never),
- ``fp16: true`` by ``false`` next to a device that resolves to the CPU (half precision
  applies on CUDA only, so the output is the same).

Explicit values stay as written, so ``device: cpu`` and ``device: auto`` on a CPU machine give
the same key, and ``device: auto`` on a CUDA machine the key of ``device: cuda``. Nothing is
imported for a section without an ``auto`` setting (torch only for ``device: auto``, faiss
only for ``gpu: auto``).
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel

from curamix.config import IndexConfig
from curamix.device import device_name
from curamix.embeddings.index import gpu_setting

M = TypeVar("M", bound=BaseModel)


def _is_auto(v: object) -> bool:
    return isinstance(v, str) and v.strip().lower() == "auto"


def resolve_auto_devices(section: M) -> M:
    """``section`` (a config model) with its ``auto`` device settings resolved (see the module
    docstring), nested models and lists of models included; ``section`` itself when nothing
    changes."""
    fields = type(section).model_fields
    updates: dict[str, object] = {}
    for name in fields:
        v = getattr(section, name)
        if isinstance(v, BaseModel):
            r = resolve_auto_devices(v)
            if r is not v:
                updates[name] = r
        elif isinstance(v, list | tuple) and any(isinstance(x, BaseModel) for x in v):
            items = [resolve_auto_devices(x) if isinstance(x, BaseModel) else x for x in v]
            if any(a is not b for a, b in zip(items, v, strict=True)):
                updates[name] = type(v)(items)
        elif name == "device" and _is_auto(v):
            updates[name] = device_name("auto")
    if isinstance(section, IndexConfig) and _is_auto(section.gpu):
        updates["gpu"] = gpu_setting("auto", section.kind)
    if "fp16" in fields and "device" in fields and section.fp16 is True:
        device = str(updates.get("device", section.device)).strip().lower()
        if device == "cpu":
            updates["fp16"] = False
    return section.model_copy(update=updates) if updates else section
