"""Storage through URIs: local paths, ``file://``, and object stores (``s3://``, ``gs://``,
``abfs://``, ``hdfs://``) through :mod:`pyarrow.fs`.

Credentials and endpoints come from the standard environment of each store, read by pyarrow
itself in whichever process touches the store (the driver and every Spark worker):

- S3 and S3-compatible servers: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_SESSION_TOKEN``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` (MinIO,
  rclone, Ceph...), ``AWS_PROFILE``; :func:`configure` sets them from the YAML's ``storage``
  section when the environment has none.
- GCS: ``GOOGLE_APPLICATION_CREDENTIALS`` (or the metadata server); Azure:
  ``AZURE_STORAGE_ACCOUNT_NAME`` / ``AZURE_STORAGE_ACCOUNT_KEY`` (or a managed identity);
  HDFS: ``HADOOP_HOME`` / ``ARROW_LIBHDFS_DIR`` and a JVM.

:class:`StorePath` is a small pathlib-like handle on an object-store location (``/``,
``read_text``, ``write_text``, ``exists``, ``glob``...) so that run-folder code reads the
same for both; :func:`as_path` gives a :class:`pathlib.Path` for local paths and ``file://``
URIs and a :class:`StorePath` for the rest. Object stores have no directories and no atomic
rename: ``mkdir`` is a no-op there and one object is written by one ``PUT`` (readers see the
old object or the new one).
"""

from __future__ import annotations

import fnmatch
import functools
import io
import os
import posixpath
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    import pyarrow.fs as pafs

REMOTE_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "az", "hdfs", "viewfs")
"""URI schemes served by :mod:`pyarrow.fs` (``file://`` is local)."""

_PACKAGES = {
    "s3": "pyarrow built with S3 support (the PyPI wheels are)",
    "gs": "pyarrow built with GCS support (the PyPI wheels are)",
    "gcs": "pyarrow built with GCS support (the PyPI wheels are)",
    "abfs": "pyarrow >= 16 built with Azure support",
    "abfss": "pyarrow >= 16 built with Azure support",
    "az": "pyarrow >= 16 built with Azure support",
    "hdfs": "libhdfs and a JVM (set HADOOP_HOME or ARROW_LIBHDFS_DIR, and JAVA_HOME)",
    "viewfs": "libhdfs and a JVM (set HADOOP_HOME or ARROW_LIBHDFS_DIR, and JAVA_HOME)",
}

STORE_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
)
"""The variables a cluster's executors get from the driver (``spark.executorEnv``; Spark
redacts secret-looking values in its UI and logs). Local mode's workers inherit them."""

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class StorageError(OSError):
    """A store cannot be used: no such bucket, credentials refused, a scheme without its
    filesystem, a server that does not answer. The message names the URI and the cause."""


def scheme(p: str | os.PathLike[str]) -> str:
    """The URI scheme of ``p`` (lower case), or ``""`` for a plain path."""
    m = _SCHEME.match(os.fspath(p))
    return m.group(1).lower() if m else ""


def is_remote(p: str | os.PathLike[str] | StorePath) -> bool:
    """True for URIs of object stores and HDFS (not for plain paths and ``file://``)."""
    if isinstance(p, StorePath):
        return True
    s = scheme(p)
    return bool(s) and s != "file"


def local_path(p: str | os.PathLike[str]) -> str:
    """A plain path for a plain path or a ``file://`` URI; ``ValueError`` for other URIs."""
    s = os.fspath(p)
    if scheme(s) == "file":
        return unquote(urlsplit(s).path)
    if scheme(s):
        raise ValueError(f"{s} is not a local path")
    return s


def configure(storage: dict[str, Any] | None) -> None:
    """Export the YAML's ``storage`` settings as the standard variables where the environment
    has none (the environment wins: a user's shell or the cluster's secrets). Call it before
    Spark starts so that the workers inherit them. Also sets
    ``AWS_REQUEST_CHECKSUM_CALCULATION=WHEN_REQUIRED`` unless set: S3-compatible servers that
    do not take the SDK's default checksums (rclone, older MinIO) refuse multipart uploads
    without it, and AWS itself accepts both."""
    names = {
        "endpoint_url": "AWS_ENDPOINT_URL",
        "region": "AWS_REGION",
        "access_key_id": "AWS_ACCESS_KEY_ID",
        "secret_access_key": "AWS_SECRET_ACCESS_KEY",
        "session_token": "AWS_SESSION_TOKEN",
        "profile": "AWS_PROFILE",
    }
    for key, value in (storage or {}).items():
        if value is not None and key in names:
            os.environ.setdefault(names[key], str(value))
    os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "WHEN_REQUIRED")
    _filesystem.cache_clear()


def _fs_error(uri: str, err: BaseException) -> StorageError:
    """A one-line :class:`StorageError` naming ``uri`` and what went wrong."""
    msg = " ".join(str(err).split())
    s = scheme(uri)
    bucket = urlsplit(uri).netloc
    if "NO_SUCH_BUCKET" in msg or "NoSuchBucket" in msg or "bucket does not exist" in msg:
        why = f"the bucket {bucket!r} does not exist"
    elif any(
        k in msg
        for k in ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")
    ) or re.search(r"\b403\b", msg):
        why = (
            "the credentials were refused (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
            "or the store's own variables)"
        )
    elif "Unrecognized filesystem type" in msg:
        why = f"no filesystem handles the scheme {s!r}; known: {', '.join(REMOTE_SCHEMES)}, file"
    elif "libjvm" in msg or "libhdfs" in msg:
        why = f"the {s} filesystem needs {_PACKAGES.get(s, 'its library')}"
    elif "not been built with" in msg or "support is not enabled" in msg.lower():
        why = f"the {s} filesystem needs {_PACKAGES.get(s, 'its package')}"
    elif any(k in msg for k in ("Couldn't connect", "curlCode: 7", "NETWORK_CONNECTION")):
        why = "the server does not answer (check AWS_ENDPOINT_URL / the network)"
    else:
        why = msg[:300]
    return StorageError(f"{uri}: {why}")


@functools.lru_cache(maxsize=64)
def _filesystem(scheme_: str, netloc: str) -> pafs.FileSystem:
    import pyarrow.fs as pafs

    if scheme_ == "s3":
        return _s3(netloc)
    fs, _ = pafs.FileSystem.from_uri(f"{scheme_}://{netloc}/")
    return fs


def _s3(bucket: str) -> pafs.FileSystem:
    """pyarrow's S3 filesystem from the standard variables. Built here rather than by
    ``from_uri`` to check a folder's existence before writing a folder marker (pyarrow writes
    one when a prefix would become empty; some S3-compatible servers refuse them)."""
    import pyarrow.fs as pafs

    os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "WHEN_REQUIRED")
    kw: dict[str, Any] = {"check_directory_existence_before_creation": True}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        u = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        kw.update(endpoint_override=f"{u.netloc}{u.path.rstrip('/')}", scheme=u.scheme)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region and not endpoint:
        try:
            region = pafs.resolve_s3_region(bucket)
        except OSError:
            region = None
    kw["region"] = region or "us-east-1"
    return pafs.S3FileSystem(**kw)


def _marker_error(err: OSError) -> bool:
    """pyarrow deleted the object, then failed to write a folder marker for its now-empty
    parent (servers that keep no empty folders refuse those); the deletion itself stands."""
    return "When creating key" in str(err) and "PutObject" in str(err)


def resolve(uri: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path inside it)`` of a URI or plain path; :class:`StorageError` when
    the scheme has no filesystem here."""
    import pyarrow.fs as pafs

    s = os.fspath(uri)
    if not is_remote(s):
        return pafs.LocalFileSystem(), os.path.abspath(local_path(s))
    parts = urlsplit(s)
    try:
        fs = _filesystem(parts.scheme.lower(), parts.netloc)
    except (OSError, ValueError, RuntimeError) as err:
        raise _fs_error(s, err) from None
    if parts.scheme.lower() in ("hdfs", "viewfs"):
        return fs, parts.path or "/"
    return fs, f"{parts.netloc}{parts.path}".rstrip("/")


def check_store(uri: str) -> None:
    """Fail early with a :class:`StorageError` when ``uri``'s bucket is missing, the
    credentials are refused or the server does not answer (one HEAD/list request)."""
    import pyarrow.fs as pafs

    if not is_remote(uri):
        return
    fs, path = resolve(uri)
    bucket = path.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
        if info.type == pafs.FileType.NotFound:
            raise StorageError(f"{uri}: the bucket {bucket!r} does not exist")
        fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    except StorageError:
        raise
    except OSError as err:
        raise _fs_error(uri, err) from None


class StorePath:
    """A location on an object store, with the part of :class:`pathlib.Path` that run
    folders use. ``os.fspath`` gives the URI, so pyarrow's readers and writers take it."""

    __slots__ = ("uri",)

    def __init__(self, uri: str | StorePath):
        uri = uri.uri if isinstance(uri, StorePath) else str(uri)
        s = scheme(uri)
        rest = uri[len(s) + 3 :]
        self.uri = f"{s}://{rest.rstrip('/')}" if rest.strip("/") else f"{s}://{rest}"

    # path algebra --------------------------------------------------------------------------
    def __truediv__(self, other: str | os.PathLike[str]) -> StorePath:
        return StorePath(f"{self.uri}/{os.fspath(other).lstrip('/')}")

    def __fspath__(self) -> str:
        return self.uri

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"StorePath({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StorePath) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    @property
    def name(self) -> str:
        return posixpath.basename(self.uri[len(scheme(self.uri)) + 3 :])

    @property
    def parent(self) -> StorePath:
        s = scheme(self.uri)
        rest = self.uri[len(s) + 3 :]
        head = posixpath.dirname(rest)
        return StorePath(f"{s}://{head}") if head else self

    # queries -------------------------------------------------------------------------------
    def _fs(self) -> tuple[pafs.FileSystem, str]:
        return resolve(self.uri)

    def _info(self) -> Any:
        fs, path = self._fs()
        try:
            return fs.get_file_info(path)
        except OSError as err:
            raise _fs_error(self.uri, err) from None

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        if self._info().type != pafs.FileType.NotFound:
            return True
        return self.is_dir()

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        """True when some object lies under this prefix (object stores have no folders)."""
        return next(self._walk(), None) is not None

    def _walk(self, recursive: bool = True) -> Iterator[Any]:
        import pyarrow.fs as pafs

        fs, path = self._fs()
        try:
            infos = fs.get_file_info(
                pafs.FileSelector(path, allow_not_found=True, recursive=recursive)
            )
        except OSError as err:
            raise _fs_error(self.uri, err) from None
        s = scheme(self.uri)
        for info in infos:
            yield info, StorePath(f"{s}://{info.path}")

    def iterdir(self) -> Iterator[StorePath]:
        """Objects and prefixes directly under this one, sorted."""
        yield from sorted((p for _, p in self._walk(recursive=False)), key=str)

    def glob(self, pattern: str) -> Iterator[StorePath]:
        """Objects under this prefix whose path relative to it matches ``pattern``
        (``fnmatch``; ``**`` matches any depth)."""
        import pyarrow.fs as pafs

        recursive = "/" in pattern or "**" in pattern
        base = self.uri.rstrip("/") + "/"
        hits = []
        for info, p in self._walk(recursive=recursive):
            rel = p.uri[len(base) :]
            if info.type == pafs.FileType.File and fnmatch.fnmatchcase(rel, pattern):
                hits.append(p)
        yield from sorted(hits, key=str)

    # reads and writes ----------------------------------------------------------------------
    def open(self, mode: str = "r", encoding: str = "utf-8") -> IO[Any]:
        fs, path = self._fs()
        try:
            if "r" in mode:
                raw: Any = fs.open_input_file(path)
            elif "w" in mode:
                raw = fs.open_output_stream(path, compression=None)
            else:
                raise ValueError(f"StorePath.open: mode {mode!r} is not supported (r, rb, w, wb)")
        except OSError as err:
            if "r" in mode and self._info().type.name == "NotFound":
                raise FileNotFoundError(f"{self.uri}: no such object") from None
            raise _fs_error(self.uri, err) from None
        return raw if "b" in mode else io.TextIOWrapper(raw, encoding=encoding)

    def read_bytes(self) -> bytes:
        with self.open("rb") as fh:
            return fh.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        with self.open("wb") as fh:
            fh.write(data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """A no-op: object stores have prefixes, not folders."""

    def unlink(self, missing_ok: bool = False) -> None:
        fs, path = self._fs()
        try:
            fs.delete_file(path)
        except FileNotFoundError:
            if not missing_ok:
                raise
        except OSError as err:
            if _marker_error(err) or (missing_ok and not self.is_file()):
                return
            raise _fs_error(self.uri, err) from None

    def rmtree(self) -> None:
        """Delete every object under this prefix (one batched call)."""
        fs, path = self._fs()
        try:
            fs.delete_dir(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            # servers that list folders as "key/" entries refuse to delete those; the objects
            # themselves are gone (checked below)
            keys = re.findall(r"key '([^']*)'", str(err))
            if not (_marker_error(err) or (keys and all(k.endswith("/") for k in keys))):
                raise _fs_error(self.uri, err) from None
        left = [p.uri for info, p in self._walk() if info.type.name == "File" and info.size]
        if left:
            raise StorageError(f"{self.uri}: {len(left)} objects were not deleted, e.g. {left[0]}")


AnyPath = Path | StorePath


def as_path(p: str | os.PathLike[str] | StorePath) -> AnyPath:
    """A :class:`StorePath` for object-store URIs, else a :class:`pathlib.Path` (``file://``
    URIs become plain paths)."""
    if isinstance(p, (Path, StorePath)):
        return p
    s = os.fspath(p)
    return StorePath(s) if is_remote(s) else Path(local_path(s))


def rmtree(p: AnyPath) -> None:
    """Remove a folder (local) or every object under a prefix (store); missing is fine."""
    import shutil

    if isinstance(p, StorePath):
        p.rmtree()
    else:
        shutil.rmtree(p, ignore_errors=True)


def open_input(p: str | os.PathLike[str]) -> IO[bytes]:
    """A binary, seekable reader of a local file or an object (``FileNotFoundError`` when it
    is missing, :class:`StorageError` for the store's own errors)."""
    if not is_remote(p):
        return open(local_path(p), "rb")
    raw = _RawObject(as_path(p).open("rb"))  # type: ignore[union-attr]
    return io.BufferedReader(raw, buffer_size=1 << 20)  # lines and peek, as for a local file


class _RawObject(io.RawIOBase):
    """A pyarrow input file as a raw stream for :class:`io.BufferedReader` (pyarrow's files
    read and seek, but neither iterate by lines nor peek)."""

    def __init__(self, f: Any):
        self._f = f

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._f.read(len(b))
        b[: len(data)] = data
        return len(data)

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._f.seek(pos, whence)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()
        super().close()


def file_info(p: str | os.PathLike[str]) -> tuple[int, int]:
    """``(size, mtime in ns)`` of a local file or an object (mtime 0 when the store has none)."""
    if not is_remote(p):
        st = os.stat(local_path(p))
        return st.st_size, st.st_mtime_ns
    info = as_path(p)._info()  # type: ignore[union-attr]
    if info.type.name != "File":
        raise FileNotFoundError(f"{p}: no such object")
    return int(info.size or 0), int(info.mtime_ns or 0)


def makedirs(p: str | os.PathLike[str]) -> None:
    """``os.makedirs(p, exist_ok=True)`` for local paths; nothing for object stores."""
    if not is_remote(p):
        os.makedirs(local_path(p), exist_ok=True)


def write_bytes(p: str | os.PathLike[str], data: bytes) -> None:
    """Write a whole file or object (one ``PUT`` on a store)."""
    q = as_path(p)
    if isinstance(q, Path):
        q.parent.mkdir(parents=True, exist_ok=True)
    q.write_bytes(data)


def read_bytes(p: str | os.PathLike[str]) -> bytes:
    return as_path(p).read_bytes()


def listdir(p: str | os.PathLike[str]) -> list[str]:
    """Names directly under a folder or prefix, sorted; ``[]`` when there is none."""
    q = as_path(p)
    if isinstance(q, Path):
        return sorted(os.listdir(q)) if q.is_dir() else []
    return [c.name for c in q.iterdir()]


def save_figure(fig: Any, p: str | os.PathLike[str], **kwargs: Any) -> None:
    """``fig.savefig`` to a file or an object (rendered in memory, then written whole)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=kwargs.pop("format", "png"), **kwargs)
    write_bytes(p, buf.getvalue())


def save_npz(p: str | os.PathLike[str], compressed: bool = False, **arrays: Any) -> None:
    """``np.savez[_compressed]`` to a file or an object (built in memory, written whole)."""
    import numpy as np

    if not is_remote(p):
        (np.savez_compressed if compressed else np.savez)(local_path(p), **arrays)
        return
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    write_bytes(p, buf.getvalue())


def load_npz(p: str | os.PathLike[str]) -> Any:
    """``np.load`` of an ``.npz`` file or object (a context manager, as ``np.load``'s)."""
    import numpy as np

    if not is_remote(p):
        return np.load(local_path(p))
    return np.load(io.BytesIO(read_bytes(p)))


def tree_size(p: str | os.PathLike[str]) -> int:
    """Bytes of every file under a folder or prefix."""
    q = as_path(p)
    if isinstance(q, Path):
        return sum(f.stat().st_size for f in q.rglob("*") if f.is_file())
    return sum(int(info.size or 0) for info, _ in q._walk() if info.type.name == "File")


def upload_folder(local: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Copy the files of a local folder to a folder or prefix (one write per file)."""
    for f in sorted(Path(local).rglob("*")):
        if f.is_file():
            write_bytes(as_path(dest) / f.relative_to(local).as_posix(), f.read_bytes())
