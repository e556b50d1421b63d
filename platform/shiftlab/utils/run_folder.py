"""A run's directory, on a folder or on object storage.

Training, evaluation and sweeps write ordinary files (``config.yaml``, ``best/``, ``eval/``,
``sweep.json``) with ordinary file APIs. When the run's location is a folder (local disk,
NFS) they write there directly. When it is a URI (``s3://bucket/runs/<name>``) each process
writes into its node-local working copy (`local_copy_dir`) and *publishes* what it finished
(a file or a whole sub-folder, each file whole) to the URI; a process that needs files
another node wrote *pulls* them first. Ray Train checkpoints and Tune state do not pass
through here: Ray writes them to URIs itself (``storage_path``).
"""

from __future__ import annotations

import os
from pathlib import Path

from shiftlab.utils.atomic import write_bytes
from shiftlab.utils.store import (
    ArrowStore,
    download_tree,
    is_uri,
    join,
    local_copy_dir,
    local_path,
    upload_tree,
)


class RunFolder:
    def __init__(self, location: str | os.PathLike[str]) -> None:
        text = str(location)
        self.remote: ArrowStore | None = ArrowStore(text) if is_uri(text) else None
        if self.remote is not None:
            self.location = self.remote.location
            self.local = local_copy_dir(self.location, "runs")
        else:
            self.local = local_path(text).absolute()
            self.location = str(self.local)

    def __repr__(self) -> str:
        return f"RunFolder({self.location!r})"

    def path(self, rel: str = "") -> Path:
        """The local file or folder to write (or read after `pull`)."""
        return self.local / rel if rel else self.local

    def uri(self, rel: str = "") -> str:
        """Where ``rel`` lives for everyone (the URI, or the local path)."""
        return join(self.location, rel) if rel else self.location

    def publish(self, rel: str) -> None:
        """Make the local file or folder ``rel`` visible at the run's location."""
        if self.remote is None:
            return
        source = self.path(rel)
        if source.is_dir():
            upload_tree(source, self.remote, rel)
        elif source.is_file():
            self.remote.write_bytes(rel, source.read_bytes())

    def pull(self, rel: str) -> Path:
        """Copy ``rel`` (file or folder) from the run's location into the local copy."""
        if self.remote is not None:
            if self.remote.is_file(rel):
                write_bytes(self.path(rel), self.remote.read_bytes(rel))
            else:
                download_tree(self.remote, self.path(rel), rel)
        return self.path(rel)

    def exists(self, rel: str) -> bool:
        if self.remote is not None:
            return self.remote.is_file(rel)
        return self.path(rel).is_file()
