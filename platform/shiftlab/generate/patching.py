"""SDGPA patch editing: cut an image into tile-sized boxes, edit them, paste them back.

Pure functions (no Ray, no model): the Ray pipeline calls `edit_batch` on a batch of rows.

- *target* mode: a tile grid covering the whole image (1024x512 -> two 512x512 tiles), every
  tile edited, pasted back (feathered linear blending where tiles overlap).
- *intermediate* mode: one seeded random tile-sized box edited and pasted back into the
  otherwise unedited image (SDGPA leaves this position unseeded; shiftlab seeds it).

Boxes are ``(x0, y0, x1, y1)`` in pixels, right/bottom exclusive (PIL's crop convention).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from shiftlab.utils.errors import DataError
from shiftlab.utils.seeding import derive_seed, rng_for

MODES = ("intermediate", "target")
# Diffusion editors work on VAE latents, 8x smaller than the image: patch sides must be multiples of 8.
_ALIGN = 8


class Box(NamedTuple):
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0


class _Editor(Protocol):
    def edit(self, images: list[np.ndarray], prompt: str, seeds: list[int]) -> list[np.ndarray]: ...


def _patch_side(length: int, tile: int, what: str) -> int:
    """The patch side along one axis: the tile, or the whole axis (rounded down to 8) if shorter."""
    side = min(tile, length - length % _ALIGN)
    if side < _ALIGN:
        raise DataError(f"image {what} {length} is smaller than the smallest patch ({_ALIGN} px)")
    return side


def _starts(length: int, side: int, overlap: int, tile: int) -> list[int]:
    """Start offsets of patches of ``side`` covering ``[0, length)`` with at least ``overlap``.

    The last patch is aligned to the far edge, so a length that is not a whole number of
    strides is still covered (that patch overlaps its neighbour more than ``overlap``).
    """
    if side >= length or side < tile:
        # The whole side in one patch (shorter than a tile: rounded down to a multiple of 8).
        return [0]
    stride = side - overlap
    starts = list(range(0, length - side, stride))
    starts.append(length - side)
    return starts


def target_boxes(h: int, w: int, tile: int, overlap: int = 0) -> list[Box]:
    """A tile grid covering an ``h`` x ``w`` image, row-major (top row first, left to right).

    Sides shorter than ``tile`` get one patch of the whole side rounded down to a multiple of 8
    (the few pixels past it stay unedited).
    """
    if tile % _ALIGN or tile <= 0:
        raise ValueError(f"tile must be a positive multiple of {_ALIGN}, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap} with tile {tile}")
    ph, pw = _patch_side(h, tile, "height"), _patch_side(w, tile, "width")
    return [
        Box(x, y, x + pw, y + ph)
        for y in _starts(h, ph, overlap, tile)
        for x in _starts(w, pw, overlap, tile)
    ]


def intermediate_box(h: int, w: int, tile: int, rng: np.random.Generator) -> Box:
    """One tile-sized box at a random position drawn from ``rng`` (x in [0, w - tile]).

    With ``h == tile`` (SDGPA's 1024x512 images and 512 tiles) the box spans the full height.
    """
    ph, pw = _patch_side(h, tile, "height"), _patch_side(w, tile, "width")
    x = int(rng.integers(0, w - pw, endpoint=True))
    y = int(rng.integers(0, h - ph, endpoint=True))
    return Box(x, y, x + pw, y + ph)


def _feather_ramp(length: int, feather: int, ramp_start: bool, ramp_end: bool) -> np.ndarray:
    """1-D weights: 1 inside, rising linearly over ``feather`` px at the ramped edges, never 0."""
    weights = np.ones(length, dtype=np.float64)
    if feather <= 0:
        return weights
    ramp = np.arange(1, length + 1, dtype=np.float64) / (feather + 1)
    if ramp_start:
        weights = np.minimum(weights, ramp)
    if ramp_end:
        weights = np.minimum(weights, ramp[::-1])
    return weights


def paste(
    image: np.ndarray, patches: Sequence[np.ndarray], boxes: Sequence[Box], feather: int = 0
) -> np.ndarray:
    """A copy of ``image`` with each patch pasted at its box.

    ``feather == 0``: exact paste, later patches win where boxes overlap. ``feather > 0``:
    weighted average where boxes overlap, each patch's weight rising linearly over ``feather``
    px from its edges that lie inside the image (edges on the image border keep full weight,
    so the border has no ramp toward nothing). Pixels no box covers keep their value.
    """
    if len(patches) != len(boxes):
        raise ValueError(f"{len(patches)} patches for {len(boxes)} boxes")
    h, w = image.shape[:2]
    for patch, box in zip(patches, boxes, strict=True):
        if patch.shape[:2] != (box.height, box.width):
            raise ValueError(f"patch of shape {patch.shape} does not fit box {tuple(box)}")
        if box.x0 < 0 or box.y0 < 0 or box.x1 > w or box.y1 > h:
            raise ValueError(f"box {tuple(box)} lies outside the {w}x{h} image")
    out = image.copy()
    if feather <= 0:
        for patch, box in zip(patches, boxes, strict=True):
            out[box.y0 : box.y1, box.x0 : box.x1] = patch
        return out
    acc = np.zeros(image.shape, dtype=np.float64)
    total = np.zeros((h, w), dtype=np.float64)
    for patch, box in zip(patches, boxes, strict=True):
        wy = _feather_ramp(box.height, feather, box.y0 > 0, box.y1 < h)
        wx = _feather_ramp(box.width, feather, box.x0 > 0, box.x1 < w)
        weight = np.outer(wy, wx)
        region = (slice(box.y0, box.y1), slice(box.x0, box.x1))
        acc[region] += patch.astype(np.float64) * (weight[..., None] if image.ndim == 3 else weight)
        total[region] += weight
    covered = total > 0
    norm = total[covered][:, None] if image.ndim == 3 else total[covered]
    blended = acc[covered] / norm
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        blended = np.clip(np.rint(blended), info.min, info.max)
    out[covered] = blended.astype(image.dtype)
    return out


def patch_boxes(
    h: int, w: int, mode: str, seed: int, sample_id: str, tile: int, overlap: int
) -> list[Box]:
    """The boxes a mode edits in one image; the intermediate box is seeded by (seed, sample id)."""
    if mode == "target":
        return target_boxes(h, w, tile, overlap)
    if mode == "intermediate":
        return [intermediate_box(h, w, tile, rng_for(seed, sample_id, "intermediate-box"))]
    raise ValueError(f"unknown generate mode {mode!r}; expected one of {MODES}")


def patch_seed(seed: int, sample_id: str, mode: str, index: int) -> int:
    """The editor seed of one patch: depends on nothing but its own identity (never on batching).

    The mode is part of it so the intermediate patch and the first target tile of an image
    do not start from the same noise.
    """
    return derive_seed(seed, sample_id, mode, index)


def _check_image(image: np.ndarray, sample_id: str) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(
            f"sample {sample_id!r}: expected an HxWx3 uint8 RGB image, got {image.dtype} {image.shape}"
        )


def _provenance(mode: str, boxes: list[Box], seeds: list[int]) -> dict[str, Any]:
    return {"mode": mode, "boxes": [list(b) for b in boxes], "seeds": list(seeds)}


def edit_image(
    editor: _Editor,
    image: np.ndarray,
    mode: str,
    prompt: str,
    seed: int,
    sample_id: str,
    tile: int = 512,
    overlap: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Edit one image in ``mode``; returns the edited image and its provenance.

    Provenance: ``{"mode", "boxes": [[x0, y0, x1, y1], ...], "seeds": [...]}`` (JSON-ready).
    """
    _check_image(image, sample_id)
    h, w = image.shape[:2]
    boxes = patch_boxes(h, w, mode, seed, sample_id, tile, overlap)
    seeds = [patch_seed(seed, sample_id, mode, i) for i in range(len(boxes))]
    crops = [np.ascontiguousarray(image[b.y0 : b.y1, b.x0 : b.x1]) for b in boxes]
    edited = editor.edit(crops, prompt, seeds)
    feather = overlap if mode == "target" else 0
    return paste(image, edited, boxes, feather), _provenance(mode, boxes, seeds)


PatchKey = tuple[int, str, int]  # (image index, mode, patch index)
PatchPlans = list[dict[str, tuple[list[Box], list[int]]]]  # per image: mode -> (boxes, seeds)


def _plan_patches(
    images: Sequence[np.ndarray],
    sample_ids: Sequence[str],
    modes: Sequence[str],
    seed: int,
    tile: int,
    overlap: int,
) -> tuple[PatchPlans, dict[tuple[int, int], list[PatchKey]]]:
    """Every patch to edit, and the patches grouped by size (one pipeline call needs equal sizes)."""
    plans: PatchPlans = []
    by_size: dict[tuple[int, int], list[PatchKey]] = defaultdict(list)
    for i, (image, sid) in enumerate(zip(images, sample_ids, strict=True)):
        _check_image(image, sid)
        h, w = image.shape[:2]
        plan: dict[str, tuple[list[Box], list[int]]] = {}
        for mode in modes:
            boxes = patch_boxes(h, w, mode, seed, sid, tile, overlap)
            plan[mode] = (boxes, [patch_seed(seed, sid, mode, k) for k in range(len(boxes))])
            for k, box in enumerate(boxes):
                by_size[(box.height, box.width)].append((i, mode, k))
        plans.append(plan)
    return plans, by_size


def _edit_in_batches(
    editor: _Editor,
    images: Sequence[np.ndarray],
    plans: PatchPlans,
    keys: list[PatchKey],
    prompt: str,
    batch_size: int,
) -> dict[PatchKey, np.ndarray]:
    results: dict[PatchKey, np.ndarray] = {}
    for start in range(0, len(keys), batch_size):
        chunk = keys[start : start + batch_size]
        crops, seeds = [], []
        for i, mode, k in chunk:
            box = plans[i][mode][0][k]
            crops.append(np.ascontiguousarray(images[i][box.y0 : box.y1, box.x0 : box.x1]))
            seeds.append(plans[i][mode][1][k])
        results.update(zip(chunk, editor.edit(crops, prompt, seeds), strict=True))
    return results


def edit_batch(
    editor: _Editor,
    images: Sequence[np.ndarray],
    sample_ids: Sequence[str],
    modes: Sequence[str],
    prompt: str,
    seed: int,
    tile: int = 512,
    overlap: int = 0,
    batch_size: int | None = None,
) -> list[dict[str, tuple[np.ndarray, dict[str, Any]]]]:
    """Edit many images in every mode, pooling their patches into full editor batches.

    Patches of all images and modes are grouped by size (one pipeline call needs equal
    sizes) and sent ``batch_size`` at a time (default: the editor's ``batch_size``, else 8).
    Each patch keeps its own seed, so every result equals `edit_image` on that image alone.
    Returns, per image, ``{mode: (edited image, provenance)}``.
    """
    if len(images) != len(sample_ids):
        raise ValueError(f"{len(images)} images for {len(sample_ids)} sample ids")
    batch_size = int(getattr(editor, "batch_size", 8)) if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    plans, by_size = _plan_patches(images, sample_ids, modes, seed, tile, overlap)
    results: dict[PatchKey, np.ndarray] = {}
    for keys in by_size.values():
        results.update(_edit_in_batches(editor, images, plans, keys, prompt, batch_size))
    outputs: list[dict[str, tuple[np.ndarray, dict[str, Any]]]] = []
    for i, image in enumerate(images):
        per_mode = {}
        for mode, (boxes, seeds) in plans[i].items():
            edited = [results[(i, mode, k)] for k in range(len(boxes))]
            feather = overlap if mode == "target" else 0
            per_mode[mode] = (paste(image, edited, boxes, feather), _provenance(mode, boxes, seeds))
        outputs.append(per_mode)
    return outputs
