"""Reading raw inputs record by record, with every bad record kept in quarantine.

These are plain functions: the Spark ingest job calls :func:`read_unit` inside
``mapInArrow``, and tests and notebooks call it directly. A *read unit* is one file
(JSONL, Parquet, Arrow, one Arrow file of a ``datasets`` ``save_to_disk`` folder), a group of
``.txt`` files, or one split of a Hugging Face hub dataset, streamed; each unit yields Arrow
batches of
:data:`PARSED_SCHEMA` rows, each either a document, a quarantined record or the
unit's per-file statistics row (how many records the reader saw), so the ingest job can
check that every input record ends up ingested or quarantined.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from curamix.schema import QuarantineReason as QR

STATS_REASON = "__file_stats__"
"""``reason`` of the one statistics row each file yields (``record`` = records read)."""

PARSED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("domain", pa.string()),
        ("source", pa.string()),
        ("n_chars", pa.int64()),
        ("n_words", pa.int64()),
        ("meta", pa.string()),
        ("record", pa.int64()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("raw", pa.string()),
    ]
)
"""Rows a reader yields: a document when ``reason`` is null, else a quarantine or stats row."""

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz", ".json.zst", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
TXT_SUFFIXES = (".txt",)
ARROW_SUFFIXES = (".arrow",)
STEM_SUFFIXES = tuple(
    sorted(
        {*JSONL_SUFFIXES, *PARQUET_SUFFIXES, *TXT_SUFFIXES, *ARROW_SUFFIXES}, key=len, reverse=True
    )
)


def file_format(path: str | Path) -> str | None:
    """``jsonl``, ``parquet``, ``txt`` or ``arrow`` from the file name, None when unknown."""
    name = Path(path).name.lower()
    for fmt, suffixes in (
        ("jsonl", JSONL_SUFFIXES),
        ("parquet", PARQUET_SUFFIXES),
        ("txt", TXT_SUFFIXES),
        ("arrow", ARROW_SUFFIXES),
    ):
        if name.endswith(suffixes):
            return fmt
    return None


def file_stem(path: str | Path) -> str:
    """The file name without its data suffixes: ``books.jsonl.gz`` -> ``books``."""
    name = Path(path).name
    for suffix in STEM_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name.split(".", 1)[0] or name


@dataclass(frozen=True)
class ReadUnit:
    """One task of the ingest job: files of one format from one input.

    ``domain`` is the file-level domain (constant, mapped or stem) used unless
    ``domain_field`` takes it from each record. ``root`` is the input's root folder, against
    which relative paths (ids of ``.txt`` docs, hash ids) are taken.
    """

    format: str
    paths: tuple[str, ...]
    root: str
    domains: tuple[str, ...]
    text_field: str = "text"
    id_field: str | None = "id"
    domain_field: str | None = None
    max_doc_bytes: int = 1_000_000
    oversize: str = "quarantine"
    max_json_depth: int = 128
    meta: dict[str, Any] = field(default_factory=dict)
    hf: dict[str, Any] = field(default_factory=dict)
    """How a Hugging Face unit is read. ``hf_disk`` (one Arrow file of a ``save_to_disk``
    split): ``folder``, the split folder given to ``datasets.load_from_disk``, and ``rows``,
    the file's ``[start, stop)`` rows in that split. ``hf_stream``: ``load_dataset``, the
    keyword arguments of ``datasets.load_dataset`` (``streaming=True`` is added)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, s: str) -> ReadUnit:
        d = json.loads(s)
        d["paths"] = tuple(d["paths"])
        d["domains"] = tuple(d["domains"])
        return cls(**d)


def default_domain(path: str, root: str, fmt: str, domain_map: dict[str, str]) -> str:
    """Domain of a file when no constant or field gives it: the first ``domain_map`` glob that
    matches the path relative to ``root`` (or the file name), else the file stem (for ``.txt``,
    the name of the folder holding the file)."""
    rel = relative_path(path, root)
    for pattern, domain in domain_map.items():
        if fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(Path(path).name, pattern):
            return domain
    if fmt == "txt":
        return Path(path).parent.name or Path(root).name
    return file_stem(path)


def relative_path(path: str, root: str) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).name


def count_words(text: str) -> int:
    """Whitespace-separated words (the ``n_words`` column)."""
    return len(text.split())


def split_text(text: str, max_bytes: int) -> list[str]:
    """Cut ``text`` into chunks of at most ``max_bytes`` UTF-8 bytes whose concatenation is
    ``text``; cuts fall after a paragraph break, else a line break, else a space, else at a
    character boundary."""
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    chunks: list[str] = []
    rest = text
    while len(rest.encode("utf-8")) > max_bytes:
        # Largest prefix (in characters) that fits in max_bytes.
        head = rest.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")
        cut = len(head)
        for sep in ("\n\n", "\n", " "):
            pos = head.rfind(sep)
            if pos > 0:
                cut = pos + len(sep)
                break
        if cut == 0:  # a single character larger than max_bytes
            cut = 1
        chunks.append(rest[:cut])
        rest = rest[cut:]
    if rest:
        chunks.append(rest)
    return chunks


def _utf8_ok(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from JSON escapes such as "\ud800"
        return False
    return True


def _dump(obj: Any) -> str:
    s = json.dumps(obj, ensure_ascii=False, default=str)
    return s if _utf8_ok(s) else json.dumps(obj, default=str)


def hash_id(domain: str, rel_source: str, record: int, text: str) -> str:
    """Stable id from content and source: ``<domain>/<20 hex chars>``."""
    h = hashlib.sha256(f"{rel_source}\x00{record}\x00".encode() + text.encode("utf-8", "replace"))
    return f"{domain}/{h.hexdigest()[:20]}"


class _Emitter:
    """Collects rows and flushes them as Arrow record batches."""

    def __init__(self, batch_rows: int = 2048):
        self.rows: list[dict[str, Any]] = []
        self.batch_rows = batch_rows

    def add(self, **row: Any) -> None:
        self.rows.append(row)

    def full(self) -> bool:
        return len(self.rows) >= self.batch_rows

    def flush(self) -> pa.RecordBatch:
        batch = pa.RecordBatch.from_pylist(self.rows, schema=PARSED_SCHEMA)
        self.rows = []
        return batch


class _FileReader:
    """Turns decoded records of one file into document, quarantine and stats rows."""

    def __init__(self, unit: ReadUnit, path: str, domain: str, out: _Emitter):
        self.unit, self.path, self.domain, self.out = unit, path, domain, out
        self.rel = relative_path(path, unit.root)
        self.n_records = 0

    def quarantine(
        self, record: int, reason: str, detail: str | None, raw: str | None, domain=None
    ):
        self.out.add(
            id=f"{self.path}#{record}",
            domain=domain or self.domain,
            source=self.path,
            record=record,
            reason=str(reason),
            detail=detail,
            raw=raw,
        )

    def stats(self) -> None:
        self.out.add(
            id=f"{self.path}#stats",
            source=self.path,
            domain=self.domain,
            record=self.n_records,
            reason=STATS_REASON,
        )

    def record(self, record: int, obj: Any, raw: str | None = None) -> None:
        """One decoded record (a dict from JSON, Parquet or Arrow): a document or a quarantine
        row; any exception on the way quarantines the record (``record_error``, the exception
        type in ``detail``), never the run."""
        mark = len(self.out.rows)
        try:
            self._record(record, obj, raw)
        except Exception as err:  # one record must never stop a run
            del self.out.rows[mark:]  # a split record's chunks: all or none
            try:
                raw_text = raw if raw is not None else _dump(obj)
            except Exception:  # an object that cannot even be dumped
                raw_text = None
            self.quarantine(
                record, QR.RECORD_ERROR, f"{type(err).__name__}: {str(err)[:500]}", raw_text
            )

    def _record(self, record: int, obj: Any, raw: str | None) -> None:
        u = self.unit
        if isinstance(obj, _BadRow):
            raise obj.err
        if not isinstance(obj, dict):
            self.quarantine(
                record,
                QR.NOT_AN_OBJECT,
                f"expected a JSON object, got {type(obj).__name__}",
                raw or _dump(obj),
            )
            return

        def raw_of():
            return raw if raw is not None else _dump(obj)

        if u.text_field not in obj or obj[u.text_field] is None:
            self.quarantine(record, QR.MISSING_TEXT, f"no '{u.text_field}' field", raw_of())
            return
        text = obj[u.text_field]
        if not isinstance(text, str):
            self.quarantine(
                record, QR.NON_STRING_TEXT, f"'{u.text_field}' is {type(text).__name__}", raw_of()
            )
            return
        if not _utf8_ok(text):
            self.quarantine(
                record, QR.INVALID_UTF8, f"'{u.text_field}' holds a lone surrogate escape", raw_of()
            )
            return
        if not text.strip():
            self.quarantine(
                record, QR.EMPTY_TEXT, f"'{u.text_field}' is empty or whitespace", raw_of()
            )
            return
        domain = self.domain
        if u.domain_field is not None:
            d = obj.get(u.domain_field)
            if not isinstance(d, str) or not d.strip() or not _utf8_ok(d):
                self.quarantine(
                    record,
                    QR.MISSING_DOMAIN,
                    f"no string '{u.domain_field}' field (got {d!r})",
                    raw_of(),
                )
                return
            domain = d.strip()
        raw_id = obj.get(u.id_field) if u.id_field else None
        if (
            isinstance(raw_id, bool)
            or not isinstance(raw_id, str | int)
            or (isinstance(raw_id, str) and (not raw_id.strip() or not _utf8_ok(raw_id)))
        ):
            doc_id = hash_id(domain, self.rel, record, text)
        else:
            doc_id = str(raw_id)
        skip = {u.text_field, u.domain_field, u.id_field if raw_id is not None else None}
        extra = {k: v for k, v in obj.items() if k not in skip}
        n_bytes = len(text.encode("utf-8"))
        if n_bytes > u.max_doc_bytes:
            if u.oversize != "split":
                self.quarantine(
                    record,
                    QR.TOO_LARGE,
                    f"{n_bytes} bytes > max_doc_bytes={u.max_doc_bytes}",
                    raw_of(),
                    domain,
                )
                return
            chunks = split_text(text, u.max_doc_bytes)
            for k, chunk in enumerate(chunks):
                meta = {**extra, "parent_id": doc_id, "chunk": k, "n_chunks": len(chunks)}
                self._doc(f"{doc_id}#{k}", chunk, domain, record, meta)
            return
        self._doc(doc_id, text, domain, record, extra)

    def _doc(self, doc_id: str, text: str, domain: str, record: int, meta: dict[str, Any]) -> None:
        self.out.add(
            id=doc_id,
            text=text,
            domain=domain,
            source=self.path,
            n_chars=len(text),
            n_words=count_words(text),
            meta=_dump(meta) if meta else None,
            record=record,
        )


def _open_binary(path: str) -> IO[bytes]:
    from curamix.io.fs import open_input

    name = path.lower()
    if name.endswith(".gz"):
        fh = open_input(path)
        gz = gzip.GzipFile(fileobj=fh, mode="rb")
        gz.myfileobj = fh  # closed with it, as gzip.open does for a file name
        return gz
    if name.endswith(".zst"):
        return io.BufferedReader(_ZstdRaw(path), buffer_size=1 << 20)
    return open_input(path)


class _ZstdRaw(io.RawIOBase):
    """Reads a (multi-frame) zstd file and raises EOFError when the last frame is cut short,
    which ``zstandard``'s stream reader reports as a clean end of file."""

    def __init__(self, path: str):
        import zstandard

        self._zstd = zstandard
        from curamix.io.fs import open_input

        self._fh = open_input(path)  # closed in close()
        self._dobj = zstandard.ZstdDecompressor().decompressobj()
        self._buf = b""
        self._in_frame = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while not self._buf:
            chunk = self._fh.read(1 << 20)
            if not chunk:
                if self._in_frame:
                    raise EOFError("zstd stream ended before the end of its frame")
                return 0
            while chunk:
                self._in_frame = True
                self._buf += self._dobj.decompress(chunk)
                if self._dobj.eof:
                    chunk = self._dobj.unused_data
                    self._dobj = self._zstd.ZstdDecompressor().decompressobj()
                    self._in_frame = False
                else:
                    chunk = b""
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


def _stream_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, EOFError, zlib.error]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:  # pragma: no cover - zstandard is a dependency
        pass
    return tuple(errors)


_STRUCTURE = re.compile(r'["\\\[\]{}]')


def json_too_deep(s: str, limit: int) -> bool:
    """Whether the JSON text ``s`` nests arrays and objects deeper than ``limit`` (brackets
    inside strings do not count), told without parsing it: a parser would recurse once per
    level and could exhaust the stack first."""
    if s.count("[") + s.count("{") <= limit:
        return False  # fewer openers than the limit
    depth, in_str, skip = 0, False, -1
    for m in _STRUCTURE.finditer(s):
        i, c = m.start(), m.group()
        if i == skip:
            continue  # the character after a backslash inside a string
        if in_str:
            if c == "\\":
                skip = i + 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "[{":
            depth += 1
            if depth > limit:
                return True
        elif c in "]}":
            depth -= 1
    return False


_BOMS = ((b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"),
         (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))  # fmt: skip


def _jsonl_lines(fh: IO[bytes]) -> Iterator[bytes]:
    """The file's lines as UTF-8 bytes: a UTF-16 or UTF-32 file (told by its byte-order
    mark) is decoded, so its records count as records; a UTF-8 BOM is dropped."""
    head = fh.peek(4)[:4] if hasattr(fh, "peek") else b""
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            fh.read(len(bom))
            text = io.TextIOWrapper(fh, encoding=encoding, newline="")
            for line in text:
                yield line.encode("utf-8", "surrogatepass")
            return
    for n, line in enumerate(fh):
        yield line[3:] if n == 0 and line.startswith(b"\xef\xbb\xbf") else line


def _read_jsonl(fr: _FileReader) -> Iterator[None]:
    line_no = 0
    try:
        with _open_binary(fr.path) as fh:
            for line_no, line in enumerate(_jsonl_lines(fh), start=1):
                if not line.strip():
                    continue  # blank lines hold no record
                fr.n_records += 1
                line = line.rstrip(b"\r\n")
                try:
                    s = line.decode("utf-8")
                except UnicodeDecodeError as err:
                    fr.quarantine(
                        line_no,
                        QR.INVALID_UTF8,
                        str(err),
                        line.decode("utf-8", "replace"),
                    )
                    yield
                    continue
                if json_too_deep(s, fr.unit.max_json_depth):
                    fr.quarantine(
                        line_no,
                        QR.TOO_DEEP,
                        f"nested deeper than max_json_depth={fr.unit.max_json_depth}",
                        s[:10_000],
                    )
                    yield
                    continue
                try:
                    obj = json.loads(s)
                except Exception as err:  # JSONDecodeError, and any other decoder failure
                    detail = str(err)
                    if not isinstance(err, json.JSONDecodeError):
                        detail = f"{type(err).__name__}: {detail}"
                    fr.quarantine(line_no, QR.INVALID_JSON, detail, s)
                    yield
                    continue
                fr.record(line_no, obj, None)
                yield
    except Exception as err:  # a file-level failure: the file is set aside, the run goes on
        fr.n_records += 1
        if fr.n_records == 1 and line_no == 0:
            fr.quarantine(0, QR.UNREADABLE_FILE, f"{type(err).__name__}: {err}", None)
        else:
            fr.quarantine(
                line_no + 1,
                QR.TRUNCATED_FILE,
                f"{type(err).__name__}: {err} after {line_no} lines",
                None,
            )
        yield


class _BadRow:
    """A table row that could not be converted to Python (quarantined as ``record_error``)."""

    def __init__(self, err: Exception):
        self.err = err


def _table_rows(batches: Iterator[pa.RecordBatch]) -> Iterator[Any]:
    """The rows of record batches as dicts; a batch whose conversion fails is converted row by
    row, so one bad value costs its own row only."""
    for batch in batches:
        try:
            rows = batch.to_pylist()
        except Exception:  # e.g. a timestamp out of Python's range
            rows = []
            for i in range(batch.num_rows):
                try:
                    rows += batch.slice(i, 1).to_pylist()
                except Exception as err:
                    rows.append(_BadRow(err))
        yield from rows


def _read_table_rows(fr: _FileReader, batches: Iterator[pa.RecordBatch]) -> Iterator[None]:
    yield from _read_records(fr, _table_rows(batches))


def _read_records(
    fr: _FileReader,
    records: Iterator[Any],
    errors: tuple[type[BaseException], ...] = (Exception,),
) -> Iterator[None]:
    """Records (dicts) numbered from 1; an error in ``errors`` reading the source (any, for a
    file) quarantines the rest of it as one record (``unreadable_file`` before the first
    record, else ``truncated_file``), with the exception type in ``detail``; errors inside one
    record quarantine that record only."""
    row = 0
    try:
        for obj in records:
            row += 1
            fr.n_records += 1
            fr.record(row, obj)
            yield
    except errors as err:  # a file-level failure: the file is set aside, the run goes on
        fr.n_records += 1
        if row == 0:
            fr.quarantine(0, QR.UNREADABLE_FILE, f"{type(err).__name__}: {err}", None)
        else:
            fr.quarantine(
                row + 1, QR.TRUNCATED_FILE, f"{type(err).__name__}: {err} after {row} rows", None
            )
        yield


def _parquet_batches(path: str) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    yield from pq.ParquetFile(path).iter_batches(batch_size=1024)


def _arrow_batches(path: str) -> Iterator[pa.RecordBatch]:
    """Arrow IPC files as ``datasets`` writes them (stream format), or the file format."""
    with pa.memory_map(path, "r") as src:
        try:
            reader = pa.ipc.open_stream(src)
        except pa.ArrowInvalid:
            src.seek(0)
            f = pa.ipc.open_file(src)
            for i in range(f.num_record_batches):
                yield f.get_batch(i)
            return
        yield from reader


def hf_disk_batches(
    folder: str, start: int = 0, stop: int | None = None, batch_rows: int = 1024
) -> Iterator[pa.RecordBatch]:
    """Rows ``[start, stop)`` of a ``datasets`` ``save_to_disk`` folder holding one Dataset (a
    split), read with ``datasets.load_from_disk`` (memory-mapped, as Arrow batches)."""
    import datasets

    ds = datasets.load_from_disk(folder, keep_in_memory=False)
    if not isinstance(ds, datasets.Dataset):
        raise ValueError(f"{folder!r} holds a DatasetDict; give one split's folder")
    stop = ds.num_rows if stop is None else stop
    if (start, stop) != (0, ds.num_rows):
        ds = ds.select(range(start, stop))  # contiguous: a slice, no indices mapping
    for table in ds.with_format("arrow").iter(batch_size=batch_rows):
        yield from table.to_batches()


def hf_stream_records(load_args: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The records of ``datasets.load_dataset(**load_args, streaming=True)``, one dict each.

    ``load_args`` names one split (``split=``); a hub dataset's name goes in ``path``, and any
    packaged builder works the same way (``{"path": "json", "data_files": ..., "split":
    "train"}``), which is how the tests drive it without network."""
    import datasets

    if load_args.get("split") is None:
        raise ValueError(f"load_args must name a split, got {load_args!r}")
    yield from datasets.load_dataset(**load_args, streaming=True)


_STREAM_ERRORS = (pa.ArrowException, EOFError)
"""Errors of a streamed dataset that quarantine the rest of it. Network errors are not among
them: they fail the task, which is retried, instead of completing the stage without the data."""


def _read_txt(fr: _FileReader) -> Iterator[None]:
    fr.n_records += 1
    try:
        from curamix.io.fs import open_input

        with open_input(fr.path) as fh:
            data = fh.read()
    except OSError as err:
        fr.quarantine(0, QR.UNREADABLE_FILE, f"{type(err).__name__}: {err}", None)
        yield
        return
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        fr.quarantine(1, QR.INVALID_UTF8, str(err), data.decode("utf-8", "replace"))
        yield
        return
    doc_id = relative_path(fr.path, fr.unit.root)
    fr.record(
        1,
        {fr.unit.text_field: text, **({fr.unit.id_field: doc_id} if fr.unit.id_field else {})},
        None,
    )
    yield


def read_unit(unit: ReadUnit, batch_rows: int = 2048) -> Iterator[pa.RecordBatch]:
    """Read every file of ``unit``; yield :data:`PARSED_SCHEMA` batches (docs, quarantine, stats)."""
    out = _Emitter(batch_rows)
    for path, domain in zip(unit.paths, unit.domains, strict=True):
        fr = _FileReader(unit, path, domain, out)
        if unit.format == "jsonl":
            steps = _read_jsonl(fr)
        elif unit.format == "parquet":
            steps = _read_table_rows(fr, _parquet_batches(path))
        elif unit.format == "arrow":
            steps = _read_table_rows(fr, _arrow_batches(path))
        elif unit.format == "hf_disk":
            start, stop = unit.hf["rows"]
            steps = _read_table_rows(fr, hf_disk_batches(unit.hf["folder"], start, stop))
        elif unit.format == "hf_stream":
            steps = _read_records(fr, hf_stream_records(unit.hf["load_dataset"]), _STREAM_ERRORS)
        elif unit.format == "txt":
            steps = _read_txt(fr)
        else:
            raise ValueError(f"unknown read-unit format {unit.format!r}")
        for _ in steps:
            if out.full():
                yield out.flush()
        fr.stats()
    if out.rows:
        yield out.flush()


def read_unit_table(unit: ReadUnit) -> pa.Table:
    """All rows of one unit as a table (for tests and notebooks)."""
    return pa.Table.from_batches(list(read_unit(unit)), schema=PARSED_SCHEMA)
