"""A run's directory, on a folder or on object storage.

Training, evaluation and sweeps write ordinary files (``config.yaml``, ``best/``, ``eval/``,
``sweep.json``) with ordinary file APIs into ``path()``: the folder itself, or this node's
working copy of a URI (`Store.working_dir`). A process *publishes* what it finished (a file or
a whole sub-folder, each file whole) and *pulls* what another node published; both are
no-ops on a folder. Ray Train checkpoints and Tune state do not pass through here: Ray writes
them to URIs itself (``storage_path``).
"""

from __future__ import annotations

import os
from pathlib import Path

from shiftlab.utils.store import join, open_store


class RunFolder:
    def __init__(self, location: str | os.PathLike[str]) -> None:
        self.store = open_store(location)
        self.location = self.store.location
        self.local = self.store.working_dir("runs")

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
        self.store.publish(rel, self.local)

    def pull(self, rel: str) -> Path:
        """Copy ``rel`` (file or folder) from the run's location into the local copy."""
        self.store.pull(rel, self.local)
        return self.path(rel)

    def exists(self, rel: str) -> bool:
        return self.store.is_file(rel)
