"""One work unit, start to finish: read, resize, edit, write (no Ray here).

`UnitWorker` builds the editor once and then processes units; the Ray actor in `pipeline.py`
wraps it, and it runs the same in a plain loop. Every file goes through the dataset's store
(`shiftlab.utils.store`): a temp name and a rename in a folder, one PUT on an object store, so
a killed worker leaves whole files or none (plus temp files in folders, cleaned on resume).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from shiftlab.config.data import DatasetSpec
from shiftlab.data.formats import open_dataset
from shiftlab.data.io import read_image
from shiftlab.data.transforms import resize_image
from shiftlab.generate.editors import build_editor
from shiftlab.generate.manifest import (
    LABEL_DIR,
    SOURCE_DIR,
    image_rel,
    manifest_record,
    manifest_rel,
)
from shiftlab.generate.patching import edit_batch
from shiftlab.generate.plan import GenerationPlan
from shiftlab.utils.atomic import encode_png, json_bytes

log = logging.getLogger(__name__)


def node_source_root(plan: GenerationPlan) -> Path | None:
    """The source root on this node when it may differ from the driver's, else None.

    Procedural scenes and URI sources live in each node's cache (``SHIFTLAB_CACHE_DIR``):
    a node that does not see the driver's copy renders or copies its own, and images are
    found by their path relative to the root (``origin_images``).
    """
    if plan.source_spec is None or not plan.images or Path(plan.images[0]).is_file():
        return None
    return Path(open_dataset(DatasetSpec(**plan.source_spec)).root)


class UnitWorker:
    """Edits and writes whole work units of one plan; the editor is built once."""

    def __init__(self, plan: GenerationPlan, device: str | None = None) -> None:
        self.plan = plan
        self.store = plan.store
        self.source_root = node_source_root(plan)
        self.editor = build_editor(plan.editor, device=device)
        dev = getattr(self.editor, "device", None)
        self.device = str(dev.type) if dev is not None and hasattr(dev, "type") else None

    def _source(self, index: int) -> np.ndarray:
        """The resized source image; writes ``source/<id>.png`` and the label if missing."""
        plan, store = self.plan, self.store
        path, label = Path(plan.images[index]), Path(plan.labels[index])
        if self.source_root is not None:
            path, label = (
                self.source_root / plan.origin_images[index],
                self.source_root / plan.origin_labels[index],
            )
        original = read_image(path)
        image = resize_image(original, plan.resize)
        src_rel = f"{SOURCE_DIR}/{plan.ids[index]}.png"
        if not store.is_file(src_rel):
            if image is original and path.suffix.lower() == ".png":
                # Already at the edit size and a PNG: its pixels are the source view as is.
                store.put_file(src_rel, path)
            else:
                store.write_bytes(src_rel, encode_png(image))
        label_rel = f"{LABEL_DIR}/{plan.label_name(index)}"
        if not store.is_file(label_rel):
            store.put_file(label_rel, label)
        return image

    def process(self, mode: str, unit: tuple[int, ...] | list[int]) -> list[dict[str, Any]]:
        """Edit every image of ``unit`` in ``mode`` together; write what is missing.

        The whole unit is always edited, even when some of its images exist (a resumed
        unit): the batch composition is part of what fixes the bytes (see `plan.py`).
        """
        plan, store = self.plan, self.store
        indices = [int(i) for i in unit]
        images = [self._source(i) for i in indices]
        results = edit_batch(
            self.editor,
            images,
            [plan.ids[i] for i in indices],
            [mode],
            plan.prompt,
            plan.seed,
            tile=plan.tile,
            overlap=plan.overlap,
            batch_size=int(getattr(self.editor, "batch_size", plan.unit_images)),
        )
        rows = []
        for i, image, per_mode in zip(indices, images, results, strict=True):
            sid = plan.ids[i]
            edited, provenance = per_mode[mode]
            img_rel, man_rel = image_rel(mode, sid), manifest_rel(mode, sid)
            status = "exists"
            if not (store.is_file(img_rel) and store.is_file(man_rel)):
                status = "written"
                store.write_bytes(img_rel, encode_png(edited))
                # The manifest goes last: a sample is done when both files exist.
                record = manifest_record(plan, i, mode, provenance, image.shape[:2], self.device)
                store.write_bytes(man_rel, json_bytes(record))
            rows.append({"id": sid, "mode": mode, "status": status})
        return rows
