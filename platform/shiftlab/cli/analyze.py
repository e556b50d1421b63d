"""`shiftlab analyze A B`: the domain gap between two dataset splits (colour and class statistics)."""

from __future__ import annotations

import argparse
from pathlib import Path

from shiftlab.cli.common import emit


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="domain gap between two datasets: RGB mean/std, class shares, absent classes",
        description=(
            "Compare two dataset splits given as FORMAT:ROOT[:SPLIT[:CONDITION]], e.g. "
            "falcon:/data/falcon:train falcon:/data/falcon:test. Writes domain_gap.json and "
            "domain_gap.png to --out."
        ),
    )
    p.add_argument("a", help="reference dataset FORMAT:ROOT[:SPLIT[:CONDITION]] (e.g. the source)")
    p.add_argument("b", help="compared dataset FORMAT:ROOT[:SPLIT[:CONDITION]] (e.g. the target)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--label-space", help="label space for both (default: each format's own)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_analyze)


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.1f}" for v in values) + "]"


def run_analyze(args: argparse.Namespace) -> int:
    from shiftlab.evaluate.domain_gap import DatasetRef, analyze_domain_gap, write_domain_gap
    from shiftlab.utils.storage import check_writable

    check_writable(args.out, "--out")  # before reading two datasets
    ref_a, ref_b = DatasetRef.parse(args.a), DatasetRef.parse(args.b)
    result = analyze_domain_gap(
        ref_a.open(args.label_space), ref_b.open(args.label_space), str(ref_a), str(ref_b)
    )
    paths = write_domain_gap(result, args.out)
    a, b = result["a"], result["b"]
    lines = [
        f"A {a['ref']}: {a['num_images']} images, RGB mean {_fmt(a['rgb_mean'])} std {_fmt(a['rgb_std'])}",
        f"B {b['ref']}: {b['num_images']} images, RGB mean {_fmt(b['rgb_mean'])} std {_fmt(b['rgb_std'])}",
        f"RGB mean shift (B - A): {_fmt(result['rgb_mean_shift'])}",
    ]
    if "class_share_shift" in result:
        lines.append(f"{'class':<16} {'A %':>7} {'B %':>7} {'B - A':>7}")
        for n in result["class_names"]:
            sa, sb = 100 * a["class_share"][n], 100 * b["class_share"][n]
            lines.append(f"{n:<16} {sa:7.2f} {sb:7.2f} {sb - sa:+7.2f}")
        lines.append(
            f"absent in A: {result['absent_in_a'] or '-'}; absent in B: {result['absent_in_b'] or '-'}"
        )
    lines.append(f"wrote {paths['json']} and {paths['png']}")
    emit(result, args.json, "\n".join(lines))
    return 0
