"""`shiftlab compare`: the leaderboard of a sweep, read from MLflow."""

from __future__ import annotations

import argparse

from shiftlab.cli.common import json_line
from shiftlab.utils.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="leaderboard of a sweep: best first, mean ± std over seeds")
    p.add_argument(
        "sweep", help="a sweep run directory, or a sweep name (searched in --tracking-uri)"
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow store (default: the sweep's own, or sqlite:///runs/mlflow.db)",
    )
    p.add_argument("--metric", help="rank by this metric (default: the sweep's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from shiftlab.sweep.compare import load_leaderboard

    board = load_leaderboard(args.sweep, tracking_uri=args.tracking_uri, metric=args.metric)
    if args.json:
        json_line(board.to_dict(), default=str)
    else:
        if not board.rows:
            raise ConfigError(f"sweep {args.sweep}: no trial runs found")
        print(board.render())
    return 0
