"""Falcon off-road: <split>/Color_Images/NAME.png + <split>/Segmentation/NAME.png (uint16, read unchanged)."""

from __future__ import annotations

from shiftlab.data.formats.base import DatasetReader, Sample, pair_by_stem
from shiftlab.data.io import by_stem, list_images


class FalconReader(DatasetReader):
    format = "falcon"
    default_label_space = "falcon"

    def layout_hint(self) -> str:
        return f"expected {self.split}/Color_Images/NAME.png and {self.split}/Segmentation/NAME.png"

    def _list(self) -> list[Sample]:
        image_dir = self.root / self.split / "Color_Images"
        label_dir = self.root / self.split / "Segmentation"
        images = by_stem(list_images(image_dir))
        labels = by_stem(list_images(label_dir))
        if not label_dir.exists():
            return [Sample(id=i, image=p, label=None) for i, p in images.items()]
        return pair_by_stem(images, labels, image_dir, label_dir)
