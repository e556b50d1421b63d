"""Random-weight InstructPix2Pix pipeline directories, built locally (nothing is downloaded).

- `build_tiny_instruct_pix2pix`: a few-hundred-kB pipeline for tests and the CPU demo; it loads
  back through `StableDiffusionInstructPix2PixPipeline.from_pretrained(path)` like the real one.
- `build_full_instruct_pix2pix`: the SD-1.5 / InstructPix2Pix architecture (UNet with 8 input
  channels, 320/640/1280/1280; VAE 128/256/512/512; CLIP ViT-L/14 text encoder) with random
  weights, so GPU throughput can be measured where the real weights cannot be fetched. Its
  outputs are noise; its cost per step is the real model's.

The tokenizer is a small byte-level BPE whose `vocab.json` / `merges.txt` are written here.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from shiftlab.utils import atomic

_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"
# A few merges so the tokenizer really merges (words of the SDGPA prompts); the rest of the
# text falls back to single byte symbols, each of which is in the vocabulary.
_MERGES = [
    ("t", "h"),
    ("th", "e</w>"),
    ("i", "t</w>"),
    ("m", "a"),
    ("k", "e</w>"),
    ("r", "a"),
    ("i", "n"),
]

# Scheduler of timbrooks/instruct-pix2pix: Euler ancestral on SD's scaled-linear betas.
_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for the bytes 0..255, in byte order.

    Printable latin-1 bytes stand for themselves; the others are shifted past 255 so that no
    symbol is whitespace or a control character (the GPT-2/CLIP convention).
    """
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    symbols, extra = [], 0
    for b in range(256):
        if b in keep:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def tokenizer_files() -> tuple[dict[str, int], list[str]]:
    """The vocabulary and the merge lines (with the ``#version`` header) of the local tokenizer."""
    tokens = _byte_symbols()
    tokens += [s + "</w>" for s in _byte_symbols()]
    tokens += [a + b for a, b in _MERGES]
    tokens += [_BOS, _EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    merges = ["#version: 0.2"] + [f"{a} {b}" for a, b in _MERGES]
    return vocab, merges


def write_tokenizer_files(directory: str | os.PathLike[str]) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` of the local CLIP BPE tokenizer into ``directory``."""
    out = Path(directory)
    vocab, merges = tokenizer_files()
    atomic.write_text(out / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    atomic.write_text(out / "merges.txt", "\n".join(merges) + "\n")
    return out


def tiny_configs() -> dict[str, dict[str, Any]]:
    """Constructor kwargs of the tiny pipeline's UNet, VAE and text encoder."""
    vocab, _ = tokenizer_files()
    text_hidden = 32
    return {
        "unet": {
            "sample_size": 8,
            "in_channels": 8,  # 4 noisy latent + 4 image latent channels (InstructPix2Pix)
            "out_channels": 4,
            "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
            "block_out_channels": (32, 64),
            "layers_per_block": 1,
            "cross_attention_dim": text_hidden,
            "attention_head_dim": 8,
            "norm_num_groups": 32,
        },
        "vae": {
            "in_channels": 3,
            "out_channels": 3,
            # Four blocks keep SD's 8x downsampling, so patch sizes follow the real rules.
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4,
            "block_out_channels": (8, 16, 16, 16),
            "layers_per_block": 1,
            "norm_num_groups": 8,
            "latent_channels": 4,
            "sample_size": 64,
        },
        "text_encoder": {
            "vocab_size": len(vocab),
            "hidden_size": text_hidden,
            "intermediate_size": 64,
            "projection_dim": text_hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
            "bos_token_id": vocab[_BOS],
            "eos_token_id": vocab[_EOS],
            "pad_token_id": vocab[_EOS],
        },
    }


def full_configs() -> dict[str, dict[str, Any]]:
    """Constructor kwargs with the shapes of SD-1.5 / timbrooks/instruct-pix2pix."""
    vocab, _ = tokenizer_files()
    return {
        "unet": {
            "sample_size": 64,
            "in_channels": 8,
            "out_channels": 4,
            "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            "block_out_channels": (320, 640, 1280, 1280),
            "layers_per_block": 2,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
            "norm_num_groups": 32,
        },
        "vae": {
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4,
            "block_out_channels": (128, 256, 512, 512),
            "layers_per_block": 2,
            "norm_num_groups": 32,
            "latent_channels": 4,
            "sample_size": 512,
            "scaling_factor": 0.18215,
        },
        # CLIP ViT-L/14's text tower. Token ids of the small local vocabulary all fall inside
        # its 49,408-entry embedding, so the cost per token is the real one.
        "text_encoder": {
            "vocab_size": 49408,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "projection_dim": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
            "bos_token_id": vocab[_BOS],
            "eos_token_id": vocab[_EOS],
            "pad_token_id": vocab[_EOS],
        },
    }


def _build(path: str | os.PathLike[str], configs: dict[str, dict[str, Any]], seed: int) -> Path:
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp directory and rename it into place: a killed build never leaves
    # a half-written pipeline behind that a later run would try to load.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tok_dir = write_tokenizer_files(staging / "_tokenizer_src")
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77)
        # Weights come from torch's global generator: fork it so callers' RNG state is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = UNet2DConditionModel(**configs["unet"])
            vae = AutoencoderKL(**configs["vae"])
            text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
        pipe = StableDiffusionInstructPix2PixPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=EulerAncestralDiscreteScheduler(**_SCHEDULER),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(staging)  # type: ignore[attr-defined]  # DiffusionPipeline's
        shutil.rmtree(tok_dir)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def build_tiny_instruct_pix2pix(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a tiny random-weight InstructPix2Pix pipeline to ``path`` (seconds on CPU)."""
    return _build(path, tiny_configs(), seed)


def build_full_instruct_pix2pix(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a random-weight pipeline with SD-1.5 shapes (~1.07B parameters, ~4 GB fp32)."""
    return _build(path, full_configs(), seed)
