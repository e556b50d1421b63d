"""SDGPA patch geometry, seeded intermediate boxes, pasting and batched editing."""

from __future__ import annotations

import numpy as np
import pytest

from shiftlab.config.generate import PhotometricConfig
from shiftlab.generate.editors.photometric import PhotometricEditor
from shiftlab.generate.patching import (
    Box,
    edit_batch,
    edit_image,
    intermediate_box,
    paste,
    target_boxes,
)
from shiftlab.utils.errors import DataError
from shiftlab.utils.seeding import rng_for


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


class InvertEditor:
    """A real (trivial) editor: inverts colours and adds a seed-dependent offset.

    It records every call so tests can see how patches were batched.
    """

    def __init__(self, batch_size: int = 3) -> None:
        self.batch_size = batch_size
        self.calls: list[list[tuple[int, int]]] = []

    def edit(self, images: list[np.ndarray], prompt: str, seeds: list[int]) -> list[np.ndarray]:
        assert len({im.shape for im in images}) == 1, "one call must carry one patch size"
        self.calls.append([im.shape[:2] for im in images])
        return [
            (255 - im).astype(np.uint8) // 2 + np.uint8(s % 50)
            for im, s in zip(images, seeds, strict=True)
        ]


def test_target_boxes_sdgpa_default() -> None:
    assert target_boxes(512, 1024, 512, 0) == [Box(0, 0, 512, 512), Box(512, 0, 1024, 512)]


def test_target_boxes_cover_image_with_overlap_and_remainder() -> None:
    boxes = target_boxes(300, 1000, 256, 32)
    assert all(b.width == 256 and b.height == 256 for b in boxes)
    covered = np.zeros((300, 1000), dtype=bool)
    for b in boxes:
        assert 0 <= b.x0 < b.x1 <= 1000 and 0 <= b.y0 < b.y1 <= 300
        covered[b.y0 : b.y1, b.x0 : b.x1] = True
    assert covered.all()
    xs = sorted({b.x0 for b in boxes})
    assert xs[0] == 0 and xs[-1] == 1000 - 256
    # neighbours overlap by at least the requested overlap
    assert all(b - a <= 256 - 32 for a, b in zip(xs, xs[1:], strict=False))


def test_small_image_is_one_box_rounded_down_to_8() -> None:
    assert target_boxes(100, 203, 512, 0) == [Box(0, 0, 200, 96)]
    with pytest.raises(DataError):
        target_boxes(5, 100, 512, 0)


def test_bad_tile_or_overlap() -> None:
    with pytest.raises(ValueError):
        target_boxes(512, 1024, 500, 0)
    with pytest.raises(ValueError):
        target_boxes(512, 1024, 512, 512)


def test_intermediate_box_geometry_and_seeding() -> None:
    boxes = [intermediate_box(512, 1024, 512, rng_for(42, f"img{i}", "x")) for i in range(40)]
    assert all(b.y0 == 0 and b.y1 == 512 and b.width == 512 for b in boxes)
    assert all(0 <= b.x0 <= 512 for b in boxes)
    assert len({b.x0 for b in boxes}) > 20  # positions vary between samples
    again = intermediate_box(512, 1024, 512, rng_for(42, "img3", "x"))
    assert again == boxes[3]


def test_intermediate_mode_edits_only_its_box() -> None:
    image = _image(64, 128)
    editor = InvertEditor()
    out, prov = edit_image(editor, image, "intermediate", "p", seed=7, sample_id="a", tile=64)
    ((x0, y0, x1, y1),) = prov["boxes"]
    assert (y0, y1) == (0, 64) and x1 - x0 == 64
    inside = np.zeros(image.shape[:2], dtype=bool)
    inside[y0:y1, x0:x1] = True
    assert np.array_equal(out[~inside], image[~inside])  # the rest is byte-identical
    assert not np.array_equal(out[inside], image[inside])
    assert prov["mode"] == "intermediate" and len(prov["seeds"]) == 1
    # same id -> same box and result; other ids -> other boxes
    out2, prov2 = edit_image(editor, image, "intermediate", "p", seed=7, sample_id="a", tile=64)
    assert prov2 == prov and np.array_equal(out2, out)
    others = {
        tuple(edit_image(editor, image, "intermediate", "p", 7, f"id{i}", 64)[1]["boxes"][0])
        for i in range(20)
    }
    assert len(others) > 5


def test_target_mode_edits_every_pixel_and_seeds_differ() -> None:
    image = _image(64, 128)
    out, prov = edit_image(InvertEditor(), image, "target", "p", seed=1, sample_id="s", tile=64)
    assert prov["boxes"] == [[0, 0, 64, 64], [64, 0, 128, 64]]
    assert len(set(prov["seeds"])) == 2
    expected = np.concatenate(
        [
            (255 - image[:, :64]) // 2 + prov["seeds"][0] % 50,
            (255 - image[:, 64:]) // 2 + prov["seeds"][1] % 50,
        ],
        axis=1,
    ).astype(np.uint8)
    assert np.array_equal(out, expected)


def test_paste_exact_without_overlap() -> None:
    image = _image(32, 64)
    boxes = target_boxes(32, 64, 32, 0)
    patches = [np.full((32, 32, 3), v, np.uint8) for v in (10, 200)]
    out = paste(image, patches, boxes, feather=0)
    assert (out[:, :32] == 10).all() and (out[:, 32:] == 200).all()
    assert not np.shares_memory(out, image)


def test_feathered_paste_of_identical_patches_reproduces_image() -> None:
    image = _image(80, 200, seed=3)
    boxes = target_boxes(80, 200, 64, 24)
    assert len(boxes) > 2
    patches = [image[b.y0 : b.y1, b.x0 : b.x1].copy() for b in boxes]
    assert np.array_equal(paste(image, patches, boxes, feather=24), image)


def test_feathered_paste_blends_linearly_across_overlap() -> None:
    image = np.zeros((16, 48, 3), np.uint8)
    boxes = [Box(0, 0, 32, 16), Box(16, 0, 48, 16)]
    patches = [np.full((16, 32, 3), 0, np.uint8), np.full((16, 32, 3), 240, np.uint8)]
    out = paste(image, patches, boxes, feather=16)[0, :, 0].astype(int)
    assert (out[:16] == 0).all() and (out[32:] == 240).all()
    ramp = out[16:32]
    assert (np.diff(ramp) > 0).all()  # monotone transition over the overlap, no seam


def test_edit_image_rejects_non_rgb() -> None:
    with pytest.raises(DataError, match="bad"):
        edit_image(InvertEditor(), np.zeros((64, 64), np.uint8), "target", "p", 0, "bad", 64)


def test_edit_batch_equals_edit_image_and_fills_batches() -> None:
    images = [_image(64, 128, i) for i in range(3)] + [_image(48, 48, 9)]
    ids = [f"s{i}" for i in range(4)]
    editor = InvertEditor(batch_size=4)
    results = edit_batch(
        editor, images, ids, ["intermediate", "target"], "p", seed=5, tile=64, overlap=16
    )
    # 3 images x (1 + 3 target tiles with overlap 16 on width 128) of 64x64, one 48x48 image x 2
    sizes = [s for call in editor.calls for s in call]
    assert sizes.count((64, 64)) == 3 * (1 + 3) and sizes.count((48, 48)) == 2
    assert max(len(c) for c in editor.calls) == 4
    for image, sid, per_mode in zip(images, ids, results, strict=True):
        for mode in ("intermediate", "target"):
            single, prov = edit_image(InvertEditor(), image, mode, "p", 5, sid, 64, 16)
            assert np.array_equal(per_mode[mode][0], single)
            assert per_mode[mode][1] == prov


def test_edit_batch_with_photometric_editor_matches_single() -> None:
    editor = PhotometricEditor(PhotometricConfig(effect="night"))
    images = [_image(32, 64, i) for i in range(3)]
    batch = edit_batch(
        editor, images, ["a", "b", "c"], ["target"], "", seed=0, tile=32, batch_size=2
    )
    for image, sid, res in zip(images, ["a", "b", "c"], batch, strict=True):
        assert np.array_equal(
            res["target"][0], edit_image(editor, image, "target", "", 0, sid, 32)[0]
        )
