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

I/O in the pipeline (``io`` in the figures): in the same run, the pipeline as it was before
the fast PNG level and overlapped I/O (``generate.png_compress_level=6``,
``generate.overlap_io=false``) and the new default (level 1, overlap): images/s of both,
their ratio, and the per-image split of the actors' time into read (read + decode + resize),
edit, encode (PNG + manifest) and write (files written, synced, renamed), as wall time and as
CPU time of the thread that ran each stage (with overlap the stages run side by side, so the
wall stages add up to more than the wall time per image). The old side encodes with OpenCV
at level 6; Pillow at level 6, the encoder before, costs more (``png_encoders``), so the old
side is if anything flattered. ``--io-repeats N`` runs each side N times in ABBA order and
reports the median run. ``png_encoders`` times the encoders themselves (one thread, CPU time,
median of 5) on the bench's noisy source scene, its night edit and a blurred (more
photo-like) copy, at 1024x512 and 2048x1024.
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
    n = max(1, result.generated)
    return {
        "images": result.generated,
        "seconds": seconds,
        "images_per_s": result.generated / seconds,
        "actors": stats.actors,
        "actor_startup_s": stats.actor_startup_s,
        "steady_images_per_s": stats.steady_images_per_s,
        "ray_start_s": ray_start,
        "cluster": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")},
        "png_compress_level": cfg.generate.png_compress_level,
        "overlap_io": cfg.generate.overlap_io,
        # actor seconds per image in each stage (summed over actors), in ms
        "split_wall_ms": {k: 1000 * v / n for k, v in stats.stage_seconds.items()},
        "split_cpu_ms": {k: 1000 * v / n for k, v in stats.stage_cpu_seconds.items()},
    }


# Before this change: Pillow's level 6 (here OpenCV's, see png_encoders), one unit at a time.
OLD_IO = ["generate.png_compress_level=6", "generate.overlap_io=false"]


def run_io_sides(
    name: str, exp: Path, work: Path, overrides: list[str], num_cpus: int | None, repeats: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pipeline with the old I/O and with the new default, ``repeats`` times each in
    ABBA order (old, new, new, old, ...: neither side always runs on a fresher machine);
    per side the run of median images/s, with every run's images/s beside it."""
    from shiftlab.config import load_experiment

    runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    for rep in range(repeats):
        for side in ("old", "new") if rep % 2 == 0 else ("new", "old"):
            root = work / f"pipe-{side}-{name}-{rep}"
            extra = OLD_IO if side == "old" else []
            cfg = load_experiment(exp, [*overrides, *extra, f"generate.output_root={root}"])
            fig = run_pipeline(cfg, num_cpus)
            log.info(
                "%s pipeline, %s I/O: %.3f images/s (%s)", name, side, fig["images_per_s"], fig
            )
            runs[side].append(fig)
    picked = []
    for side in ("old", "new"):
        ordered = sorted(runs[side], key=lambda f: f["images_per_s"])
        median = dict(ordered[(len(ordered) - 1) // 2])
        median["runs_images_per_s"] = [f["images_per_s"] for f in runs[side]]
        picked.append(median)
    return picked[0], picked[1]


def compare_io(name: str, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The pipeline before and after the I/O changes: ratio and per-image split."""
    ratio = new["images_per_s"] / old["images_per_s"]
    steady = new["steady_images_per_s"] / max(old["steady_images_per_s"], 1e-9)
    print(
        f"{name} I/O: old (level 6, no overlap) {old['images_per_s']:.3f} images/s, new "
        f"(level {new['png_compress_level']}, overlap) {new['images_per_s']:.3f} images/s "
        f"-> {ratio:.2f}x (steady {steady:.2f}x)",
        flush=True,
    )
    print(
        "| pipeline | images/s | "
        + " | ".join(f"{k} ms (cpu)" for k in old["split_wall_ms"])
        + " |"
    )
    for side, fig in (("old", old), ("new", new)):
        cells = [
            f"{fig['split_wall_ms'][k]:.1f} ({fig['split_cpu_ms'][k]:.1f})"
            for k in fig["split_wall_ms"]
        ]
        print(f"| {side} | {fig['images_per_s']:.3f} | " + " | ".join(cells) + " |", flush=True)
    return {"old": old, "new": new, "ratio": ratio, "ratio_steady": steady}


def _scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([xx * 200 // w + 30, yy * 200 // h + 30, (xx + yy) * 200 // (h + w) + 30], -1)
    return np.clip(base + rng.integers(-25, 25, base.shape), 0, 255).astype(np.uint8)


def png_encoders(repeats: int = 5) -> dict[str, Any]:
    """CPU ms (one thread, median) and MB of Pillow and OpenCV at levels 6 and 1; every one
    checked lossless (decoded back) and deterministic (encoded twice)."""
    import io as _io

    from shiftlab.config.generate import PhotometricConfig
    from shiftlab.generate.editors import build_editor
    from shiftlab.utils.atomic import encode_png_fast

    def pil(a: np.ndarray, level: int) -> bytes:
        buf = _io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG", compress_level=level)
        return buf.getvalue()

    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # thread CPU time counts this thread only
    night = build_editor(PhotometricConfig(effect="night"))
    out: dict[str, Any] = {}
    for h, w in ((512, 1024), (1024, 2048)):
        src = _scene(h, w)
        smooth = cv2.GaussianBlur(src, (0, 0), 2)  # closer to a photo than the noisy scene
        kinds = {"source": src, "night": night.edit([src], "", [0])[0], "smooth": smooth}
        for kind, image in kinds.items():
            for enc, fn in (("pillow", pil), ("opencv", encode_png_fast)):
                for level in (6, 1):
                    times = []
                    for _ in range(repeats):
                        t = time.thread_time()
                        data = fn(image, level)
                        times.append(time.thread_time() - t)
                    exact = np.array_equal(np.asarray(Image.open(_io.BytesIO(data))), image)
                    assert exact and fn(image, level) == data, (enc, level, kind)
                    out[f"{w}x{h} {kind} {enc} {level}"] = {
                        "cpu_ms": 1000 * float(np.median(times)),
                        "mb": len(data) / 1e6,
                    }
    cv2.setNumThreads(threads)
    return out


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
    io_repeats: int = 1,
) -> dict[str, Any]:
    from shiftlab.config import load_experiment

    seq_cfg = load_experiment(exp, overrides)
    seq = run_sequential(seq_cfg, work / f"seq-{name}", device)
    log.info("%s sequential: %.3f images/s (%s)", name, seq["images_per_s"], seq)
    old, pipe = run_io_sides(name, exp, work, overrides, num_cpus, io_repeats)
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
        "io": compare_io(name, old, pipe),
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
    parser.add_argument(
        "--io-repeats",
        type=int,
        default=1,
        help="pipeline runs per side of the old/new I/O comparison, in ABBA order (default 1)",
    )
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
    figures["png_encoders"] = png_encoders()
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
                fig = compare(
                    "tiny-ip2p", exp, work, res_overrides, "cpu", args.actors, 1, args.io_repeats
                )
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
                fig = compare(
                    "photometric", exp, work, res_overrides, None, args.actors, 1, args.io_repeats
                )
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
        figures["full-ip2p"] = compare(
            "full-ip2p", exp, work, [], "cuda", None, gpus, args.io_repeats
        )
    print(json.dumps(figures, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
