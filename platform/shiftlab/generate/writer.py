"""One work unit, start to finish: read, resize, edit, write (no Ray here).

`UnitWorker` builds the editor once and then processes units; the Ray actor in `pipeline.py`
wraps it, and it runs the same in a plain loop. Every file goes through the dataset's store
(`shiftlab.utils.store`): a temp name and a rename in a folder, one PUT on an object store, so
a killed worker leaves whole files or none (plus temp files in folders, cleaned on resume).

A unit runs in three steps: `prepare` (read, decode, resize; source view and label written),
`edit`, and `write` (encode, write); `process` runs them in turn. `process` may be called
from several threads at once and only `edit` is serialised (one editor: one model, one
device), so while one unit is edited the next is being read and the last written. That is
how an actor overlaps its I/O with editing (`overlap_io`): Ray Data hands it up to
`UNITS_IN_FLIGHT` units at a time, each in a thread of its own, so memory stays bounded.
Every unit is still read, edited and written exactly as it would be alone (the bytes are the
same either way), and its errors are raised by its own `process` call, before its row is
reported: a unit is only ever reported once its files are on disk.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
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
from shiftlab.utils.atomic import encode_png_fast, json_bytes

log = logging.getLogger(__name__)

# Units one actor holds at once when it overlaps I/O with editing: one being read, one being
# edited, one being written. Each holds its unit's images (a few MB each), nothing more.
UNITS_IN_FLIGHT = 3
STAGES = ("read", "edit", "encode", "write")


@dataclass
class StageTimes:
    """Seconds one unit spent in each stage: wall clock and the CPU time of its thread.

    A unit's steps run in one thread, so thread CPU time is that unit's own even while other
    units run beside it; wall time also counts waiting (disk, GPU, a busy CPU).
    """

    wall: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.wall[name] += time.perf_counter() - wall
            self.cpu[name] += time.thread_time() - cpu


@dataclass
class PreparedUnit:
    """A unit's source images, read and resized, ready to edit."""

    mode: str
    indices: list[int]
    images: list[np.ndarray]
    times: StageTimes


@dataclass
class EditedUnit:
    """A unit after editing: per image, ``(edited image, provenance)`` of its mode."""

    unit: PreparedUnit
    results: list[tuple[np.ndarray, dict[str, Any]]]


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
        # One edit at a time: units of concurrent `process` calls share the editor.
        self._edit_lock = threading.Lock()

    def _encode(self, image: np.ndarray) -> bytes:
        return encode_png_fast(image, self.plan.png_compress_level)

    def _source(self, index: int, times: StageTimes) -> np.ndarray:
        """The resized source image; writes ``source/<id>.png`` and the label if missing."""
        plan, store = self.plan, self.store
        path, label = Path(plan.images[index]), Path(plan.labels[index])
        if self.source_root is not None:
            path, label = (
                self.source_root / plan.origin_images[index],
                self.source_root / plan.origin_labels[index],
            )
        with times.stage("read"):
            original = read_image(path)
            image = resize_image(original, plan.resize)
        src_rel = f"{SOURCE_DIR}/{plan.ids[index]}.png"
        if not store.is_file(src_rel):
            if image is original and path.suffix.lower() == ".png":
                # Already at the edit size and a PNG: its pixels are the source view as is.
                with times.stage("write"):
                    store.put_file(src_rel, path)
            else:
                with times.stage("encode"):
                    data = self._encode(image)
                with times.stage("write"):
                    store.write_bytes(src_rel, data)
        label_rel = f"{LABEL_DIR}/{plan.label_name(index)}"
        if not store.is_file(label_rel):
            with times.stage("write"):
                store.put_file(label_rel, label)
        return image

    def prepare(self, mode: str, unit: Sequence[int]) -> PreparedUnit:
        """Read and resize the unit's images (and write their source views and labels)."""
        times = StageTimes()
        indices = [int(i) for i in unit]
        return PreparedUnit(mode, indices, [self._source(i, times) for i in indices], times)

    def edit(self, unit: PreparedUnit) -> EditedUnit:
        """Edit every image of the unit together (one editor call per batch of patches).

        The whole unit is always edited, even when some of its images exist (a resumed
        unit): the batch composition is part of what fixes the bytes (see `plan.py`).
        """
        plan, mode = self.plan, unit.mode
        with self._edit_lock, unit.times.stage("edit"):
            results = edit_batch(
                self.editor,
                unit.images,
                [plan.ids[i] for i in unit.indices],
                [mode],
                plan.prompt,
                plan.seed,
                tile=plan.tile,
                overlap=plan.overlap,
                batch_size=int(getattr(self.editor, "batch_size", plan.unit_images)),
            )
        return EditedUnit(unit, [per_mode[mode] for per_mode in results])

    def write(self, edited: EditedUnit) -> list[dict[str, Any]]:
        """Encode and write each edited image that is missing, then its manifest."""
        plan, store, unit = self.plan, self.store, edited.unit
        rows = []
        for i, image, (result, provenance) in zip(
            unit.indices, unit.images, edited.results, strict=True
        ):
            sid, mode = plan.ids[i], unit.mode
            img_rel, man_rel = image_rel(mode, sid), manifest_rel(mode, sid)
            status = "exists"
            if not (store.is_file(img_rel) and store.is_file(man_rel)):
                status = "written"
                with unit.times.stage("encode"):
                    data = self._encode(result)
                    record = manifest_record(
                        plan, i, mode, provenance, image.shape[:2], self.device
                    )
                    manifest = json_bytes(record)
                with unit.times.stage("write"):
                    store.write_bytes(img_rel, data)
                    # The manifest goes last: a sample is done when both files exist.
                    store.write_bytes(man_rel, manifest)
            rows.append({"id": sid, "mode": mode, "status": status})
        return rows

    def process_timed(
        self, mode: str, unit: Sequence[int]
    ) -> tuple[list[dict[str, Any]], StageTimes]:
        """`process`, and the seconds each stage took."""
        prepared = self.prepare(mode, unit)
        return self.write(self.edit(prepared)), prepared.times

    def process(self, mode: str, unit: Sequence[int]) -> list[dict[str, Any]]:
        """Edit every image of ``unit`` in ``mode`` together; write what is missing."""
        return self.process_timed(mode, unit)[0]
