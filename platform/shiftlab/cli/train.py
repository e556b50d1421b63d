"""`shiftlab train EXPERIMENT [key=value ...]`: generate, train on Ray Train, evaluate."""

from __future__ import annotations

import argparse
from pathlib import Path

from shiftlab.cli.common import json_line


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="run one experiment: generate (if configured), train on Ray Train, evaluate",
        description="Train the experiment's method with DDP workers on Ray Train; the model "
        "chosen on the validation sets is saved to <output_dir>/<name>/best and scored on "
        "the val and test sets. Re-running an interrupted experiment resumes it.",
    )
    p.add_argument("experiment", type=Path, help="experiment YAML file")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=2"
    )
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite under output_dir)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from shiftlab.config import load_experiment
    from shiftlab.train.experiment import run_experiment

    overrides = list(args.overrides)
    if args.tracking_uri:
        overrides.append(f"tracking.tracking_uri={args.tracking_uri}")
    if args.address:
        overrides.append(f"ray.address={args.address}")
    cfg = load_experiment(args.experiment, overrides)
    args.on_interrupt = (
        f"the run folder {cfg.run_folder.location} keeps every checkpoint written; run the same "
        "command again to continue from the last one (the same MLflow run, marked KILLED now)"
    )
    summary = run_experiment(cfg)
    if args.json:
        json_line(summary)
    else:
        for key, value in summary.items():
            shown = f"{value:.4f}" if isinstance(value, float) else value
            print(f"{key}: {shown}")
    return 0
