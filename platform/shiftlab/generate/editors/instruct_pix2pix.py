"""InstructPix2Pix through diffusers' `StableDiffusionInstructPix2PixPipeline`.

One pipeline call edits a batch of equal-sized patches. Each patch gets its own
`torch.Generator` seeded with its own seed: diffusers then draws each sample's initial noise
and each ancestral-step noise from that sample's generator alone, and every other part of the
pipeline (VAE encode via the latent mode, UNet, guidance) works per sample, so a patch's result
does not depend on which other patches share its batch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shiftlab.config.generate import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_IMAGE_GUIDANCE_SCALE,
    InstructPix2PixConfig,
)
from shiftlab.generate.editors.base import check_inputs
from shiftlab.utils.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def resolve_device(device: str | None) -> torch.device:
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is fp16 on CUDA (SDGPA's setting) and fp32 on CPU (fp16 kernels are slow there)."""
    import torch

    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _looks_like_path(model: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else with separators is meant as a path.
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


def load_pipeline(model: str, dtype: torch.dtype) -> Any:
    """Load an InstructPix2Pix pipeline from a directory or hub id, safety checker off."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    local = Path(model).expanduser()
    if not local.exists() and _looks_like_path(model):
        raise ConfigError(
            f"generate.editor.model: pipeline directory {model!r} does not exist "
            "(build a random-weight one with shiftlab.generate.pipeline_builder)"
        )
    source = str(local) if local.exists() else model
    try:
        return StableDiffusionInstructPix2PixPipeline.from_pretrained(
            source, dtype=dtype, safety_checker=None, requires_safety_checker=False
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"generate.editor.model: cannot load an InstructPix2Pix pipeline from {model!r}: {exc}"
        ) from exc


def make_scheduler(name: str, config: Any) -> Any:
    """A scheduler of the named family built from the pipeline's own scheduler config."""
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
    )

    if name == "euler_ancestral":
        return EulerAncestralDiscreteScheduler.from_config(config)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
    raise ConfigError(f"generate.editor.scheduler: unknown scheduler {name!r}")


class InstructPix2PixEditor:
    """Edits patches with InstructPix2Pix; device, dtype and pipeline options set up once."""

    def __init__(self, cfg: InstructPix2PixConfig, device: str | None = None) -> None:
        import torch
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        self.cfg = cfg
        self.batch_size = cfg.batch_size
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        self.guidance_scale = (
            cfg.guidance_scale if cfg.guidance_scale is not None else DEFAULT_GUIDANCE_SCALE
        )
        self.image_guidance_scale = (
            cfg.image_guidance_scale
            if cfg.image_guidance_scale is not None
            else DEFAULT_IMAGE_GUIDANCE_SCALE
        )

        pipe = load_pipeline(cfg.model, self.dtype)
        if cfg.scheduler is not None:
            pipe.scheduler = make_scheduler(cfg.scheduler, pipe.scheduler.config)
        processor_cls = AttnProcessor2_0 if cfg.attention == "sdpa" else AttnProcessor
        pipe.unet.set_attn_processor(processor_cls())
        pipe.vae.set_attn_processor(processor_cls())
        pipe.set_progress_bar_config(disable=True)
        pipe.to(self.device)
        if cfg.compile:
            if self.device.type == "cuda":
                # channels-last convolutions are faster on tensor cores; compile the UNet only
                # (it runs 3x per step, the VAE and text encoder once per call).
                pipe.unet.to(memory_format=torch.channels_last)
                pipe.unet = torch.compile(pipe.unet)
            else:
                log.warning("generate.editor.compile is ignored on %s (GPU only)", self.device)
        self.pipe = pipe
        # The latent is 8x smaller than the image (2 ** number of VAE downsamplings).
        self.size_multiple = int(pipe.vae_scale_factor)

    def _check_sizes(self, images: list[np.ndarray]) -> None:
        m = self.size_multiple
        for i, image in enumerate(images):
            h, w = image.shape[:2]
            if h % m or w % m:
                raise DataError(
                    f"image {i} is {w}x{h} (WxH): InstructPix2Pix needs both sides to be multiples "
                    f"of {m}; resize or tile the source images (generate.resize / generate.tile)"
                )

    def edit_float(
        self, images: list[np.ndarray], prompt: str, seeds: list[int]
    ) -> list[np.ndarray]:
        """The pipeline's float outputs (HxWx3 float32 in [0, 1]), before uint8 rounding."""
        import torch
        from PIL import Image

        check_inputs(images, seeds)
        self._check_sizes(images)
        results: list[np.ndarray | None] = [None] * len(images)
        # One pipeline call needs one size: group by size, then chunk by batch size.
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(image.shape[:2], []).append(i)
        for indices in by_size.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                generators = [
                    torch.Generator(self.device).manual_seed(int(seeds[i])) for i in chunk
                ]
                with torch.inference_mode():
                    out = self.pipe(
                        [prompt] * len(chunk),
                        image=[Image.fromarray(images[i]) for i in chunk],
                        num_inference_steps=self.cfg.steps,
                        guidance_scale=self.guidance_scale,
                        image_guidance_scale=self.image_guidance_scale,
                        generator=generators,
                        output_type="np",
                    )
                for i, result in zip(chunk, out.images, strict=True):
                    results[i] = np.asarray(result, dtype=np.float32)
        return [r for r in results if r is not None]

    def edit(self, images: list[np.ndarray], prompt: str, seeds: list[int]) -> list[np.ndarray]:
        """Edited HxWx3 uint8 images, same sizes as the inputs."""
        return [
            np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
            for x in self.edit_float(images, prompt, seeds)
        ]
