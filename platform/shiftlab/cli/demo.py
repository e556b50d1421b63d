"""`shiftlab demo`: procedural scenes -> generation -> a 4-trial sweep -> comparison table."""

from __future__ import annotations

import argparse

from shiftlab.cli.sweep import IntermixedParser


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the embedded demo: generate night images, sweep 4 trials, compare (minutes, CPU only)",
    )
    p.add_argument("overrides", nargs="*", help="key=value overrides of the demo experiment")
    p.add_argument("--out", default="runs/demo", help="output folder (default: ./runs/demo)")
    p.add_argument("--tracking-uri", help="MLflow store (default: sqlite:///<out>/mlflow.db)")
    p.add_argument("--max-concurrent", type=int, help="at most this many trials at once (default: what fits)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.__class__ = IntermixedParser
    p.set_defaults(func=run_demo_cmd)


def run_demo_cmd(args: argparse.Namespace) -> int:
    from shiftlab.sweep.demo import run_demo, ui_instructions

    outcome, seconds = run_demo(
        args.out, tracking_uri=args.tracking_uri, overrides=args.overrides,
        max_concurrent=args.max_concurrent, address=args.address,
    )
    print(outcome.board.render())
    print(f"\ndemo finished in {seconds / 60:.1f} min; sweep run dir: {outcome.run_dir}")
    if outcome.errors:
        print(f"{outcome.errors} of {outcome.trials} trial(s) failed")
    print(ui_instructions(outcome, outcome.state.mlflow_experiment_id if outcome.state else None))
    return 1 if outcome.errors else 0
