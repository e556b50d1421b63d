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

Everything that differs between the two kinds is a method of the store, so the rest of
shiftlab parses a location once (`open_store`) and never asks which kind it has: readers get
``readable_root()`` (the folder itself, or a node-local mirror of the objects), run folders
``working_dir()`` + ``publish``/``pull`` (no-ops for a folder), generation ``lock_file()``,
tracking ``sqlite_uri()``/``artifact_uri()``, and the storage checks ``probe_writable()``.
`local_cache_dir` names where node-local copies live.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from shiftlab.utils.atomic import clone_or_copy
from shiftlab.utils.atomic import write_bytes as write_file_atomic
from shiftlab.utils.errors import ConfigError, DataError
from shiftlab.utils.lock import FileLock

log = logging.getLogger(__name__)

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
    return Path(text[len("file://") :] if text.startswith("file://") else text)


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
    # Readers on each node work on their own copy (object stores) rather than the location.
    copied_per_node: bool

    @property
    def identity(self) -> str: ...
    def readable_root(self, last: str | None = None) -> Path: ...
    def working_dir(self, kind: str) -> Path: ...
    def publish(self, rel: str, local_root: Path) -> None: ...
    def pull(self, rel: str, local_root: Path) -> None: ...
    def lock_file(self) -> Path: ...
    def probe_writable(self) -> None: ...
    def sqlite_uri(self, name: str) -> str: ...
    def artifact_uri(self, name: str) -> str: ...
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

    copied_per_node = False

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = local_path(root)
        self.location = str(self.root)

    def __repr__(self) -> str:
        return f"LocalStore({self.location!r})"

    @property
    def identity(self) -> str:
        """What names the files wherever they are read from: the resolved path."""
        return str(self.root.resolve())

    def readable_root(self, last: str | None = None) -> Path:
        return self.root

    def working_dir(self, kind: str) -> Path:
        return self.root.absolute()

    def publish(self, rel: str, local_root: Path) -> None:
        """Nothing to do: files written in the working dir are already at the location."""

    def pull(self, rel: str, local_root: Path) -> None:
        """Nothing to do: the working dir is the location."""

    def lock_file(self) -> Path:
        return self.root.parent / f".{self.root.name}.lock"

    def probe_writable(self) -> None:
        """Create the folder and prove a file can be written, synced and removed there."""
        self.root.mkdir(parents=True, exist_ok=True)
        probe = self.root / f".shiftlab-write-probe-{os.urandom(8).hex()}"
        try:
            with open(probe, "wb") as fh:
                fh.write(b"\0" * 4096)
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            with contextlib.suppress(OSError):
                probe.unlink(missing_ok=True)

    def sqlite_uri(self, name: str) -> str:
        return f"sqlite:///{self.root.resolve() / name}"

    def artifact_uri(self, name: str) -> str:
        return (self.root.resolve() / name).as_uri()

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
        return clone_or_copy(src, self.path(rel))

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

    copied_per_node = True

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

    @property
    def identity(self) -> str:
        return self.location

    def working_dir(self, kind: str) -> Path:
        """The node-local folder that mirrors this location (``kind``: datasets, runs)."""
        return local_copy_dir(self.location, kind)

    def publish(self, rel: str, local_root: Path) -> None:
        """Upload the finished local file or folder ``rel`` (each file whole)."""
        source = local_root / rel
        if source.is_dir():
            upload_tree(source, self, rel)
        elif source.is_file():
            self.write_bytes(rel, source.read_bytes())

    def pull(self, rel: str, local_root: Path) -> None:
        """Copy ``rel`` (a file or a folder) into the local mirror."""
        if self.is_file(rel):
            write_file_atomic(local_root / rel, self.read_bytes(rel))
        else:
            download_tree(self, local_root / rel, rel)

    def lock_file(self) -> Path:
        """In this node's cache: object stores have no create-if-absent through pyarrow, so a
        lock here only keeps the processes of one node apart (their writes are identical)."""
        return local_copy_dir(self.location, "locks").with_suffix(".lock")

    def probe_writable(self) -> None:
        name = f".shiftlab-write-probe-{os.urandom(8).hex()}"
        self.write_bytes(name, b"probe")
        self.delete(name)

    def sqlite_uri(self, name: str) -> str:
        raise ConfigError(
            f"{self.location} is on object storage, where no sqlite store can live: set "
            "tracking.tracking_uri (or --tracking-uri) to an MLflow server, e.g. http://127.0.0.1:5000"
        )

    def artifact_uri(self, name: str) -> str:
        return join(self.location, name)  # MLflow writes s3:// / gs:// itself

    def readable_root(self, last: str | None = None) -> Path:
        """A node-local folder holding every file here, copied when missing.

        Readers, PIL and torch want files: the usual "sync the bucket to local NVMe" step of a
        cluster job, done by the process that needs it. Files already present with the
        remote size are kept (generated sets never change; sources are not edited in place).
        ``last`` (a set's ``dataset.json``, its list of complete modes) is copied last, so a
        copy never claims files it lacks, and when it equals the local one nothing is listed.
        Processes of one node share the copy under a lock file.
        """
        dest = self.working_dir("datasets")
        try:
            marker = self.read_bytes(last) if last and self.is_file(last) else None
        except OSError as exc:
            raise DataError(f"{self.location}: cannot read the dataset ({exc})") from None

        def up_to_date() -> bool:
            return (
                marker is not None
                and (dest / str(last)).is_file()
                and (dest / str(last)).read_bytes() == marker
            )

        if not up_to_date():
            with FileLock(dest.with_name(dest.name + ".lock")):
                if not up_to_date():  # another process of this node may have copied it meanwhile
                    self._mirror(dest, last, marker)
        return dest

    def _mirror(self, dest: Path, last: str | None, marker: bytes | None) -> None:
        try:
            copied = download_tree(
                self, dest, skip_same_size=True, exclude={last} if last else frozenset()
            )
        except OSError as exc:
            raise DataError(
                f"{self.location}: copying the dataset to {dest} failed ({exc})"
            ) from None
        if marker is not None and last:
            write_file_atomic(dest / last, marker)
        if not dest.is_dir():
            raise DataError(f"{self.location}: no files there (a wrong bucket or prefix?)")
        log.info("local copy of %s: %s (%d file(s) copied)", self.location, dest, copied)

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
            sub = info.path[len(base) :].lstrip("/")
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
            selector = pafs.FileSelector(
                self._p(folder), allow_not_found=True, recursive=bool(folder)
            )
            for info in self.fs.get_file_info(selector):
                if info.type == pafs.FileType.File and _is_temp(info.base_name):
                    _quiet_delete(self.fs, info.path)
                    removed += 1
        return removed


def _quiet_delete(fs: object, path: str) -> None:
    with contextlib.suppress(OSError):  # FileNotFoundError included: already gone
        fs.delete_file(path)  # type: ignore[attr-defined]


def open_store(location: str | os.PathLike[str]) -> LocalStore | ArrowStore:
    """The store at ``location``: a folder for paths, pyarrow for URIs (decided here, once)."""
    return ArrowStore(str(location)) if is_uri(location) else LocalStore(location)


def handle(location: str | os.PathLike[str]) -> Path | str:
    """How callers hold a location: a folder as a Path, an object-store URI as its string."""
    return str(location) if is_uri(location) else local_path(location)


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
