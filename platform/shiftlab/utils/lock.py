"""A lock file that keeps concurrent callers from generating the same dataset twice (and the
processes of one node from copying the same remote dataset twice, `shiftlab.data.remote`).

Why a file and not a named Ray actor: the callers that race are sweep trials, separate
``shiftlab train`` drivers and ``ray job submit`` jobs. They do not always share one Ray cluster
(two laptops' drivers each start a local Ray), but they always share the filesystem the dataset
is written to, so the filesystem is the one place every caller can coordinate through. A file
also outlives a crashed owner in a way that can be detected, where a coordinator actor dies with
its cluster and takes its knowledge with it.

Protocol: ``os.open(path, O_CREAT | O_EXCL)`` creates the lock atomically (also on NFS v3+);
the owner writes ``{"pid", "host", "token"}`` into it and touches its mtime every
``heartbeat_s`` from a daemon thread. A waiter treats the lock as stale when the owner is on
this host and its pid is gone, or when the heartbeat is older than ``stale_after_s`` (an owner
on another node that died). A stale lock is renamed to a unique name before it is removed, so
two waiters that judge it stale at once cannot both break it: only one rename succeeds.

Correctness never depends on the lock: every file is written atomically and its bytes are a
function of the request, so two writers produce identical files. The lock only saves the work.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class FileLock:
    """An exclusive, cross-process, cross-node lock on ``path`` (re-entrant per instance: no)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        heartbeat_s: float = 5.0,
        stale_after_s: float = 120.0,
        poll_s: float = 0.2,
    ) -> None:
        self.path = Path(path)
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.poll_s = poll_s
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.waited = False  # True when another owner held the lock at first try

    # -- acquiring ----------------------------------------------------------------------
    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "token": self.token}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._beat, name=f"lock-heartbeat:{self.path.name}", daemon=True
        )
        self._thread.start()
        return True

    def acquire(self, timeout_s: float | None = None) -> None:
        """Block until the lock is ours; break it when its owner is gone."""
        start = time.monotonic()
        reported = False
        while not self.try_acquire():
            self.waited = True
            owner = self.owner()
            if self.is_stale(owner):
                self._break(owner)
                continue
            if not reported:
                log.info("waiting for %s (held by %s)", self.path, owner)
                reported = True
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise TimeoutError(f"{self.path}: still held by {owner} after {timeout_s:.0f} s")
            time.sleep(self.poll_s)

    def owner(self) -> dict | None:
        """The owner record, or None when the file is gone or being written."""
        try:
            text = self.path.read_text()
            info = json.loads(text)
            info["age_s"] = time.time() - self.path.stat().st_mtime
            return info
        except (FileNotFoundError, json.JSONDecodeError, OSError):
            return None

    def is_stale(self, owner: dict | None) -> bool:
        if owner is None:
            # Unreadable: just created (owner not written yet) or a truncated file left by a
            # crash between create and write. Only age can tell them apart.
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return False
            return age > self.stale_after_s
        if owner.get("host") == socket.gethostname() and not _pid_alive(int(owner.get("pid", -1))):
            return True
        return float(owner.get("age_s", 0.0)) > self.stale_after_s

    def _break(self, owner: dict | None) -> None:
        graveyard = self.path.with_name(f"{self.path.name}.stale.{uuid.uuid4().hex}")
        try:
            os.rename(self.path, graveyard)
        except FileNotFoundError:
            return  # someone else broke or released it
        try:
            moved = json.loads(graveyard.read_text())
        except (OSError, json.JSONDecodeError):
            moved = None
        if owner is not None and moved is not None and moved.get("token") != owner.get("token"):
            # Between our check and the rename a new owner took the lock: give it back.
            with contextlib.suppress(FileExistsError):
                os.link(graveyard, self.path)
        else:
            log.warning("broke stale lock %s (owner %s)", self.path, owner)
        graveyard.unlink(missing_ok=True)

    # -- holding ------------------------------------------------------------------------
    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        owner = self.owner()
        if owner is not None and owner.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
