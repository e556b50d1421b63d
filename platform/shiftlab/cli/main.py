"""The `shiftlab` command: one sub-command module per stage, each with ``add_parser``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from shiftlab.utils.errors import ShiftlabError
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
    "sweep",
    "compare",
    "demo",
    "ui",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shiftlab",
        description="Domain-adaptive semantic segmentation with synthetic data, on Ray.",
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except ShiftlabError as exc:
        print(f"shiftlab: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
