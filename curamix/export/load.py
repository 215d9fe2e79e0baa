"""Reading the mixture to export: a Mixture file, a recommendation, or a run folder.

Conventions
-----------
- A **Mixture file** is ``Mixture.write_json`` output (or the ``yaml`` export): a mapping
  with a ``weights`` key.
- A **recommendation** is ``Recommendation.to_dict()`` written as JSON
  (``curamix recommend``): its ``mixture`` key holds the Mixture.
- A **run folder** ``RUN/`` holds the run's current mixture at ``RUN/mixture.json``;
  whatever chooses the mixture of a run (a mixer, ``recommend``, a person) writes it there,
  and ``curamix export RUN`` reads it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from curamix.mixture import Mixture, MixtureError, check_epoch_cap

RUN_MIXTURE = "mixture.json"


def as_mixture(obj: Mixture | Mapping[str, Any], where: str = "mixture") -> Mixture:
    """``obj`` as a validated :class:`~curamix.mixture.Mixture`.

    Accepts a ``Mixture``, a ``Mixture.to_dict()``-shaped mapping (with ``weights``), or a
    plain ``{domain: weight}`` mapping. Raises :class:`MixtureError` for anything that does
    not validate (off-sum, negative, unknown stage domains, a domain read more often than the
    ``max_epochs`` its provenance names), prefixed with ``where``.
    """
    if not isinstance(obj, Mixture | Mapping):
        raise MixtureError(f"{where}: expected a Mixture or a mapping, got {type(obj).__name__}")
    try:
        if isinstance(obj, Mixture):
            m = obj
        elif "weights" in obj:
            m = Mixture.from_dict(obj)
        else:
            m = Mixture(weights=obj)
        check_epoch_cap(m)
        return m
    except MixtureError as e:
        raise MixtureError(f"{where}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise MixtureError(f"{where}: malformed mixture ({type(e).__name__}: {e})") from None


def _read_mapping(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise MixtureError(f"{path}: not valid YAML: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise MixtureError(f"{path}: not valid JSON: {e}") from None


def load_mixture(path: str | Path) -> Mixture:
    """Load the mixture to export from ``path``.

    Parameters
    ----------
    path : str or Path
        One of: a Mixture JSON (or YAML) file; a recommendation JSON (its ``"mixture"``
        key); a run folder, whose current mixture is ``RUN/mixture.json``.

    Returns
    -------
    Mixture
        Validated (weights sum to 1, none negative, stages name only known domains).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist, or a run folder has no ``mixture.json``.
    MixtureError
        The file is not JSON/YAML, holds neither a mixture nor a recommendation with one, or
        the mixture does not validate; the message starts with the file's path.
    """
    path = Path(path)
    if path.is_dir():
        candidate = path / RUN_MIXTURE
        if not candidate.is_file():
            raise FileNotFoundError(
                f"{path}: a run folder keeps its current mixture at {RUN_MIXTURE}, "
                f"and there is none ({candidate})"
            )
        path = candidate
    elif not path.exists():
        raise FileNotFoundError(f"{path}: no such mixture file or run folder")
    data = _read_mapping(path)
    if not isinstance(data, Mapping):
        raise MixtureError(
            f"{path}: expected a JSON object with 'weights' (a mixture) or 'mixture' "
            f"(a recommendation), got {type(data).__name__}"
        )
    if "weights" in data:
        return as_mixture(data, where=str(path))
    if "mixture" in data:
        if data["mixture"] is None:
            raise MixtureError(
                f"{path}: the recommendation has no mixture (mixture is null: no mixing law "
                "was given to recommend)"
            )
        return as_mixture(data["mixture"], where=f"{path}: 'mixture'")
    raise MixtureError(
        f"{path}: neither a mixture (no 'weights' key) nor a recommendation (no 'mixture' "
        f"key); keys are {sorted(data)}"
    )
