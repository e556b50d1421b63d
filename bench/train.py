"""Training benchmarks.

(b) *Ray Train overhead*: shiftlab's training recipe (the same model, data, batches, optimizer
    steps and per-epoch checkpoints) run two ways, in alternating order, ``--repeats`` times:

    - ``plain``: the recipe as a plain PyTorch loop in this process (``LocalSession``);
    - ``ray_train``: the recipe in a Ray Train worker (``run_training``, one worker).

    Each run's wall time is split with the recipe's own timings into start-up (processes,
    imports, process group, model build: everything that is not an epoch), time per
    optimizer step, and checkpointing per epoch (saving the state and handing it to the
    session; Ray Train copies it into its storage). Medians are reported; Ray start-up
    (``ray.init``) apart. The per-step ratio is Ray Train's steady-state cost, the start-up
    difference its fixed cost, which shrinks relative to longer runs.

(a) *method comparison at convergence* (`method_comparison.py`): procedural noon -> night and
    noon -> fog; source-only vs SDGPA (photometric editor) vs feature alignment (other
    appearances only) vs ClassMix (unlabelled target train split), each trained until its noon
    (source) validation mIoU stops improving; target-test mIoU mean +- std over seeds, with
    every run's validation curve, written to bench/RESULTS.md.

The last line printed is one JSON object with every figure.

    python bench/train.py --part a                          # 3 seeds, ~90 min on 2 CPU cores
    python bench/train.py --part a --seeds 0 --layouts 32 --no-write   # quick look
    python bench/train.py --part a --resume old.log   # keep the runs a killed bench finished
    python bench/train.py --part b                          # CPU default workload
    python bench/train.py --part b --steps 400 --size 256x512 --backbone resnet50
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
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from results_file import cpu_model, replace_section  # bench/ is sys.path[0] when run as a script

log = logging.getLogger("bench.train")

LABEL_IDS = np.array([7, 8, 11, 21, 23, 26], dtype=np.uint8)  # road sidewalk building veg sky car


def make_aligned(root: Path, n: int, h: int, w: int, seed: int = 0) -> Path:
    """An ``aligned`` train split of ``n`` blocky scenes (labels are Cityscapes labelIds)."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (len(LABEL_IDS), 3))
    for k in range(n):
        blocks = rng.integers(0, len(LABEL_IDS), (max(h // 16, 1), max(w // 16, 1)))
        idx = np.kron(blocks, np.ones((16, 16), dtype=np.int64))[:h, :w]
        img = np.clip(palette[idx] + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        for rel, arr in (
            (f"images/noon/train/{k:05d}.png", img),
            (f"labels/train/{k:05d}.png", LABEL_IDS[idx]),
        ):
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
    return root


def bench_config(args: argparse.Namespace, data_root: Path, out: Path, name: str) -> Any:
    from shiftlab.config.loader import validate_dict

    h, w = args.hw
    epochs = max(1, args.epochs)
    return validate_dict(
        {
            "name": name,
            "seed": 0,
            "output_dir": str(out),
            "data": {"source": {"format": "aligned", "root": str(data_root), "condition": "noon"}},
            "model": {
                "name": "deeplabv3plus",
                "backbone": args.backbone,
                "output_stride": 16,
                "pretrained": "none",
            },
            "method": {"name": "source_only"},
            "optim": {"lr": 0.01},
            "train": {
                "epochs": epochs,
                "batch_size": args.batch_size,
                "iters_per_epoch": max(1, args.steps // epochs),
                "num_workers": 1,
                "cpus_per_worker": float(args.threads),
                "torch_threads": args.threads,
                "use_gpu": args.device == "cuda",
                "max_failures": 0,
                "augment": {"crop": [h, w]},
            },
            "tracking": {"enabled": False},
        },
        "bench/train.py",
    )


def local_recipe(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """The baseline: shiftlab's recipe as a plain PyTorch loop in this process (`LocalSession`),
    the very code a Ray Train worker runs, checkpoints included."""
    import torch

    from shiftlab.train.recipe import Recipe
    from shiftlab.train.session import LocalSession
    from shiftlab.utils.run_folder import RunFolder

    torch.set_num_threads(cfg.train.torch_threads or 1)
    session = LocalSession(run_dir / "checkpoint", device=_device(cfg))
    recipe = Recipe(cfg, session, run=RunFolder(run_dir))
    recipe.setup()
    summary = recipe.run()
    return {"timings": summary["timings"], "loss": session.reports[-1]["train/loss"]}


def _device(cfg: Any) -> str:
    return "cuda" if cfg.train.use_gpu else "cpu"


def ray_recipe(cfg: Any) -> dict[str, Any]:
    """The same recipe on Ray Train: ``run_training`` with one worker."""
    from shiftlab.train import run_training

    result = run_training(cfg)
    return {"timings": result.timings, "loss": result.metrics["train/loss"]}


def _split(wall: float, timings: dict[str, list[float]], steps: int) -> dict[str, float]:
    """Wall time split into start-up (everything before and between epochs that is not
    training, validation or checkpointing), per-step time and checkpoint time."""
    train = sum(timings["epoch"])
    checkpoint = sum(timings["checkpoint"])
    return {
        "wall_s": wall,
        "startup_s": wall - train - checkpoint - sum(timings["validation"]),
        "train_s": train,
        "step_ms": 1000.0 * train / max(steps, 1),
        "checkpoint_s_per_epoch": checkpoint / max(len(timings["checkpoint"]), 1),
        "checkpoint_pct_of_epoch": 100.0 * checkpoint / max(train, 1e-9),
    }


def _median_split(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def part_b(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    h, w = args.hw
    # Enough scenes for every step of an epoch to see new images.
    n = max(16, -(-args.steps // max(1, args.epochs)) * args.batch_size)
    data_root = make_aligned(work / "data", n, h, w)
    cfg = bench_config(args, data_root, work / "runs", "bench-train-b")
    steps = cfg.train.epochs * (cfg.train.iters_per_epoch or 0)

    # Warm the page cache and imports once so neither side pays for first reads.
    from shiftlab.data.formats import open_dataset
    from shiftlab.utils.ray_runtime import connect

    reader = open_dataset(cfg.data.source)
    for s in reader.samples():
        reader.read_image(s)
    t = time.perf_counter()
    connect(num_cpus=max(int(args.threads), 1) + 1)
    ray_init_s = time.perf_counter() - t

    runs: dict[str, list[dict[str, float]]] = {"plain": [], "ray_train": []}
    losses: dict[str, float] = {}
    # Alternating order, so that load from elsewhere on a shared machine hits both sides alike.
    for rep in range(args.repeats):
        order = ("plain", "ray_train") if rep % 2 == 0 else ("ray_train", "plain")
        for side in order:
            rep_cfg = cfg.model_copy(update={"name": f"bench-b-{side}-{rep}"})
            t = time.perf_counter()
            out = (
                local_recipe(rep_cfg, work / "runs" / rep_cfg.name)
                if side == "plain"
                else ray_recipe(rep_cfg)
            )
            runs[side].append(_split(time.perf_counter() - t, out["timings"], steps))
            losses[side] = float(out["loss"])
            log.info("%s repeat %d: %s", side, rep, runs[side][-1])
    plain, ray_train = _median_split(runs["plain"]), _median_split(runs["ray_train"])
    return {
        "workload": {
            "steps": steps,
            "batch_size": args.batch_size,
            "size": [h, w],
            "backbone": args.backbone,
            "epochs": cfg.train.epochs,
            "checkpoint_every": cfg.train.checkpoint_every,
            "threads": args.threads,
            "device": args.device,
            "repeats": args.repeats,
        },
        "ray_init_s": ray_init_s,
        "plain": plain,
        "ray_train": ray_train,
        "wall_ratio": ray_train["wall_s"] / plain["wall_s"],
        "step_ratio": ray_train["step_ms"] / plain["step_ms"],
        "startup_extra_s": ray_train["startup_s"] - plain["startup_s"],
        "runs": runs,
        "same_last_loss": abs(losses["plain"] - losses["ray_train"]) < 1e-4,
        "load_avg": os.getloadavg(),
    }


# ---------------------------------------------------------------------------------------------
# (a) method comparison on procedural data, at convergence (bench/method_comparison.py)
# ---------------------------------------------------------------------------------------------


def part_a(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import method_comparison as mc  # bench/ is sys.path[0] when run as a script

    args.load = os.getloadavg()
    rows, total = mc.run_all(args, work)
    st = mc.stats(rows)
    print(mc.table(st))
    for t in mc.TARGETS:
        print("# " + mc.verdict(st, t))
    print(f"# total {total / 60:.1f} min")
    if args.write and rows:
        text = mc.section(rows, args, total, cpu_model(), time.strftime("%Y-%m-%d"))
        replace_section(mc.SECTION_A, text)
    return {
        "seeds": args.a_seeds,
        "total_seconds": round(total, 1),
        "miou_mean": {m: {t: statistics.fmean(v) for t, v in c.items()} for m, c in st.items()},
        "runs": rows,
    }


def part_uda(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import uda_family

    args.load = os.getloadavg()
    rows, total = uda_family.run_all(args, work)
    print(uda_family.table(rows))
    print(f"# total {total / 60:.1f} min")
    if args.write and rows:
        text = uda_family.section(rows, args, total, cpu_model(), time.strftime("%Y-%m-%d"))
        replace_section(uda_family.SECTION, text)
    return {"seeds": args.a_seeds, "total_seconds": round(total, 1), "runs": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["a", "b", "uda", "all"], default="b")
    parser.add_argument("--steps", type=int, default=240, help="optimizer steps per side")
    parser.add_argument(
        "--epochs", type=int, default=4, help="steps are split over this many epochs"
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", default="128x256", help="crop HxW")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument(
        "--threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) - 1),
        help="torch threads of each side (and the Ray worker's CPUs)",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--repeats", type=int, default=3, help="alternating repeats (medians reported)"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    # part (a)
    parser.add_argument("--seeds", dest="a_seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--layouts", type=int, default=384, help="(a) train layouts per appearance")
    parser.add_argument(
        "--patience", type=int, default=3, help="(a) validations without gain before a stage stops"
    )
    parser.add_argument(
        "--parallel", type=int, default=2, help="(a) trainings side by side (one process each)"
    )
    parser.add_argument(
        "--resume",
        type=Path,
        nargs="+",
        default=[],
        help="(a) logs of an earlier sitting: its '# row' runs are kept, not re-trained",
    )
    parser.add_argument("--uda-epochs", type=int, default=30, help="(uda) epoch cap per run")
    parser.add_argument(
        "--no-write", dest="write", action="store_false", help="(a) do not update bench/RESULTS.md"
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    args.hw = tuple(int(v) for v in args.size.lower().split("x"))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )

    figures: dict[str, Any] = {"host": platform.node(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="shiftlab-bench-train-", dir=args.workdir) as tmp:
        work = Path(tmp)
        if args.part in ("a", "all"):
            figures["a"] = part_a(args, work)
        if args.part == "uda":
            figures["uda"] = part_uda(args, work)
        if args.part in ("b", "all"):
            figures["b"] = part_b(args, work)
    if "b" in figures:
        b = figures["b"]
        for side in ("plain", "ray_train"):
            f = b[side]
            print(
                f"{side:10s}: wall {f['wall_s']:7.1f} s, start-up {f['startup_s']:6.1f} s, "
                f"{f['step_ms']:7.1f} ms/step, checkpoint {f['checkpoint_s_per_epoch']:.2f} s/epoch "
                f"({f['checkpoint_pct_of_epoch']:.1f}% of training)"
            )
        print(
            f"Ray Train vs plain: wall x{b['wall_ratio']:.3f}, per step x{b['step_ratio']:.3f}, "
            f"start-up +{b['startup_extra_s']:.1f} s; Ray start-up (apart) {b['ray_init_s']:.1f} s"
        )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
