"""Per-image class pixel counts of a labelled dataset, computed once and cached.

DAFormer's rare-class sampling (RCS) needs, for every source image, how many pixels of each
class its label holds (DAFormer writes them to ``sample_class_stats.json`` while converting the
dataset). Reading every label of GTA5 (24,966 files) takes minutes, so the counts are cached in
this node's cache (``SHIFTLAB_CACHE_DIR``/class_stats) under a key made of the dataset's
identity (format, folder, split, condition, the label space's mapping) and the name, size and
modification time of every label file: a changed, added or removed label gives a new key.
Concurrent callers (the DDP workers of one node, the driver) wait on a lock file instead of
counting twice; the file is written atomically either way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shiftlab.data.formats import DatasetReader, Sample
from shiftlab.utils.atomic import write_json
from shiftlab.utils.errors import DataError
from shiftlab.utils.lock import FileLock
from shiftlab.utils.store import local_cache_dir

log = logging.getLogger(__name__)

STATS_VERSION = 1


@dataclass(frozen=True)
class ClassStats:
    """``counts[i, c]``: pixels of train id ``c`` in the label of ``sample_ids[i]``."""

    sample_ids: tuple[str, ...]
    counts: np.ndarray  # (N, K) int64

    @property
    def num_classes(self) -> int:
        return int(self.counts.shape[1])

    def class_pixels(self) -> np.ndarray:
        """(K,) labelled pixels per class over the whole dataset (ignore not counted)."""
        return self.counts.sum(axis=0)

    def samples_with(self, cls: int, min_pixels: int) -> np.ndarray:
        """Indices of the samples holding more than ``min_pixels`` pixels of ``cls``."""
        return np.flatnonzero(self.counts[:, cls] > min_pixels)


def count_classes(reader: DatasetReader, samples: list[Sample]) -> np.ndarray:
    """(N, K) class pixel counts of the decoded labels, read in a thread pool (PIL releases
    the GIL while decoding)."""
    k = reader.label_space.num_classes

    def count(sample: Sample) -> np.ndarray:
        label = reader.read_label(sample)
        return np.bincount(label.ravel(), minlength=256)[:k].astype(np.int64)

    threads = max(1, min(16, os.cpu_count() or 1))
    with ThreadPoolExecutor(threads, thread_name_prefix="class-stats") as pool:
        rows = list(pool.map(count, samples))
    return np.stack(rows) if rows else np.zeros((0, k), dtype=np.int64)


def stats_key(reader: DatasetReader, samples: list[Sample]) -> str:
    """A hash of what the counts depend on: the dataset's identity and every label file."""
    files = []
    for sample in samples:
        if sample.label is None:
            raise DataError(f"{reader.root}: sample {sample.id!r} has no label to count classes")
        st = sample.label.stat()
        files.append([sample.id, str(sample.label), st.st_size, st.st_mtime_ns])
    identity = {
        "version": STATS_VERSION,
        "format": reader.format,
        "root": str(Path(reader.root).resolve()),
        "split": reader.split,
        "condition": reader.condition,
        "label_space": reader.label_space.name,
        "mapping": sorted(reader.label_space.value_to_class.items()),
        "unknown_to_ignore": reader.unknown_to_ignore,
        "files": files,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def _read_cached(path: Path, ids: list[str], k: int) -> ClassStats | None:
    try:
        data = json.loads(path.read_text())
        counts = np.asarray([data["counts"][i] for i in ids], dtype=np.int64).reshape(-1, k)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or unreadable: count again (the file is replaced atomically)
    return ClassStats(tuple(ids), counts)


def cached_class_stats(
    reader: DatasetReader, cache_dir: str | Path | None = None, samples: list[Sample] | None = None
) -> ClassStats:
    """The class counts of ``samples`` (default: all of ``reader``), from the cache if there."""
    samples = list(samples if samples is not None else reader.samples())
    ids = [s.id for s in samples]
    k = reader.label_space.num_classes
    folder = Path(cache_dir or local_cache_dir()) / "class_stats"
    path = folder / f"{stats_key(reader, samples)}.json"
    cached = _read_cached(path, ids, k)
    if cached is not None:
        return cached
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(path.name + ".lock")):
        cached = _read_cached(path, ids, k)  # another process may have counted meanwhile
        if cached is not None:
            return cached
        start = time.perf_counter()
        counts = count_classes(reader, samples)
        write_json(
            path,
            {
                "dataset": str(reader.root),
                "classes": list(reader.label_space.class_names),
                "counts": {i: row.tolist() for i, row in zip(ids, counts, strict=True)},
            },
            indent=None,
        )
        log.info(
            "class statistics of %d labels of %s counted in %.1f s (cached in %s)",
            len(ids),
            reader.root,
            time.perf_counter() - start,
            path,
        )
    return ClassStats(tuple(ids), counts)
