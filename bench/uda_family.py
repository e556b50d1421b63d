"""bench/train.py --part uda: DACS (DeepLabV3+) vs the DAFormer recipe vs MIC on a tiny SegFormer.

Procedural noon (labelled) -> night, the unlabelled night *train* split as target, as in
issue 16's procedural evidence. Every run goes through the same path as part (a)
(`method_comparison.run_one`: shiftlab's recipe on a `LocalSession`, one torch thread, two
runs side by side), validates on noon val every 2 epochs, stops after ``--patience``
validations without a gain of 0.002 and exports its best noon-val epoch: no target label is
read. Night test mIoU is reported; noon and fog test too.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import method_comparison as mc

SECTION = "## DAFormer family on procedural data (bench/train.py --part uda)"
LABELS = {
    "dacs": "DACS (ResNet-18 DeepLabV3+, experiments/demo_classmix.yaml)",
    "daformer": "DAFormer recipe (tiny SegFormer, experiments/demo_daformer.yaml)",
    "mic": "MIC(DAFormer) (tiny SegFormer, experiments/demo_mic.yaml)",
}
FILES = {"daformer": "demo_daformer.yaml", "mic": "demo_mic.yaml"}


def overrides(method: str, seed: int, args: argparse.Namespace, work: Path) -> tuple[str, list]:
    """(experiment file, overrides): part (a)'s sizes, validation, stopping and test sets."""
    if method == "dacs":
        file, ov = mc.overrides("classmix", "night", seed, args, work)
        return file, [*ov, f"name=uda_dacs_seed{seed}", f"train.epochs={args.uda_epochs}"]
    _, common = mc.overrides("source_only", None, seed, args, work)
    common = [o for o in common if not o.startswith(("name=", "train.epochs="))]
    return FILES[method], [
        *common,
        f"name=uda_{method}_seed{seed}",
        f"train.epochs={args.uda_epochs}",
        "train.select=val/noon_val/miou",
        "data.target_unlabelled={format: procedural, split: train, condition: night}",
        "method.target_view=night",
    ]


def run_all(args: argparse.Namespace, work: Path) -> tuple[list[dict[str, Any]], float]:
    os.environ["SHIFTLAB_CACHE_DIR"] = str(work / "cache")
    start = time.perf_counter()
    jobs = []
    for method in ("mic", "daformer", "dacs"):  # longest first: both processes end together
        for seed in args.a_seeds:
            file, ov = overrides(method, seed, args, work)
            jobs.append(
                {
                    "method": method,
                    "target": "night",
                    "seed": seed,
                    "file": file,
                    "overrides": ov,
                    "cache": str(work / "cache"),
                }
            )
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.parallel, mp_context=context) as pool:
        rows = list(pool.map(mc.run_one, jobs))
    return rows, time.perf_counter() - start


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| method | noon -> night test mIoU (%) | noon test (%) | fog test (%) |",
        "|---|---|---|---|",
    ]
    for method, label in LABELS.items():
        mine = [r for r in rows if r["method"] == method]
        if mine:
            cells = [mc._mean_std([r[c] for r in mine]) for c in ("night", "noon", "fog")]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def section(
    rows: list[dict[str, Any]], args: argparse.Namespace, total: float, cpu: str, when: str
) -> str:
    import torch

    means = {
        m: statistics.fmean(r["night"] for r in rows if r["method"] == m)
        for m in LABELS
        if any(r["method"] == m for r in rows)
    }
    ranking = " > ".join(
        f"{m} {100 * v:.2f}" for m, v in sorted(means.items(), key=lambda i: -i[1])
    )
    return f"""{SECTION}

**{when}, CPU** — {os.cpu_count()} CPU cores ({cpu}), no GPU; Python {platform.python_version()},
torch {torch.__version__}; load average at the start {", ".join(f"{v:.1f}" for v in args.load)}.
Command: `python bench/train.py {" ".join(args.argv)}`. Total wall time {total / 60:.1f} min
({args.parallel} trainings side by side, one torch thread each).

Settings: procedural noon (labelled, {args.layouts} train layouts) -> night (its unlabelled train
split as target), 64x128 px, random init everywhere (`pretrained: none`: no ImageNet weights on
this machine, so DAFormer's feature distance pulls towards the random initial encoder). Each run
validates on noon val every 2 epochs, stops after {args.patience} validations without a gain of
0.002 (cap {args.uda_epochs} epochs) and exports its best noon-val epoch; no run reads a target label.
Seeds {", ".join(map(str, args.a_seeds))}.

Test mIoU (%), mean ± sample std over seeds:

{table(rows)}

Night-test ranking of the means: {ranking}.

Convergence: each run's noon-val curve and plateau epoch:

{mc.per_run(rows)}
"""
