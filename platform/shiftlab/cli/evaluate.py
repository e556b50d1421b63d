"""`shiftlab evaluate CHECKPOINT`: mIoU + artifacts on the checkpoint's val/test sets or a given set."""

from __future__ import annotations

import argparse
from pathlib import Path

from shiftlab.cli.common import IntermixedParser, add_spec_args, emit, spec_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint (default: its own val and test sets)",
        description=(
            "Evaluate a model folder (a run's best/ or last/). Writes predictions/<id>.png, "
            "per_class_iou.csv/.md, confusion.png, overlays/ and metrics.json per dataset under "
            "--out. Trailing key=value arguments override the checkpoint's config, e.g. "
            "evaluate.scales=[0.75,1,1.25] evaluate.flip=true."
        ),
    )
    p.add_argument(
        "checkpoint",
        help="model folder (a run's best/ or last/: model.safetensors, config.yaml, "
        "label_space.yaml, meta.json), a path or a URI such as s3://bucket/runs/x/best",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    add_spec_args(p, "evaluate this dataset instead")
    p.add_argument("--out", type=Path, help="output folder (default: CHECKPOINT/eval)")
    p.add_argument("--no-predictions", action="store_true", help="do not write prediction PNGs")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_evaluate)
    p.__class__ = IntermixedParser  # same state, intermixed positional parsing


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
