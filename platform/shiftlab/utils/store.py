"""Where shiftlab keeps files: a folder (local disk, NFS) or a URI of a pyarrow filesystem.

A *location* is a string: a POSIX path (``file://`` paths included) or a URI that
``pyarrow.fs.FileSystem.from_uri`` understands (``s3://bucket/prefix``, ``gs://...``,
``hdfs://...``, ``abfs://...``). `open_store` gives one interface over both, addressed by
relative POSIX paths, with the guarantees the rest of shiftlab relies on:

- **whole files or none**: a folder write goes to a temp name and is renamed; an object store
  write is a single PUT (or a multipart upload completed on close) of bytes already in memory,
  which readers see whole or not at all;
- **listing** of a folder's file names, **download/upload** of a tree.

Endpoints and credentials of object stores come from the environment of each process (the
standard ``AWS_*`` / ``GOOGLE_*`` variables, instance roles, workload identity), exactly as
Ray Train's own ``storage_path`` resolves them; URIs with query strings are refused because
sub-paths are made by appending to them.

Code that must read files with ordinary file APIs (dataset readers, torch) works on a
node-local copy: `local_cache_dir` names where those copies live.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from shiftlab.utils.atomic import write_bytes as write_file_atomic
from shiftlab.utils.errors import ConfigError

# Object stores whose writes are atomic per object: no temp name and rename (a rename there
# is a copy plus a delete, and would show the temp object to listings meanwhile).
_OBJECT_STORES = {"s3", "gcs", "abfs"}
TEMP_SUFFIX = ".tmp"


def is_uri(location: str | os.PathLike[str]) -> bool:
    """True for a filesystem URI (``s3://...``); False for paths, ``file://`` included."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def local_path(location: str | os.PathLike[str]) -> Path:
    text = str(location)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def join(location: str | os.PathLike[str], *parts: str) -> str:
    """``location/part/...`` for paths and URIs alike."""
    if not is_uri(location):
        return str(local_path(location).joinpath(*parts))
    return "/".join([str(location).rstrip("/"), *(p.strip("/") for p in parts if p)])


def absolute(location: str | os.PathLike[str]) -> str:
    """A path made absolute (workers run in other directories); a URI unchanged."""
    return str(location) if is_uri(location) else str(local_path(location).resolve())


def local_cache_dir() -> Path:
    """This node's cache: procedural scenes, local copies of remote datasets and run files."""
    return Path(os.environ.get("SHIFTLAB_CACHE_DIR", Path.home() / ".cache" / "shiftlab"))


def local_copy_dir(location: str, kind: str) -> Path:
    """The node-local folder that mirrors the remote ``location`` (``kind``: datasets, runs)."""
    digest = hashlib.sha256(location.rstrip("/").encode()).hexdigest()[:16]
    name = location.rstrip("/").rsplit("/", 1)[-1] or "root"
    return local_cache_dir() / "remote" / kind / f"{name}-{digest}"


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


class Store(Protocol):
    location: str

    def is_file(self, rel: str) -> bool: ...
    def names(self, rel: str = "") -> set[str]: ...
    def read_bytes(self, rel: str) -> bytes: ...
    def write_bytes(self, rel: str, data: bytes) -> None: ...
    def put_file(self, rel: str, src: Path) -> str: ...
    def files(self, rel: str = "") -> Iterator[tuple[str, int]]: ...
    def delete(self, rel: str) -> None: ...
    def clean_temp(self, folders: tuple[str, ...]) -> int: ...


class LocalStore:
    """A folder on a POSIX filesystem (local disk, NFS, a mounted volume)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = local_path(root)
        self.location = str(self.root)

    def __repr__(self) -> str:
        return f"LocalStore({self.location!r})"

    def path(self, rel: str = "") -> Path:
        return self.root / rel if rel else self.root

    def is_file(self, rel: str) -> bool:
        return self.path(rel).is_file()

    def names(self, rel: str = "") -> set[str]:
        try:
            return {n for n in os.listdir(self.path(rel)) if not n.startswith(".")}
        except (FileNotFoundError, NotADirectoryError):
            return set()

    def read_bytes(self, rel: str) -> bytes:
        return self.path(rel).read_bytes()

    def write_bytes(self, rel: str, data: bytes) -> None:
        write_file_atomic(self.path(rel), data)

    def put_file(self, rel: str, src: Path) -> str:
        from shiftlab.utils.atomic import link_or_copy

        return link_or_copy(src, self.path(rel))

    def files(self, rel: str = "") -> Iterator[tuple[str, int]]:
        base = self.path(rel)
        for dirpath, dirs, names in os.walk(base):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                if not name.startswith("."):
                    full = Path(dirpath, name)
                    yield full.relative_to(base).as_posix(), full.stat().st_size

    def delete(self, rel: str) -> None:
        self.path(rel).unlink(missing_ok=True)

    def clean_temp(self, folders: tuple[str, ...]) -> int:
        removed = 0
        for folder in ("", *folders):
            base = self.path(folder)
            walker = os.walk(base) if folder else [(str(base), [], _list(base))]
            for dirpath, _dirs, names in walker:
                for name in names:
                    if _is_temp(name):
                        Path(dirpath, name).unlink(missing_ok=True)
                        removed += 1
        return removed


def _list(folder: Path) -> list[str]:
    try:
        return [n for n in os.listdir(folder) if (folder / n).is_file()]
    except FileNotFoundError:
        return []


class ArrowStore:
    """A prefix of a pyarrow filesystem (S3, GCS, HDFS, Azure)."""

    def __init__(self, uri: str) -> None:
        import pyarrow.fs as pafs

        if "?" in uri:
            raise ConfigError(
                f"{uri}: URIs with a query string are not supported; configure the endpoint "
                "through the environment instead (e.g. AWS_ENDPOINT_URL)"
            )
        try:
            self.fs, base = pafs.FileSystem.from_uri(uri)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"{uri}: not a usable filesystem URI ({exc})") from None
        self.base = base.rstrip("/")
        self.location = uri.rstrip("/")
        self.atomic_put = self.fs.type_name in _OBJECT_STORES

    def __repr__(self) -> str:
        return f"ArrowStore({self.location!r})"

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return ArrowStore, (self.location,)  # re-resolved (credentials) where it is unpickled

    def _p(self, rel: str) -> str:
        return f"{self.base}/{rel.strip('/')}" if rel else self.base

    def is_file(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self._p(rel)).type == pafs.FileType.File

    def names(self, rel: str = "") -> set[str]:
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self._p(rel), allow_not_found=True, recursive=False)
        return {
            info.base_name
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and not info.base_name.startswith(".")
        }

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self._p(rel)) as fh:
            return fh.read()

    def write_bytes(self, rel: str, data: bytes) -> None:
        path = self._p(rel)
        parent = path.rsplit("/", 1)[0]
        if self.atomic_put:  # no folders on object stores (create_dir would add marker objects)
            with self.fs.open_output_stream(path) as fh:
                fh.write(data)
            return
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.{path.rsplit('/', 1)[-1]}.{os.urandom(6).hex()}{TEMP_SUFFIX}"
        try:
            with self.fs.open_output_stream(tmp) as fh:
                fh.write(data)
            self.fs.move(tmp, path)
        except BaseException:
            _quiet_delete(self.fs, tmp)
            raise

    def put_file(self, rel: str, src: Path) -> str:
        self.write_bytes(rel, Path(src).read_bytes())
        return "copy"

    def files(self, rel: str = "") -> Iterator[tuple[str, int]]:
        import pyarrow.fs as pafs

        base = self._p(rel)
        selector = pafs.FileSelector(base, allow_not_found=True, recursive=True)
        for info in sorted(self.fs.get_file_info(selector), key=lambda i: i.path):
            if info.type != pafs.FileType.File:
                continue
            sub = info.path[len(base):].lstrip("/")
            if not any(part.startswith(".") for part in sub.split("/")):
                yield sub, int(info.size or 0)

    def delete(self, rel: str) -> None:
        _quiet_delete(self.fs, self._p(rel))

    def clean_temp(self, folders: tuple[str, ...]) -> int:
        import pyarrow.fs as pafs

        if self.atomic_put:
            return 0  # object stores never hold temp objects of ours
        removed = 0
        for folder in ("", *folders):
            selector = pafs.FileSelector(self._p(folder), allow_not_found=True, recursive=bool(folder))
            for info in self.fs.get_file_info(selector):
                if info.type == pafs.FileType.File and _is_temp(info.base_name):
                    _quiet_delete(self.fs, info.path)
                    removed += 1
        return removed


def _quiet_delete(fs: object, path: str) -> None:
    with contextlib.suppress(OSError):  # FileNotFoundError included: already gone
        fs.delete_file(path)  # type: ignore[attr-defined]


def open_store(location: str | os.PathLike[str]) -> LocalStore | ArrowStore:
    """The store at ``location``: a folder for paths, pyarrow for URIs."""
    return ArrowStore(str(location)) if is_uri(location) else LocalStore(location)


def download_tree(
    store: Store,
    dest: Path,
    rel: str = "",
    skip_same_size: bool = False,
    exclude: set[str] | frozenset[str] = frozenset(),
) -> int:
    """Copy every file under ``rel`` of ``store`` into ``dest`` (each file atomically).

    ``skip_same_size``: keep local files whose size matches (for content-keyed, immutable
    files such as generated images); ``exclude``: relative paths left out. Returns the number
    of files copied.
    """
    copied = 0
    for sub, size in store.files(rel):
        if sub in exclude:
            continue
        target = dest / sub
        if skip_same_size and target.is_file() and target.stat().st_size == size:
            continue
        write_file_atomic(target, store.read_bytes(f"{rel}/{sub}" if rel else sub))
        copied += 1
    return copied


def upload_tree(src: Path, store: Store, rel: str = "") -> int:
    """Copy every (non-hidden) file under the local ``src`` to ``rel`` of ``store``."""
    copied = 0
    for sub, _size in LocalStore(src).files():
        store.write_bytes(f"{rel}/{sub}" if rel else sub, (src / sub).read_bytes())
        copied += 1
    return copied
