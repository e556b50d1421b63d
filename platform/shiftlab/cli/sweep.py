"""`shiftlab sweep`: a Ray Tune sweep over an experiment, every trial a nested MLflow run."""

from __future__ import annotations

import argparse

from shiftlab.cli.common import IntermixedParser
from shiftlab.utils.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="sweep an experiment over a search space with Ray Tune (or --resume RUN_DIR)",
        description=(
            "Runs generate -> train -> evaluate for every trial of a search space. Each trial is "
            "a nested MLflow run under one parent run per sweep; the leaderboard is printed at the end."
        ),
    )
    p.add_argument("experiment", nargs="?", help="experiment YAML")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the experiment")
    p.add_argument("--space", help="search space YAML (search_spaces/*.yaml)")
    p.add_argument(
        "--num-samples",
        type=int,
        help="samples of the non-grid parameters (default: the space's, else 1)",
    )
    p.add_argument(
        "--scheduler", choices=("fifo", "asha"), default="fifo", help="asha stops weak trials early"
    )
    p.add_argument("--search", choices=("random", "optuna"), default="random")
    p.add_argument(
        "--max-concurrent", type=int, help="at most this many trials at once (default: what fits)"
    )
    p.add_argument("--name", help="sweep name (default: <experiment>-<space>-<time>)")
    p.add_argument("--tracking-uri", help="MLflow store: sqlite:///path.db or http://host:port")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted sweep")
    p.__class__ = IntermixedParser
    p.set_defaults(func=run_sweep_cmd)


def _resume_hint(location: str) -> str:
    return (
        f"finished trials are kept (in {location} and MLflow); continue with: "
        f"shiftlab sweep --resume {location}"
    )


def run_sweep_cmd(args: argparse.Namespace) -> int:
    from shiftlab.sweep.driver import SweepOptions, execute, prepare_sweep, resume_sweep

    if args.resume:
        if args.experiment or args.space:
            raise ConfigError(
                "--resume RUN_DIR takes no experiment or --space (they are in the run dir)"
            )
        args.on_interrupt = _resume_hint(args.resume)
        outcome = resume_sweep(args.resume, address=args.address)
    else:
        if not args.experiment or not args.space:
            raise ConfigError("usage: shiftlab sweep EXPERIMENT --space SPACE.yaml [key=value ...]")
        options = SweepOptions(
            num_samples=args.num_samples,
            scheduler=args.scheduler,
            search=args.search,
            max_concurrent=args.max_concurrent,
            name=args.name,
            tracking_uri=args.tracking_uri,
            address=args.address,
        )
        state = prepare_sweep(args.experiment, args.space, list(args.overrides), options)
        args.on_interrupt = _resume_hint(state.location)
        outcome = execute(state)
    print(outcome.board.render())
    print(f"\nsweep run dir: {outcome.location or outcome.run_dir}")
    print(f"MLflow: {outcome.tracking_uri} (parent run {outcome.parent_run_id})")
    if outcome.errors:
        print(f"{outcome.errors} of {outcome.trials} trial(s) failed")
    return 1 if outcome.errors and outcome.errors == outcome.trials else 0
