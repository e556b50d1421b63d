"""Error types whose messages name the file, key or sample at fault, and what they exit with.

The command line maps every failure to one line and an exit code scripts can tell apart:
0 success, 1 a run that failed while running, 2 a bad command line (argparse), 3 a bad config
or bad data found before any work started, 130 / 143 interrupted (Ctrl-C / SIGTERM).
"""

from __future__ import annotations

from collections.abc import Iterator

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INPUT = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143

_work: dict[str, bool] = {"started": False}


class ShiftlabError(Exception):
    """Base class: the CLI prints these as one ``shiftlab: error:`` line."""


class ConfigError(ShiftlabError):
    """A config file or override is invalid; the message names the file and the key."""


class DataError(ShiftlabError):
    """A dataset is malformed; the message names the file or sample."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so both end a run the same (checkpoints kept,
    MLflow run KILLED)."""


def work_begins(started: bool = True) -> None:
    """From here on a failure is one of a run, not of its input (exit 1, not 3);
    ``work_begins(False)``: a new command starts, nothing of it has run yet."""
    _work["started"] = started


def work_started() -> bool:
    return _work["started"]


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it carries: Python's chain, Ray's task errors (``cause``),
    Ray Train's per-worker failures (``worker_failures``), Tune's trial errors."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for attr in ("cause", "controller_failure", "__cause__", "__context__"):
            inner = getattr(current, attr, None)
            if isinstance(inner, BaseException):
                todo.append(inner)
        failures = getattr(current, "worker_failures", None)
        if isinstance(failures, dict):
            todo.extend(e for e in failures.values() if isinstance(e, BaseException))


def user_error_in(exc: BaseException) -> ShiftlabError | None:
    """The shiftlab error an exception from Ray (a worker, a trial, an actor) carries, if any."""
    return next((e for e in _causes(exc) if isinstance(e, ShiftlabError)), None)
