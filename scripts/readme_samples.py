"""Render the README's grid of procedural samples: layouts x appearances + the label map.

    .venv/bin/python scripts/readme_samples.py [--out docs/images/procedural_samples.png]

Each row is one layout; columns are the six appearances (pixel-aligned) and the Cityscapes
label map in the standard palette. Tiles are rendered at twice their size and averaged down
(anti-aliasing), then the grid is stored as a palette PNG to stay small for the README.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from shiftlab.data.procedural import APPEARANCES, render_layout
from shiftlab.utils.atomic import write_bytes

HEADER = 18


def colorize(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes labelIds -> RGB with the standard 19-class palette (ignore: black)."""
    from shiftlab.data.label_spaces import get_label_space

    space = get_label_space("cityscapes")
    train = space.decode(label_ids)
    palette = np.concatenate([np.asarray(space.palette, np.uint8), np.zeros((1, 3), np.uint8)])
    return palette[np.where(train == space.ignore_index, len(space.palette), train)]


def _downsample(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[0] // 2, img.shape[1] // 2
    return img.reshape(h, 2, w, 2, 3).astype(np.float32).mean(axis=(1, 3)).round().astype(np.uint8)


def build_grid(layouts: list[int], seed: int, tile: tuple[int, int]) -> Image.Image:
    th, tw = tile
    cols = [*APPEARANCES, "labels"]
    grid = Image.new("RGB", (tw * len(cols), HEADER + th * len(layouts)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(cols):
        draw.text((c * tw + 6, 3), name, fill=(0, 0, 0))
    for r, index in enumerate(layouts):
        label, images = render_layout(index, seed, (2 * th, 2 * tw), APPEARANCES)
        tiles = [_downsample(images[a]) for a in APPEARANCES]
        tiles.append(colorize(label[::2, ::2]))
        for c, t in enumerate(tiles):
            grid.paste(Image.fromarray(t), (c * tw, HEADER + r * th))
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images/procedural_samples.png"))
    parser.add_argument("--layouts", type=int, nargs="+", default=[0, 3, 4])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tile", type=int, nargs=2, default=[128, 256], metavar=("H", "W"))
    args = parser.parse_args()
    grid = build_grid(args.layouts, args.seed, (args.tile[0], args.tile[1]))
    # An adaptive 256-colour palette keeps the file small enough for a README.
    small = grid.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    small.save(buf, format="PNG", optimize=True)
    write_bytes(args.out, buf.getvalue())
    print(f"wrote {args.out} ({len(buf.getvalue()) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
