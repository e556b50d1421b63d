"""Evaluation and prediction throughput: sliding windows and flip passes one forward at a time
(before) vs batched into one forward (after, ``evaluate.window_batch``), on the same model and
images, in alternating repeats.

The workload is Cityscapes-shaped: ``--images`` 512x1024 images, 512x512 windows with the
default two-thirds stride (3 windows per image), flip TTA (6 forwards per image before). Both
sides must predict identical maps; the ratio of images/s is printed, and the last line is one
JSON object with every figure.

    python bench/evaluate.py                      # CPU, DeepLabV3+ ResNet-18
    python bench/evaluate.py --device cuda --backbone resnet50 --images 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, list[np.ndarray]]:
    from shiftlab.config.model import DeepLabV3PlusConfig
    from shiftlab.models import create_model

    torch.manual_seed(0)
    model = create_model(
        DeepLabV3PlusConfig(backbone=args.backbone, pretrained="none", output_stride=16), 19
    )
    model = model.to(args.device).eval()
    rng = np.random.default_rng(0)
    h, w = args.hw
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(args.images)]
    return model, images


def predict_all(
    model: torch.nn.Module, images: list[np.ndarray], args: argparse.Namespace, window_batch: int
) -> tuple[float, list[np.ndarray]]:
    from shiftlab.config.run import EvaluateConfig
    from shiftlab.evaluate.inference import predict_logits

    cfg = EvaluateConfig(
        window=(args.window, args.window), flip=True, window_batch=window_batch, batch_size=1
    )
    start = time.perf_counter()
    maps = []
    for image in images:
        logits = predict_logits(model, [image], cfg, 19, device=args.device)
        maps.append(logits.argmax(1)[0].to(torch.uint8).cpu().numpy())
    if args.device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, maps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", default="512x1024")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    args.hw = tuple(int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(args.threads)
    model, images = build(args)
    predict_all(model, images[:1], args, 1)  # warm-up: first-call allocations on both sides
    sides = {"one_forward_per_window": 1, "batched": 16}
    times: dict[str, list[float]] = {name: [] for name in sides}
    maps: dict[str, list[np.ndarray]] = {}
    for rep in range(args.repeats):
        order = list(sides) if rep % 2 == 0 else list(reversed(sides))
        for name in order:
            seconds, maps[name] = predict_all(model, images, args, sides[name])
            times[name].append(seconds)
    rate = {name: args.images / statistics.median(t) for name, t in times.items()}
    same = all(
        np.array_equal(a, b)
        for a, b in zip(maps["one_forward_per_window"], maps["batched"], strict=True)
    )
    figures: dict[str, Any] = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "device": args.device,
        "workload": {
            "images": args.images,
            "size": list(args.hw),
            "window": args.window,
            "flip": True,
            "backbone": args.backbone,
            "threads": args.threads,
            "repeats": args.repeats,
        },
        "images_per_s": rate,
        "speedup": rate["batched"] / rate["one_forward_per_window"],
        "times_s": times,
        "same_predictions": same,
    }
    print(
        f"one forward per window: {rate['one_forward_per_window']:.2f} images/s; batched: "
        f"{rate['batched']:.2f} images/s (x{figures['speedup']:.2f}); identical maps: {same}"
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
