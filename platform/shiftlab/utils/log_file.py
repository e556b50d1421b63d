"""A run's log file: everything the driver logs, Ray's own INFO lines included.

The console shows shiftlab's progress and results (`ray_runtime.quiet_ray_console`); the
file under the run folder keeps the rest for when something needs explaining. Ray's worker
and system logs stay in Ray's session folder (``/tmp/ray/session_latest/logs``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FILE = "shiftlab.log"  # in a run folder


@contextmanager
def log_file(path: Path) -> Iterator[Path]:
    """Append this block's log records to ``path`` (created with its folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    # Ray's logger does not propagate to the root logger, nor does shiftlab's in a Ray worker
    # (`worker_console`): those get the handler too.
    named = [logging.getLogger(n) for n in ("ray", "shiftlab")]
    loggers = [logging.getLogger(), *(lg for lg in named if not lg.propagate)]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield path
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()


def worker_console(level: int) -> None:
    """In a Ray worker: shiftlab's lines (progress, epochs) at the driver's level on stderr,
    which Ray forwards to the driver's console; Python's default would drop INFO."""
    logger = logging.getLogger("shiftlab")
    logger.setLevel(level)
    if not any(getattr(h, "shiftlab_console", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.shiftlab_console = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False  # not twice when the worker's root logger prints too
