"""The `shiftlab` command: one sub-command module per stage, each with ``add_parser``.

Every failure ends in one line and an exit code scripts can tell apart (`utils/errors.py`):
``shiftlab: error: <what, naming the file, key or path>``, also when the error happened inside
a Ray worker, trial or actor; a Ctrl-C or SIGTERM says what was kept and how to resume.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from types import FrameType

from shiftlab.utils.errors import (
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    Terminated,
    user_error_in,
    work_begins,
    work_started,
)
from shiftlab.utils.ray_runtime import begin_command
from shiftlab.utils.version import __version__

# Sub-command modules (shiftlab.cli.<name>); each defines add_parser(subparsers).
COMMANDS = (
    "config",
    "data",
    "score",
    "analyze",
    "generate",
    "train",
    "evaluate",
    "predict",
    "sweep",
    "compare",
    "demo",
    "ui",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shiftlab",
        description="Domain-adaptive semantic segmentation with synthetic data, on Ray.",
        epilog="Exit codes: 0 success, 1 a run failed while running, 2 a bad command line, "
        "3 a bad config or bad data found before any work started, 130/143 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"shiftlab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"shiftlab.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"shiftlab.cli.{name}":
                continue  # stage not built in this checkout
            raise
        module.add_parser(sub)
    return parser


_sigterm_received = False


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _sigterm_received
    _sigterm_received = True  # ray.get turns any exception raised here into KeyboardInterrupt
    raise Terminated()


def _interrupted(args: argparse.Namespace, exc: KeyboardInterrupt) -> int:
    terminated = isinstance(exc, Terminated) or _sigterm_received
    what = "terminated (SIGTERM)" if terminated else "interrupted"
    kept = getattr(args, "on_interrupt", None) or "files finished so far are kept"
    print(f"shiftlab: {what}: {kept}", file=sys.stderr)
    return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED


def _quiet_broken_pipe() -> int:
    """`shiftlab ... --json | head`: the reader went away; nothing to report."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # Python's final flush must not fail again
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # a bad command line exits 2 here
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    global _sigterm_received
    _sigterm_received = False
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    work_begins(False)  # one process may run several commands (tests, notebooks)
    begin_command()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        return _interrupted(args, exc)
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except Exception as exc:
        error = user_error_in(exc)
        if error is None:
            raise  # a bug: the traceback is what a report needs
        print(f"shiftlab: error: {error}", file=sys.stderr)
        return EXIT_FAILED if work_started() else EXIT_INPUT
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
