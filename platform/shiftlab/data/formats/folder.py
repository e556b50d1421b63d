"""A plain folder: ``images/`` + ``labels/`` (matched by file stem) in a named label space.

Accepted places, first found wins: ``<root>/<split>/images``, ``<root>/images/<split>``,
``<root>/images``. The label space comes from ``label_space`` or ``<root>/label_space.yaml``.
"""

from __future__ import annotations

from pathlib import Path

from shiftlab.data.formats.base import DatasetReader, Sample, pair_by_stem
from shiftlab.data.io import by_stem, list_images


class FolderReader(DatasetReader):
    format = "folder"
    default_label_space = "cityscapes"

    def _label_space_name(self) -> str:
        own = self.root / "label_space.yaml"
        return str(own) if own.is_file() else self.default_label_space

    def _dirs(self) -> tuple[Path, Path]:
        for image_dir, label_dir in (
            (self.root / self.split / "images", self.root / self.split / "labels"),
            (self.root / "images" / self.split, self.root / "labels" / self.split),
            (self.root / "images", self.root / "labels"),
        ):
            if image_dir.is_dir():
                return image_dir, label_dir
        return self.root / "images", self.root / "labels"

    def layout_hint(self) -> str:
        return "expected images/ and labels/ (optionally under <split>/)"

    def _list(self) -> list[Sample]:
        image_dir, label_dir = self._dirs()
        images = by_stem(list_images(image_dir))
        if not label_dir.exists():
            return [Sample(id=i, image=p, label=None) for i, p in images.items()]
        labels = by_stem(list_images(label_dir))
        return pair_by_stem(images, labels, image_dir, label_dir)
