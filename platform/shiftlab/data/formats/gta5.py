"""GTA5: images/NAME.png + labels/NAME.png (Cityscapes labelIds), optional split list.

A split is chosen by, in order: ``split_file`` (a text list of names, or GTA5's ``split.mat``),
``<root>/<split>.txt``, ``<root>/split.mat``; without any, every image belongs to the split.
"""

from __future__ import annotations

import logging
from pathlib import Path

from shiftlab.data.formats.base import DatasetReader, Sample, pair_by_stem
from shiftlab.data.io import by_stem, list_images
from shiftlab.utils.errors import DataError

log = logging.getLogger(__name__)
_MAT_KEYS = {"train": "trainIds", "val": "valIds", "test": "testIds"}


def read_name_list(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(Path(line.split()[0]).stem)
    return names


def read_split_mat(path: Path, split: str) -> list[str]:
    from scipy.io import loadmat

    key = _MAT_KEYS.get(split)
    mat = loadmat(path)
    if key is None or key not in mat:
        raise DataError(
            f"{path}: no split {split!r} (has {sorted(k for k in mat if not k.startswith('__'))})"
        )
    return [f"{int(i):05d}" for i in mat[key].ravel()]


class GTA5Reader(DatasetReader):
    format = "gta5"
    default_label_space = "cityscapes"

    def layout_hint(self) -> str:
        return "expected images/NAME.png and labels/NAME.png"

    def _split_names(self) -> list[str] | None:
        candidates = (
            [Path(self.split_file)]
            if self.split_file
            else [self.root / f"{self.split}.txt", self.root / "split.mat"]
        )
        for path in candidates:
            if path.is_file():
                return (
                    read_split_mat(path, self.split)
                    if path.suffix == ".mat"
                    else read_name_list(path)
                )
        if self.split_file:
            raise DataError(f"{self.split_file}: split file not found")
        log.warning(
            "%s: no split list (%s.txt or split.mat); using every image", self.root, self.split
        )
        return None

    def _list(self) -> list[Sample]:
        image_dir, label_dir = self.root / "images", self.root / "labels"
        images = by_stem(list_images(image_dir))
        labels = by_stem(list_images(label_dir))
        names = self._split_names()
        if names is not None:
            wanted = set(names)
            missing = sorted(wanted - set(images))
            if missing:
                raise DataError(
                    f"{image_dir}: split {self.split!r} lists {len(missing)} image(s) that do not exist: {missing[:5]}"
                )
            images = {k: v for k, v in images.items() if k in wanted}
            labels = {k: v for k, v in labels.items() if k in wanted}
        return pair_by_stem(images, labels, image_dir, label_dir)
