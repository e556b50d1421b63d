"""`shiftlab evaluate CHECKPOINT`: mIoU + artifacts on the checkpoint's val/test sets or a given set."""

from __future__ import annotations

import argparse
from pathlib import Path

from shiftlab.cli.common import IntermixedParser, emit
from shiftlab.config.data import DatasetSpec
from shiftlab.data.formats import FORMATS
from shiftlab.utils.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint (default: its own val and test sets)",
        description=(
            "Evaluate a checkpoint directory. Writes predictions/<id>.png, per_class_iou.csv/.md, "
            "confusion.png, overlays/ and metrics.json per dataset under --out. Trailing key=value "
            "arguments override the checkpoint's config, e.g. evaluate.scales=[0.75,1,1.25] "
            "evaluate.flip=true."
        ),
    )
    p.add_argument(
        "checkpoint",
        help="checkpoint directory (state.pt + config.yaml), a path or a URI such as s3://bucket/runs/x/best",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument(
        "--data",
        nargs=2,
        metavar=("FORMAT", "ROOT"),
        help=f"evaluate this dataset instead ({', '.join(f for f in FORMATS if f != 'procedural')})",
    )
    p.add_argument("--split", default="val", help="with --data: split (default: val)")
    p.add_argument("--condition", help="with --data: ACDC condition or view/appearance")
    p.add_argument("--label-space", help="with --data: label space (default: the checkpoint's)")
    p.add_argument("--split-file", help="with --data: gta5 name list or split.mat")
    p.add_argument(
        "--unknown-to-ignore",
        action="store_true",
        help="with --data: unknown label values -> ignore",
    )
    p.add_argument("--name", help="with --data: display name (default FORMAT/SPLIT[/CONDITION])")
    p.add_argument("--out", type=Path, help="output folder (default: CHECKPOINT/eval)")
    p.add_argument("--no-predictions", action="store_true", help="do not write prediction PNGs")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_evaluate)
    p.__class__ = IntermixedParser  # same state, intermixed positional parsing


def spec_from_args(args: argparse.Namespace, default_label_space: str | None) -> DatasetSpec:
    fmt, root = args.data
    try:
        return DatasetSpec(
            format=fmt,
            root=root,
            split=args.split,
            condition=args.condition,
            label_space=args.label_space or default_label_space,
            split_file=args.split_file,
            unknown_to_ignore=args.unknown_to_ignore,
            name=args.name,
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigError(f"--data {fmt} {root}: {exc}") from None


def run_evaluate(args: argparse.Namespace) -> int:
    from shiftlab.evaluate.evaluator import evaluate_checkpoint
    from shiftlab.utils.run_folder import RunFolder
    from shiftlab.utils.storage import check_writable

    # On object storage: evaluate a local copy; its eval/ goes back next to it (unless --out).
    folder = RunFolder(args.checkpoint)
    args.checkpoint = folder.pull("")
    # Where the results go must take them: say so now, not after the inference.
    check_writable(args.out if args.out is not None else args.checkpoint / "eval", "--out")
    specs = None
    if args.data:
        from shiftlab.models.checkpoint import LABEL_SPACE_FILE

        specs = [spec_from_args(args, str(Path(args.checkpoint) / LABEL_SPACE_FILE))]
    results = evaluate_checkpoint(
        args.checkpoint,
        specs=specs,
        out_dir=args.out,
        save_predictions=not args.no_predictions,
        device=args.device,
        overrides=args.overrides,
    )
    out: Path | str = args.out
    if args.out is None:
        folder.publish("eval")
        out = folder.uri("eval")
    lines = []
    for name, r in results.items():
        lines.append(
            f"{name} [{r['role']}, split {r['split']}]: mIoU {r['miou']:.4f}  pixel accuracy {r['pixel_accuracy']:.4f}"
        )
        lines += [
            f"  {c:<16} {'-' if v is None else f'{v:.4f}'}" for c, v in r["per_class"].items()
        ]
    lines.append(f"artifacts: {out}")
    emit(results, args.json, "\n".join(lines))
    return 0
