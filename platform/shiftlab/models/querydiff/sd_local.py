"""Write a random-weight Stable Diffusion directory (unet/, vae/, text_encoder/, tokenizer/,
scheduler/) through the real ``save_pretrained`` code, for tests and benchmarks.

``shape="sd2"`` uses the Stable Diffusion 2 (base) UNet and VAE architecture, so memory and speed
measured with it are those of the real model; ``shape="tiny"`` is a few-MB stand-in. The text
encoder is always a one-layer CLIP of the right width, and the tokenizer a character-level CLIP
BPE: only the empty prompt is ever encoded. Nothing is downloaded.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch

from shiftlab.utils.seeding import derive_seed

SD2_UNET: dict[str, Any] = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
)
SD2_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
)
TINY_UNET: dict[str, Any] = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
)
TINY_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(16, 32),
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=32,
)


def _write_tokenizer(out: Path) -> int:
    """A character-level CLIP BPE tokenizer (no merges); returns the vocabulary size."""
    from transformers import CLIPTokenizer

    chars = list("abcdefghijklmnopqrstuvwxyz")
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({f"{c}</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        tok = CLIPTokenizer(
            vocab_file=str(Path(tmp) / "vocab.json"),
            merges_file=str(Path(tmp) / "merges.txt"),
            model_max_length=77,
        )
        tok.save_pretrained(str(out))
    return len(vocab)


def write_random_stable_diffusion(
    path: str | Path, shape: Literal["tiny", "sd2"] = "tiny", seed: int = 0
) -> Path:
    """Save a random-weight SD directory at ``path`` and return it."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = Path(path)
    unet_cfg, vae_cfg = (SD2_UNET, SD2_VAE) if shape == "sd2" else (TINY_UNET, TINY_VAE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "random-stable-diffusion", shape))
        unet: Any = UNet2DConditionModel(**unet_cfg)
        vae: Any = AutoencoderKL(**vae_cfg)
        unet.save_pretrained(root / "unet")
        vae.save_pretrained(root / "vae")
        vocab = _write_tokenizer(root / "tokenizer")
        width = int(unet_cfg["cross_attention_dim"])
        text = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=vocab,
                hidden_size=width,
                intermediate_size=2 * width,
                num_hidden_layers=1,
                num_attention_heads=max(1, width // 64),
                max_position_embeddings=77,
                bos_token_id=vocab - 2,
                eos_token_id=vocab - 1,
                pad_token_id=vocab - 1,
            )
        )
        text.save_pretrained(root / "text_encoder")
    scheduler: Any = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    scheduler.save_pretrained(root / "scheduler")
    return root
