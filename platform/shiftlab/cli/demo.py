"""`shiftlab demo`: a source-only reference, then a 4-trial adaptation sweep, and the comparison."""

from __future__ import annotations

import argparse

from shiftlab.cli.common import IntermixedParser, json_line


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the embedded demo: reference, night edits, a 4-trial sweep, the table (minutes, CPU only)",
        description="Runs experiments/demo_source_only.yaml (the reference), then sweeps "
        "experiments/demo.yaml over search_spaces/demo.yaml, fine-tuning from the reference, "
        "and prints each configuration's night test mIoU next to the reference's.",
    )
    p.add_argument("overrides", nargs="*", help="key=value overrides of both demo experiments")
    p.add_argument("--out", default="runs/demo", help="output folder (default: ./runs/demo)")
    p.add_argument("--tracking-uri", help="MLflow store (default: sqlite:///<out>/mlflow.db)")
    p.add_argument(
        "--max-concurrent", type=int, help="at most this many trials at once (default: what fits)"
    )
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    p.__class__ = IntermixedParser
    p.set_defaults(func=run_demo_cmd)


def run_demo_cmd(args: argparse.Namespace) -> int:
    from shiftlab.sweep.demo import render_table, run_demo, ui_instructions

    result = run_demo(
        args.out,
        tracking_uri=args.tracking_uri,
        overrides=args.overrides,
        max_concurrent=args.max_concurrent,
        address=args.address,
    )
    outcome = result.sweep
    print(outcome.board.render())
    print()
    print(render_table(result))
    print(f"\ndemo finished in {result.seconds / 60:.1f} min; sweep run dir: {outcome.run_dir}")
    if outcome.errors:
        print(f"{outcome.errors} of {outcome.trials} trial(s) failed")
    print(ui_instructions(outcome))
    if args.json:
        json_line(result.to_dict(), default=str)
    return 1 if outcome.errors else 0
