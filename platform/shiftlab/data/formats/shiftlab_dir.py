"""Dataset directories written by ``shiftlab generate``, read back as paired views.

Layout: ``dataset.json`` (written last: its presence marks a complete set), ``labels/<id>.*``
(source labels, unchanged), one folder per view: ``source/``, ``intermediate/``, ``target/``
holding ``<id>.png``; optional ``label_space.yaml`` for user-defined spaces. Source, intermediate
and target images share ids, so one sample carries all of them as views.
"""

from __future__ import annotations

import json
from pathlib import Path

from shiftlab.data.formats.base import DatasetReader, Sample, pair_by_stem
from shiftlab.data.io import list_images
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

    def _list(self) -> list[Sample]:
        read_dataset_meta(self.root)
        label_dir = self.root / "labels"
        labels = {p.stem: ensure_inside(self.root, p) for p in list_images(label_dir)}
        views: dict[str, dict[str, Path]] = {}
        for view in VIEW_ORDER:
            view_dir = self.root / view
            if view_dir.is_dir():
                images = {p.stem: ensure_inside(self.root, p) for p in list_images(view_dir)}
                pair_by_stem(images, labels, view_dir, label_dir)
                views[view] = images
        if not views:
            return []
        primary = self.condition or next(v for v in VIEW_ORDER if v in views)
        if primary not in views:
            raise DataError(f"{self.root}: no view {primary!r}; views: {sorted(views)}")
        return [
            Sample(id=i, image=views[primary][i], label=labels[i], views={v: views[v][i] for v in views})
            for i in labels
        ]
