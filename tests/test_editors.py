"""Editors: InstructPix2Pix on a tiny random-weight pipeline, the photometric editor, configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from shiftlab.config.generate import GenerateConfig, InstructPix2PixConfig, PhotometricConfig
from shiftlab.config.presets import PRESETS
from shiftlab.generate.editors import Editor, build_editor
from shiftlab.generate.pipeline_builder import (
    build_tiny_instruct_pix2pix,
    full_configs,
    tokenizer_files,
    write_tokenizer_files,
)
from shiftlab.utils.errors import ConfigError, DataError

PROMPT = "Make it evening"


def _image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth scene-like image (gradients + texture), so effects act on structure."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    base = np.stack([xx / w * 180 + 40, yy / h * 160 + 50, (xx + yy) / (w + h) * 140 + 70], -1)
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a shared, oversubscribed CPU, spinning OpenMP threads make the
    tiny pipeline 20x slower than running it on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> str:
    return str(build_tiny_instruct_pix2pix(tmp_path_factory.mktemp("ip2p") / "tiny", seed=0))


@pytest.fixture(scope="module")
def ip2p(tiny_pipeline):
    cfg = InstructPix2PixConfig(
        model=tiny_pipeline, steps=2, guidance_scale=7.5, image_guidance_scale=1.5, batch_size=4
    )
    return build_editor(cfg, device="cpu")


# ---------------------------------------------------------------- pipeline builder


def test_tiny_pipeline_is_a_real_diffusers_directory(tiny_pipeline) -> None:
    from diffusers import StableDiffusionInstructPix2PixPipeline

    index = json.loads((__import__("pathlib").Path(tiny_pipeline) / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInstructPix2PixPipeline"
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(tiny_pipeline)
    assert pipe.unet.config.in_channels == 8
    assert pipe.vae_scale_factor == 8
    ids = pipe.tokenizer(PROMPT).input_ids
    vocab, _ = tokenizer_files()
    assert ids[0] == vocab["<|startoftext|>"] and ids[-1] == vocab["<|endoftext|>"]
    assert vocab["ma"] in ids and vocab["ke</w>"] in ids  # merges were applied


def test_tokenizer_files_load_with_clip_tokenizer(tmp_path) -> None:
    from transformers import CLIPTokenizer

    write_tokenizer_files(tmp_path)
    assert (tmp_path / "merges.txt").read_text().startswith("#version")
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    assert tok.decode(tok("make it rain").input_ids, skip_special_tokens=True) == "make it rain"


def test_full_pipeline_config_has_sd15_shapes() -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = full_configs()
    assert cfg["unet"]["block_out_channels"] == (320, 640, 1280, 1280)
    assert cfg["unet"]["cross_attention_dim"] == 768 and cfg["unet"]["in_channels"] == 8
    assert cfg["vae"]["block_out_channels"] == (128, 256, 512, 512)
    assert (
        cfg["text_encoder"]["hidden_size"] == 768 and cfg["text_encoder"]["num_hidden_layers"] == 12
    )
    # Built on the meta device (no memory): parameter counts are SD-1.5's (UNet +8-channel conv_in).
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg["unet"])
        vae = AutoencoderKL(**cfg["vae"])
        text = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(unet) == 859_520_964 + 4 * 320 * 9
    assert count(vae) == 83_653_863
    assert count(text) == 123_060_480


# ---------------------------------------------------------------- InstructPix2Pix


def test_ip2p_output_shape_dtype_and_protocol(ip2p) -> None:
    images = [_image(64, 64, 0), _image(32, 48, 1)]  # mixed sizes in one call
    out = ip2p.edit(images, PROMPT, [1, 2])
    assert isinstance(ip2p, Editor)
    assert [o.shape for o in out] == [(64, 64, 3), (32, 48, 3)]
    assert all(o.dtype == np.uint8 for o in out)
    assert not np.array_equal(out[0], images[0])


def test_ip2p_deterministic_per_seed_and_varies(ip2p) -> None:
    image = _image(32, 32, 0)
    a = ip2p.edit([image], PROMPT, [11])[0]
    b = ip2p.edit([image], PROMPT, [11])[0]
    assert np.array_equal(a, b)
    other_seed = ip2p.edit([image], PROMPT, [12])[0]
    other_prompt = ip2p.edit([image], "What would it look like if it were snowing?", [11])[0]
    assert np.abs(a.astype(int) - other_seed).mean() > 1.0
    assert np.abs(a.astype(int) - other_prompt).mean() > 1.0


def test_ip2p_result_does_not_depend_on_batch(ip2p) -> None:
    images = [_image(32, 32, i) for i in range(5)]  # 5 with batch_size 4: calls of 4 and 1
    seeds = [100 + i for i in range(5)]
    batched = ip2p.edit_float(images, PROMPT, seeds)
    alone = [ip2p.edit_float([im], PROMPT, [s])[0] for im, s in zip(images, seeds, strict=True)]
    for x, y in zip(batched, alone, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-4, rtol=0)
    # and reordered within a batch
    reordered = ip2p.edit_float(images[::-1], PROMPT, seeds[::-1])[::-1]
    for x, y in zip(reordered, alone, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-4, rtol=0)


def test_ip2p_rejects_sizes_not_multiple_of_8(ip2p) -> None:
    with pytest.raises(DataError, match="multiples of 8"):
        ip2p.edit([_image(60, 64, 0)], PROMPT, [0])
    with pytest.raises(ValueError, match="seed"):
        ip2p.edit([_image(64, 64, 0)], PROMPT, [0, 1])


def test_ip2p_scheduler_swap(tiny_pipeline) -> None:
    cfg = InstructPix2PixConfig(model=tiny_pipeline, steps=2, scheduler="ddim", batch_size=2)
    editor = build_editor(cfg, device="cpu")
    assert type(editor.pipe.scheduler).__name__ == "DDIMScheduler"
    assert editor.guidance_scale == 7.5 and editor.image_guidance_scale == 1.5  # diffusers defaults
    assert editor.edit([_image(32, 32, 0)], PROMPT, [0])[0].shape == (32, 32, 3)


def test_ip2p_missing_model_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        build_editor(InstructPix2PixConfig(model=str(tmp_path / "nope")), device="cpu")
    with pytest.raises(ConfigError, match="model_index.json"):
        build_editor(InstructPix2PixConfig(model=str(tmp_path)), device="cpu")


# ---------------------------------------------------------------- photometric


@pytest.mark.parametrize("effect", ["night", "fog", "rain", "snow", "sunset", "game"])
def test_photometric_deterministic_and_seeded(effect) -> None:
    editor = build_editor(PhotometricConfig(effect=effect))
    image = _image(64, 128, 0)
    a = editor.edit([image], "", [5])[0]
    assert a.shape == image.shape and a.dtype == np.uint8
    assert np.array_equal(a, editor.edit([image], "", [5])[0])
    assert not np.array_equal(a, editor.edit([image], "", [6])[0])
    assert not np.array_equal(a, image)
    # strength 0 leaves the image unchanged
    same = build_editor(PhotometricConfig(effect=effect, strength=0.0)).edit([image], "", [5])[0]
    assert np.array_equal(same, image)


def _luma(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _saturation(x: np.ndarray) -> float:
    f = x.astype(np.float32)
    return float((f.max(-1) - f.min(-1)).mean())


def test_photometric_effects_move_the_image_as_expected() -> None:
    image = _image(128, 256, 1)
    out = {
        e: build_editor(PhotometricConfig(effect=e)).edit([image], "", [3])[0]
        for e in ["night", "fog", "rain", "snow", "sunset", "game"]
    }
    lum = _luma(image)
    assert _luma(out["night"]).mean() < 0.5 * lum.mean()
    night_rgb = out["night"].reshape(-1, 3).mean(0)
    assert night_rgb[2] > night_rgb[0]  # blue shift
    assert _luma(out["fog"]).std() < 0.6 * lum.std()  # lower contrast
    assert _luma(out["fog"]).mean() > lum.mean()  # toward a bright airlight
    assert _luma(out["snow"]).mean() > lum.mean() + 10
    assert _luma(out["rain"]).mean() < lum.mean()
    s_in = image.reshape(-1, 3).mean(0)
    s_out = out["sunset"].reshape(-1, 3).mean(0)
    assert s_out[0] / s_out[2] > 1.3 * s_in[0] / s_in[2]  # warmer
    assert _saturation(out["game"]) > _saturation(image)


def test_photometric_needs_an_effect() -> None:
    with pytest.raises(ConfigError, match="effect"):
        build_editor(PhotometricConfig())


# ---------------------------------------------------------------- config and presets


def test_presets_are_sdgpa_values() -> None:
    table = {n: (p.prompt, p.guidance_scale, p.image_guidance_scale) for n, p in PRESETS.items()}
    assert table == {
        "night": ("Make it evening", 20, 1.7),
        "snow": ("What would it look like if it were snowing?", 15, 1.1),
        "rain": ("make it rain", 20, 2.0),
        "fog": ("Make it foggy", 7.0, 2.0),
        "game": ("have it be a 3d game", 12, 2.0),
    }


def test_preset_names_match_config_literals() -> None:
    import typing

    from shiftlab.config.generate import EffectName, PresetName

    assert set(typing.get_args(PresetName)) == set(PRESETS)
    assert {p.effect for p in PRESETS.values()} <= set(typing.get_args(EffectName))


def test_preset_fills_prompt_and_scales_unless_given() -> None:
    cfg = GenerateConfig.model_validate(
        {"preset": "snow", "editor": {"kind": "instruct-pix2pix", "model": "m"}}
    )
    assert cfg.prompt == "What would it look like if it were snowing?"
    assert (cfg.editor.guidance_scale, cfg.editor.image_guidance_scale) == (15, 1.1)
    assert cfg.modes == ["intermediate", "target"] and cfg.resize == (512, 1024)
    assert cfg.tile == 512 and cfg.overlap == 0 and cfg.seed == 42
    explicit = GenerateConfig.model_validate(
        {
            "preset": "snow",
            "prompt": "make it winter",
            "editor": {"kind": "instruct-pix2pix", "model": "m", "guidance_scale": 3.0},
        }
    )
    assert explicit.prompt == "make it winter"
    assert (explicit.editor.guidance_scale, explicit.editor.image_guidance_scale) == (3.0, 1.1)
    # a config object (not a dict) as editor also gets the preset's values
    from_obj = GenerateConfig(preset="night", editor=InstructPix2PixConfig(model="m"))
    assert from_obj.editor.guidance_scale == 20 and from_obj.prompt == "Make it evening"
    photometric = GenerateConfig.model_validate(
        {"preset": "fog", "editor": {"kind": "photometric"}}
    )
    assert photometric.editor.effect == "fog"
    no_preset = GenerateConfig.model_validate(
        {"prompt": "p", "editor": {"kind": "instruct-pix2pix", "model": "m"}}
    )
    assert no_preset.resolved_editor().guidance_scale == 7.5


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (
            {"preset": "night", "editor": {"kind": "photometric", "effect": "fog"}, "colour": 1},
            "colour",
        ),
        (
            {"preset": "night", "editor": {"kind": "instruct-pix2pix", "model": "m", "stepz": 3}},
            "stepz",
        ),
        (
            {
                "preset": "night",
                "editor": {"kind": "instruct-pix2pix", "model": "m", "guidance_scale": -1},
            },
            "guidance_scale",
        ),
        ({"preset": "night", "editor": {"kind": "photometric", "strength": 1.5}}, "strength"),
        ({"preset": "night", "editor": {"kind": "diffusion"}}, "kind"),
        ({"preset": "dusk", "editor": {"kind": "photometric"}}, "preset"),
        ({"preset": "night", "editor": {"kind": "photometric"}, "overlap": 512}, "overlap"),
        ({"preset": "night", "editor": {"kind": "photometric"}, "tile": 500}, "tile"),
        ({"preset": "night", "editor": {"kind": "photometric"}, "resize": [500, 1000]}, "resize"),
        (
            {"preset": "night", "editor": {"kind": "photometric"}, "modes": ["target", "target"]},
            "modes",
        ),
        ({"preset": "night", "editor": {"kind": "photometric"}, "modes": ["source"]}, "modes"),
        ({"editor": {"kind": "instruct-pix2pix", "model": "m"}}, "prompt"),
        ({"editor": {"kind": "photometric"}}, "effect"),
    ],
)
def test_generate_config_rejects_bad_values(data, match) -> None:
    with pytest.raises(ValidationError, match=match):
        GenerateConfig.model_validate(data)


def test_generate_config_is_frozen() -> None:
    cfg = GenerateConfig.model_validate({"preset": "rain", "editor": {"kind": "photometric"}})
    with pytest.raises(ValidationError):
        cfg.seed = 1  # type: ignore[misc]
