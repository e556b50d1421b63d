"""One work unit, start to finish: read, resize, edit, write (no Ray here).

`UnitWorker` builds the editor once and then processes units; the Ray actor in `pipeline.py`
wraps it, and it runs the same in a plain loop. Every file is written through a temp name and
a rename, so a killed worker leaves whole files or none (plus temp files, cleaned on resume).
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from shiftlab.data.io import read_image
from shiftlab.generate.manifest import (
    LABEL_DIR,
    SOURCE_DIR,
    image_rel,
    manifest_record,
    manifest_rel,
)
from shiftlab.generate.patching import edit_batch
from shiftlab.generate.plan import GenerationPlan
from shiftlab.utils.atomic import write_json, write_png

log = logging.getLogger(__name__)


def resize_image(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Bicubic resize to (H, W) (PIL's default for RGB, as SDGPA's scripts use); None: unchanged."""
    if size is None or tuple(image.shape[:2]) == tuple(size):
        return image
    from PIL import Image

    h, w = size
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC))


def link_or_copy(src: Path, dst: Path) -> str:
    """Place ``src``'s bytes at ``dst`` atomically: a hard link when possible, else a copy.

    Never a symlink: a link leading out of the dataset root would be refused by the reader
    and would break when the source moves. Returns ``"link"`` or ``"copy"``.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    how = "link"
    try:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError as exc:
            # EXDEV: another filesystem; EPERM: protected_hardlinks on a file we do not own;
            # others: filesystems without hard links.
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP, errno.ENOSYS):
                raise
            how = "copy"
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                while chunk := fin.read(1 << 20):
                    fout.write(chunk)
                fout.flush()
                os.fsync(fout.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return how


class UnitWorker:
    """Edits and writes whole work units of one plan; the editor is built once."""

    def __init__(self, plan: GenerationPlan, device: str | None = None) -> None:
        from shiftlab.generate.editors import build_editor

        self.plan = plan
        self.editor = build_editor(plan.editor, device=device)
        dev = getattr(self.editor, "device", None)
        self.device = str(dev.type) if dev is not None and hasattr(dev, "type") else None

    def _source(self, index: int) -> np.ndarray:
        """The resized source image; writes ``source/<id>.png`` and the label if missing."""
        plan, root = self.plan, self.plan.root
        path = Path(plan.images[index])
        original = read_image(path)
        image = resize_image(original, plan.resize)
        src_out = root / SOURCE_DIR / f"{plan.ids[index]}.png"
        if not src_out.exists():
            if image is original and path.suffix.lower() == ".png":
                # Already at the edit size and a PNG: its pixels are the source view as is.
                link_or_copy(path, src_out)
            else:
                write_png(src_out, image)
        label_out = root / LABEL_DIR / plan.label_name(index)
        if not label_out.exists():
            link_or_copy(Path(plan.labels[index]), label_out)
        return image

    def process(self, mode: str, unit: tuple[int, ...] | list[int]) -> list[dict[str, Any]]:
        """Edit every image of ``unit`` in ``mode`` together; write what is missing.

        The whole unit is always edited, even when some of its images exist (a resumed
        unit): the batch composition is part of what fixes the bytes (see `plan.py`).
        """
        plan, root = self.plan, self.plan.root
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
            img_out = root / image_rel(mode, sid)
            man_out = root / manifest_rel(mode, sid)
            status = "exists"
            if not (img_out.exists() and man_out.exists()):
                status = "written"
                write_png(img_out, edited)
                # The manifest goes last: a sample is done when both files exist.
                record = manifest_record(plan, i, mode, provenance, image.shape[:2], self.device)
                write_json(man_out, record)
            rows.append({"id": sid, "mode": mode, "status": status})
        return rows
