"""Expanding input specs (files, folders, globs, Hugging Face datasets) into read units.

Runs on the driver. Each file becomes one read unit (one Spark task), except ``.txt`` files,
which are grouped. The fingerprint of every file (path, size, mtime) enters the ingest
stage's hash, so a changed input reruns the stage and an unchanged one is skipped.

Hugging Face datasets go through ``datasets`` itself: a ``save_to_disk`` folder is opened with
``datasets.load_from_disk`` (one unit per Arrow file of each split, read back through it), and
a hub dataset name becomes one unit per split that streams it with
``datasets.load_dataset(name, split=..., streaming=True)``, pinned to the hub commit seen here.
Offline (``HF_HUB_OFFLINE``) or without network, a hub name is a ConfigError that says to save
the dataset to disk first. ``datasets`` is imported inside the functions that need it.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curamix.config import ConfigError, IngestConfig, InputSpec
from curamix.io.fs import is_remote
from curamix.io.records import ReadUnit, default_domain, file_format, read_unit

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
    from curamix.io.fs import file_info

    size, mtime_ns = file_info(path)
    return {"path": path, "size": size, "mtime_ns": mtime_ns}


def _is_hidden(rel: str) -> bool:
    return any(part.startswith((".", "_")) for part in Path(rel).parts)


def _list_files(spec: InputSpec, index: int) -> tuple[str, list[str], list[str]]:
    """(root, data files, ignored files) of a file, folder or glob input."""
    p = spec.path
    if is_remote(p):
        root, candidates = _list_remote(p, index)
    elif any(c in p for c in _GLOB_CHARS):
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
    remote = is_remote(p)
    files, ignored = [], []
    for f in candidates:
        rel = f[len(root) :].lstrip("/") if remote else os.path.relpath(f, root)
        if _is_hidden(rel):
            continue
        fmt = file_format(f)
        wanted = spec.format if spec.format not in ("auto", "hf") else fmt
        if fmt is None or fmt != wanted:
            ignored.append(f if remote else os.path.abspath(f))
            continue
        files.append(f if remote else os.path.abspath(f))
    if not files:
        raise ConfigError(
            f"ingest.inputs.{index}.path: no {spec.format if spec.format != 'auto' else 'data'} "
            f"files (.jsonl[.gz|.zst], .parquet, .txt) found at {p!r}"
        )
    return (root if remote else os.path.abspath(root)), files, ignored


def _walk_order(rel: str) -> tuple:
    """The position of ``rel`` in ``os.walk``'s order with sorted names (a folder's files
    before its subfolders), so that a prefix on a store lists as the same folder would."""
    parts = rel.split("/")
    return (*((1, p) for p in parts[:-1]), (0, parts[-1]))


def _list_remote(uri: str, index: int) -> tuple[str, list[str]]:
    """(root, objects) of an object-store input: one object, every object under a prefix, or
    the objects matching a glob (``*``, ``?``, ``[...]``; ``**`` crosses folders)."""
    from curamix.io.fs import StorageError, StorePath

    try:
        if any(c in uri for c in _GLOB_CHARS):
            head = uri[: min(uri.index(c) for c in _GLOB_CHARS if c in uri)]
            root = head.rsplit("/", 1)[0]
            pattern = uri[len(root) + 1 :]
            return root, [str(q) for q in StorePath(root).glob(pattern)]
        obj = StorePath(uri)
        if obj.is_file():
            return str(obj.parent), [str(obj)]
        base = str(obj).rstrip("/") + "/"
        found = sorted((str(q) for q in obj.glob("**")), key=lambda u: _walk_order(u[len(base) :]))
    except StorageError as err:
        raise ConfigError(f"ingest.inputs.{index}.path: {err}") from None
    if not found:
        raise ConfigError(f"ingest.inputs.{index}.path: nothing exists at {uri!r}")
    return str(obj), found


def _is_save_to_disk(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file())


def _hf_disk_files(spec: InputSpec, index: int) -> tuple[str, list[tuple[str, dict]], str]:
    """(root, [(Arrow file, hf read options)], default domain) of a ``save_to_disk`` folder,
    opened with ``datasets.load_from_disk``: one read unit per Arrow file of each split."""
    import datasets

    p = Path(spec.path)
    try:
        loaded = datasets.load_from_disk(str(p), keep_in_memory=False)
    except FileNotFoundError:
        raise ConfigError(
            f"ingest.inputs.{index}.path: {str(p)!r} is not a datasets save_to_disk folder "
            "(no dataset_dict.json or state.json); use format: auto for plain files"
        ) from None
    except Exception as err:  # a damaged folder: name it, whatever datasets raised
        raise ConfigError(
            f"ingest.inputs.{index}.path: could not open the datasets save_to_disk folder "
            f"{str(p)!r}: {type(err).__name__}: {err}"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if spec.hf_split is not None:
            if spec.hf_split not in splits:
                raise ConfigError(
                    f"ingest.inputs.{index}.hf_split: {spec.hf_split!r} not in {splits}"
                )
            splits = [spec.hf_split]
        dsets = [loaded[s] for s in splits]
    else:
        dsets = [loaded]
    files: list[tuple[str, dict]] = []
    for ds in dsets:
        start = 0
        for cache in ds.cache_files:
            f = str(Path(cache["filename"]).resolve())
            n = datasets.Dataset.from_file(f).num_rows
            files.append((f, {"folder": str(Path(f).parent), "rows": [start, start + n]}))
            start += n
        if start != ds.num_rows:  # pragma: no cover - a folder datasets itself would reject
            raise ConfigError(
                f"ingest.inputs.{index}.path: the Arrow files of {str(p)!r} hold {start} rows, "
                f"its state.json {ds.num_rows}"
            )
    return str(p.resolve()), files, p.name


_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """True when the Hugging Face Hub must not be contacted (``HF_HUB_OFFLINE`` or
    ``HF_DATASETS_OFFLINE`` set, now or when ``datasets`` was imported)."""
    if any(
        os.environ.get(v, "").upper() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    ):
        return True
    import datasets

    return bool(datasets.config.HF_HUB_OFFLINE)


def _hub_splits(name: str) -> list[str]:
    """The split names of a hub dataset (network)."""
    import datasets

    return list(datasets.get_dataset_split_names(name))


def _hub_revision(name: str) -> str | None:
    """The hub dataset's current commit, to pin the streamed data to what was fingerprinted."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(name).sha
    except Exception:  # a missing revision only leaves the stream unpinned
        return None


def _is_network_error(err: BaseException) -> bool:
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:  # the error or any error it chains from
        seen.add(id(e))
        names = {c.__name__ for c in type(e).__mro__}
        if isinstance(e, ConnectionError | TimeoutError) or names & {
            "ConnectError",
            "ConnectTimeout",
            "OfflineModeIsEnabled",
            "LocalEntryNotFoundError",
            "RequestException",
            "TransportError",
        }:
            return True
        e = e.__cause__ or e.__context__
    return False


def hf_stream_unit(
    load_args: dict,
    source: str,
    domain: str,
    root: str = "",
    **read_options,
) -> ReadUnit:
    """The read unit that streams ``datasets.load_dataset(**load_args, streaming=True)`` (one
    split); ``source`` names it in the documents, quarantine and counts."""
    return ReadUnit(
        format="hf_stream",
        paths=(source,),
        root=root or source,
        domains=(domain,),
        hf={"load_dataset": dict(load_args)},
        **read_options,
    )


def _hf_hub_units(
    spec: InputSpec, index: int, read_options: dict
) -> tuple[list[ReadUnit], list[dict]]:
    """One streamed read unit per split of a hub dataset, and their fingerprints (name, split,
    the hub commit streamed). Offline or without network: a ConfigError that says what to do."""
    name = spec.path
    where = f"ingest.inputs.{index}.path"
    todo = (
        "download it where there is network and save it with "
        f"datasets.load_dataset({name!r}).save_to_disk(FOLDER), then give that folder as the path"
    )
    if hub_offline():
        raise ConfigError(
            f"{where}: {name!r} is a Hugging Face hub dataset name, and the hub is offline "
            f"(HF_HUB_OFFLINE): {todo}"
        )
    try:
        splits = _hub_splits(name)
    except Exception as err:  # datasets raises many types; report them all the same way
        if _is_network_error(err):
            raise ConfigError(
                f"{where}: cannot reach the Hugging Face hub for dataset {name!r} "
                f"({type(err).__name__}: {err}): {todo}"
            ) from None
        raise ConfigError(
            f"{where}: could not load Hugging Face dataset {name!r}: {type(err).__name__}: {err}"
        ) from None
    if spec.hf_split is not None:
        if spec.hf_split not in splits:
            raise ConfigError(f"ingest.inputs.{index}.hf_split: {spec.hf_split!r} not in {splits}")
        splits = [spec.hf_split]
    revision = _hub_revision(name)
    root = f"hf://datasets/{name}"
    units, fingerprints = [], []
    for split in splits:
        source = f"{root}/{split}"
        load_args = {"path": name, "split": split}
        if revision:
            load_args["revision"] = revision
        domain = spec.domain or (
            default_domain(source, root, "hf", spec.domain_map)
            if spec.domain_map
            else name.rsplit("/", 1)[-1]
        )
        units.append(hf_stream_unit(load_args, source, domain, root, **read_options))
        fingerprints.append(
            {"path": source, "size": 0, "mtime_ns": 0, "split": split, "revision": revision}
        )
    return units, fingerprints


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
            max_json_depth=cfg.max_json_depth,
        )
        hf_options: dict[str, dict] = {}
        if spec.format == "hf" and not os.path.exists(spec.path):
            if not _HUB_NAME.fullmatch(spec.path):
                raise ConfigError(
                    f"ingest.inputs.{i}.path: nothing exists at {spec.path!r}, and it is not a "
                    "Hugging Face hub dataset name (name or org/name)"
                )
            units, fps = _hf_hub_units(spec, i, common)
            for u in units:
                if u.paths[0] in seen:
                    raise ConfigError(
                        f"ingest.inputs.{i}.path: {u.paths[0]!r} is already read by an earlier input"
                    )
                seen.add(u.paths[0])
            out.units += units
            out.fingerprints += fps
            continue
        if spec.format == "hf" and os.path.isfile(spec.path):
            spec = spec.model_copy(update={"format": "auto"})  # a data file: read as such
        if spec.format == "hf" or (spec.format == "auto" and _is_save_to_disk(spec.path)):
            root, hf_files, hf_domain = _hf_disk_files(spec, i)
            files = [f for f, _ in hf_files]
            hf_options = dict(hf_files)
            groups = [("hf_disk", [f]) for f in files]
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
                    hf=hf_options.get(fs[0], {}) if fmt == "hf_disk" else {},
                    **common,
                )
            )
            out.fingerprints += [fingerprint(f) for f in fs]
    return out


def expand_reference(inputs: Sequence[Any], field: str) -> ExpandedInputs:
    """Read units and fingerprints of reference inputs (test sets, benchmarks: small files
    read on the driver); errors name ``field`` (e.g. ``betr.benchmark_inputs``)."""
    try:
        return expand_inputs(IngestConfig(inputs=list(inputs)))
    except ConfigError as err:
        raise ConfigError(str(err).replace("ingest.inputs.", f"{field}.")) from None


def read_items(
    inputs: Sequence[Any], field: str
) -> tuple[list[tuple[str, str, str]], list[dict], list[str]]:
    """``(item id, text, benchmark)`` of every record of reference ``inputs`` (benchmark = the
    input's domain, by default the file stem; bad records are skipped), the files'
    fingerprints, and the files that hold no item."""
    expanded = expand_reference(inputs, field)
    items: list[tuple[str, str, str]] = []
    empty: list[str] = []
    for unit in expanded.units:
        before = len(items)
        for batch in read_unit(unit):
            t = batch.to_pydict()
            items += [
                (i, x, d)
                for i, x, d, r in zip(t["id"], t["text"], t["domain"], t["reason"], strict=True)
                if r is None
            ]
        if len(items) == before:
            empty += list(unit.paths)
    return items, expanded.fingerprints, empty
