"""Aligned appearances (CARLA-4AGT style): several renderings of one scene share one label.

Layout: ``images/<appearance>/<split>/<id>.png`` and ``labels/<split>/<id>.png``; an optional
``aligned.json`` names the label space and the appearance order. ``condition`` picks the
appearance returned as ``Sample.image``; every appearance is in ``Sample.views``.
"""

from __future__ import annotations

import json
from pathlib import Path

from shiftlab.data.formats.base import DatasetReader, Sample, pair_by_stem
from shiftlab.data.io import by_stem, list_images
from shiftlab.utils.errors import DataError


def read_meta(root: Path) -> dict:
    path = root / "aligned.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


class AlignedReader(DatasetReader):
    format = "aligned"
    default_label_space = "cityscapes"

    def _label_space_name(self) -> str:
        return read_meta(self.root).get("label_space", self.default_label_space)

    def layout_hint(self) -> str:
        return (
            f"expected images/<appearance>/{self.split}/<id>.png and labels/{self.split}/<id>.png"
        )

    def appearances(self) -> list[str]:
        listed = read_meta(self.root).get("appearances")
        base = self.root / "images"
        found = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        if listed:
            return [a for a in listed if a in found] + [a for a in found if a not in listed]
        return found

    def _list(self) -> list[Sample]:
        appearances = [
            a for a in self.appearances() if (self.root / "images" / a / self.split).is_dir()
        ]
        if not appearances:
            return []
        primary = self.condition or appearances[0]
        if primary not in appearances:
            raise DataError(
                f"{self.root}: no appearance {primary!r} in split {self.split!r}; found {appearances}"
            )
        label_dir = self.root / "labels" / self.split
        labels = by_stem(list_images(label_dir))
        views: dict[str, dict[str, Path]] = {}
        for app in appearances:
            image_dir = self.root / "images" / app / self.split
            images = by_stem(list_images(image_dir))
            pair_by_stem(
                images, labels, image_dir, label_dir
            )  # every appearance covers every label
            views[app] = images
        return [
            Sample(
                id=i,
                image=views[primary][i],
                label=labels[i],
                views={a: views[a][i] for a in appearances},
            )
            for i in labels
        ]
