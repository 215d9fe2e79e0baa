"""The one place that picks the compute device (CUDA or CPU) for torch code.

Everything that runs a model (the proxy trainer, the embedding code) asks
:func:`resolve_device` instead of probing ``torch.cuda`` itself, so a run's device rule
lives in one spot; :func:`device_name` is the same rule for cache keys (``auto`` resolved to
the device this machine would use, so CPU and GPU outputs never share a key). torch is
imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:<index>")


def resolve_device(pref: str = "auto") -> torch.device:
    """The torch device for a preference.

    Parameters
    ----------
    pref : str
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        For an unknown preference, or ``"cuda"``/``"cuda:N"`` on a machine without CUDA (or
        without device N): the message names what was asked and what is there.
    """
    import torch

    p = str(pref).strip().lower()
    if p == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if p == "cpu":
        return torch.device("cpu")
    if p == "cuda" or p.startswith("cuda:"):
        index = None
        if p != "cuda":
            tail = p.split(":", 1)[1]
            if not tail.isdigit():
                raise ValueError(f"device must be one of {DEVICE_CHOICES}, got {pref!r}")
            index = int(tail)
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {pref!r} was requested but CUDA is not available here "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); "
                "use device='auto' or 'cpu'"
            )
        n = torch.cuda.device_count()
        if index is not None and index >= n:
            raise ValueError(f"device {pref!r} was requested but only {n} CUDA device(s) exist")
        return torch.device("cuda", index) if index is not None else torch.device("cuda")
    raise ValueError(f"device must be one of {DEVICE_CHOICES}, got {pref!r}")


def device_name(pref: str = "auto") -> str:
    """The device a preference names, for a cache key: ``auto`` -> ``"cuda"`` when CUDA is
    available, else ``"cpu"`` (the rule of :func:`resolve_device`); any other preference as
    written (stripped, lower case).

    Unlike :func:`resolve_device` this never raises: ``"cuda"`` on a machine without CUDA
    stays ``"cuda"``, so a stage key can still be computed there (``curamix status``); running
    the stage is what fails. torch is imported only for ``auto``.
    """
    p = str(pref).strip().lower()
    if p != "auto":
        return p
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
