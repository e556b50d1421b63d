"""bench/train.py part (a): the methods compared at convergence on procedural noon -> night / fog.

Every run trains until its **source** validation mIoU (noon val) stops improving: validation
every 2 epochs, early stopping after ``--patience`` validations without a gain of 0.002, per
stage. Nothing reads a target label: source-only, feature alignment and ClassMix export their
best noon-val model; SDGPA (zero-shot) exports its last epoch. Runs go two at a time, each in
its own process with one torch thread, through shiftlab's plain-PyTorch recipe
(`LocalSession`: the code a Ray Train worker runs, without Ray's processes on 2 cores). The
generated sets (photometric night and fog edits) are made first, once, on Ray Data.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SECTION_A = "## Method comparison on procedural data (bench/train.py --part a)"
TARGETS = ("night", "fog")
# Feature alignment is domain generalisation: it may see only appearances other than the
# targets (training on night to test on night would be supervised target training).
FA_APPEARANCES = ("noon", "sunset", "rain")
APPEARANCES = "[noon, sunset, night, fog, rain]"
LABELS = {
    "source_only": "source-only (noon)",
    "sdgpa": "SDGPA (photometric editor, preset = target; zero-shot)",
    "feature_align": f"feature alignment ({' + '.join(FA_APPEARANCES)}; no target appearance)",
    "classmix": "ClassMix / DACS (unlabelled target train split)",
}
# Epoch caps (early stopping usually ends a run before them).
MAX_EPOCHS = {"source_only": 40, "feature_align": 30, "classmix": 30, "sdgpa": (24, 12)}


def overrides(
    method: str, target: str | None, seed: int, args: argparse.Namespace, work: Path
) -> tuple[str, list[str]]:
    """(experiment file, overrides) of one run: the demo files, sized and stopped alike."""
    common = [
        f"name=cmp_{method}{'_' + target if target else ''}_seed{seed}",
        f"seed={seed}",
        f"output_dir={work / 'runs'}",
        f"data.source.layouts={args.layouts}",
        f"data.source.appearances={APPEARANCES}",
        "data.val=[{name: noon_val, format: procedural, split: val, condition: noon}]",
        "data.test=["
        + ", ".join(
            f"{{name: {c}_test, format: procedural, split: test, condition: {c}}}"
            for c in ("noon", *TARGETS)
        )
        + "]",
        "train.torch_threads=1",
        "train.validate_every=2",
        "train.checkpoint_every=1000",
        f"train.early_stop={{patience: {args.patience}, min_delta: 0.002, metric: val/noon_val/miou}}",
        "evaluate.overlays=0",
        "tracking.enabled=false",
    ]
    if method == "source_only":
        return "demo_source_only.yaml", [
            *common,
            f"train.epochs={MAX_EPOCHS['source_only']}",
            "train.select=val/noon_val/miou",
        ]
    if method == "feature_align":
        return "demo_feature_align.yaml", [
            *common,
            f"train.epochs={MAX_EPOCHS['feature_align']}",
            "train.select=val/noon_val/miou",
            f"method.appearances=[{', '.join(FA_APPEARANCES)}]",
        ]
    if method == "classmix":
        return "demo_classmix.yaml", [
            *common,
            f"train.epochs={MAX_EPOCHS['classmix']}",
            "train.select=val/noon_val/miou",
            f"data.target_unlabelled={{format: procedural, split: train, condition: {target}}}",
            f"method.target_view={target}",
            "method.pseudo_threshold=0.968",
        ]
    if method == "sdgpa":
        s1, s2 = MAX_EPOCHS["sdgpa"]
        return "demo.yaml", [
            *common,
            f"generate.preset={target}",
            "optim.lr=2.0e-3",
            "train.init_from=null",
            f"method.stage1_epochs={s1}",
            f"method.stage2_epochs={s2}",
            "train.select=last",
        ]
    raise ValueError(method)


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One training to its plateau and its scores (runs in a worker process)."""
    import torch

    from shiftlab.config import load_experiment
    from shiftlab.train.experiment import evaluate_best
    from shiftlab.train.recipe import Recipe
    from shiftlab.train.session import LocalSession
    from shiftlab.utils.run_folder import RunFolder

    torch.set_num_threads(1)
    os.environ["SHIFTLAB_CACHE_DIR"] = job["cache"]
    cfg = load_experiment(REPO / "experiments" / job["file"], job["overrides"])
    run_dir = Path(cfg.output_dir) / cfg.name
    start = time.perf_counter()
    session = LocalSession(run_dir / "checkpoint")
    recipe = Recipe(cfg, session, run=RunFolder(run_dir), generated=job.get("generated"))
    recipe.setup()
    summary = recipe.run()
    scores = evaluate_best(cfg, run_dir / "best", run_dir / "eval")
    curve = [
        (int(r["epoch"]), round(float(r["val/noon_val/miou"]), 4))
        for r in session.reports
        if "val/noon_val/miou" in r
    ]
    steps = sum(int(r.get("train/steps", 0)) for r in session.reports)
    row = {
        "method": job["method"],
        "target": job["target"],
        "seed": job["seed"],
        "seconds": round(time.perf_counter() - start, 1),
        "steps": steps,
        "epochs_trained": summary["epochs_trained"],
        "best_epoch": summary.get("best_epoch"),
        "stopped": summary["stopped_early"],
        "curve": curve,
        **{c: float(scores[f"test/{c}_test/miou"]) for c in ("noon", *TARGETS)},
    }
    print(
        f"# {row['method']} {row['target'] or 'both'} seed {row['seed']}: noon {row['noon']:.4f} "
        f"night {row['night']:.4f} fog {row['fog']:.4f}, {row['epochs_trained']} epochs, "
        f"{row['seconds']:.0f}s",
        flush=True,
    )
    print("# row " + json.dumps(row), flush=True)  # each finished run survives a killed bench
    return row


def plan(seeds: list[int]) -> list[tuple[str, str | None, int]]:
    """Longest runs first, so the two processes finish together."""
    per_seed = [
        ("classmix", "night"),
        ("classmix", "fog"),
        ("sdgpa", "night"),
        ("sdgpa", "fog"),
        ("feature_align", None),
        ("source_only", None),
    ]
    return [(m, t, s) for m, t in per_seed for s in seeds]


def generated_sets(args: argparse.Namespace, work: Path) -> dict[str, str]:
    """The night and fog edits SDGPA trains on, generated once (Ray Data), shared by seeds."""
    import ray

    from shiftlab.config import load_experiment
    from shiftlab.generate.cache import ensure_generated

    sets = {}
    for target in TARGETS:
        file, ov = overrides("sdgpa", target, 0, args, work)
        sets[target] = str(ensure_generated(load_experiment(REPO / "experiments" / file, ov)))
    ray.shutdown()  # the trainings run without Ray
    return sets


def read_rows(logs: list[Path]) -> dict[tuple[str, str | None, int], dict[str, Any]]:
    """Runs an earlier sitting finished: the ``# row {json}`` lines of its log(s)."""
    done = {}
    for log in logs:
        for line in log.read_text().splitlines():
            if line.startswith("# row "):
                row = json.loads(line[len("# row ") :])
                done[(row["method"], row["target"], row["seed"])] = row
    return done


def run_all(args: argparse.Namespace, work: Path) -> tuple[list[dict[str, Any]], float]:
    os.environ["SHIFTLAB_CACHE_DIR"] = str(work / "cache")
    start = time.perf_counter()
    done = read_rows(args.resume)
    todo = [key for key in plan(args.a_seeds) if key not in done]
    sets = generated_sets(args, work) if todo else {}
    jobs = []
    for method, target, seed in todo:
        file, ov = overrides(method, target, seed, args, work)
        job = {
            "method": method,
            "target": target,
            "seed": seed,
            "file": file,
            "overrides": ov,
            "cache": str(work / "cache"),
        }
        if method == "sdgpa":
            job["generated"] = sets[str(target)]
        jobs.append(job)
    with ProcessPoolExecutor(
        args.parallel, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        finished = {(r["method"], r["target"], r["seed"]): r for r in pool.map(run_one, jobs)}
    rows = [done.get(key) or finished[key] for key in plan(args.a_seeds)]
    return rows, time.perf_counter() - start


# -- the table -----------------------------------------------------------------------------
def _mean_std(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.2f} (n=1)"
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f} (n={len(values)})"


def stats(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """{method: {target: [mIoU of each seed]}}; source-only and FA runs serve both targets."""
    out: dict[str, dict[str, list[float]]] = {}
    for m in LABELS:
        for t in TARGETS:
            vals = [r[t] for r in rows if r["method"] == m and r["target"] in (None, t)]
            if vals:
                out.setdefault(m, {})[t] = vals
    so = [r["noon"] for r in rows if r["method"] == "source_only"]
    if so:
        out["source_only"]["noon"] = so
    return out


def table(st: dict[str, dict[str, list[float]]]) -> str:
    lines = [
        "| method | noon -> night test mIoU (%) | noon -> fog test mIoU (%) |",
        "|---|---|---|",
    ]
    for m, label in LABELS.items():
        cells = [_mean_std(st[m][t]) if t in st.get(m, {}) else "—" for t in TARGETS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if "noon" in st.get("source_only", {}):
        lines.append(
            f"| *source-only, scored on noon test itself (no shift)* | {_mean_std(st['source_only']['noon'])} | (same) |"
        )
    return "\n".join(lines)


def verdict(st: dict[str, dict[str, list[float]]], target: str) -> str:
    col = {m: v[target] for m, v in st.items() if target in v}
    if "source_only" not in col or len(col) < 2:
        return f"noon -> {target}: not enough runs for a verdict."
    so = col["source_only"]
    best = max((m for m in col if m != "source_only"), key=lambda m: statistics.fmean(col[m]))
    diff = 100 * (statistics.fmean(col[best]) - statistics.fmean(so))
    spread = 100 * max(statistics.stdev(v) if len(v) > 1 else 0.0 for v in (col[best], so))
    beats = "DOES" if diff > spread else "does NOT"
    return (
        f"noon -> {target}: best adaptation method {best} {100 * statistics.fmean(col[best]):.2f} vs "
        f"source-only {100 * statistics.fmean(so):.2f} ({diff:+.2f} points); largest seed std of the "
        f"two {spread:.2f}, so it {beats} beat source-only by more than the seed spread."
    )


def per_run(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| method | target | seed | noon | night | fog | epochs (plateau) | steps | seconds | noon val curve (epoch: mIoU) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        curve = ", ".join(f"{e}: {v:.3f}" for e, v in r["curve"]) or "not kept (see above)"
        stop = f" stopped {r['stopped']}" if r["stopped"] else ""
        lines.append(
            f"| {r['method']} | {r['target'] or 'both'} | {r['seed']} | {100 * r['noon']:.2f} | "
            f"{100 * r['night']:.2f} | {100 * r['fog']:.2f} | {r['epochs_trained']} (best {r['best_epoch']}){stop} | "
            f"{r['steps']} | {r['seconds']:.0f} | {curve} |"
        )
    return "\n".join(lines)


def _resumed(args: argparse.Namespace) -> str:
    if not args.resume:
        return ""
    logs = ", ".join(f"`{p.name}`" for p in args.resume)
    return (
        f"Runs read from an earlier sitting's log ({logs}, `--resume`; same commit and settings) "
        "are not re-trained: their rows are that sitting's, including its seconds.\n\n"
    )


def section(
    rows: list[dict[str, Any]], args: argparse.Namespace, total: float, cpu: str, when: str
) -> str:
    import torch

    st = stats(rows)
    verdicts = "\n\n".join(verdict(st, t) for t in TARGETS)
    return f"""{SECTION_A}

**{when}, CPU** — {os.cpu_count()} CPU cores ({cpu}), no GPU; Python {platform.python_version()},
torch {torch.__version__}; load average at the start {", ".join(f"{v:.1f}" for v in args.load)}.
Command: `python bench/train.py {" ".join(args.argv)}`. Total wall time {total / 60:.1f} min
(generation of the two edited sets included; {args.parallel} trainings side by side).

Settings: procedural street scenes, {args.layouts} train layouts per appearance (48 val, 48 test),
64x128 px; labelled source = **noon** only. Every run: the demo's ResNet-18 DeepLabV3+ (output
stride 16, 64-channel decoder, random init: `pretrained: none`), AdamW 2e-3 poly, batch 8, mild
colour jitter, trained through shiftlab's recipe with one torch thread, validated on **noon val**
every 2 epochs and stopped per stage after {args.patience} validations without a gain of 0.002
(epoch caps: source-only 40, feature alignment and ClassMix 30, SDGPA 24 + 12). Selection:
source-only, feature alignment and ClassMix export their best noon-val epoch; SDGPA (zero-shot)
its last epoch. No run reads a target label. Seeds {", ".join(map(str, args.a_seeds))} change
initialisation, data order and augmentation; scenes and edits are the same for every seed.
SDGPA: photometric editor with the target's preset, intermediate + target views (stage 1
(source, intermediate), stage 2 (target, intermediate)). ClassMix: DACS (EMA teacher 0.99,
confidence threshold 0.968, ClassMix + colour jitter + blur), unlabelled target = that
appearance's train split. Feature alignment: cosine over all stages on noon/sunset/rain pairs.

Target-test mIoU (%), mean ± sample std over seeds:

{table(st)}

{verdicts}

{_resumed(args)}Convergence: every run's noon-val curve and the epoch it plateaued at (best) are below; "stopped"
names the stage early stopping ended and after which epoch.

{per_run(rows)}
"""
