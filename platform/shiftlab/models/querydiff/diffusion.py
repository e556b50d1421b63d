"""Frozen diffusion features D_w / D_s for QueryDiff's guidance.

The image goes through the VAE encoder (latent mean, deterministic), gets noise added by a DDPM
scheduler at the weak and the strong timestep (paper: t=0 and t=100), and both noisy latents run
through the UNet in one batch with the empty-prompt embedding. Forward hooks capture the outputs
of the chosen decoder up-blocks; those maps are average-pooled to the coarsest captured grid and
concatenated on channels.

Nothing here is ever trained: the UNet and VAE have ``requires_grad=False``, run under
``torch.no_grad``, and live *outside* the segmentation model's module tree (so they are not in its
``state_dict``, its checkpoints, DDP's parameter sync, or any optimizer).

Noise is seeded per image from ``derive_seed(seed, <content digest>, t)``: the features of an
input are a function of its pixels only, which is what lets a cache keyed by that digest return
exactly what on-the-fly computation would.

Cache scheme (``features: cached``): one safetensors file per *augmented input tensor*,
``<cache_dir>/<config fingerprint>/<digest[:2]>/<digest>.safetensors``, where the digest is a
BLAKE2b hash of the float32 bytes and shape of the model input, and the fingerprint hashes every
setting that changes the features (model, timesteps, up-blocks, dtype, size, seed). Because all
augmentation in shiftlab is seeded from (seed, sample id, epoch), a re-run, a resumed run and
every Tune trial that shares the data settings feed bit-identical inputs, so they hit the cache;
inside one run, different crops of the same image are different inputs and miss. Files are
written atomically, so concurrent DDP workers can share one directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# The normalisation of every model input (docs/interfaces.md): undone before the VAE.
from shiftlab.config.augment import IMAGENET_MEAN, IMAGENET_STD
from shiftlab.config.querydiff import QueryDiffDiffusionConfig
from shiftlab.models.querydiff.sd_local import TINY_UNET, TINY_VAE
from shiftlab.utils.atomic import atomic_path, write_json
from shiftlab.utils.errors import ConfigError
from shiftlab.utils.seeding import derive_seed

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Width of the tiny model's fixed empty-prompt embedding (its cross-attention dim).
TINY_TEXT_DIM = int(TINY_UNET["cross_attention_dim"])


def _scheduler_defaults() -> dict[str, object]:
    # The Stable Diffusion training schedule (used when a model directory has no scheduler/).
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
    }


def build_tiny_diffusion(seed: int = 0) -> tuple[Any, Any, Any, torch.Tensor]:
    """A tiny random-weight UNet + VAE + scheduler + empty-prompt embedding (no download).

    The weights are drawn from their own seeded generator, so every process builds the same
    tiny model (cached features stay valid across runs) and the global RNG is untouched.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "querydiff-tiny-diffusion"))
        unet = UNet2DConditionModel(**TINY_UNET)
        vae = AutoencoderKL(**TINY_VAE)
        # A fixed stand-in for the text encoder's output on "" (77 tokens, like CLIP).
        empty = torch.randn(1, 77, TINY_TEXT_DIM)
    return unet, vae, DDPMScheduler(**_scheduler_defaults()), empty


def load_stable_diffusion(
    model_dir: str, dtype: torch.dtype
) -> tuple[nn.Module, nn.Module, object, torch.Tensor]:
    """UNet, VAE, scheduler and the empty-prompt embedding from a local SD-2 directory."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    root = Path(model_dir).expanduser()
    for sub in ("unet", "vae", "text_encoder", "tokenizer"):
        if not (root / sub).is_dir():
            raise ConfigError(
                f"model.diffusion.model_dir: {root} has no {sub}/ folder (expected a Stable "
                "Diffusion directory with unet/, vae/, text_encoder/, tokenizer/)"
            )
    unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", torch_dtype=dtype)
    vae = AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=dtype)
    if (root / "scheduler").is_dir():
        scheduler = DDPMScheduler.from_pretrained(root, subfolder="scheduler")
    else:
        scheduler = DDPMScheduler(**_scheduler_defaults())
    # The empty-prompt embedding is computed once; the text encoder is dropped afterwards.
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(root / "text_encoder")
    ids = tokenizer(
        [""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        empty = encoder(ids)[0].float()
    del encoder
    return unet, vae, scheduler, empty


def unet_block_widths(cfg: QueryDiffDiffusionConfig) -> list[int]:
    """The UNet's ``block_out_channels`` from its config alone (no weights are loaded)."""
    if cfg.tiny:
        return [int(c) for c in TINY_UNET["block_out_channels"]]
    if not cfg.model_dir:
        raise ConfigError("model.diffusion: set model_dir or tiny: true")
    path = Path(cfg.model_dir).expanduser() / "unet" / "config.json"
    try:
        return [int(c) for c in json.loads(path.read_text())["block_out_channels"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"model.diffusion.model_dir: cannot read the UNet's block_out_channels from {path} "
            f"({exc}); expected a Stable Diffusion directory with unet/, vae/, text_encoder/, "
            "tokenizer/"
        ) from None


def feature_channels(cfg: QueryDiffDiffusionConfig, widths: list[int] | None = None) -> int:
    """Channels of the concatenated up-block features; checks ``up_blocks`` against the UNet."""
    widths = list(reversed(widths if widths is not None else unet_block_widths(cfg)))
    bad = [b for b in cfg.up_blocks if b >= len(widths)]
    if bad:
        raise ConfigError(
            f"model.diffusion.up_blocks: {list(cfg.up_blocks)} but the UNet has {len(widths)} "
            f"up-blocks (0..{len(widths) - 1})"
        )
    return sum(widths[b] for b in cfg.up_blocks)


def input_digest(image: torch.Tensor) -> str:
    """BLAKE2b of one input tensor's shape and float32 bytes (the cache key)."""
    data = image.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.blake2b(digest_size=20)
    h.update(repr(tuple(data.shape)).encode())
    h.update(data.numpy().tobytes())
    return h.hexdigest()


class DiffusionFeatureExtractor:
    """``extract(x) -> (D_w, D_s)``: float32 (B, C_d, h, w) features of normalised images.

    Deliberately not an ``nn.Module``: holding it as a plain attribute keeps the diffusion
    weights out of the segmentation model's parameters and checkpoints.
    """

    def __init__(self, cfg: QueryDiffDiffusionConfig) -> None:
        self.cfg = cfg
        self.dtype = _DTYPES[cfg.dtype]
        if cfg.tiny:
            unet, vae, scheduler, empty = build_tiny_diffusion(cfg.seed)
            source = "tiny"
        elif cfg.model_dir:
            unet, vae, scheduler, empty = load_stable_diffusion(cfg.model_dir, self.dtype)
            source = str(Path(cfg.model_dir).expanduser().resolve())
        else:
            raise ConfigError("model.diffusion: set model_dir or tiny: true")
        # Cast only when needed: loaded models already carry torch_dtype, and a redundant
        # .to(dtype) makes diffusers warn about modules it keeps in float32.
        if unet.dtype != self.dtype:
            unet = unet.to(self.dtype)
        if vae.dtype != self.dtype:
            vae = vae.to(self.dtype)
        # diffusers models and scheduler (their config attributes are read by name).
        self.unet: Any = unet.eval().requires_grad_(False)
        self.vae: Any = vae.eval().requires_grad_(False)
        self.scheduler: Any = scheduler
        self.empty = empty.to(self.dtype)
        self.channels = feature_channels(cfg, list(self.unet.config.block_out_channels))
        self.blocks = tuple(sorted(cfg.up_blocks))
        # VAE downsampling x UNet downsampling: image sides must be multiples of this.
        self.multiple = 2 ** (len(self.vae.config.block_out_channels) - 1) * 2 ** (
            len(self.unet.config.block_out_channels) - 1
        )
        self._captured: dict[int, torch.Tensor] = {}
        for b in self.blocks:
            self.unet.up_blocks[b].register_forward_hook(self._hook(b))
        self.fingerprint = hashlib.blake2b(
            json.dumps(
                {
                    "source": source,
                    # Private keys ("_use_default_values" is a list in set order, which
                    # differs per process) would give every DDP worker its own fingerprint.
                    "unet": {k: v for k, v in self.unet.config.items() if not k.startswith("_")},
                    "timesteps": list(cfg.timesteps),
                    "up_blocks": list(self.blocks),
                    "dtype": cfg.dtype,
                    "image_size": cfg.image_size,
                    "seed": cfg.seed,
                },
                sort_keys=True,
                default=str,
            ).encode(),
            digest_size=8,
        ).hexdigest()
        self.device = torch.device("cpu")

    def __deepcopy__(self, memo: dict[int, object]) -> DiffusionFeatureExtractor:
        # Frozen and stateless between calls: a deep copy of the model (an EMA teacher, say)
        # shares it instead of duplicating GBs of weights whose hooks would point back here.
        return self

    def _hook(self, index: int):  # noqa: ANN202 - a torch hook closure
        def capture(_module: nn.Module, _args: object, output: torch.Tensor) -> None:
            self._captured[index] = output

        return capture

    def parameters(self) -> list[nn.Parameter]:
        """The frozen UNet and VAE parameters (for checks; never optimised)."""
        return [*self.unet.parameters(), *self.vae.parameters()]

    def to(self, device: torch.device) -> DiffusionFeatureExtractor:
        if device != self.device:
            self.unet.to(device)
            self.vae.to(device)
            self.empty = self.empty.to(device)
            self.device = device
        return self

    # -- computation ------------------------------------------------------------------------

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        img = (x.float() * std + mean).clamp(0.0, 1.0) * 2.0 - 1.0
        if self.cfg.image_size is not None:
            h = w = self.cfg.image_size
        else:
            h, w = img.shape[-2:]
        # Round up to the nearest size the VAE + UNet can take without cropping.
        m = self.multiple
        size = (math.ceil(h / m) * m, math.ceil(w / m) * m)
        if size != tuple(img.shape[-2:]):
            img = F.interpolate(img, size=size, mode="bilinear", align_corners=False)
        return img.to(self.dtype)

    @torch.no_grad()
    def compute(self, x: torch.Tensor, digests: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run VAE + UNet on ``x`` (no cache)."""
        self.to(x.device)
        img = self._prepare(x)
        latents = self.vae.encode(img).latent_dist.mean * self.vae.config.scaling_factor
        t_weak, t_strong = self.cfg.timesteps
        noisy, steps = [], []
        for t in (t_weak, t_strong):
            noise = torch.stack(
                [
                    torch.randn(
                        latents.shape[1:],
                        generator=torch.Generator().manual_seed(
                            derive_seed(self.cfg.seed, "querydiff-noise", d, t)
                        ),
                    )
                    for d in digests
                ]
            ).to(latents.device, latents.dtype)
            ts = torch.full((len(digests),), t, dtype=torch.long, device=latents.device)
            noisy.append(self.scheduler.add_noise(latents, noise, ts))
            steps.append(ts)
        batch = torch.cat(noisy)
        text = self.empty.expand(batch.shape[0], -1, -1)
        self._captured.clear()
        try:
            self.unet(batch, torch.cat(steps), encoder_hidden_states=text)
            maps = [self._captured[b] for b in self.blocks]
        finally:
            self._captured.clear()
        grid = min((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        size = (int(grid[0]), int(grid[1]))
        feats = torch.cat([F.adaptive_avg_pool2d(m.float(), size) for m in maps], dim=1)
        weak, strong = feats.chunk(2, dim=0)
        return weak.contiguous(), strong.contiguous()

    def extract(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """D_w, D_s for a batch of normalised images, through the cache when configured."""
        digests = [input_digest(img) for img in x]
        if self.cfg.features != "cached":
            return self.compute(x, digests)
        return self._cached(x, digests)

    # -- cache ------------------------------------------------------------------------------

    def cache_root(self) -> Path:
        assert self.cfg.cache_dir is not None
        return Path(self.cfg.cache_dir).expanduser() / self.fingerprint

    def _cache_file(self, digest: str) -> Path:
        return self.cache_root() / digest[:2] / f"{digest}.safetensors"

    def _load(self, digest: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        from safetensors.torch import load_file

        file = self._cache_file(digest)
        if not file.is_file():
            return None
        try:
            data = load_file(str(file))
            return data["weak"].float(), data["strong"].float()
        except Exception as exc:  # noqa: BLE001 - any unreadable entry is recomputed
            log.warning("querydiff: unreadable cache entry %s (%s); recomputing", file, exc)
            return None

    def _store(self, digest: str, weak: torch.Tensor, strong: torch.Tensor) -> None:
        from safetensors.torch import save_file

        dtype = _DTYPES[self.cfg.cache_dtype]
        with atomic_path(self._cache_file(digest)) as tmp:
            save_file(
                {
                    "weak": weak.detach().to("cpu", dtype).contiguous(),
                    "strong": strong.detach().to("cpu", dtype).contiguous(),
                },
                str(tmp),
            )

    def _cached(self, x: torch.Tensor, digests: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        root = self.cache_root()
        if not (root / "fingerprint.json").is_file():
            write_json(
                root / "fingerprint.json",
                {"fingerprint": self.fingerprint, "config": self.cfg.model_dump(mode="json")},
            )
        found = [self._load(d) for d in digests]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            weak, strong = self.compute(x[missing], [digests[i] for i in missing])
            for j, i in enumerate(missing):
                self._store(digests[i], weak[j], strong[j])
                found[i] = self._load(digests[i]) or (weak[j], strong[j])
        weak_all = torch.stack([f[0] for f in found if f is not None]).to(x.device)
        strong_all = torch.stack([f[1] for f in found if f is not None]).to(x.device)
        return weak_all, strong_all
