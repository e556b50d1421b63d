"""What a generated set was made from: the content of every source image and label.

``sources.json`` in the set records, per sample id, ``[size, mtime_ns, sha256]`` of its source
image and label. Before a set is used (every ``ensure_generated``, so every ``shiftlab
generate``, ``train`` and sweep trial) each source file is stat-ed; only a file whose size or
mtime changed is hashed again, so the check costs a stat per file when nothing changed. A
sample whose image or label *content* changed is stale: its edits, its source view, its
label copy and its manifests are deleted and generated again, and nothing else is.

The set's labels and source views are copies (reflinks where the filesystem has them), never
hard links: an edit made to a source in place cannot reach into the set, so between an edit
and the next check the set stays consistent with itself (old image, old label, edit of the old
image), and the check then brings it up to date.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from shiftlab.generate.manifest import LABEL_DIR, SOURCE_DIR, image_rel, manifest_rel
from shiftlab.generate.patching import MODES
from shiftlab.generate.plan import GenerationPlan
from shiftlab.utils.atomic import json_bytes
from shiftlab.utils.errors import DataError

log = logging.getLogger(__name__)

SOURCES_FILE = "sources.json"
Record = list[Any]  # [size, mtime_ns, sha256 hex]
Records = dict[str, dict[str, Record]]  # id -> {"image": Record, "label": Record}


def file_record(path: Path, previous: Record | None = None) -> Record:
    """``[size, mtime_ns, sha256]``; the hash is reused when size and mtime are unchanged."""
    try:
        st = path.stat()
    except OSError as exc:
        raise DataError(
            f"{path}: source file of a generated set cannot be read ({exc.strerror})"
        ) from None
    if previous is not None and previous[0] == st.st_size and previous[1] == st.st_mtime_ns:
        return previous
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return [st.st_size, st.st_mtime_ns, digest.hexdigest()]


def read_records(plan: GenerationPlan) -> Records:
    store = plan.store
    if not store.is_file(SOURCES_FILE):
        return {}
    try:
        data = json.loads(store.read_bytes(SOURCES_FILE))
    except ValueError:
        return {}  # unreadable: nothing known, nothing judged stale; rewritten below
    return data if isinstance(data, dict) else {}


def current_records(plan: GenerationPlan, known: Records) -> Records:
    """Every source file's record (hashing only what changed), in a small thread pool."""

    def one(i: int) -> tuple[str, dict[str, Record]]:
        sid, old = plan.ids[i], known.get(plan.ids[i], {})
        return sid, {
            "image": file_record(Path(plan.images[i]), old.get("image")),
            "label": file_record(Path(plan.labels[i]), old.get("label")),
        }

    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers, thread_name_prefix="source-hash") as pool:
        return dict(pool.map(one, range(len(plan.ids))))


def stale_ids(known: Mapping[str, Mapping[str, Record]], now: Records) -> list[str]:
    """Ids whose image or label content differs from what the set was made from."""
    stale = []
    for sid, files in now.items():
        before = known.get(sid)
        if before is not None and any(before.get(k, [None] * 3)[2] != files[k][2] for k in files):
            stale.append(sid)
    return sorted(stale)


def invalidate(plan: GenerationPlan, ids: list[str]) -> None:
    """Delete every file made from the stale samples (each is then missing, so regenerated)."""
    store = plan.store
    index = {sid: i for i, sid in enumerate(plan.ids)}
    for sid in ids:
        store.delete(f"{SOURCE_DIR}/{sid}.png")
        store.delete(f"{LABEL_DIR}/{plan.label_name(index[sid])}")
        for mode in MODES:
            store.delete(image_rel(mode, sid))
            store.delete(manifest_rel(mode, sid))
    log.info(
        "%d source sample(s) changed since %s was made: regenerating them (%s)",
        len(ids),
        plan.dataset_dir,
        ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else ""),
    )


def write_records(plan: GenerationPlan, records: Records) -> None:
    plan.store.write_bytes(SOURCES_FILE, json_bytes(records, indent=None))
