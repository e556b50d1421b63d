"""What keeping generated sets consistent with their sources costs, at SDGPA's 8,925 images.

A generated set copies its labels (a reflink where the filesystem has one) instead of
hard-linking them, and records ``[size, mtime, sha256]`` of every source image and label
(``generate/sources.py``). This measures, on this machine's filesystem:

- placing ``--labels`` Cityscapes-sized label PNGs (2048x1024, blocky regions) into a set by
  hard link (the old way, the baseline), by ``clone_or_copy`` (the new way);
- hashing source files the first time (MB/s over ``--images`` 2048x1024 photo-like PNGs,
  extrapolated to 8,925: writing 20 GB of test images is not done here) and re-checking them
  when nothing changed (a ``stat`` per file).

The last line printed is one JSON object with every figure.

    python bench/sources.py                 # 8,925 labels, 200 images
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

FULL = 8925  # SDGPA's Cityscapes-sized training set, per setting
HASH_THREADS = max(1, min(8, os.cpu_count() or 1))  # as generate/sources.py


def _label(rng: np.random.Generator) -> np.ndarray:
    blocks = rng.integers(0, 34, (64, 128), dtype=np.uint8)  # ~30 KB, like Cityscapes labels
    return np.kron(blocks, np.ones((16, 16), dtype=np.uint8))


def _photo(rng: np.random.Generator) -> np.ndarray:
    base = np.kron(rng.integers(0, 256, (32, 64, 3)), np.ones((32, 32, 1))).astype(np.float32)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def make_files(folder: Path, n: int, kind: str) -> list[Path]:
    """``n`` PNGs; a few distinct contents repeated (what matters is their size on disk)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(8):
        array = _label(rng) if kind == "label" else _photo(rng)
        path = folder / f"proto_{len(encoded)}.png"
        Image.fromarray(array).save(path, compress_level=6)
        encoded.append(path.read_bytes())
        path.unlink()
    paths = []
    for i in range(n):
        path = folder / f"{i:05d}.png"
        path.write_bytes(encoded[i % len(encoded)])
        paths.append(path)
    return paths


def time_placing(paths: list[Path], out: Path, how: str) -> float:
    from shiftlab.utils.atomic import clone_or_copy

    out.mkdir(parents=True)
    start = time.perf_counter()
    for path in paths:
        if how == "hardlink":
            os.link(path, out / path.name)
        else:
            clone_or_copy(path, out / path.name)
    return time.perf_counter() - start


def time_records(paths: list[Path]) -> dict[str, float]:
    from shiftlab.generate.sources import file_record

    start = time.perf_counter()
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        first = list(pool.map(file_record, paths))
    hashed = time.perf_counter() - start
    start = time.perf_counter()
    for path, record in zip(paths, first, strict=True):
        file_record(path, record)
    rechecked = time.perf_counter() - start
    mb = sum(r[0] for r in first) / 1e6
    return {"files": len(paths), "mb": mb, "hash_s": hashed, "recheck_s": rechecked}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--labels", type=int, default=FULL)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="shiftlab-bench-sources-", dir=args.workdir) as tmp:
        work = Path(tmp)
        labels = make_files(work / "labels", args.labels, "label")
        placing = {how: time_placing(labels, work / how, how) for how in ("hardlink", "copy")}
        from shiftlab.utils.atomic import clone_or_copy

        mode = clone_or_copy(labels[0], work / "probe.png")
        images = make_files(work / "images", args.images, "image")
        image_records = time_records(images)
        label_records = time_records(labels)
    scale = FULL / max(args.images, 1)
    figures: dict[str, Any] = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "labels": args.labels,
        "label_mb": label_records["mb"],
        "copy_mode": mode,
        "place_hardlink_s": placing["hardlink"],
        "place_copy_s": placing["copy"],
        "label_hash_s": label_records["hash_s"],
        "label_recheck_s": label_records["recheck_s"],
        "images": args.images,
        "image_mb_each": image_records["mb"] / max(args.images, 1),
        "image_hash_mb_s": image_records["mb"] / max(image_records["hash_s"], 1e-9),
        "image_hash_s_at_8925": image_records["hash_s"] * scale,
        "image_recheck_s_at_8925": image_records["recheck_s"] * scale,
    }
    print(
        f"labels ({args.labels}, {label_records['mb']:.0f} MB): hard links "
        f"{placing['hardlink']:.1f} s, {mode} {placing['copy']:.1f} s; "
        f"first hash {label_records['hash_s']:.1f} s, re-check {label_records['recheck_s']:.2f} s"
    )
    print(
        f"source images ({figures['image_mb_each']:.1f} MB each): hashing "
        f"{figures['image_hash_mb_s']:.0f} MB/s -> {figures['image_hash_s_at_8925']:.0f} s at "
        f"{FULL}, re-check {figures['image_recheck_s_at_8925']:.2f} s at {FULL}"
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
