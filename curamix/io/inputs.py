"""Expanding input specs (files, folders, globs, Hugging Face datasets) into read units.

Runs on the driver. Each file becomes one read unit (one Spark task), except ``.txt`` files,
which are grouped. The fingerprint of every file (path, size, mtime) enters the ingest
stage's hash, so a changed input reruns the stage and an unchanged one is skipped.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from curamix.config import ConfigError, IngestConfig, InputSpec
from curamix.io.records import ReadUnit, default_domain, file_format

log = logging.getLogger(__name__)

TXT_FILES_PER_UNIT = 512
_GLOB_CHARS = set("*?[")


@dataclass
class ExpandedInputs:
    """Read units plus what the manifest records about the input files."""

    units: list[ReadUnit] = field(default_factory=list)
    fingerprints: list[dict] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[str]:
        return [f["path"] for f in self.fingerprints]


def fingerprint(path: str) -> dict:
    st = os.stat(path)
    return {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _is_hidden(rel: str) -> bool:
    return any(part.startswith((".", "_")) for part in Path(rel).parts)


def _list_files(spec: InputSpec, index: int) -> tuple[str, list[str], list[str]]:
    """(root, data files, ignored files) of a file, folder or glob input."""
    p = spec.path
    if any(c in p for c in _GLOB_CHARS):
        parts = Path(p).parts
        k = next(i for i, part in enumerate(parts) if any(c in part for c in _GLOB_CHARS))
        root = str(Path(*parts[:k])) if k else "."
        candidates = sorted(f for f in glob.glob(p, recursive=True) if os.path.isfile(f))
    elif os.path.isdir(p):
        root = p
        candidates = []
        for dirpath, dirnames, filenames in os.walk(p):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
            candidates += [os.path.join(dirpath, f) for f in sorted(filenames)]
    elif os.path.isfile(p):
        root = str(Path(p).parent)
        candidates = [p]
    else:
        raise ConfigError(f"ingest.inputs.{index}.path: nothing exists at {p!r}")
    files, ignored = [], []
    for f in candidates:
        rel = os.path.relpath(f, root)
        if _is_hidden(rel):
            continue
        fmt = file_format(f)
        wanted = spec.format if spec.format not in ("auto", "hf") else fmt
        if fmt is None or fmt != wanted:
            ignored.append(os.path.abspath(f))
            continue
        files.append(os.path.abspath(f))
    if not files:
        raise ConfigError(
            f"ingest.inputs.{index}.path: no {spec.format if spec.format != 'auto' else 'data'} "
            f"files (.jsonl[.gz|.zst], .parquet, .txt) found at {p!r}"
        )
    return os.path.abspath(root), files, ignored


def _hf_arrow_files(spec: InputSpec, index: int) -> tuple[str, list[str], str]:
    """(root, Arrow files, default domain) of a Hugging Face dataset."""
    p = Path(spec.path)
    if p.is_dir():
        if (p / "dataset_dict.json").is_file():
            splits = json.loads((p / "dataset_dict.json").read_text())["splits"]
            if spec.hf_split is not None:
                if spec.hf_split not in splits:
                    raise ConfigError(
                        f"ingest.inputs.{index}.hf_split: {spec.hf_split!r} not in {splits}"
                    )
                splits = [spec.hf_split]
            folders = [p / s for s in splits]
        elif (p / "state.json").is_file():
            folders = [p]
        else:
            raise ConfigError(
                f"ingest.inputs.{index}.path: {str(p)!r} is not a datasets save_to_disk folder "
                "(no dataset_dict.json or state.json); use format: auto for plain files"
            )
        files = []
        for folder in folders:
            state = json.loads((folder / "state.json").read_text())
            files += [str((folder / f["filename"]).resolve()) for f in state["_data_files"]]
        return str(p.resolve()), files, p.name
    # A hub name (needs network, or a warm local cache).
    import datasets

    try:
        ds = datasets.load_dataset(spec.path, split=spec.hf_split)
    except Exception as err:  # datasets raises many types; report them all the same way
        raise ConfigError(
            f"ingest.inputs.{index}.path: could not load Hugging Face dataset {spec.path!r}: "
            f"{type(err).__name__}: {err}"
        ) from None
    dsets = [ds] if isinstance(ds, datasets.Dataset) else list(ds.values())
    files = [c["filename"] for d in dsets for c in d.cache_files]
    if not files:
        raise ConfigError(f"ingest.inputs.{index}.path: dataset {spec.path!r} has no cache files")
    return str(Path(files[0]).parent), files, spec.path.rsplit("/", 1)[-1]


def expand_inputs(cfg: IngestConfig) -> ExpandedInputs:
    """Read units for every input of an ingest config; raises ConfigError for empty inputs."""
    out = ExpandedInputs()
    seen: set[str] = set()
    for i, spec in enumerate(cfg.inputs):
        common = dict(
            text_field=spec.text_field,
            id_field=spec.id_field,
            domain_field=spec.domain_field,
            max_doc_bytes=cfg.max_doc_bytes,
            oversize=cfg.oversize,
        )
        if spec.format == "hf":
            root, files, hf_domain = _hf_arrow_files(spec, i)
            groups = [("arrow", [f]) for f in files]
            domain_of = {
                f: spec.domain
                or (
                    default_domain(f, root, "arrow", spec.domain_map)
                    if spec.domain_map
                    else hf_domain
                )
                for f in files
            }
        else:
            root, files, ignored = _list_files(spec, i)
            out.ignored_files += ignored
            for f in ignored:
                log.warning(
                    "ingest: ignoring %s (not a %s file)",
                    f,
                    "data" if spec.format == "auto" else spec.format,
                )
            by_fmt: dict[str, list[str]] = {}
            for f in files:
                by_fmt.setdefault(file_format(f) or "", []).append(f)
            groups = []
            for fmt, fs in by_fmt.items():
                if fmt == "txt":
                    groups += [
                        ("txt", fs[j : j + TXT_FILES_PER_UNIT])
                        for j in range(0, len(fs), TXT_FILES_PER_UNIT)
                    ]
                else:
                    groups += [(fmt, [f]) for f in fs]
            domain_of = {
                f: spec.domain or default_domain(f, root, file_format(f) or "", spec.domain_map)
                for f in files
            }
        for fmt, fs in groups:
            dup = [f for f in fs if f in seen]
            if dup:
                raise ConfigError(
                    f"ingest.inputs.{i}.path: {dup[0]!r} is already read by an earlier input"
                )
            seen.update(fs)
            out.units.append(
                ReadUnit(
                    format=fmt,
                    paths=tuple(fs),
                    root=root,
                    domains=tuple(domain_of[f] for f in fs),
                    **common,
                )
            )
            out.fingerprints += [fingerprint(f) for f in fs]
    return out
