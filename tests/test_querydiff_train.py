"""QueryDiff through the shared Ray Train loop: 2 DDP workers on a real local Ray, checkpoints,
evaluation of the selected model, and the diffusion-feature cache inside training.

Tiny on purpose (depth-4 / 64-wide ViT, tiny random UNet + VAE, 8 queries, 64x64 procedural
scenes, 2 steps per worker): these tests check the plumbing, not accuracy.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from shiftlab.config.loader import deep_merge, validate_dict
from shiftlab.models.checkpoint import load_model, read_meta

pytestmark = pytest.mark.slow

SIZE = [64, 64]


@pytest.fixture
def tmp_path():
    # Outside pytest's basetemp rotation (see test_train.py): Ray tests run for a while.
    with tempfile.TemporaryDirectory(prefix="shiftlab-test-querydiff-") as tmp:
        yield Path(tmp)


def procedural(split: str, condition: str, name: str | None = None) -> dict[str, Any]:
    # 8 train layouts: 4 per worker, 2 steps of batch 2; 2 val and 2 test layouts.
    spec = {
        "format": "procedural",
        "split": split,
        "condition": condition,
        "layouts": 8,
        "appearances": ["noon", "night", "fog"],
        "size": SIZE,
    }
    return {**spec, "name": name} if name else spec


def tiny_querydiff(diffusion: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": "querydiff",
        "backbone": "vit_small_patch14_dinov2",
        "pretrained": "none",
        "backbone_kwargs": {"depth": 4, "embed_dim": 64, "num_heads": 2},
        "img_size": 56,
        "feature_blocks": [0, 1, 2, 3],
        "adapter_tokens": 8,
        "adapter_rank": 4,
        "num_queries": 8,
        "hidden_dim": 32,
        "num_heads": 4,
        "ffn_dim": 64,
        "decoder_layers": 2,
        # The teacher sees 32x32 inputs (16x16 latents): attention at 32x32 latents was most
        # of a training step on CPU.
        "diffusion": {"tiny": True, "up_blocks": [0, 1], "image_size": 32, **(diffusion or {})},
    }


def experiment(tmp: Path, name: str, **sections: Any):
    base: dict[str, Any] = {
        "name": name,
        "seed": 0,
        "output_dir": str(tmp / "runs"),
        "data": {
            "source": procedural("train", "noon"),
            "val": [procedural("val", "noon", "noon_val")],
            "test": [
                procedural("test", "night", "night_test"),
                procedural("test", "fog", "fog_test"),
            ],
        },
        "model": tiny_querydiff(),
        "method": {"name": "querydiff", "num_points": 256},
        "optim": {
            "optimizer": "adamw",
            "lr": 1e-4,
            "weight_decay": 0.05,
            "schedule": "poly",
            "step_per": "iter",
        },
        "train": {
            "epochs": 1,
            "batch_size": 2,
            "iters_per_epoch": 2,
            "num_workers": 2,
            "cpus_per_worker": 0.49,
            "max_failures": 0,
            "augment": {"crop": SIZE},
        },
        "evaluate": {"window": [48, 48], "window_stride": [32, 32], "overlays": 1},
        "tracking": {"enabled": False},
    }
    return validate_dict(deep_merge(base, sections), f"test experiment {name}")


def test_querydiff_trains_on_two_workers_and_evaluates(ray_local, tmp_path) -> None:
    from shiftlab.train.experiment import run_experiment

    cfg = experiment(tmp_path, "querydiff_ddp")
    summary = run_experiment(cfg)

    # Selected on noon val, reported on the unseen appearances; slide inference at eval.
    assert summary["epochs"] == 1 and summary["best_epoch"] == 1
    for key in ("val/noon_val/miou", "test/night_test/miou", "test/fog_test/miou", "test_miou"):
        assert 0.0 <= summary[key] <= 1.0 and summary[key] == summary[key], key
    run_dir = Path(summary["run_dir"])
    for name in ("noon_val", "night_test", "fog_test"):
        assert (run_dir / "eval" / name / "metrics.json").is_file()

    # Both ranks trained every step with every loss term (guidance included).
    best = {
        **read_meta(run_dir / "best"),
        "model": load_file(str(run_dir / "best" / "model.safetensors")),
    }
    metrics = best["metrics"]
    assert metrics["train/steps"] == 2
    for key in (
        "train/loss",
        "train/loss_ce",
        "train/loss_mask",
        "train/loss_dice",
        "train/kl",
        "train/huber",
    ):
        assert torch.isfinite(torch.tensor(metrics[key])) and metrics[key] > 0, key

    # The checkpoint holds the trainable model and the frozen ViT, never the diffusion model.
    keys = best["model"].keys()
    assert any(k.startswith("backbone.adapters.") for k in keys)
    assert any(k.startswith("backbone.vit.") for k in keys)
    assert not any(k.startswith(("module.", "_diffusion", "unet", "vae")) for k in keys)

    loaded = load_model(run_dir / "best")
    model, loaded_cfg = loaded.network, loaded.config
    assert loaded_cfg.model.name == "querydiff" and not model.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, best["model"][k], rtol=0, atol=0)
    # Training moved the adapters away from their zero-initialised output projection.
    assert best["model"]["backbone.adapters.delta.weight"].abs().sum() > 0
    with torch.no_grad():
        out = model(torch.zeros(1, 3, *SIZE))
    assert out["logits"].shape == (1, 19, *SIZE) and torch.isfinite(out["logits"]).all()
    assert "guidance_losses" not in out
    # Inference never built the diffusion model (evaluation does not need SD-2 loaded).
    assert model._diffusion is not None and model._diffusion.extractor is None


def test_cached_diffusion_features_inside_the_loop(ray_local, tmp_path) -> None:
    from shiftlab.train import run_training

    cache = tmp_path / "runs" / "querydiff_cached" / "diffusion_cache"
    cfg = experiment(
        tmp_path,
        "querydiff_cached",
        model=tiny_querydiff({"features": "cached", "cache_dir": str(cache)}),
        data={"test": []},
    )
    result = run_training(cfg)
    assert result.epochs == 1 and result.best_dir.is_dir()
    assert result.metrics["train/kl"] > 0 and result.metrics["train/huber"] > 0
    # Each rank's 2 steps of batch 2 are 4 distinct augmented inputs: 8 entries, written by
    # both workers into the one directory under the run folder.
    entries = sorted(cache.rglob("*.safetensors"))
    assert len(entries) == 8, entries
    assert len(list(cache.glob("*/fingerprint.json"))) == 1
    # Validation never reads diffusion features (no guidance at inference).
    state = read_meta(result.best_dir)
    assert state["metrics"]["val_miou"] >= 0.0


def test_querydiff_search_space_validates_against_the_shipped_experiment() -> None:
    """Sweeps vary QueryDiff's loss weights and teacher like any other key (checked up front)."""
    from shiftlab.config import load_experiment
    from shiftlab.sweep.space import parse_space, validate_space
    from shiftlab.utils.errors import ConfigError

    experiment_file = Path(__file__).parent.parent / "experiments" / "querydiff_procedural_dg.yaml"
    cfg = load_experiment(experiment_file)
    space = parse_space(
        {
            "parameters": {
                "method.kl_weight": {"grid": [0.0, 1.0]},
                "method.huber_weight": {"loguniform": [0.1, 10.0]},
                "model.diffusion.timesteps": {"choice": [[0, 100], [0, 200]]},
                "model.guidance": {"choice": [True, False]},
            }
        },
        "space.yaml",
    )
    validate_space(space, cfg, "querydiff_procedural_dg")
    bad = parse_space({"parameters": {"method.kl_weight": {"grid": [1.0, 1000.0]}}}, "bad.yaml")
    with pytest.raises(ConfigError, match="kl_weight"):
        validate_space(bad, cfg, "querydiff_procedural_dg")
