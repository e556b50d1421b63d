"""Image and label file I/O. Labels are read unchanged: a 16-bit mask stays 16-bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from shiftlab.utils.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    with _open(path) as img:
        w, h = img.size
    return h, w


def read_image(path: Path) -> np.ndarray:
    """An image as HxWx3 uint8 RGB."""
    with _open(path) as img:
        try:
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                raise DataError(
                    f"{path}: a {img.mode} (16/32-bit) image where an 8-bit colour image was expected"
                )
            return np.asarray(img.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as exc:  # PIL's decoders raise all three
            raise DataError(f"{path}: truncated or corrupt image ({exc})") from None


def read_label_raw(path: Path) -> np.ndarray:
    """A label map with its raw values and dtype (uint8, uint16 or int32), never converted to 8 bit.

    Palette PNGs (GTA5) give their indices, which are the label ids.
    """
    with _open(path) as img:
        if img.mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
            raise DataError(
                f"{path}: label is a {img.mode} colour image; expected single-channel label ids"
            )
        try:
            raw = np.asarray(img)
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"{path}: truncated or corrupt label ({exc})") from None
    if raw.ndim != 2:
        raise DataError(f"{path}: label has shape {raw.shape}; expected a single-channel HxW map")
    if raw.dtype == np.int32 and raw.size and raw.min() >= 0 and raw.max() < 65536:
        raw = raw.astype(np.uint16)  # Pillow opens some 16-bit PNGs as mode "I"
    return raw


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def by_stem(paths: list[Path]) -> dict[str, Path]:
    """Files keyed by their stem (a sample's id); two files of one stem (``x.png`` and
    ``x.jpg``) are an error naming both, never one silently dropped."""
    out: dict[str, Path] = {}
    for path in paths:
        if path.stem in out:
            raise DataError(
                f"{out[path.stem]} and {path}: two files for sample {path.stem!r}; keep one of them"
            )
        out[path.stem] = path
    return out
