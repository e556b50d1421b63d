"""Output locations: writable, and visible from every node of a multi-node cluster.

Run directories, generated datasets and checkpoints are written by many processes on many
nodes; a path that only the driver's node can see makes a multi-node run fail late and
confusingly, so it is refused up front. Object-store URIs (``s3://``, ``gs://``, ...) are shared
by construction; a POSIX path is probed: the driver writes a marker, a task pinned to each
node looks for it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path

from shiftlab.utils.errors import ShiftlabError
from shiftlab.utils.store import is_uri, local_path

_REASONS = {
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOTDIR: "a parent of it is a file, not a directory",
}


class StorageError(ShiftlabError):
    """An output location cannot be used; the message names it and says why."""


def explain_os_error(path: str | os.PathLike[str], exc: OSError, what: str = "output location") -> StorageError:
    reason = _REASONS.get(exc.errno or 0, exc.strerror or str(exc))
    return StorageError(f"{what} {path}: cannot write ({reason})")


def check_writable(path: str | os.PathLike[str], what: str = "output location") -> Path | str:
    """Create ``path`` if needed and prove a file can be written, synced and removed there.

    For an object-store URI a small probe object is written and deleted: a missing bucket,
    missing credentials or a read-only policy fail here, naming the URI, before any work.
    """
    if is_uri(path):
        _probe_uri(str(path), what)
        return str(path)
    target = local_path(path)
    probe = target / f".shiftlab-write-probe-{uuid.uuid4().hex}"
    try:
        target.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as fh:
            fh.write(b"\0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise explain_os_error(target, exc, what) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
    return target


def _probe_uri(uri: str, what: str) -> None:
    from shiftlab.utils.store import ArrowStore

    store = ArrowStore(uri)
    name = f".shiftlab-write-probe-{uuid.uuid4().hex}"
    try:
        store.write_bytes(name, b"probe")
    except OSError as exc:
        raise StorageError(f"{what} {uri}: cannot write ({exc})") from None
    store.delete(name)


def _sees_marker(marker: str) -> bool:
    return os.path.exists(marker)


def check_shared(path: str | os.PathLike[str], what: str = "output location") -> None:
    """In a multi-node Ray cluster, refuse a path that some alive node cannot see."""
    if is_uri(path):
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from shiftlab.utils.ray_runtime import cluster_nodes

    nodes = cluster_nodes()
    if len(nodes) < 2:
        return
    root = check_writable(path, what)
    marker = Path(root).resolve() / f".shiftlab-shared-probe-{uuid.uuid4().hex}"
    marker.write_text("probe")
    try:
        probe = ray.remote(num_cpus=0)(_sees_marker)
        refs = {
            n["NodeID"]: probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(str(marker))
            for n in nodes
        }
        blind = [node for node, ref in refs.items() if not ray.get(ref, timeout=120)]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise StorageError(
            f"{what} {path} is node-local: {len(blind)} of {len(nodes)} Ray nodes cannot see it "
            f"(node ids {', '.join(b[:8] for b in blind)}). Multi-node runs need shared storage: "
            "an NFS path mounted on every node, or an object-store URI such as s3://bucket/runs."
        )
