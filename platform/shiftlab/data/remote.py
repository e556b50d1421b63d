"""Datasets on object storage, read through a node-local copy.

Readers, PIL and torch want files, so a dataset root given as a URI (``s3://bucket/gen/<key>``)
is copied once per node into ``<SHIFTLAB_CACHE_DIR>/remote/datasets/<name>-<hash>/`` and read
from there: the usual "sync the bucket to local NVMe" step of a cluster job, done by the
process that needs it (a DDP worker on a node where no copy exists yet, or a driver).

Files already present with the remote size are kept: a generated set's files are named by its
cache key and never change, and source datasets are not edited in place. A generated set's
``dataset.json`` (the list of complete modes) is copied last, so a local copy never claims a
mode whose files it lacks; when the remote ``dataset.json`` equals the local one nothing is
listed at all. Processes of one node share the copy under a lock file.
"""

from __future__ import annotations

import logging
from pathlib import Path

from shiftlab.data.formats.shiftlab_dir import META_FILE
from shiftlab.utils.atomic import write_bytes
from shiftlab.utils.errors import DataError
from shiftlab.utils.lock import FileLock
from shiftlab.utils.store import ArrowStore, download_tree, local_copy_dir

log = logging.getLogger(__name__)



def local_dataset_copy(uri: str) -> Path:
    """A node-local folder holding every file of the dataset at ``uri`` (copied when missing)."""
    store = ArrowStore(uri)
    dest = local_copy_dir(store.location, "datasets")
    try:
        remote_meta = store.read_bytes(META_FILE) if store.is_file(META_FILE) else None
    except OSError as exc:
        raise DataError(f"{uri}: cannot read the dataset ({exc})") from None
    local_meta = dest / META_FILE

    def up_to_date() -> bool:
        return remote_meta is not None and local_meta.is_file() and local_meta.read_bytes() == remote_meta

    if up_to_date():
        return dest
    with FileLock(dest.with_name(dest.name + ".lock")):
        if up_to_date():
            return dest  # another process of this node copied it while we waited
        try:
            copied = download_tree(store, dest, skip_same_size=True, exclude={META_FILE})
        except OSError as exc:
            raise DataError(f"{uri}: copying the dataset to {dest} failed ({exc})") from None
        if remote_meta is not None:
            write_bytes(local_meta, remote_meta)
        if not dest.is_dir():
            raise DataError(f"{uri}: no files there (a wrong bucket or prefix?)")
    log.info("local copy of %s: %s (%d file(s) copied)", uri, dest, copied)
    return dest
