"""`shiftlab predict CHECKPOINT INPUT... --out DIR`: train ids, colours and overlays per image.

INPUT is image files, folders (searched recursively) or, with ``--data FORMAT ROOT``, a
dataset's images; outputs keep each input's path below its folder. Images that cannot be
decoded are named one warning line each and skipped (exit 1 at the end). A rerun skips every
image whose files all exist, so a killed run loses nothing it wrote. ``--num-workers N``
predicts on a Ray Data pool of N actors; the files are the same either way.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shiftlab.cli.common import IntermixedParser, add_spec_args, emit, spec_from_args

if TYPE_CHECKING:
    from shiftlab.evaluate.predict_run import ImageJob, PredictSummary

# `key.path=value` (a config override), told apart from an INPUT that exists as a path.
_OVERRIDE = re.compile(r"^[A-Za-z_][\w.-]*=")


def _count(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {minimum}")
        return value

    return parse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict images with a model folder (train ids, colours, overlays)",
        description=(
            "Predict images with a model folder (a run's best/ or last/) and its own evaluate "
            "settings. Writes trainids/<rel>.png (uint8 train ids), colour/<rel>.png and "
            "overlay/<rel>.png under --out, plus labelids/<rel>.png (Cityscapes labelIds, "
            "input names kept: the Cityscapes server's format) with --format cityscapes. "
            "Trailing key=value arguments override the checkpoint's config, e.g. "
            "evaluate.flip=true."
        ),
    )
    p.add_argument(
        "checkpoint",
        help="model folder (a run's best/ or last/: model.safetensors, config.yaml, "
        "label_space.yaml, meta.json), a path or a URI",
    )
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT|KEY=VALUE",
        help="image files, folders (searched recursively for .png .jpg .jpeg .webp) and "
        "config overrides",
    )
    p.add_argument("--out", required=True, help="output folder (created; reruns resume in it)")
    add_spec_args(p, "predict the images of this dataset instead of INPUT")
    p.add_argument(
        "--format",
        choices=("trainids", "cityscapes"),
        default="trainids",
        help="cityscapes: also labelids/ (Cityscapes labelIds) (default: trainids)",
    )
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument(
        "--batch-size",
        type=_count(1),
        help="same-size images per forward (default: the checkpoint's evaluate.batch_size)",
    )
    p.add_argument(
        "--num-workers",
        type=_count(0),
        default=0,
        help="N > 0: a Ray Data pool of N actors, each loading the model once (a GPU each "
        "where the cluster has GPUs); 0: predict in this process (default)",
    )
    p.add_argument("--address", help="with --num-workers: Ray address (default: RAY_ADDRESS)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_predict)
    p.__class__ = IntermixedParser  # same state, intermixed positional parsing


def split_positionals(items: list[str]) -> tuple[list[str], list[str]]:
    """(inputs, overrides): an existing path is an input, ``key=value`` otherwise an override."""
    inputs: list[str] = []
    overrides: list[str] = []
    for item in items:
        is_override = _OVERRIDE.match(item) is not None and not Path(item).exists()
        (overrides if is_override else inputs).append(item)
    return inputs, overrides


def _jobs(
    args: argparse.Namespace, inputs: list[str], out: Path, checkpoint: Path
) -> list[ImageJob]:
    from shiftlab.data.formats import open_dataset
    from shiftlab.evaluate.predict_run import jobs_from_dataset, jobs_from_paths
    from shiftlab.models.checkpoint import LABEL_SPACE_FILE
    from shiftlab.utils.errors import ConfigError

    if args.data and inputs:
        raise ConfigError(f"give INPUT paths or --data, not both (INPUT: {inputs[0]})")
    if args.data:
        spec = spec_from_args(args, str(checkpoint / LABEL_SPACE_FILE))
        if spec.format == "procedural":
            raise ConfigError("--data procedural: predict reads image files; render them first")
        return jobs_from_dataset(open_dataset(spec))
    if not inputs:
        raise ConfigError("nothing to predict: give image files or folders, or --data FORMAT ROOT")
    return jobs_from_paths(inputs, exclude=out)


def _summary_line(summary: PredictSummary) -> str:
    line = f"predicted {summary.written} image(s) into {summary.out}"
    if summary.already_done:
        line += f"; {summary.already_done} already predicted there, skipped"
    if summary.unreadable:
        line += f"; {len(summary.unreadable)} unreadable, skipped"
    return line


def run_predict(args: argparse.Namespace) -> int:
    from shiftlab.evaluate.predict_run import ModelRequest, predict_files
    from shiftlab.evaluate.predictor import OutputWriter, describe_model
    from shiftlab.utils.errors import ConfigError
    from shiftlab.utils.run_folder import RunFolder
    from shiftlab.utils.storage import check_writable

    checkpoint = RunFolder(args.checkpoint).pull("")  # a URI: this node's copy
    out = check_writable(args.out, "--out")  # before any work: say so now, not after
    if not isinstance(out, Path):
        raise ConfigError(f"--out {args.out}: predict writes to a folder, not object storage")
    inputs, overrides = split_positionals(args.inputs)
    cfg, space = describe_model(checkpoint, overrides)
    writer = OutputWriter(out, space, args.format)
    jobs = _jobs(args, inputs, out, checkpoint)
    request = ModelRequest(
        model_dir=str(checkpoint.resolve()),
        overrides=tuple(overrides),
        device=args.device,
        batch_size=args.batch_size or cfg.evaluate.batch_size,
        out=str(out.resolve()),
        format=args.format,
    )
    args.on_interrupt = (
        f"every image finished so far is kept in {out}; run the same command again to "
        "predict the rest (finished images are skipped)"
    )
    summary = predict_files(request, jobs, writer, args.num_workers, args.address, warn=_warn)
    emit(summary.to_dict(), args.json, _summary_line(summary))
    return 1 if summary.unreadable else 0


def _warn(message: str) -> None:
    print(f"shiftlab: warning: {message}", file=sys.stderr)
