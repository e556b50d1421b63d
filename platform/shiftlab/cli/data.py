"""`shiftlab data inspect` and `shiftlab data make-procedural`."""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from shiftlab.cli.common import add_dataset_args, emit, open_from_args
from shiftlab.data.formats import DatasetReader
from shiftlab.data.io import image_size, read_image
from shiftlab.utils.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="inspect datasets, render procedural scenes")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    inspect = data_sub.add_parser(
        "inspect", help="list samples, class pixels and unknown label values"
    )
    add_dataset_args(inspect)
    inspect.add_argument(
        "--verify",
        action="store_true",
        help="decode every image (every view) and label fully: finds truncated or corrupt files",
    )
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(func=run_inspect)

    proc = data_sub.add_parser("make-procedural", help="render procedural street scenes")
    proc.add_argument("out", type=Path)
    proc.add_argument("--layouts", type=int, default=32, help="train layouts")
    proc.add_argument("--val-layouts", type=int, default=None, help="default: max(1, layouts // 4)")
    proc.add_argument("--test-layouts", type=int, default=None, help="default: as many as val")
    proc.add_argument("--appearances", default="noon,sunset,night,fog,rain,snow")
    proc.add_argument("--size", default="256x512", help="HxW")
    proc.add_argument("--seed", type=int, default=0)
    proc.add_argument("--json", action="store_true")
    proc.set_defaults(func=run_make_procedural)


def verify_images(reader: DatasetReader) -> int:
    """Decode every image and view of every sample (labels are decoded by the statistics)."""
    paths = sorted({p for s in reader.samples() for p in (s.image, *s.views.values())})
    with ThreadPoolExecutor(max(1, min(16, os.cpu_count() or 1))) as pool:
        for _ in pool.map(read_image, paths):
            pass
    return len(paths)


def inspect_dataset(reader: DatasetReader, verify: bool = False) -> dict[str, Any]:
    class_pixels = np.zeros(256, dtype=np.int64)
    unknown: dict[int, int] = {}
    samples = reader.samples()
    decoded = verify_images(reader) if verify else None
    for sample in samples:
        if sample.label is None:
            image_size(sample.image)  # still checks the image is readable
            continue
        stats = reader.label_stats(sample)
        class_pixels += stats.class_pixels
        for value, count in stats.unknown_values.items():
            unknown[value] = unknown.get(value, 0) + count
    return {
        "format": reader.format,
        "root": str(reader.root),
        "split": reader.split,
        "condition": reader.condition,
        "label_space": reader.label_space.name,
        "class_names": list(reader.label_space.class_names),
        "num_samples": len(samples),
        "labelled": sum(s.label is not None for s in samples),
        "ids": [s.id for s in samples],
        "views": reader.view_names(),
        "class_pixels": {str(i): int(c) for i, c in enumerate(class_pixels) if c},
        "unknown_values": {str(v): int(c) for v, c in sorted(unknown.items())},
        "images_decoded": decoded,
    }


def run_inspect(args: argparse.Namespace) -> int:
    result = inspect_dataset(open_from_args(args), verify=args.verify)
    names = result["class_names"]
    lines = [
        f"{result['num_samples']} samples ({result['format']} {result['split']}), label space {result['label_space']}"
    ]
    for key, count in result["class_pixels"].items():
        name = "ignore" if key == "255" else names[int(key)]
        lines.append(f"  {key:>3} {name:<16} {count}")
    if result["unknown_values"]:
        lines.append(f"  unknown raw values: {result['unknown_values']}")
    emit(result, args.json, "\n".join(lines))
    return 0


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size {text!r}: expected HxW, e.g. 256x512") from None
    return h, w


def run_make_procedural(args: argparse.Namespace) -> int:
    from shiftlab.data.procedural import write_procedural

    appearances = [a.strip() for a in args.appearances.split(",") if a.strip()]
    summary = write_procedural(
        args.out,
        layouts=args.layouts,
        appearances=appearances,
        size=parse_size(args.size),
        seed=args.seed,
        val_layouts=args.val_layouts,
        test_layouts=args.test_layouts,
    )
    emit(summary, args.json, f"wrote procedural scenes to {args.out}: {summary}")
    return 0
