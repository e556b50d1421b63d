"""Training benchmarks.

(b) *Ray Train overhead*: the same model, data, batches and optimizer steps run three ways,
    each timed from "start" to "trained model in hand":

    - ``plain``: a plain PyTorch loop in this process (the baseline);
    - ``torch_trainer``: the very same loop function inside ``TorchTrainer`` with one worker
      (what Ray Train itself costs: worker start-up, process group, one report);
    - ``shiftlab``: ``shiftlab.train.run_training`` with one worker (Ray Train plus shiftlab's
      per-epoch checkpoints and exports; no validation sets, no MLflow).

    Ray start-up (``ray.init``) is measured and reported apart. Ray Train's cost is mostly
    fixed (seconds of worker start-up), so the ratio depends on the workload: pass enough
    ``--steps`` (and a big enough ``--size`` / ``--backbone``) for a realistic run.

(a) *method comparison at convergence* (`method_comparison.py`): procedural noon -> night and
    noon -> fog; source-only vs SDGPA (photometric editor) vs feature alignment (other
    appearances only) vs ClassMix (unlabelled target train split), each trained until its noon
    (source) validation mIoU stops improving; target-test mIoU mean +- std over seeds, with
    every run's validation curve, written to bench/RESULTS.md.

The last line printed is one JSON object with every figure.

    python bench/train.py --part a                          # 3 seeds, ~90 min on 2 CPU cores
    python bench/train.py --part a --seeds 0 --layouts 32 --no-write   # quick look
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


def plain_loop(cfg_dict: dict[str, Any], device_name: str | None = None) -> dict[str, Any]:
    """The training steps of ``run_training`` without Ray: same data, model, loss, optimizer.

    Runs in this process (``plain``) or as the train function of a TorchTrainer
    (``torch_trainer``), so both sides execute exactly this code.
    """
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    from shiftlab.config.loader import validate_dict
    from shiftlab.data.label_spaces import get_label_space
    from shiftlab.methods import build_method
    from shiftlab.models import create_model
    from shiftlab.train.checkpoint import label_space_name
    from shiftlab.train.data import TrainDataset
    from shiftlab.train.optim import build_optimizer, build_scheduler
    from shiftlab.utils.seeding import derive_seed, seed_everything

    start = time.perf_counter()
    cfg = validate_dict(cfg_dict, "bench config")
    torch.set_num_threads(cfg.train.torch_threads or 1)
    in_ray = device_name is None
    if in_ray:
        import ray.train.torch

        device = ray.train.torch.get_device()
    else:
        device = torch.device(device_name)
    space = get_label_space(label_space_name(cfg))
    seed_everything(derive_seed(cfg.seed, "init") % 2**32)
    model = create_model(cfg.model, space.num_classes)
    if in_ray:
        import ray.train.torch

        model = ray.train.torch.prepare_model(model)
    else:
        model = model.to(device)
    method = build_method(
        cfg.method, space.num_classes, space.class_names, space.ignore_index, cfg.seed
    )
    method.setup(model)
    dataset = TrainDataset(cfg, method.views("train"), method.pair_views)
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
    loader = DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=cfg.train.loader_workers,
    )
    iters = min(len(loader), cfg.train.iters_per_epoch or len(loader))
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.epochs, iters)
    setup_s = time.perf_counter() - start
    steps = 0
    loss_sum = 0.0
    for epoch in range(cfg.train.epochs):
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        model.train()
        for i, batch in enumerate(loader):
            if i >= iters:
                break
            batch = {k: v.to(device) for k, v in batch.items()}
            loss, _ = method.loss(model, batch, steps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach())
            steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    out = {
        "steps": steps,
        "mean_loss": loss_sum / max(steps, 1),
        "setup_s": setup_s,
        "loop_s": time.perf_counter() - start - setup_s,
    }
    return out


def part_b(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import ray.train
    from ray.train.torch import TorchTrainer

    from shiftlab.train import run_training

    h, w = args.hw
    # Enough scenes for every step of an epoch to see new images.
    n = max(16, -(-args.steps // max(1, args.epochs)) * args.batch_size)
    data_root = make_aligned(work / "data", n, h, w)
    cfg = bench_config(args, data_root, work / "runs", "bench-train-b")
    cfg_dict = cfg.model_dump(mode="json")

    # Warm the page cache and imports once so neither side pays for first reads.
    from shiftlab.data.formats import open_dataset

    reader = open_dataset(cfg.data.source)
    for s in reader.samples():
        reader.read_image(s)

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")
    t = time.perf_counter()
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=max(int(args.threads), 1) + 1, include_dashboard=True, log_to_driver=False
        )
    ray_init_s = time.perf_counter() - t

    resources = {"CPU": float(args.threads)}
    use_gpu = args.device == "cuda"
    if use_gpu:
        resources["GPU"] = 1

    times: dict[str, list[float]] = {"plain": [], "torch_trainer": [], "shiftlab": []}
    plain: dict[str, Any] = {}
    in_worker: dict[str, Any] = {}
    # Round robin, so that load from elsewhere on a shared machine hits every side alike.
    for rep in range(args.repeats):
        t = time.perf_counter()
        plain = plain_loop(cfg_dict, args.device)
        times["plain"].append(time.perf_counter() - t)
        log.info("plain loop: %.1fs (%d steps)", times["plain"][-1], plain["steps"])

        trainer = TorchTrainer(
            plain_loop,
            train_loop_config=cfg_dict,
            scaling_config=ray.train.ScalingConfig(
                num_workers=1, use_gpu=use_gpu, resources_per_worker=resources
            ),
            run_config=ray.train.RunConfig(
                name=f"bench-torch-trainer-{rep}", storage_path=str(work / "ray")
            ),
        )
        t = time.perf_counter()
        result = trainer.fit()
        times["torch_trainer"].append(time.perf_counter() - t)
        in_worker = result.return_value or {}  # the train function's return value (rank 0)
        log.info("TorchTrainer (same loop): %.1fs", times["torch_trainer"][-1])

        rep_cfg = cfg.model_copy(update={"name": f"bench-train-b-{rep}"})
        t = time.perf_counter()
        run_training(rep_cfg)
        times["shiftlab"].append(time.perf_counter() - t)
        log.info("shiftlab run_training: %.1fs", times["shiftlab"][-1])

    plain_s = statistics.median(times["plain"])
    trainer_s = statistics.median(times["torch_trainer"])
    shiftlab_s = statistics.median(times["shiftlab"])
    return {
        "workload": {
            "steps": plain["steps"],
            "batch_size": args.batch_size,
            "size": [h, w],
            "backbone": args.backbone,
            "epochs": cfg.train.epochs,
            "threads": args.threads,
            "device": args.device,
        },
        "ray_init_s": ray_init_s,
        "plain_s": plain_s,
        "plain_loop_s": plain["loop_s"],
        "torch_trainer_s": trainer_s,
        "torch_trainer_loop_s": in_worker.get("loop_s"),
        "shiftlab_s": shiftlab_s,
        "torch_trainer_ratio": trainer_s / plain_s,
        "shiftlab_ratio": shiftlab_s / plain_s,
        "torch_trainer_overhead_pct": 100.0 * (trainer_s / plain_s - 1.0),
        "shiftlab_overhead_pct": 100.0 * (shiftlab_s / plain_s - 1.0),
        "times_s": times,
        "same_losses": abs(plain["mean_loss"] - in_worker.get("mean_loss", float("nan"))) < 1e-4,
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["a", "b", "all"], default="b")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per side")
    parser.add_argument(
        "--epochs", type=int, default=2, help="steps are split over this many epochs"
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
        "--repeats", type=int, default=1, help="round-robin repeats (medians reported)"
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
        if args.part in ("b", "all"):
            figures["b"] = part_b(args, work)
    if "b" in figures:
        b = figures["b"]
        print(f"plain PyTorch loop        : {b['plain_s']:8.1f} s")
        print(
            f"TorchTrainer, same loop   : {b['torch_trainer_s']:8.1f} s  (x{b['torch_trainer_ratio']:.3f})"
        )
        print(f"shiftlab run_training     : {b['shiftlab_s']:8.1f} s  (x{b['shiftlab_ratio']:.3f})")
        print(f"Ray start-up (apart)      : {b['ray_init_s']:8.1f} s")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
