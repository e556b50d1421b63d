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

(a) *method comparison*: procedural noon -> night and noon -> fog; source-only vs SDGPA
    (photometric editor) vs feature alignment (other appearances only) vs ClassMix (unlabelled
    target train split), every run through ``run_experiment`` in one process and one Ray,
    same data, model, optimizer and step budget; target-test mIoU mean +- std over seeds,
    written to bench/RESULTS.md.

The last line printed is one JSON object with every figure.

    python bench/train.py --part a                          # 3 seeds, ~20 min on 2 CPU cores
    python bench/train.py --part a --seeds 0 --a-epochs 2 --no-write   # quick look
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
# (a) method comparison on procedural data
# ---------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "RESULTS.md"
SECTION_A = "## Method comparison on procedural data (bench/train.py --part a)"
DATE = "2026-11-22"
TARGETS = ("night", "fog")
# Feature alignment is domain generalisation: it may only see appearances other than the
# targets (training on night to test on night would be supervised target training).
FA_APPEARANCES = ("noon", "sunset", "rain")


def _spec(split: str, condition: str, args: argparse.Namespace, name: str | None = None) -> str:
    h, w = args.a_size
    head = f"name: {name}, " if name else ""
    return (
        f"{{{head}format: procedural, split: {split}, condition: {condition}, "
        f"layouts: {args.layouts}, size: [{h}, {w}]}}"
    )


def a_overrides(
    method: str, target: str | None, seed: int, args: argparse.Namespace, work: Path
) -> tuple[str, list[str]]:
    """(demo yaml, overrides) of one run; every run shares data, model, optimiser and budget."""
    crop = f"[{args.crop}, {args.crop}]"
    tests = ", ".join(_spec("test", c, args, f"{c}_test") for c in ("noon", *TARGETS))
    common = [
        f"name=cmp_{method}{'_' + target if target else ''}_seed{seed}",
        f"seed={seed}",
        f"output_dir={work / 'runs'}",
        f"data.source={_spec('train', 'noon', args)}",
        # Model selection on *source* val only: no target labels are used by any method.
        f"data.val=[{_spec('val', 'noon', args, 'noon_val')}]",
        f"data.test=[{tests}]",
        f"model={{name: deeplabv3plus, backbone: {args.a_backbone}, output_stride: 16, pretrained: none, "
        f"decoder_channels: {args.decoder}}}",
        f"optim.lr={args.lr}",
        f"train.epochs={args.a_epochs}",
        f"train.iters_per_epoch={args.iters}",
        f"train.batch_size={args.a_batch}",
        "train.num_workers=1",
        "train.cpus_per_worker=1.0",
        f"train.torch_threads={args.threads}",
        f"train.augment.crop={crop}",
        f"train.validate_every={args.a_epochs}",
        "evaluate.overlays=0",
        "tracking.enabled=false",
    ]
    if method == "source_only":
        return "demo_source_only.yaml", common
    if method == "feature_align":
        return "demo_feature_align.yaml", common + [
            f"method.appearances=[{', '.join(FA_APPEARANCES)}]"
        ]
    if method == "sdgpa":
        half = args.a_epochs // 2
        return "demo.yaml", common + [
            f"method.stage1_epochs={half}",
            f"method.stage2_epochs={args.a_epochs - half}",
            f"generate.preset={target}",
            "generate.editor={kind: photometric}",
            f"generate.tile={min(args.a_size)}",
            "generate.num_actors=1",
            "generate.cpus_per_actor=1.0",
            "generate.gpus_per_actor=0",
        ]
    if method == "classmix":
        return "demo_classmix.yaml", common + [
            f"data.target_unlabelled={_spec('train', str(target), args)}",
            f"method.target_view={target}",
        ]
    raise ValueError(method)


def a_run(
    method: str, target: str | None, seed: int, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    from shiftlab.config import load_experiment
    from shiftlab.train.experiment import run_experiment

    yaml_name, ov = a_overrides(method, target, seed, args, work)
    cfg = load_experiment(REPO / "experiments" / yaml_name, ov)
    start = time.perf_counter()
    summary = run_experiment(cfg)
    row = {
        "method": method,
        "target": target,
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 1),
        **{c: float(summary[f"test/{c}_test/miou"]) for c in ("noon", *TARGETS)},
    }
    print(
        f"# {method} {target or '(all targets)'} seed {seed}: noon {row['noon']:.4f} "
        f"night {row['night']:.4f} fog {row['fog']:.4f}, {row['seconds']:.0f}s",
        flush=True,
    )
    return row


def a_plan(seed: int) -> list[tuple[str, str | None]]:
    # source_only and feature_align never see a target, so one run serves both targets.
    return [
        ("source_only", None),
        ("feature_align", None),
        *[(m, t) for t in TARGETS for m in ("sdgpa", "classmix")],
    ]


def _ms(values: list[float]) -> tuple[float, float]:
    return (
        100 * statistics.fmean(values),
        100 * (statistics.stdev(values) if len(values) > 1 else 0.0),
    )


def a_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """{'noon -> night': {method: [mean, std, n]}, ..., 'noon (source-only)': [mean, std, n]}."""
    out: dict[str, Any] = {}
    for t in TARGETS:
        col: dict[str, list[float]] = {}
        for m in ("source_only", "sdgpa", "feature_align", "classmix"):
            vals = [r[t] for r in rows if r["method"] == m and r["target"] in (None, t)]
            if vals:
                mean, std = _ms(vals)
                col[m] = [round(mean, 2), round(std, 2), len(vals)]
        out[f"noon -> {t}"] = col
    so = [r["noon"] for r in rows if r["method"] == "source_only"]
    if so:
        mean, std = _ms(so)
        out["noon (source-only, in-domain)"] = [round(mean, 2), round(std, 2), len(so)]
    return out


LABELS = {
    "source_only": "source-only (noon)",
    "sdgpa": "SDGPA (photometric editor, preset = target)",
    "feature_align": f"feature alignment ({' + '.join(FA_APPEARANCES)}; no target appearance)",
    "classmix": "ClassMix / DACS (unlabelled target train split)",
}


def a_table(stats: dict[str, Any]) -> str:
    # n = runs (seeds) averaged in that cell: a cut-off run can leave cells with fewer seeds.
    lines = [
        "| method | noon -> night test mIoU (%) | noon -> fog test mIoU (%) |",
        "|---|---|---|",
    ]
    for m, label in LABELS.items():
        cells = []
        for t in TARGETS:
            v = stats[f"noon -> {t}"].get(m)
            cells.append(f"{v[0]:.2f} ± {v[1]:.2f} (n={v[2]})" if v else "—")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    so = stats.get("noon (source-only, in-domain)")
    if so:
        lines.append(
            f"| *source-only, scored on noon test itself (no shift)* | "
            f"{so[0]:.2f} ± {so[1]:.2f} (n={so[2]}) | (same) |"
        )
    return "\n".join(lines)


def a_verdict(stats: dict[str, Any], target: str) -> str:
    col = stats[f"noon -> {target}"]
    if "source_only" not in col or len(col) < 2:
        return f"noon -> {target}: not enough runs for a verdict."
    so = col["source_only"]
    best = max((m for m in col if m != "source_only"), key=lambda m: col[m][0])
    b = col[best]
    diff = b[0] - so[0]
    spread = max(b[1], so[1])
    beats = diff > spread
    return (
        f"noon -> {target}: best adaptation method {best} {b[0]:.2f} vs source-only "
        f"{so[0]:.2f} ({diff:+.2f} points); largest seed std of the two {spread:.2f}, so it "
        f"{'DOES' if beats else 'does NOT'} beat source-only by more than the seed spread."
    )


def _para(text: str) -> str:
    import textwrap

    return textwrap.fill(" ".join(text.split()), width=100, break_on_hyphens=False)


def a_section(
    stats: dict[str, Any],
    rows: list[dict[str, Any]],
    args: argparse.Namespace,
    total: float,
    complete: bool,
) -> str:
    import torch

    cpu = cpu_model()
    h, w = args.a_size
    steps = args.a_epochs * args.iters
    header = _para(f"""**{DATE}, CPU** — {os.cpu_count()} CPU cores ({cpu}), no GPU, shared
        with other engineers' jobs; Python {platform.python_version()}, torch {torch.__version__};
        load average at the start {", ".join(f"{v:.1f}" for v in args.load)}. Command:
        `python bench/train.py {" ".join(args.argv)}`.""")
    settings = _para(f"""Settings: procedural street scenes ({args.layouts} train layouts per
        appearance, val/test a quarter of that, {h}x{w} px), labelled source = **noon** only.
        Every run: `shiftlab.runner.run_experiment` on one local Ray (Ray Train, 1 worker, 1 CPU,
        {args.threads} torch thread(s)), ResNet-18 DeepLabV3+ (output stride 16, {args.decoder}-channel
        decoder, random init — no weights on this machine), AdamW lr {args.lr:g} poly, batch
        {args.a_batch}, {args.crop}x{args.crop} crops, {args.a_epochs} epochs x
        {args.iters} iterations = {steps} optimizer steps for every method (SDGPA: stage 1
        {args.a_epochs // 2} + stage 2 {args.a_epochs - args.a_epochs // 2} epochs; paired
        methods see two images per sample, ClassMix a source and a target image). Validation
        (noon val only) runs at the last epoch alone, so the scored model is the final one and
        no method uses target labels. Seeds {", ".join(map(str, args.a_seeds))}
        (initialisation, data order, augmentation; the scenes and the SDGPA-generated images are
        the same for every seed). Methods: source-only and feature alignment never see the
        target, so each of their runs is scored on both targets; SDGPA (photometric editor,
        `generate.preset` night resp. fog, intermediate + target views, edits cached once and
        shared across seeds) and ClassMix (DACS EMA teacher alpha 0.99, pseudo threshold 0.5,
        unlabelled target = that appearance's *train* split) run once per target. Augmentation:
        random crop + flip + colour jitter, except feature alignment (crop + flip; its demo
        config turns colour jitter off, the appearance pairs being its photometric variation).""")
    status = (
        ""
        if complete
        else _para(f"""**Partial run**: only {len(rows)} runs finished
        within the time box; the seeds column says how many runs each cell averages.""")
    )
    per_run = "\n".join(
        f"| {r['method']} | {r['target'] or 'both'} | {r['seed']} | {100 * r['noon']:.2f} | "
        f"{100 * r['night']:.2f} | {100 * r['fog']:.2f} | {r['seconds']:.0f} |"
        for r in rows
    )
    verdicts = " ".join(a_verdict(stats, t) for t in TARGETS)
    return f"""{SECTION_A}

{header}

{settings}

{status}

Target-test mIoU, mean ± sample std over seeds:

{a_table(stats)}

{_para(verdicts)}

{
        _para(f'''Total wall time {total / 60:.1f} min (Ray Train start-up, SDGPA generation and
evaluation of every run included, the local Ray's own start-up not). Toy scale on purpose: random
init, {steps} steps, so absolute mIoUs are low and the comparison says how the pipelines behave on
this budget, not how the published methods rank.''')
    }

Per run (mIoU %, test sets; "both" = one run scored on both targets):

| method | target | seed | noon | night | fog | seconds |
|---|---|---|---|---|---|---|
{per_run}
""".replace("\n\n\n\n", "\n\n")


def a_write(text: str) -> None:
    replace_section(SECTION_A, text, RESULTS)


def part_a(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch

    from shiftlab.utils.ray_runtime import connect

    torch.set_num_threads(1)  # the driver only evaluates between runs
    os.environ.setdefault("SHIFTLAB_CACHE_DIR", str(work / "cache"))  # one procedural cache
    connect(num_cpus=2, log_to_driver=False)
    args.load = os.getloadavg()
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    deadline = start + args.budget_min * 60
    complete = True
    for seed in args.a_seeds:
        for method, target in a_plan(seed):
            if time.perf_counter() > deadline:
                complete = False
                break
            rows.append(a_run(method, target, seed, args, work))
        if not complete:
            break
        # After every finished seed: the table so far (a partial record survives a cut-off).
        stats = a_stats(rows)
        if args.write:
            a_write(
                a_section(stats, rows, args, time.perf_counter() - start, seed == args.a_seeds[-1])
            )
    total = time.perf_counter() - start
    stats = a_stats(rows)
    print(a_table(stats))
    for t in TARGETS:
        print("# " + a_verdict(stats, t))
    print(f"# total {total / 60:.1f} min")
    if args.write and rows:
        a_write(a_section(stats, rows, args, total, complete))
    return {
        "date": DATE,
        "seeds": args.a_seeds,
        "complete": complete,
        "steps": args.a_epochs * args.iters,
        "total_seconds": round(total, 1),
        "miou_percent_mean_std_n": stats,
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
    parser.add_argument("--layouts", type=int, default=32, help="(a) train layouts per appearance")
    parser.add_argument("--a-size", type=int, nargs=2, default=[64, 128], metavar=("H", "W"))
    parser.add_argument("--crop", type=int, default=64, help="(a) square training crop")
    parser.add_argument("--a-epochs", type=int, default=6)
    parser.add_argument("--iters", type=int, default=8, help="(a) iterations per epoch")
    parser.add_argument("--a-batch", type=int, default=4)
    parser.add_argument("--a-backbone", default="resnet18")
    parser.add_argument("--decoder", type=int, default=32, help="(a) decoder channels")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--budget-min",
        type=float,
        default=20.0,
        help="(a) start no new run after this many minutes (the table says so)",
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
