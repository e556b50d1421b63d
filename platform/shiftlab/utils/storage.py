"""Output locations: writable, and visible from every node of a multi-node cluster.

Run directories, generated datasets and checkpoints are written by many processes on many
nodes; a path that only the driver's node can see makes a multi-node run fail late and
confusingly, so it is refused up front. Object-store URIs (``s3://``, ``gs://``, ...) are shared
by construction; a POSIX path is probed: the driver writes a marker, a task pinned to each
node looks for it.
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

from shiftlab.utils.errors import ShiftlabError
from shiftlab.utils.ray_runtime import cluster_nodes
from shiftlab.utils.store import handle, open_store

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


def explain_os_error(
    path: str | os.PathLike[str], exc: OSError, what: str = "output location"
) -> StorageError:
    reason = _REASONS.get(exc.errno or 0, exc.strerror or str(exc))
    return StorageError(f"{what} {path}: cannot write ({reason})")


def check_writable(path: str | os.PathLike[str], what: str = "output location") -> Path | str:
    """Create ``path`` if needed and prove a file can be written there (an object store: a probe
    object written and deleted); a missing bucket, missing credentials, a read-only or full
    location fail here, naming it, before any work."""
    store = open_store(path)
    try:
        store.probe_writable()
    except OSError as exc:
        raise explain_os_error(path, exc, what) from None
    return handle(path)


def _sees_marker(marker: str) -> bool:
    return os.path.exists(marker)


def check_shared(path: str | os.PathLike[str], what: str = "output location") -> None:
    """In a multi-node Ray cluster, refuse a path that some alive node cannot see."""
    if open_store(path).copied_per_node:
        return  # an object store: every node reads the same objects
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

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
