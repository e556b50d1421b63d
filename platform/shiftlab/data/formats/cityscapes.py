"""Cityscapes: leftImg8bit/<split>/<city>/<id>_leftImg8bit.png + gtFine/.../<id>_gtFine_labelIds.png."""

from __future__ import annotations

from pathlib import Path

from shiftlab.data.formats.base import DatasetReader, Sample, pair_by_stem, strip_suffix

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def scan_two_level(folder: Path, suffix: str) -> dict[str, Path]:
    """<folder>/<group>/<id><suffix> -> {id: path} (Cityscapes cities, ACDC sequences)."""
    if not folder.is_dir():
        return {}
    return {
        strip_suffix(p.name, suffix, p): p
        for p in sorted(folder.glob(f"*/*{suffix}"))
        if p.is_file()
    }


def pair_or_unlabelled(
    images: dict[str, Path], labels: dict[str, Path], image_dir: Path, label_dir: Path
) -> list[Sample]:
    """A split without any label folder is unlabelled (e.g. a test split); otherwise pair strictly."""
    if not label_dir.exists():
        return [Sample(id=i, image=p, label=None) for i, p in images.items()]
    return pair_by_stem(images, labels, image_dir, label_dir)


class CityscapesReader(DatasetReader):
    format = "cityscapes"
    default_label_space = "cityscapes"

    def layout_hint(self) -> str:
        return f"expected leftImg8bit/{self.split}/<city>/<id>{IMAGE_SUFFIX}"

    def _list(self) -> list[Sample]:
        image_dir = self.root / "leftImg8bit" / self.split
        label_dir = self.root / "gtFine" / self.split
        images = scan_two_level(image_dir, IMAGE_SUFFIX)
        labels = scan_two_level(label_dir, LABEL_SUFFIX)
        if not images and not labels:
            return []
        return pair_or_unlabelled(images, labels, image_dir, label_dir)
