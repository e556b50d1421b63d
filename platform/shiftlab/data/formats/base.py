"""The dataset reader interface shared by every on-disk format."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shiftlab.data.io import image_size, read_image, read_label_raw
from shiftlab.data.label_spaces import LabelSpace, get_label_space
from shiftlab.utils.errors import DataError


@dataclass(frozen=True)
class Sample:
    """One labelled scene: its id, the image of the selected view, the label, and every view."""

    id: str
    image: Path
    label: Path | None
    views: dict[str, Path] = field(default_factory=dict)


@dataclass
class LabelStats:
    """What a label file holds, for `data inspect` and the domain-gap analysis."""

    class_pixels: np.ndarray  # (256,) counts per decoded train id, 255 = ignore
    unknown_values: dict[int, int]


class DatasetReader:
    """Lists samples of one split and decodes their labels into the label space.

    Subclasses implement ``_list()``; everything else (validation, decoding, errors that name
    the file) is shared here so every format behaves the same.
    """

    format: str = ""
    default_label_space: str = "cityscapes"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        condition: str | None = None,
        label_space: str | None = None,
        split_file: str | None = None,
        unknown_to_ignore: bool = False,
        limit: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.condition = condition
        self.split_file = split_file
        self.unknown_to_ignore = unknown_to_ignore
        self.limit = limit
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset root is not a directory ({self.format} format)")
        self.label_space: LabelSpace = get_label_space(label_space or self._label_space_name())
        self._samples: list[Sample] | None = None

    def _label_space_name(self) -> str:
        return self.default_label_space

    # -- listing ------------------------------------------------------------------------
    def _list(self) -> list[Sample]:
        raise NotImplementedError

    def samples(self) -> list[Sample]:
        if self._samples is None:
            found = sorted(self._list(), key=lambda s: s.id)
            if not found:
                raise DataError(
                    f"{self.root}: no samples for split {self.split!r}"
                    + (f" and condition {self.condition!r}" if self.condition else "")
                    + f" ({self.format} format: {self.layout_hint()})"
                )
            ids = [s.id for s in found]
            dupes = (
                sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
            )
            if dupes:
                raise DataError(f"{self.root}: sample id(s) found twice: {dupes[:5]}")
            self._samples = found[: self.limit] if self.limit else found
        return self._samples

    def layout_hint(self) -> str:
        return ""

    def __len__(self) -> int:
        return len(self.samples())

    def view_names(self) -> list[str]:
        first = self.samples()[0]
        return sorted(first.views) if first.views else ["image"]

    # -- decoding -----------------------------------------------------------------------
    def read_image(self, sample: Sample, view: str | None = None) -> np.ndarray:
        if view is None:
            return read_image(sample.image)
        if view not in sample.views:
            raise DataError(
                f"sample {sample.id!r} of {self.root} has no view {view!r}; views: {sorted(sample.views)}"
            )
        return read_image(sample.views[view])

    def read_label_raw(self, sample: Sample) -> np.ndarray:
        if sample.label is None:
            raise DataError(f"sample {sample.id!r} of {self.root} has no label (unlabelled split)")
        raw = read_label_raw(sample.label)
        if self.label_space.needs_16bit and raw.dtype == np.uint8:
            raise DataError(
                f"{sample.label}: 8-bit mask, but label space {self.label_space.name!r} has raw values "
                f"up to {self.label_space.max_raw_value}; values above 255 were truncated when it "
                "was saved (e.g. 10000 -> 16). Re-export the mask as 16-bit."
            )
        h, w = image_size(sample.image)
        if raw.shape != (h, w):
            raise DataError(
                f"{sample.label}: label size {raw.shape[1]}x{raw.shape[0]} does not match image "
                f"{sample.image} size {w}x{h}"
            )
        return raw

    def read_label(self, sample: Sample) -> np.ndarray:
        """The label as uint8 train ids; unknown raw values are an error unless mapped to ignore."""
        raw = self.read_label_raw(sample)
        if not self.unknown_to_ignore:
            unknown = self.label_space.unknown_values(raw)
            if unknown:
                counts = ", ".join(f"{v}: {n} px" for v, n in sorted(unknown.items())[:10])
                raise DataError(
                    f"{sample.label}: values outside label space {self.label_space.name!r} ({counts}); "
                    "set unknown_to_ignore to map them to ignore"
                )
        return self.label_space.decode(raw)

    def label_stats(self, sample: Sample) -> LabelStats:
        raw = self.read_label_raw(sample)
        decoded = self.label_space.decode(raw)
        return LabelStats(
            class_pixels=np.bincount(decoded.ravel(), minlength=256),
            unknown_values=self.label_space.unknown_values(raw),
        )


def pair_by_stem(
    images: dict[str, Path],
    labels: dict[str, Path],
    image_dir: Path,
    label_dir: Path,
    make: Callable[[str, Path, Path], Sample] | None = None,
) -> list[Sample]:
    """Match images and labels by id; an image without a label (or the reverse) is an error."""
    missing_labels = sorted(set(images) - set(labels))
    if missing_labels:
        first = images[missing_labels[0]]
        raise DataError(
            f"{first}: image has no label in {label_dir} ({len(missing_labels)} image(s) without label: "
            f"{missing_labels[:5]})"
        )
    orphans = sorted(set(labels) - set(images))
    if orphans:
        first = labels[orphans[0]]
        raise DataError(
            f"{first}: label has no image in {image_dir} ({len(orphans)} label(s) without image: "
            f"{orphans[:5]})"
        )
    build = make or (lambda i, img, lab: Sample(id=i, image=img, label=lab))
    return [build(i, images[i], labels[i]) for i in images]


def strip_suffix(name: str, suffix: str, path: Path) -> str:
    if not name.endswith(suffix):
        raise DataError(f"{path}: expected a file name ending in {suffix!r}")
    return name[: -len(suffix)]
