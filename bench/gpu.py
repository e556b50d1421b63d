"""One-process GPU benchmark of the two places users spend their hours: generation and training.

Runs on a bare GPU machine that has PyTorch, transformers, timm, numpy, Pillow and OpenCV but
not Ray, MLflow or pydantic; diffusers comes as a small wheel (`scripts/fetch_gpu_wheels.sh`).
It drives shiftlab's own code in one process, no Ray: `InstructPix2PixEditor`
(generate/editors), SDGPA patching (generate/patching), the random-weight pipeline builder
(generate/pipeline_builder), `DeepLabV3Plus` (models/deeplab), SDGPA's loss `paired_ce`
(methods/base), `build_optimizer` / `build_scheduler` / `amp_dtype` (train/optim) and the
atomic PNG writes (utils/atomic). Package ``__init__`` files that reach Ray, MLflow or SciPy
are not run; without pydantic the four config classes those modules read are stood in for by
plain dataclasses with the same fields (`config_classes` in the JSON says which were used).

What is measured, and why:

1. Generation throughput. SDGPA's reference edits one 512x512 patch per pipeline call
   (batch 1); shiftlab batches patches (8 and 16 per call, SDPA attention), optionally with
   the UNet compiled and channels-last (`compile: true`). For each: 1024x512 images/s (two
   patches each), patches/s, the ratio against the batch-1 loop of the same run, and peak GPU
   memory. Full size: random weights with SD-1.5 / InstructPix2Pix shapes, fp16, 50 steps,
   SDGPA's night prompt and guidance (the cost per step is the real model's; the pixels are
   noise). A short warm-up call at the measured batch size is timed apart; for compiled
   configs ``compile_s`` is that call minus the uncompiled warm-up of the same batch size.
2. Batch invariance. shiftlab gives each patch its own generator so that batching does not
   change results; in fp16 kernels pick other reduction orders at other batch sizes. Measured:
   max / mean absolute pixel difference (uint8) between each patch edited alone (the batch-1
   loop) and the same patch, same seed, edited inside a batch of 8.
3. Training throughput. DeepLabV3+ ResNet-50 (output stride 32, random init) at SDGPA's
   384x768 crops, 4 pairs per step (CE(a) + CE(b): 8 images through the network), a real SGD
   step and lr-schedule step as shiftlab's trainer runs them: fp32 vs bf16 autocast, each with
   and without channels-last (the trainer autocasts on CUDA only).
4. Generation I/O. A 64-image run through a serial unit loop like an editor actor's (read PNG,
   resize 2048x1024 -> 1024x512, edit both SDGPA modes, encode PNG, write atomically): the
   share of wall time spent inside editor calls (they return host arrays, so they end
   synchronised; an upper bound of GPU busy time), the mean NVML GPU utilisation sampled
   during the run where `torch.cuda.utilization()` works, and the share projected to 50 steps.

Budget: the whole run ends within ``--budget-s`` (default 450 s, under 8 minutes on one
H100/H200 with imports); a section that would not fit is skipped, its figures null with a
reason, and so is every figure a device cannot give (no CUDA: peak memory, compile, bf16).
The last line printed is one JSON object with every figure.

    PYTHONPATH=platform python bench/gpu.py                       # GPU, full size
    PYTHONPATH=platform python bench/gpu.py --device cpu --tiny   # CPU smoke run, same keys
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import logging
import platform
import sys
import tempfile
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("bench.gpu")

ROOT = Path(__file__).resolve().parents[1]
# SDGPA's night setting (METHODS.md): the prompt and guidance of the reference generation.
PROMPT, GUIDANCE, IMAGE_GUIDANCE, SEED = "Make it evening", 20.0, 1.7, 42
GIB = float(2**30)
NO_CUDA = "no CUDA device"
CUDA_ONLY_AMP = "shiftlab's trainer autocasts on CUDA only (amp is ignored on CPU)"
CUDA_ONLY_COMPILE = "shiftlab's editor compiles (and goes channels-last) on CUDA only"


def names(text: str) -> tuple[str, ...]:
    """A tuple of the whitespace-separated names in ``text``."""
    return tuple(text.split())


# Package __init__ files that import Ray (train), MLflow (train), SciPy (models, methods via
# QueryDiff) or every editor (generate.editors): registered without running them.
LIGHT_PACKAGES = (
    "shiftlab.generate.editors",
    "shiftlab.models",
    "shiftlab.methods",
    "shiftlab.train",
)

GEN_KEYS = names(
    """
    batch_size patches calls seconds patches_per_s images_per_s speedup_vs_sdgpa warmup_s
    peak_mem_gib peak_reserved_gib reason
    """
)
COMPILED_KEYS = (*GEN_KEYS, "compile_s")
# name -> (batch size, compiled + channels-last)
GEN_CONFIGS = {
    "sdgpa_batch1": (1, False),
    "shiftlab_batch8": (8, False),
    "shiftlab_batch16": (16, False),
    # Batch 16 first: when the budget runs short, the best case is the one kept.
    "shiftlab_batch16_compiled_channels_last": (16, True),
    "shiftlab_batch8_compiled_channels_last": (8, True),
}
INVARIANCE_KEYS = names(
    """
    patches batch_size dtype max_abs_diff mean_abs_diff pixels_differing_fraction
    identical_patches reason
    """
)
TRAIN_KEYS = names(
    """
    steps seconds steps_per_s images_per_s speedup_vs_fp32 warmup_s peak_mem_gib reason
    """
)
# name -> (bf16 autocast, channels-last)
TRAIN_VARIANTS = {
    "fp32": (False, False),
    "fp32_channels_last": (False, True),
    "bf16": (True, False),
    "bf16_channels_last": (True, True),
}
IO_KEYS = names(
    """
    source_images output_images patches batch_size steps wall_s editor_s outside_editor_s
    outside_editor_s_per_image editor_time_fraction gpu_util_mean_pct gpu_util_samples
    projected_editor_fraction_at_full_steps method png_encoder prepare_s reason
    """
)


@dataclass(frozen=True)
class Sizes:
    """Workload sizes: full (SDGPA's geometry, GPU) or tiny (CPU smoke run)."""

    image: tuple[int, int]  # (H, W) edited, after the resize
    source: tuple[int, int]  # (H, W) of the PNGs the I/O run reads
    tile: int
    steps: int
    warmup_steps: int
    batch1_patches: int
    calls: int  # timed calls per batched config
    io_sources: int  # source images of the I/O run (x2 modes = output images)
    io_batch: int
    io_editor_s: float  # editor time the I/O run aims at (sets its steps); 0: full steps
    backbone: str
    crop: tuple[int, int]
    pairs: int
    train_warmup: int
    train_steps: int
    compile_need_s: float  # budget a first compiled config needs besides its timed calls
    num_classes: int = 19


FULL = Sizes(
    image=(512, 1024),
    source=(1024, 2048),
    tile=512,
    steps=50,
    warmup_steps=2,
    batch1_patches=8,
    calls=2,
    io_sources=32,
    io_batch=16,
    io_editor_s=45.0,
    backbone="resnet50",
    crop=(384, 768),
    pairs=4,
    train_warmup=5,
    train_steps=30,
    compile_need_s=150.0,
)
TINY = Sizes(
    image=(64, 128),
    source=(128, 256),
    tile=64,
    steps=4,
    warmup_steps=1,
    batch1_patches=8,
    calls=2,
    io_sources=32,
    io_batch=16,
    io_editor_s=0.0,
    backbone="resnet18",
    crop=(64, 128),
    pairs=2,
    train_warmup=1,
    train_steps=3,
    compile_need_s=60.0,
)


@dataclass
class Budget:
    """Wall-clock budget of the whole run; sections ask before they start."""

    seconds: float
    start: float = field(default_factory=time.perf_counter)
    skipped: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def refuse(self, name: str, need: float) -> str | None:
        """A reason to skip ``name`` when ``need`` seconds do not fit, else None."""
        if need <= self.left():
            return None
        self.skipped.append(name)
        return f"skipped: needs ~{need:.0f} s, {max(self.left(), 0):.0f} s of the budget left"


def absent(keys: tuple[str, ...], reason: str) -> dict[str, Any]:
    """A figure set with every value null and the reason why."""
    return {**dict.fromkeys(keys), "reason": reason}


def guarded(
    budget: Budget, name: str, need: float, keys: tuple[str, ...], run: Callable[[], dict]
) -> dict[str, Any]:
    """``run()`` if the budget allows it; a failure becomes a reason, not the end of the run."""
    reason = budget.refuse(name, need)
    if reason is not None:
        log.warning("%s %s", name, reason)
        return absent(keys, reason)
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - the other sections still report
        log.error("%s failed:\n%s", name, traceback.format_exc())
        return absent(keys, f"failed: {type(exc).__name__}: {exc}"[:500])


# -- importing shiftlab without Ray, MLflow, SciPy or pydantic --------------------------------
@dataclass(frozen=True)
class InstructPix2PixStandIn:
    """The fields of shiftlab.config.generate.InstructPix2PixConfig (no validation)."""

    model: str
    kind: str = "instruct-pix2pix"
    steps: int = 50
    guidance_scale: float | None = None
    image_guidance_scale: float | None = None
    scheduler: str | None = None
    dtype: str = "auto"
    batch_size: int = 8
    compile: bool = False
    attention: str = "sdpa"


@dataclass(frozen=True)
class DeepLabV3PlusStandIn:
    """The fields of shiftlab.config.model.DeepLabV3PlusConfig (no validation)."""

    pretrained: str
    name: str = "deeplabv3plus"
    backbone: str = "resnet50"
    output_stride: int = 16
    aspp_rates: tuple[int, ...] = (6, 12, 18)
    low_level_channels: int = 48
    decoder_channels: int = 256
    dropout: float = 0.1


@dataclass(frozen=True)
class LrMultStandIn:
    encoder: float = 1.0
    decoder: float = 1.0
    head: float = 1.0


@dataclass(frozen=True)
class OptimStandIn:
    """The fields of shiftlab.config.optim.OptimConfig (SDGPA's defaults, no validation)."""

    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 1e-4
    no_decay_norm_bias: bool = False
    lr_mult: LrMultStandIn = field(default_factory=LrMultStandIn)
    schedule: str = "poly"
    power: float = 0.9
    min_lr: float = 1e-6
    warmup_epochs: float = 0.0
    warmup_iters: int = 0
    warmup_ratio: float = 1e-6
    step_per: str = "epoch"
    freeze_encoder_epochs: float = 0.0
    encoder_ramp_epochs: float = 0.0
    grad_clip: float | None = None
    amp: str = "none"


class SectionStandIn:
    """Stands in for every other config class: the modules this bench runs name them in
    annotations and class-level defaults only (the classes they construct are above)."""


class StandInModule(types.ModuleType):
    """A ``shiftlab.config.*`` module without pydantic: the stand-ins named in STAND_INS, and
    `SectionStandIn` for any other class name, so that a config class a module imports for its
    annotations does not break the bench; any other missing name is an ImportError."""

    def __getattr__(self, name: str) -> Any:
        if name[:1].isupper() and not name.isupper():
            return SectionStandIn
        raise AttributeError(f"{self.__name__}.{name}: no stand-in (bench/gpu.py STAND_INS)")


STAND_INS: dict[str, dict[str, Any]] = {
    "generate": {
        "InstructPix2PixConfig": InstructPix2PixStandIn,
        "DEFAULT_GUIDANCE_SCALE": 7.5,
        "DEFAULT_IMAGE_GUIDANCE_SCALE": 1.5,
    },
    "base": {
        "Section": SectionStandIn,
        "ModelSection": SectionStandIn,
        "MethodSection": SectionStandIn,
    },
    "model": {"DeepLabV3PlusConfig": DeepLabV3PlusStandIn},
    "optim": {"OptimConfig": OptimStandIn, "LrMult": LrMultStandIn},
    "augment": {"IMAGENET_MEAN": (0.485, 0.456, 0.406), "IMAGENET_STD": (0.229, 0.224, 0.225)},
}
STAND_IN_PAIRS = (
    ("generate", "InstructPix2PixConfig"),
    ("model", "DeepLabV3PlusConfig"),
    ("optim", "OptimConfig"),
    ("optim", "LrMult"),
)


def bare_package(name: str) -> None:
    """Register package ``name`` (its submodules importable) without running its __init__."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not a package on sys.path (PYTHONPATH=platform?)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, module)


def install_stand_ins() -> None:
    """Every ``shiftlab.config.<module>`` as a `StandInModule` (the package's __init__ unrun)."""
    bare_package("shiftlab.config")
    package = sys.modules["shiftlab.config"]
    for folder in package.__path__:
        for short in sorted(p.stem for p in Path(folder).glob("*.py") if p.stem != "__init__"):
            name = f"shiftlab.config.{short}"
            module = StandInModule(name, f"bench/gpu.py stand-in for {name} (no pydantic)")
            module.__dict__.update(STAND_INS.get(short, {}))
            sys.modules[name] = module
            setattr(package, short, module)


def plain_default(info: Any) -> bool:
    """A pydantic field with a default value (not required, no factory)."""
    return not info.is_required() and info.default_factory is None


def stand_in_drift() -> list[str]:
    """Fields where a stand-in differs from shiftlab's config class (checked where pydantic is)."""
    drift = []
    for short, cls_name in STAND_IN_PAIRS:
        real = getattr(importlib.import_module(f"shiftlab.config.{short}"), cls_name)
        stand_in = STAND_INS[short][cls_name]
        mine = {f.name: f.default for f in dataclasses.fields(stand_in)}
        for name, info in real.model_fields.items():
            if name not in mine:
                drift.append(f"{cls_name}.{name}: missing from the stand-in")
            elif plain_default(info) and mine[name] != info.default:
                drift.append(f"{cls_name}.{name}: default {info.default!r} != {mine[name]!r}")
        drift += [
            f"{cls_name}.{n}: not a field of shiftlab's"
            for n in mine.keys() - real.model_fields.keys()
        ]
    return drift


def prepare_imports() -> tuple[str, list[str]]:
    """Make the modules this bench uses importable on a machine without Ray, MLflow, SciPy or
    pydantic. Returns which config classes are used and any drift of the stand-ins."""
    if importlib.util.find_spec("shiftlab") is None:
        sys.path.insert(0, str(ROOT / "platform"))
    for name in LIGHT_PACKAGES:
        bare_package(name)
    try:
        import pydantic  # noqa: F401 - only whether it imports (pydantic-core is compiled)
    except ImportError:
        install_stand_ins()
        return "stand-in", []
    return "pydantic", stand_in_drift()


def with_changes(cfg: Any, **changes: Any) -> Any:
    """A copy of a config (pydantic or stand-in) with some fields changed."""
    if hasattr(cfg, "model_copy"):
        return cfg.model_copy(update=changes)
    return dataclasses.replace(cfg, **changes)


# -- device helpers -----------------------------------------------------------------------------
def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def sync(device: str) -> None:
    import torch

    if is_cuda(device):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    import torch

    if is_cuda(device):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peaks(device: str) -> dict[str, float | None]:
    """Peak allocated and reserved GPU memory (GiB) since the last reset."""
    import torch

    if not is_cuda(device):
        return {"peak_mem_gib": None, "peak_reserved_gib": None}
    return {
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / GIB, 3),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 3),
    }


def free(device: str) -> None:
    import torch

    gc.collect()
    if is_cuda(device):
        torch.cuda.empty_cache()


# -- generation ---------------------------------------------------------------------------------
def make_image(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A street-like structured noisy HxWx3 uint8 image (gradients plus noise)."""
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([xx * 200 // w + 30, yy * 200 // h + 30, (xx + yy) * 200 // (h + w) + 30], -1)
    return np.clip(base + rng.integers(-25, 25, base.shape), 0, 255).astype(np.uint8)


def target_patches(sizes: Sizes, n_patches: int) -> tuple[list[np.ndarray], list[int]]:
    """SDGPA target-mode tiles of enough images, with shiftlab's per-patch seeds."""
    from shiftlab.generate.patching import patch_seed, target_boxes

    rng = np.random.default_rng(0)
    h, w = sizes.image
    crops: list[np.ndarray] = []
    seeds: list[int] = []
    k = 0
    while len(crops) < n_patches:
        image, sid = make_image(h, w, rng), f"bench_{k:06d}_000019"
        for i, b in enumerate(target_boxes(h, w, sizes.tile)):
            crops.append(np.ascontiguousarray(image[b.y0 : b.y1, b.x0 : b.x1]))
            seeds.append(patch_seed(SEED, sid, "target", i))
        k += 1
    return crops[:n_patches], seeds[:n_patches]


def patches_per_image(sizes: Sizes) -> int:
    from shiftlab.generate.patching import target_boxes

    return len(target_boxes(*sizes.image, sizes.tile))


def build_pipeline(work: Path, model: Path | None, tiny: bool) -> tuple[Path, float | None]:
    """The random-weight pipeline directory (shiftlab's builder) and the seconds it took."""
    from shiftlab.generate.pipeline_builder import (
        build_full_instruct_pix2pix,
        build_tiny_instruct_pix2pix,
    )

    if model is not None:
        return model, None
    start = time.perf_counter()
    target = work / ("tiny-ip2p" if tiny else "full-ip2p")
    (build_tiny_instruct_pix2pix if tiny else build_full_instruct_pix2pix)(target, seed=0)
    return target, time.perf_counter() - start


def load_editor(model: Path, device: str, compiled: bool, steps: int) -> tuple[Any, float]:
    """shiftlab's InstructPix2Pix editor, fp16 on CUDA (SDGPA's setting), fp32 on CPU."""
    from shiftlab.config.generate import InstructPix2PixConfig
    from shiftlab.generate.editors.instruct_pix2pix import InstructPix2PixEditor

    cfg = InstructPix2PixConfig(
        model=str(model),
        steps=steps,
        guidance_scale=GUIDANCE,
        image_guidance_scale=IMAGE_GUIDANCE,
        dtype="fp16" if is_cuda(device) else "fp32",
        batch_size=1,  # set per measured config
        compile=compiled,
        attention="sdpa",
    )
    start = time.perf_counter()
    editor = InstructPix2PixEditor(cfg, device=device)
    sync(device)
    return editor, time.perf_counter() - start


@contextmanager
def steps_of(editor: Any, steps: int) -> Iterator[None]:
    """Run the editor at ``steps`` diffusion steps for a while (warm-up, the I/O run)."""
    cfg = editor.cfg
    editor.cfg = with_changes(cfg, steps=steps)
    try:
        yield
    finally:
        editor.cfg = cfg


def edit_in_calls(
    editor: Any, crops: list[np.ndarray], seeds: list[int], batch_size: int
) -> list[np.ndarray]:
    """One editor call per ``batch_size`` patches (batch 1: SDGPA's one call per patch)."""
    editor.batch_size = batch_size
    out: list[np.ndarray] = []
    for s in range(0, len(crops), batch_size):
        out += editor.edit(crops[s : s + batch_size], PROMPT, seeds[s : s + batch_size])
    return out


def time_generation(
    editor: Any, sizes: Sizes, device: str, batch_size: int, n_patches: int
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Warm up (one short call), then time ``n_patches`` in calls of ``batch_size``."""
    crops, seeds = target_patches(sizes, max(n_patches, batch_size))
    start = time.perf_counter()
    with steps_of(editor, sizes.warmup_steps):
        edit_in_calls(editor, crops[:batch_size], seeds[:batch_size], batch_size)
    warmup = time.perf_counter() - start
    reset_peak(device)
    start = time.perf_counter()
    out = edit_in_calls(editor, crops[:n_patches], seeds[:n_patches], batch_size)
    seconds = time.perf_counter() - start
    per_s = n_patches / seconds
    figures = {
        "batch_size": batch_size,
        "patches": n_patches,
        "calls": -(-n_patches // batch_size),
        "seconds": round(seconds, 3),
        "patches_per_s": round(per_s, 4),
        "images_per_s": round(per_s / patches_per_image(sizes), 4),
        "speedup_vs_sdgpa": None,
        "warmup_s": round(warmup, 3),
        **peaks(device),
        "reason": None if is_cuda(device) else f"peak memory: {NO_CUDA}",
    }
    log.info("generation batch %d: %s", batch_size, figures)
    return figures, out


def invariance(alone: list[np.ndarray], batched: list[np.ndarray], dtype: str) -> dict[str, Any]:
    """How far a patch edited inside a batch of 8 lies from the same patch edited alone."""
    n = min(len(alone), len(batched))
    if n == 0:
        return absent(INVARIANCE_KEYS, "needs both the batch-1 and the batch-8 run")
    pairs = zip(alone[:n], batched[:n], strict=True)
    diffs = [np.abs(a.astype(np.int16) - b.astype(np.int16)) for a, b in pairs]
    return {
        "patches": n,
        "batch_size": 8,
        "dtype": dtype,
        "max_abs_diff": int(max(int(d.max()) for d in diffs)),
        "mean_abs_diff": round(float(np.mean([d.mean() for d in diffs])), 5),
        "pixels_differing_fraction": round(float(np.mean([(d > 0).mean() for d in diffs])), 6),
        "identical_patches": sum(int(not d.any()) for d in diffs),
        "reason": None,
    }


def run_uncompiled(
    editor: Any, sizes: Sizes, device: str, budget: Budget, gen: dict[str, Any]
) -> dict[str, Any]:
    """The batch-1 loop, batch 8 and batch 16 on one editor; returns the invariance figures."""
    outputs: dict[int, list[np.ndarray]] = {}
    need = 30.0
    for name in ("sdgpa_batch1", "shiftlab_batch8", "shiftlab_batch16"):
        bs = GEN_CONFIGS[name][0]
        n = sizes.batch1_patches if bs == 1 else bs * sizes.calls

        def run(bs: int = bs, n: int = n) -> dict[str, Any]:
            figures, outputs[bs] = time_generation(editor, sizes, device, bs, n)
            return figures

        gen[name] = guarded(budget, name, need, GEN_KEYS, run)
        if gen[name]["patches_per_s"]:
            # Batching is faster per patch than batch 1: half of batch 1's time is plenty.
            need = 0.5 * sizes.calls * 16 / gen[name]["patches_per_s"] + 10
    dtype = "fp16" if is_cuda(device) else "fp32"
    return invariance(outputs.get(1, []), outputs.get(8, []), dtype)


def run_compiled(
    model: Path, sizes: Sizes, device: str, budget: Budget, gen: dict[str, Any]
) -> float | None:
    """Batch 16 and 8 with the UNet compiled and channels-last (a fresh editor, compile: true).
    Returns the seconds that editor took to load (None: not loaded)."""
    configs = [n for n, (_, compiled) in GEN_CONFIGS.items() if compiled]
    if not is_cuda(device):
        gen.update({n: absent(COMPILED_KEYS, CUDA_ONLY_COMPILE) for n in configs})
        return None
    import torch

    holder: dict[str, Any] = {}
    need = sizes.compile_need_s
    for name in configs:
        bs = GEN_CONFIGS[name][0]
        plain = gen.get(name.replace("_compiled_channels_last", ""), {})

        def run(bs: int = bs, plain: dict[str, Any] = plain) -> dict[str, Any]:
            if "editor" not in holder:
                holder["editor"], holder["load_s"] = load_editor(model, device, True, sizes.steps)
            torch._dynamo.reset()  # one batch size per process, as in a real run: static shapes
            figures, _ = time_generation(holder["editor"], sizes, device, bs, bs * sizes.calls)
            base_warmup = plain.get("warmup_s")
            figures["compile_s"] = (
                round(figures["warmup_s"] - base_warmup, 3) if base_warmup else None
            )
            return figures

        gen[name] = guarded(budget, name, need, COMPILED_KEYS, run)
        done = gen[name]
        if done.get("warmup_s") and done.get("seconds"):
            need = done["warmup_s"] + 2.5 * done["seconds"] + 10
    load_s = holder.get("load_s")
    holder.clear()
    free(device)
    return None if load_s is None else round(load_s, 3)


def add_speedups(gen: dict[str, Any]) -> None:
    base = gen.get("sdgpa_batch1", {}).get("patches_per_s")
    for figures in gen.values():
        if base and figures.get("patches_per_s"):
            figures["speedup_vs_sdgpa"] = round(figures["patches_per_s"] / base, 3)


# -- generation I/O -----------------------------------------------------------------------------
class TimedEditor:
    """Wraps an editor and adds up the wall time spent inside its ``edit`` calls."""

    def __init__(self, editor: Any) -> None:
        self.editor = editor
        self.batch_size = editor.batch_size
        self.seconds = 0.0

    def edit(self, images: list[np.ndarray], prompt: str, seeds: list[int]) -> list[np.ndarray]:
        start = time.perf_counter()
        try:
            return self.editor.edit(images, prompt, seeds)
        finally:
            self.seconds += time.perf_counter() - start


class UtilSampler:
    """Samples ``torch.cuda.utilization()`` (NVML) in a thread while the block runs."""

    def __init__(self, device: str, period_s: float = 0.1) -> None:
        self.period_s = period_s
        self.samples: list[int] = []
        self.error: str | None = None if is_cuda(device) else NO_CUDA
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        if self.error is None:
            import torch

            try:
                torch.cuda.utilization()
            except Exception as exc:  # noqa: BLE001 - no pynvml, or NVML refused
                self.error = f"torch.cuda.utilization() failed: {type(exc).__name__}: {exc}"

    def _run(self) -> None:
        import torch

        while True:
            self.samples.append(int(torch.cuda.utilization()))
            if self._stop.wait(self.period_s):
                return

    def __enter__(self) -> UtilSampler:
        if self.error is None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def write_sources(root: Path, sizes: Sizes) -> list[Path]:
    """Source PNGs at Cityscapes-like size (fast zlib level: preparation, not measured)."""
    import cv2

    rng = np.random.default_rng(1)
    paths = []
    for k in range(sizes.io_sources):
        path = root / f"bench_{k:06d}_000019_leftImg8bit.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        rgb = make_image(*sizes.source, rng)
        cv2.imwrite(str(path), rgb[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 1])
        paths.append(path)
    return paths


def png_encoder() -> tuple[Callable[[np.ndarray], bytes], str]:
    """The encoder generated images are written with (the fast one where shiftlab has it)."""
    from shiftlab.utils import atomic

    fast = getattr(atomic, "encode_png_fast", None)
    if fast is not None:
        level = getattr(atomic, "FAST_PNG_LEVEL", 1)
        return (lambda a: fast(a, level)), f"encode_png_fast(level={level})"
    return atomic.encode_png, "encode_png (Pillow, level 6)"


def resizer() -> Callable[[np.ndarray, tuple[int, int]], np.ndarray]:
    """shiftlab's resize_image where importable (it needs pydantic), else the same PIL call."""
    try:
        from shiftlab.data.transforms import resize_image

        return resize_image
    except ImportError:
        from PIL import Image

        def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
            pil = Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BICUBIC)
            return np.asarray(pil)

        return resize


def run_units(editor: TimedEditor, paths: list[Path], sizes: Sizes, out: Path) -> str:
    """A serial unit loop: per unit of one mode read + resize its sources (the source view
    written once), edit its patches together, encode and write each result atomically."""
    from shiftlab.data.io import read_image
    from shiftlab.generate.patching import MODES, edit_batch
    from shiftlab.utils.atomic import json_bytes, write_bytes

    encode, encoder = png_encoder()
    resize = resizer()
    ids = [p.name.removesuffix("_leftImg8bit.png") for p in paths]
    for mode in MODES:
        for s in range(0, len(paths), sizes.io_batch):
            unit = range(s, min(s + sizes.io_batch, len(paths)))
            images = [resize(read_image(paths[i]), sizes.image) for i in unit]
            for i, image in zip(unit, images, strict=True):
                if not (out / "source" / f"{ids[i]}.png").exists():
                    write_bytes(out / "source" / f"{ids[i]}.png", encode(image))
            results = edit_batch(
                editor,
                images,
                [ids[i] for i in unit],
                [mode],
                PROMPT,
                SEED,
                tile=sizes.tile,
                batch_size=sizes.io_batch,
            )
            for i, per_mode in zip(unit, results, strict=True):
                edited, provenance = per_mode[mode]
                write_bytes(out / mode / f"{ids[i]}.png", encode(edited))
                write_bytes(out / mode / f"{ids[i]}.json", json_bytes(provenance))
    return encoder


def io_steps(sizes: Sizes, batch16: dict[str, Any], patches: int) -> int:
    """Steps of the I/O run: full where that fits ``io_editor_s`` of editor time, else fewer."""
    rate = batch16.get("patches_per_s")
    if not sizes.io_editor_s or not rate:
        return sizes.steps
    per_patch_step = 1.0 / rate / sizes.steps
    return int(min(sizes.steps, max(5, sizes.io_editor_s / (patches * per_patch_step))))


def run_io(editor: Any, sizes: Sizes, device: str, work: Path, batch16: dict) -> dict[str, Any]:
    """The 64-image generation run: is the GPU left idle by reading, resizing and writing?"""
    start = time.perf_counter()
    paths = write_sources(work / "io-src", sizes)
    prepare = time.perf_counter() - start
    n_patches = len(paths) * (1 + patches_per_image(sizes))  # intermediate + target tiles
    steps = io_steps(sizes, batch16, n_patches)
    editor.batch_size = sizes.io_batch
    timed = TimedEditor(editor)
    with steps_of(editor, steps), UtilSampler(device) as util:
        start = time.perf_counter()
        encoder = run_units(timed, paths, sizes, work / "io-out")
        wall = time.perf_counter() - start
    outside = wall - timed.seconds
    images = 2 * len(paths)
    rate = batch16.get("patches_per_s")
    full_editor = n_patches / rate if rate else None
    method = "editor-call time / wall time (calls end synchronised: they return host arrays)"
    method += "; NVML utilisation sampled every 0.1 s" if util.error is None else ""
    return {
        "source_images": len(paths),
        "output_images": images,
        "patches": n_patches,
        "batch_size": sizes.io_batch,
        "steps": steps,
        "wall_s": round(wall, 3),
        "editor_s": round(timed.seconds, 3),
        "outside_editor_s": round(outside, 3),
        "outside_editor_s_per_image": round(outside / images, 4),
        "editor_time_fraction": round(timed.seconds / wall, 4),
        "gpu_util_mean_pct": round(float(np.mean(util.samples)), 1) if util.samples else None,
        "gpu_util_samples": len(util.samples) if util.samples else None,
        "projected_editor_fraction_at_full_steps": (
            round(full_editor / (full_editor + outside), 4) if full_editor else None
        ),
        "method": method,
        "png_encoder": encoder,
        "prepare_s": round(prepare, 3),
        "reason": None if util.error is None else f"GPU utilisation: {util.error}",
    }


# -- training -----------------------------------------------------------------------------------
def make_model(sizes: Sizes, device: str, channels_last: bool) -> Any:
    """shiftlab's DeepLabV3+ as SDGPA configures it (output stride 32), random init."""
    import torch

    from shiftlab.config.model import DeepLabV3PlusConfig
    from shiftlab.models.deeplab import DeepLabV3Plus

    torch.manual_seed(0)
    cfg = DeepLabV3PlusConfig(backbone=sizes.backbone, output_stride=32, pretrained="none")
    model = DeepLabV3Plus(cfg, sizes.num_classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def synthetic_batch(sizes: Sizes, device: str, channels_last: bool) -> dict[str, Any]:
    """A pair batch as the SDGPA method sees it: two views, one label (10 % ignored)."""
    import torch

    g = torch.Generator().manual_seed(0)
    shape = (sizes.pairs, 3, *sizes.crop)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    label = torch.randint(0, sizes.num_classes, (sizes.pairs, *sizes.crop), generator=g)
    label[torch.rand(label.shape, generator=g) < 0.1] = 255
    return {
        "image": torch.randn(shape, generator=g).to(device, memory_format=fmt),
        "image_b": torch.randn(shape, generator=g).to(device, memory_format=fmt),
        "label": label.to(device),
    }


def train_variant(sizes: Sizes, device: str, bf16: bool, channels_last: bool) -> dict[str, Any]:
    """Time the trainer's step (autocast, SDGPA loss, zero_grad, backward, clip, step, lr)."""
    import torch

    from shiftlab.config.optim import OptimConfig
    from shiftlab.methods.base import paired_ce
    from shiftlab.train.optim import amp_dtype, build_optimizer, build_scheduler, clip_gradients

    model = make_model(sizes, device, channels_last)
    cfg = OptimConfig(amp="bf16" if bf16 else "none")
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, 1, sizes.train_warmup + sizes.train_steps)
    batch = synthetic_batch(sizes, device, channels_last)
    dtype = amp_dtype(cfg)

    def step() -> None:
        autocast = torch.autocast(device.split(":")[0], dtype=dtype) if dtype else nullcontext()
        with autocast:
            _, _, loss, logs = paired_ce(model, batch, "sdgpa", 255)
            logs["loss"] = loss.item()  # the SDGPA method logs it (a host sync per step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model.parameters(), cfg)
        optimizer.step()
        scheduler.step()

    return timed_steps(step, sizes, device)


def timed_steps(step: Callable[[], None], sizes: Sizes, device: str) -> dict[str, Any]:
    start = time.perf_counter()
    for _ in range(sizes.train_warmup):
        step()
    sync(device)
    warmup = time.perf_counter() - start
    reset_peak(device)
    start = time.perf_counter()
    for _ in range(sizes.train_steps):
        step()
    sync(device)
    seconds = time.perf_counter() - start
    return {
        "steps": sizes.train_steps,
        "seconds": round(seconds, 3),
        "steps_per_s": round(sizes.train_steps / seconds, 4),
        "images_per_s": round(2 * sizes.pairs * sizes.train_steps / seconds, 3),
        "speedup_vs_fp32": None,
        "warmup_s": round(warmup, 3),
        "peak_mem_gib": peaks(device)["peak_mem_gib"],
        "reason": None if is_cuda(device) else f"peak memory: {NO_CUDA}",
    }


def run_training(sizes: Sizes, device: str, budget: Budget) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "model": f"deeplabv3plus {sizes.backbone}, output stride 32, random init",
        "crop": list(sizes.crop),
        "pairs_per_step": sizes.pairs,
        "images_per_step": 2 * sizes.pairs,
        "optimizer": "SGD momentum 0.9, wd 1e-4, lr 1e-3, poly (shiftlab.train.optim)",
        "cudnn_benchmark": False,  # shiftlab's trainer leaves PyTorch's default
        "channels_last": "applied by this bench (model and inputs); the trainer has no option",
    }
    need = 60.0 if is_cuda(device) else 30.0
    for name, (bf16, channels_last) in TRAIN_VARIANTS.items():
        if bf16 and not is_cuda(device):
            figures[name] = absent(TRAIN_KEYS, CUDA_ONLY_AMP)
            continue

        def run(bf16: bool = bf16, channels_last: bool = channels_last) -> dict[str, Any]:
            return train_variant(sizes, device, bf16, channels_last)

        figures[name] = guarded(budget, f"train {name}", need, TRAIN_KEYS, run)
        log.info("training %s: %s", name, figures[name])
        free(device)
        if figures[name]["seconds"]:
            need = 2 * (figures[name]["seconds"] + figures[name]["warmup_s"]) + 10
    base = figures["fp32"].get("steps_per_s")
    for name in TRAIN_VARIANTS:
        if base and figures[name].get("steps_per_s"):
            figures[name]["speedup_vs_fp32"] = round(figures[name]["steps_per_s"] / base, 3)
    return figures


# -- the run ------------------------------------------------------------------------------------
def header(
    args: argparse.Namespace, device: str, config_classes: str, drift: list[str]
) -> dict[str, Any]:
    import diffusers
    import timm
    import torch

    name = torch.cuda.get_device_name(0) if is_cuda(device) else platform.processor() or "cpu"
    return {
        "bench": "gpu",
        "mode": f"{device}{'-tiny' if args.tiny else ''}",
        "device": name,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "timm": timm.__version__,
        "cpu_threads": torch.get_num_threads(),
        "config_classes": config_classes,
        "stand_in_drift": drift,
        "budget_s": args.budget_s,
    }


def generation_settings(sizes: Sizes, device: str) -> dict[str, Any]:
    return {
        "model": "random-weight InstructPix2Pix, "
        + ("tiny" if sizes is TINY else "SD-1.5 shapes (shiftlab.generate.pipeline_builder)"),
        "image": list(sizes.image),
        "tile": sizes.tile,
        "patches_per_image": patches_per_image(sizes),
        "steps": sizes.steps,
        "dtype": "fp16" if is_cuda(device) else "fp32",
        "attention": "sdpa",
        "prompt": PROMPT,
        "guidance_scale": GUIDANCE,
        "image_guidance_scale": IMAGE_GUIDANCE,
    }


def measure_editor(
    editor: Any, sizes: Sizes, device: str, budget: Budget, work: Path
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The uncompiled configs, batch invariance and the I/O run, all on one editor."""
    gen = generation_settings(sizes, device)
    inv = run_uncompiled(editor, sizes, device, budget, gen)
    batch16 = gen.get("shiftlab_batch16", {})
    rate = batch16.get("patches_per_s")
    editor_s = sizes.io_editor_s or (3 * sizes.io_sources / rate if rate else 30.0)
    need = editor_s + 0.3 * sizes.io_sources + 20  # + reading, resizing, encoding, writing

    def run() -> dict[str, Any]:
        return run_io(editor, sizes, device, work, batch16)

    io = guarded(budget, "io", need, IO_KEYS, run)
    log.info("io: %s", io)
    return gen, inv, io


def run_generation(
    args: argparse.Namespace, sizes: Sizes, device: str, budget: Budget, work: Path
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Build and load the pipeline, measure on it, then free the GPU for training."""
    model, build_s = build_pipeline(work, args.model, args.tiny)
    editor, load_s = load_editor(model, device, False, sizes.steps)
    setup = {
        "build_pipeline_s": None if build_s is None else round(build_s, 3),
        "load_editor_s": round(load_s, 3),
    }
    gen, inv, io = measure_editor(editor, sizes, device, budget, work)
    del editor
    free(device)
    return setup, gen, inv, io


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny pipeline and sizes (CPU run)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget")
    parser.add_argument("--model", type=Path, help="an existing pipeline directory to load")
    parser.add_argument("--work", type=Path, help="work directory (default: a temp dir)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    budget = Budget(args.budget_s)
    config_classes, drift = prepare_imports()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible (use --device cpu --tiny)")
    if args.device == "cpu":
        import cv2

        # One thread: on a shared machine OpenMP threads that wait on each other make a tiny
        # pipeline call 100x slower (11 s instead of 0.05 s, seen at load 12 on 2 cores).
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
    sizes = TINY if args.tiny else FULL
    work = args.work or Path(tempfile.mkdtemp(prefix="shiftlab-bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    figures = header(args, args.device, config_classes, drift)
    figures["setup"] = {"import_s": round(time.perf_counter() - budget.start, 3)}
    setup, gen, inv, io = run_generation(args, sizes, args.device, budget, work)
    figures["setup"].update(setup)
    figures["training"] = run_training(sizes, args.device, budget)
    model = args.model or work / ("tiny-ip2p" if args.tiny else "full-ip2p")
    figures["setup"]["load_compiled_editor_s"] = run_compiled(
        model, sizes, args.device, budget, gen
    )
    add_speedups({k: v for k, v in gen.items() if k in GEN_CONFIGS})
    figures.update(generation=gen, batch_invariance=inv, io=io)
    figures["skipped"] = budget.skipped
    figures["wall_s"] = round(time.perf_counter() - budget.start, 3)
    print(json.dumps(figures, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
