"""Content fingerprints of editor weights, so the cache key follows the weights, not their path.

A pipeline directory rebuilt or fine-tuned in place must give a new key; the same weights
copied elsewhere should not. Hashing multi-GB weight files on every call would cost seconds,
so large files are sampled: their size plus 1 MiB from the start, middle and end. Any real
change of weights (training touches nearly every tensor) changes the sampled bytes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_FULL_HASH_LIMIT = 8 * 1024 * 1024
_SAMPLE = 1024 * 1024


def file_fingerprint(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        if size <= _FULL_HASH_LIMIT:
            digest.update(fh.read())
        else:
            for offset in (0, size // 2 - _SAMPLE // 2, size - _SAMPLE):
                fh.seek(offset)
                digest.update(fh.read(_SAMPLE))
    return digest.hexdigest()


def directory_fingerprint(root: Path) -> str:
    """sha256 over (relative path, fingerprint) of every file, hidden files excluded."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            digest.update(f"{rel}\0{file_fingerprint(path)}\n".encode())
    return digest.hexdigest()


def model_fingerprint(model: str) -> str:
    """A local pipeline directory's content fingerprint, or ``hub:<id>`` for a hub id."""
    local = Path(model).expanduser()
    if local.is_dir():
        return "sha256:" + directory_fingerprint(local)
    return f"hub:{model}"
