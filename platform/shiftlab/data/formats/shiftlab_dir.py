"""Dataset directories written by ``shiftlab generate``, read back as paired views.

Layout: ``dataset.json`` (written last: its presence marks a complete set), ``labels/<id>.*``
(source labels, unchanged), one folder per view: ``source/``, ``intermediate/``, ``target/``
holding ``<id>.png``; optional ``label_space.yaml`` for user-defined spaces. Source, intermediate
and target images share ids, so one sample carries all of them as views.

``dataset.json["views"]`` (or ``["modes"]`` plus ``source``) lists the complete views: a folder
of a mode still being generated is not read. Labels are the source's, unchanged, so when
``dataset.json["resize"]`` is set they may be larger than the images: they are then resized
to the image size with nearest-neighbour sampling when read (raw ids are never blended).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shiftlab.data.formats.base import DatasetReader, Sample, pair_by_stem
from shiftlab.data.io import by_stem, image_size, list_images
from shiftlab.data.io import read_label_raw as _read_raw
from shiftlab.data.transforms import resize_label
from shiftlab.utils.errors import DataError

VIEW_ORDER = ("target", "intermediate", "source")
META_FILE = "dataset.json"


def read_dataset_meta(root: Path) -> dict:
    path = root / META_FILE
    if not path.is_file():
        raise DataError(f"{root}: not a complete shiftlab dataset directory (no {META_FILE})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def ensure_inside(root: Path, path: Path) -> Path:
    """Refuse a file that resolves outside its dataset root (a crafted link or manifest path)."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise DataError(f"{path}: resolves to {resolved}, outside its dataset root {root}")
    return path


class ShiftlabReader(DatasetReader):
    format = "shiftlab"

    def _label_space_name(self) -> str:
        own = self.root / "label_space.yaml"
        if own.is_file():
            return str(own)
        return read_dataset_meta(self.root).get("label_space", self.default_label_space)

    def layout_hint(self) -> str:
        return "expected dataset.json, labels/<id>.png and source|intermediate|target/<id>.png"

    def _meta(self) -> dict:
        if not hasattr(self, "_meta_cache"):
            self._meta_cache = read_dataset_meta(self.root)
        return self._meta_cache

    def _complete_views(self) -> list[str] | None:
        meta = self._meta()
        if "views" in meta:
            return list(meta["views"])
        if "modes" in meta:
            return ["source", *meta["modes"]]
        return None  # hand-made directory: every view folder present

    def _list(self) -> list[Sample]:
        complete = self._complete_views()
        label_dir = self.root / "labels"
        labels = {
            k: ensure_inside(self.root, p) for k, p in by_stem(list_images(label_dir)).items()
        }
        views: dict[str, dict[str, Path]] = {}
        for view in VIEW_ORDER:
            view_dir = self.root / view
            if view_dir.is_dir() and (complete is None or view in complete):
                images = {
                    k: ensure_inside(self.root, p)
                    for k, p in by_stem(list_images(view_dir)).items()
                }
                pair_by_stem(images, labels, view_dir, label_dir)
                views[view] = images
        if not views:
            return []
        primary = self.condition or next(v for v in VIEW_ORDER if v in views)
        if primary not in views:
            raise DataError(f"{self.root}: no view {primary!r}; views: {sorted(views)}")
        return [
            Sample(
                id=i,
                image=views[primary][i],
                label=labels[i],
                views={v: views[v][i] for v in views},
            )
            for i in labels
        ]

    def read_label_raw(self, sample: Sample) -> np.ndarray:
        """Raw label at the image size: nearest-resized when the set was generated with a resize."""
        resize = self._meta().get("resize")
        if not resize:
            return super().read_label_raw(sample)
        if sample.label is None:
            raise DataError(f"sample {sample.id!r} of {self.root} has no label (unlabelled split)")
        raw = _read_raw(sample.label)
        if self.label_space.needs_16bit and raw.dtype == np.uint8:
            raise DataError(
                f"{sample.label}: 8-bit mask, but label space {self.label_space.name!r} has raw values "
                f"up to {self.label_space.max_raw_value}; re-export the mask as 16-bit."
            )
        h, w = image_size(sample.image)
        return resize_label(raw, (h, w))
