"""ACDC: rgb_anon/<condition>/<split>/<seq>/<id>_rgb_anon.png + gt/<condition>/<split>/<seq>/<id>_gt_labelIds.png."""

from __future__ import annotations

from shiftlab.data.formats.base import DatasetReader, Sample
from shiftlab.data.formats.cityscapes import pair_or_unlabelled, scan_two_level
from shiftlab.utils.errors import DataError

IMAGE_SUFFIX = "_rgb_anon.png"
LABEL_SUFFIX = "_gt_labelIds.png"


class ACDCReader(DatasetReader):
    format = "acdc"
    default_label_space = "cityscapes"

    def layout_hint(self) -> str:
        cond = self.condition or "<condition>"
        return f"expected rgb_anon/{cond}/{self.split}/<seq>/<id>{IMAGE_SUFFIX}"

    def conditions(self) -> list[str]:
        base = self.root / "rgb_anon"
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    def _list(self) -> list[Sample]:
        conditions = self.conditions()
        if self.condition is not None:
            if self.condition not in conditions:
                raise DataError(
                    f"{self.root / 'rgb_anon'}: no condition {self.condition!r}; found {conditions}"
                )
            conditions = [self.condition]
        samples: list[Sample] = []
        for cond in conditions:
            image_dir = self.root / "rgb_anon" / cond / self.split
            label_dir = self.root / "gt" / cond / self.split
            images = scan_two_level(image_dir, IMAGE_SUFFIX)
            labels = scan_two_level(label_dir, LABEL_SUFFIX)
            if images or labels:
                samples += pair_or_unlabelled(images, labels, image_dir, label_dir)
        return samples
