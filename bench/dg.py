"""Procedural domain generalisation: QueryDiff vs DeepLabV3+ source-only, CPU-sized.

Both models train on rendered *noon* street scenes only, choose their checkpoint on noon val,
and are tested on appearances they never saw (sunset, night, fog, rain, snow). Each run goes
through ``shiftlab.runner.run_experiment`` (Ray Train, 2 DDP workers, checkpoints, evaluation
of the selected model), over several seeds; the table reports mean +- sample std of test mIoU
per appearance and averaged over the five.

The two sides share data, crops, augmentation, optimiser (AdamW, poly), schedule, batch and
iterations; only ``model`` + ``method`` differ:

* ``querydiff``: ``experiments/querydiff_procedural_dg.yaml`` (tiny frozen ViT + Rein adapters,
  agent queries, tiny diffusion teacher, Mask2Former head);
* ``deeplabv3plus``: ResNet-18 DeepLabV3+ with per-pixel cross-entropy (``source_only``).

No weights exist on this machine, so both start from random initialisation, and QueryDiff's ViT
stays *frozen at random weights* (the method assumes DINOv2): the figures compare the pipelines at
toy scale, not the published methods.

    python bench/dg.py                       # 3 seeds, writes bench/RESULTS.md
    python bench/dg.py --seeds 0 --epochs 2  # quick look, nothing written (--no-write)

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from results_file import cpu_model, replace_section  # bench/ is sys.path[0] when run as a script

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = REPO / "experiments" / "querydiff_procedural_dg.yaml"
RESULTS = REPO / "bench" / "RESULTS.md"
SECTION = "## Domain generalisation (bench/dg.py)"
UNSEEN = ("sunset", "night", "fog", "rain", "snow")
DATE = "2026-11-22"

log = logging.getLogger("bench.dg")


def procedural(split: str, condition: str, args: argparse.Namespace, name: str) -> str:
    return (
        f"{{name: {name}, format: procedural, split: {split}, condition: {condition}, "
        f"layouts: {args.layouts}, size: [{args.size[0]}, {args.size[1]}]}}"
    )


def overrides(model: str, seed: int, args: argparse.Namespace, work: Path) -> list[str]:
    """Config overrides of the shipped QueryDiff experiment; ``deeplabv3plus`` swaps the model."""
    crop = f"[{args.crop}, {args.crop}]"
    tests = ", ".join(procedural("test", a, args, f"{a}_test") for a in UNSEEN)
    out = [
        f"name=dg_{model}_seed{seed}",
        f"seed={seed}",
        f"output_dir={work / 'runs'}",
        f"data.source={procedural('train', 'noon', args, 'noon_train')}",
        f"data.val=[{procedural('val', 'noon', args, 'noon_val')}]",
        f"data.test=[{tests}]",
        f"optim.lr={args.lr}",
        f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch_size}",
        "train.num_workers=2",
        "train.cpus_per_worker=0.49",
        f"train.augment.crop={crop}",
        f"train.validate_every={args.validate_every}",
        f"train.checkpoint_every={args.validate_every}",
        f"evaluate.window={crop}",
        "evaluate.window_stride=null",
        "evaluate.overlays=0",
        "tracking.enabled=false",
    ]
    if model == "deeplabv3plus":
        out += [
            "model={name: deeplabv3plus, backbone: resnet18, output_stride: 16, pretrained: none, "
            "decoder_channels: 64}",
            "method={name: source_only, source_view: noon}",
        ]
    return out


def run_one(model: str, seed: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from shiftlab.config import load_experiment
    from shiftlab.train.experiment import run_experiment

    cfg = load_experiment(EXPERIMENT, overrides(model, seed, args, work))
    start = time.perf_counter()
    summary = run_experiment(cfg)
    seconds = time.perf_counter() - start
    row = {
        "model": model,
        "seed": seed,
        "seconds": round(seconds, 1),
        "best_epoch": summary.get("best_epoch"),
        "noon_val": summary["val/noon_val/miou"],
        **{a: summary[f"test/{a}_test/miou"] for a in UNSEEN},
    }
    row["unseen_mean"] = statistics.fmean(row[a] for a in UNSEEN)
    log.info("%s seed %d: %s", model, seed, json.dumps(row))
    print(
        f"# {model} seed {seed}: unseen mean mIoU {row['unseen_mean']:.4f} "
        f"(noon val {row['noon_val']:.4f}), {seconds:.0f}s",
        flush=True,
    )
    return row


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(rows: list[dict[str, Any]], models: list[str]) -> dict[str, dict[str, list[float]]]:
    """{model: {column: [mean, std]}} over seeds, mIoU in percent."""
    columns = ["noon_val", *UNSEEN, "unseen_mean"]
    out: dict[str, dict[str, list[float]]] = {}
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        out[model] = {
            c: [round(100 * v, 2) for v in mean_std([r[c] for r in mine])] for c in columns
        }
    return out


def table(stats: dict[str, dict[str, list[float]]], models: list[str]) -> str:
    head = "| mIoU (%) | " + " | ".join(models) + " |"
    lines = [head, "|---|" + "---|" * len(models)]
    labels = {"noon_val": "noon val (seen)", "unseen_mean": "**mean of unseen**"}
    for c in ["noon_val", *UNSEEN, "unseen_mean"]:
        cells = [f"{stats[m][c][0]:.2f} ± {stats[m][c][1]:.2f}" for m in models]
        lines.append(f"| {labels.get(c, c + ' test')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    import torch

    return (
        f"{os.cpu_count()} CPU cores ({cpu_model()}), no GPU, shared with other jobs; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def section_text(
    stats: dict[str, dict[str, list[float]]],
    models: list[str],
    rows: list[dict[str, Any]],
    args: argparse.Namespace,
    total: float,
) -> str:
    per_seed = "\n".join(
        f"| {r['model']} | {r['seed']} | {100 * r['noon_val']:.2f} | "
        + " | ".join(f"{100 * r[a]:.2f}" for a in UNSEEN)
        + f" | {100 * r['unseen_mean']:.2f} | {r['best_epoch']} | {r['seconds']:.0f} |"
        for r in rows
    )
    qd, dl = stats["querydiff"]["unseen_mean"], stats["deeplabv3plus"]["unseen_mean"]
    gap = {m: stats[m]["noon_val"][0] - stats[m]["unseen_mean"][0] for m in models}
    steps = args.epochs * (args.layouts // (2 * args.batch_size))
    best = sorted({r["best_epoch"] for r in rows})
    load = ", ".join(f"{v:.1f}" for v in args.load)
    if best == [args.epochs]:
        still = "Every run selected its last epoch: both were still improving when they stopped."
    else:
        still = f"Selected epochs: {', '.join(map(str, best))} of {args.epochs}."
    settings = para(f"""
        Settings: procedural street scenes ({args.layouts} train / {args.layouts // 4} val /
        {args.layouts // 4} test layouts per appearance, {args.size[0]}x{args.size[1]} px);
        train on **noon** only, checkpoint chosen on noon val (every {args.validate_every}
        epochs), tested on the five unseen appearances. Both models: `run_experiment` (Ray
        Train, 2 DDP workers of 0.49 CPU and 1 thread each, evaluation of the selected
        checkpoint), batch {args.batch_size} per worker, {args.crop}x{args.crop} random crops
        + flip + colour jitter, AdamW lr {args.lr:g} wd 0.05 poly, {args.epochs} epochs =
        {steps} iterations, {args.crop}x{args.crop} slide-window evaluation; seeds
        {", ".join(map(str, args.seeds))} (the seed changes initialisation, data order and
        augmentation, not the scenes).""")
    summary = para(f"""Mean ± sample std over {len(args.seeds)} seeds; total wall time
        {total / 60:.1f} min (every run's Ray Train start-up and evaluation included, the local
        Ray's own start-up not). Unseen mean: querydiff {qd[0]:.2f} ± {qd[1]:.2f}, deeplabv3plus
        {dl[0]:.2f} ± {dl[1]:.2f}. Drop from noon val to the unseen mean: querydiff
        {gap["querydiff"]:.2f}, deeplabv3plus {gap["deeplabv3plus"]:.2f} points.""")
    reading = para(f"""Reading: a toy scale on purpose (minutes of CPU), and not the paper's
        setting. Neither model has pretrained weights here; QueryDiff's premise is a frozen
        *pretrained* DINOv2 and a pretrained SD-2 teacher, and both are random in this run, so
        only its adapters, queries and head learn on top of random ViT features. {still} These
        are {steps}-iteration models, so absolute mIoUs are low. {verdict(stats, gap)}""")
    header = para(f"""**{DATE}, CPU** — {machine()}; load average (1/5/15 min) at the start:
        {load}. Command: `{" ".join(["python bench/dg.py", *args.argv])}`.""")
    return f"""{SECTION}

{header}

{settings}
- querydiff: `experiments/querydiff_procedural_dg.yaml`: ViT depth 4 / width 64 frozen at
  **random** weights + Rein adapters, 16 agent queries, tiny random diffusion teacher at 32x32,
  3-layer Mask2Former head, set criterion + KL + Huber guidance.
- deeplabv3plus: ResNet-18 DeepLabV3+ (output stride 16, 64-channel decoder), random init,
  pixel cross-entropy (`source_only`).

{table(stats, models)}

{summary}

Per run (mIoU %):

| model | seed | noon val | {" | ".join(UNSEEN)} | unseen mean | best epoch | seconds |
|---|---|---|{"---|" * len(UNSEEN)}---|---|---|
{per_seed}

{reading}
"""


def para(text: str) -> str:
    """One Markdown paragraph, re-wrapped at 100 columns."""
    return textwrap.fill(" ".join(text.split()), width=100, break_on_hyphens=False)


def verdict(stats: dict[str, dict[str, list[float]]], gap: dict[str, float]) -> str:
    """One sentence read off the figures (whichever way they went)."""

    def lead(column: str) -> tuple[str, str, float]:
        a, b = sorted(stats, key=lambda m: -stats[m][column][0])
        return a, b, stats[a][column][0] - stats[b][column][0]

    seen, _, seen_by = lead("noon_val")
    unseen, other, unseen_by = lead("unseen_mean")
    spread = max(stats[unseen]["unseen_mean"][1], stats[other]["unseen_mean"][1])
    steady, loose = sorted(gap, key=gap.get)
    return (
        f"On this budget {seen} fits noon better (+{seen_by:.2f} points), {unseen} is ahead on "
        f"the unseen mean by {unseen_by:.2f} points (largest seed std {spread:.2f}), and "
        f"{steady} loses less from seen to unseen appearances ({gap[steady]:.2f} vs "
        f"{gap[loose]:.2f} points)."
    )


def write_section(text: str) -> None:
    replace_section(SECTION, text, RESULTS)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--models",
        nargs="+",
        default=["querydiff", "deeplabv3plus"],
        choices=["querydiff", "deeplabv3plus"],
    )
    p.add_argument("--layouts", type=int, default=64, help="train layouts (val/test: a quarter)")
    p.add_argument("--size", type=int, nargs=2, default=[64, 128], metavar=("H", "W"))
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--validate-every", type=int, default=4)
    p.add_argument("--work", type=Path, default=None, help="run folder (default: a temp dir)")
    p.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = p.parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import torch

    from shiftlab.utils.ray_runtime import connect

    torch.set_num_threads(1)  # the driver only evaluates; the workers use the cores
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="shiftlab-bench-dg-")
        args.work = Path(tmp.name)
    os.environ.setdefault("SHIFTLAB_CACHE_DIR", str(args.work / "cache"))
    connect(num_cpus=2, log_to_driver=False)

    args.load = os.getloadavg()
    start = time.perf_counter()
    rows = [run_one(m, s, args, args.work) for s in args.seeds for m in args.models]
    total = time.perf_counter() - start
    stats = aggregate(rows, args.models)
    print(table(stats, args.models))
    print(f"# total {total / 60:.1f} min")
    if not args.no_write and set(args.models) == {"querydiff", "deeplabv3plus"}:
        write_section(section_text(stats, args.models, rows, args, total))
        print(f"# wrote {RESULTS.relative_to(REPO)} ({SECTION[3:]})")
    result = {
        "benchmark": "dg",
        "date": DATE,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "iterations": args.epochs * (args.layouts // (2 * args.batch_size)),
        "total_seconds": round(total, 1),
        "miou_percent_mean_std": stats,
        "runs": rows,
    }
    if tmp is not None:
        tmp.cleanup()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
