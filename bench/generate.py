"""Generation throughput: SDGPA's sequential batch-size-1 loop vs shiftlab's Ray Data pipeline.

Both sides edit the same images with the same editor, prompt, patches and seeds, and write
PNGs of the edited images:

(a) *sequential*: one process, images one after another, every patch edited alone (batch
    size 1), the way SDGPA's reference scripts run (one process per GPU, batch size 1);
(b) *pipeline*: `shiftlab.generate` on Ray Data: editor actors, patches of a work unit
    batched into one editor call, results written by the actors.

CPU mode (default) runs the tiny random-weight InstructPix2Pix pipeline and the photometric
editor at an equal thread budget: the sequential loop single-threaded, against two actors with
one thread each (``--actors``). GPU mode (``--device cuda``) runs the full-size random-weight
InstructPix2Pix (SD-1.5 shapes, fp16) on 1024x512 images cut into 512x512 patches, 50 steps,
batch size 1 vs ``--batch-size`` patches per call, one actor per GPU; the ratio is per GPU.

Ray start-up is measured and reported apart from the pipeline time; the pipeline time
includes its actors' start-up (model loading), the sequential time its one model load.
The last line printed is one JSON object with every figure.

    python bench/generate.py                      # CPU: tiny IP2P + photometric
    python bench/generate.py --device cuda        # one or more GPUs: full-size IP2P
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger("bench.generate")


def make_source(root: Path, n: int, h: int, w: int, seed: int = 0) -> None:
    """A Cityscapes-layout train split of ``n`` structured noisy scenes with labelIds masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([xx * 200 // w + 30, yy * 200 // h + 30, (xx + yy) * 200 // (h + w) + 30], -1)
    ids = np.array([7, 8, 26, 23, 0], dtype=np.uint8)
    for k in range(n):
        sid = f"bench_{k:06d}_000019"
        img = np.clip(base + rng.integers(-25, 25, base.shape), 0, 255).astype(np.uint8)
        lab = ids[rng.integers(0, len(ids), (h // 8, w // 8))].repeat(8, 0).repeat(8, 1)
        for path, arr in (
            (root / "leftImg8bit/train/bench" / f"{sid}_leftImg8bit.png", img),
            (root / "gtFine/train/bench" / f"{sid}_gtFine_labelIds.png", lab),
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)


def experiment(
    work: Path, source: Path, editor: str, resize: tuple[int, int], tile: int, name: str
) -> Path:
    path = work / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            name: bench-{name}
            data:
              source: {{format: cityscapes, root: {source}, split: train}}
            generate:
              preset: night
              editor: {editor}
              resize: [{resize[0]}, {resize[1]}]
              tile: {tile}
            model: {{name: deeplabv3plus, backbone: resnet18, pretrained: none}}
            method: {{name: source_only}}
            """
        )
    )
    return path


def run_sequential(cfg: Any, out: Path, device: str | None) -> dict[str, float]:
    """SDGPA's loop: one image at a time, each patch its own editor call; writes PNGs."""
    from shiftlab.data.io import read_image
    from shiftlab.data.transforms import resize_image
    from shiftlab.generate.editors import build_editor
    from shiftlab.generate.patching import edit_image
    from shiftlab.generate.plan import make_plan
    from shiftlab.utils.atomic import write_png

    plan = make_plan(cfg)
    editor_cfg = plan.editor
    if editor_cfg.kind == "instruct-pix2pix":
        editor_cfg = editor_cfg.model_copy(update={"batch_size": 1})
    start = time.perf_counter()
    editor = build_editor(editor_cfg, device=device)
    editor.batch_size = 1  # the photometric editor: one patch per call as well
    loaded = time.perf_counter()
    edits = 0
    for i, sid in enumerate(plan.ids):
        image = resize_image(read_image(Path(plan.images[i])), plan.resize)
        for mode in plan.modes:
            edited, prov = edit_image(
                editor, image, mode, plan.prompt, plan.seed, sid, plan.tile, plan.overlap
            )
            write_png(out / mode / f"{sid}.png", edited)
            edits += len(prov["boxes"])
    _sync(device)
    end = time.perf_counter()
    images = len(plan.ids) * len(plan.modes)
    del editor
    _free(device)
    return {
        "images": images,
        "patches": edits,
        "seconds": end - start,
        "load_s": loaded - start,
        "images_per_s": images / (end - start),
    }


def run_pipeline(cfg: Any, num_cpus: int | None) -> dict[str, Any]:
    import ray

    from shiftlab.generate.cache import ensure_generated_report
    from shiftlab.utils.ray_runtime import connect

    t0 = time.perf_counter()
    connect(None, num_cpus)
    ray_start = time.perf_counter() - t0
    start = time.perf_counter()
    result = ensure_generated_report(cfg)
    seconds = time.perf_counter() - start
    stats = result.stats
    return {
        "images": result.generated,
        "seconds": seconds,
        "images_per_s": result.generated / seconds,
        "actors": stats.actors,
        "actor_startup_s": stats.actor_startup_s,
        "steady_images_per_s": stats.steady_images_per_s,
        "ray_start_s": ray_start,
        "cluster": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")},
    }


def _sync(device: str | None) -> None:
    if device and device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _free(device: str | None) -> None:
    import gc

    gc.collect()
    if device and device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def compare(
    name: str,
    exp: Path,
    work: Path,
    overrides: list[str],
    device: str | None,
    num_cpus: int | None,
    per: int,
) -> dict[str, Any]:
    from shiftlab.config import load_experiment

    seq_cfg = load_experiment(exp, overrides)
    seq = run_sequential(seq_cfg, work / f"seq-{name}", device)
    log.info("%s sequential: %.3f images/s (%s)", name, seq["images_per_s"], seq)
    pipe_cfg = load_experiment(exp, [*overrides, f"generate.output_root={work / f'pipe-{name}'}"])
    pipe = run_pipeline(pipe_cfg, num_cpus)
    log.info("%s pipeline: %.3f images/s (%s)", name, pipe["images_per_s"], pipe)
    assert pipe["images"] == seq["images"], (pipe["images"], seq["images"])
    ratio = pipe["images_per_s"] / seq["images_per_s"]
    steady = pipe["steady_images_per_s"] / seq["images_per_s"]
    result = {
        "sequential": seq,
        "pipeline": pipe,
        # wall clock of the whole generation call (actor start-up and model loads included)
        "ratio": ratio,
        # once the first actor holds its editor (start-up is paid once per run, not per image)
        "ratio_steady": steady,
        # GPU: the pipeline runs one actor per GPU; the target is per GPU.
        "ratio_per_gpu": ratio / per,
        "ratio_steady_per_gpu": steady / per,
    }
    print(
        f"{name}: sequential {seq['images_per_s']:.3f} images/s, pipeline "
        f"{pipe['images_per_s']:.3f} images/s -> {ratio:.2f}x; after actor start-up "
        f"({pipe['actor_startup_s']:.1f} s) {pipe['steady_images_per_s']:.3f} images/s -> "
        f"{steady:.2f}x (Ray start-up {pipe['ray_start_s']:.1f} s, not included)",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--images",
        type=int,
        default=None,
        help="source images (default: CPU 48 tiny-ip2p and 160 photometric; GPU 16 per GPU)",
    )
    parser.add_argument("--actors", type=int, default=2, help="CPU actors (CPU mode)")
    parser.add_argument(
        "--steps", type=int, default=None, help="diffusion steps (default: 8 CPU, 50 GPU)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="patches per call (default 8)")
    parser.add_argument("--editors", default="ip2p,photometric", help="CPU mode: which editors")
    parser.add_argument(
        "--model", help="GPU mode: an existing pipeline directory (default: build one)"
    )
    parser.add_argument("--work", type=Path, help="work directory (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")

    import torch

    from shiftlab.generate.pipeline_builder import (
        build_full_instruct_pix2pix,
        build_tiny_instruct_pix2pix,
    )

    work = args.work or Path(tempfile.mkdtemp(prefix="shiftlab-bench-gen-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SHIFTLAB_CACHE_DIR", str(work / "cache"))
    figures: dict[str, Any] = {
        "bench": "generate",
        "device": args.device,
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs",
        "torch": torch.__version__,
    }
    if args.device == "cpu":
        steps = args.steps or 8
        bs = args.batch_size or 8
        # Equal thread budget: the loop on one thread, each actor on one thread.
        torch.set_num_threads(1)
        import cv2

        cv2.setNumThreads(1)
        figures.update(actors=args.actors, threads_per_actor=1, sequential_threads=1)
        res_overrides = [f"generate.num_actors={args.actors}", "generate.cpus_per_actor=1.0"]
        for editor in [e.strip() for e in args.editors.split(",") if e.strip()]:
            if editor == "ip2p":
                # 64x128 images: two 64x64 target tiles and one intermediate patch each.
                n = args.images or 48
                source = work / f"source-ip2p-{n}"
                if not source.exists():
                    make_source(source, n, 64, 128)
                model = build_tiny_instruct_pix2pix(work / "tiny-ip2p", seed=0)
                spec = (
                    f"{{kind: instruct-pix2pix, model: {model}, steps: {steps}, batch_size: {bs}}}"
                )
                exp = experiment(work, source, spec, (64, 128), 64, "tiny-ip2p")
                fig = compare("tiny-ip2p", exp, work, res_overrides, "cpu", args.actors, 1)
                figures["tiny-ip2p"] = dict(
                    fig, images=n, steps=steps, batch_size=bs, image=[64, 128], tile=64
                )
            elif editor == "photometric":
                # SDGPA's geometry: 1024x512 images, 512x512 patches (sources stored at that size).
                n = args.images or 160
                source = work / f"source-photometric-{n}"
                if not source.exists():
                    make_source(source, n, 512, 1024)
                exp = experiment(
                    work, source, "{kind: photometric}", (512, 1024), 512, "photometric"
                )
                fig = compare("photometric", exp, work, res_overrides, None, args.actors, 1)
                figures["photometric"] = dict(fig, images=n, image=[512, 1024], tile=512)
            else:
                parser.error(f"unknown editor {editor!r}")
    else:
        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device visible")
        gpus = torch.cuda.device_count()
        n = args.images or 16 * gpus
        steps = args.steps or 50
        bs = args.batch_size or 8
        model = Path(args.model) if args.model else work / "full-ip2p"
        if not args.model and not (model / "model_index.json").exists():
            t = time.perf_counter()
            build_full_instruct_pix2pix(model, seed=0)
            log.info(
                "built the full-size random-weight pipeline in %.0f s", time.perf_counter() - t
            )
        source = work / "source"
        if not source.exists():
            make_source(source, n, 1024, 2048)  # Cityscapes size, resized to 1024x512 as SDGPA
        spec = f"{{kind: instruct-pix2pix, model: {model}, steps: {steps}, batch_size: {bs}, dtype: fp16}}"
        exp = experiment(work, source, spec, (512, 1024), 512, "full-ip2p")
        figures.update(
            images=n, gpus=gpus, steps=steps, batch_size=bs, gpu=torch.cuda.get_device_name(0)
        )
        figures["full-ip2p"] = compare("full-ip2p", exp, work, [], "cuda", None, gpus)
    print(json.dumps(figures, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
