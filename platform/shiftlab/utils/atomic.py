"""Atomic file writes: write to a temporary name in the same directory, then rename.

A crash or kill mid-write leaves either the old file or no file, never half of one. Files
get the permissions ``open()`` would give them (0666 less the process umask), not the 0600
of a temporary file: on shared storage colleagues, an MLflow server or a node running under
another account must be able to read what a run wrote.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once: os.umask can only be read by setting it, which is not safe while threads run.
UMASK = _current_umask()
FILE_MODE = 0o666 & ~UMASK
DIR_MODE = 0o777 & ~UMASK


def make_temp_dir(target: Path) -> Path:
    """A new hidden folder next to ``target`` (to be renamed onto it), with normal permissions."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(DIR_MODE)
    return tmp


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            tmp_path.chmod(FILE_MODE)
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode())


def json_bytes(obj: Any, indent: int | None = 2) -> bytes:
    """The one JSON encoding of shiftlab's files: sorted keys, trailing newline."""
    return (json.dumps(obj, indent=indent, sort_keys=True) + "\n").encode()


def write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    write_bytes(path, json_bytes(obj, indent))


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of an HxW (uint8/uint16) or HxWx3 uint8 array; deterministic output."""
    from PIL import Image

    if array.dtype == np.uint16 and array.ndim == 2:
        image = Image.fromarray(array, mode=None)
    elif array.dtype == np.uint8:
        image = Image.fromarray(array)
    else:
        raise ValueError(
            f"cannot write a PNG from an array of dtype {array.dtype}, shape {array.shape}"
        )
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


# zlib level of `encode_png_fast` by default, and of generated images
# (`generate.png_compress_level`).
FAST_PNG_LEVEL = 1


def encode_png_fast(array: np.ndarray, level: int = FAST_PNG_LEVEL) -> bytes:
    """PNG bytes through OpenCV's encoder at zlib ``level`` (0-9): lossless and deterministic
    like `encode_png`, and several times faster at level 1.

    Why: encoding the generated images with Pillow at level 6 was ~75 % of a photometric
    edit's time (bench/RESULTS.md). CPU time on one thread (bench/generate.py
    ``png_encoders``, 1024x512 and 2048x1024 RGB), OpenCV at level 1 against Pillow at 6:
    2.6-2.7x faster on a night edit, 5.6x on a smooth, photo-like image, 1.4x on pixel noise
    (which no level compresses); against Pillow at level 1 still 1.3-1.6x. Files get 0-25 %
    larger. The level changes file sizes and time, never a pixel. Takes HxW uint8/uint16 or
    HxWx3 uint8 RGB arrays.
    """
    import cv2

    if not 0 <= level <= 9:
        raise ValueError(f"PNG compression level must be in 0..9, got {level}")
    if array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)  # OpenCV takes BGR arrays
    elif not (array.ndim == 2 and array.dtype in (np.uint8, np.uint16)):
        raise ValueError(
            f"cannot write a PNG from an array of dtype {array.dtype}, shape {array.shape}"
        )
    ok, buf = cv2.imencode(
        ".png", np.ascontiguousarray(array), [cv2.IMWRITE_PNG_COMPRESSION, int(level)]
    )
    if not ok:
        raise ValueError(
            f"OpenCV could not encode a PNG of dtype {array.dtype}, shape {array.shape}"
        )
    return buf.tobytes()


def write_png(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Pillow at level 6 (`encode_png`): training exports, predictions and procedural scenes
    keep the bytes they always had (procedural renders are hashed as generation sources)."""
    write_bytes(path, encode_png(array))


# ioctl FICLONE (linux/fs.h): share the source's blocks copy-on-write (btrfs, XFS, ...).
_FICLONE = 0x40049409


def _clone_or_copy_into(src: Path, fout: Any) -> str:
    with open(src, "rb") as fin:
        try:
            import fcntl

            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
            return "reflink"
        except (ImportError, OSError):
            pass  # another filesystem, or none with reflinks: a plain copy
        while chunk := fin.read(1 << 20):
            fout.write(chunk)
    return "copy"


def clone_or_copy(src: Path, dst: Path) -> str:
    """Place a copy of ``src``'s bytes at ``dst`` atomically: a reflink where the filesystem
    can (no data copied, yet independent of the source), else a plain copy.

    Never a hard link: an edit of the source in place would change the copy too (a generated
    set's label would stop matching its edited image). Returns ``"reflink"`` or ``"copy"``.
    """
    with atomic_path(dst) as tmp, open(tmp, "wb") as fout:
        how = _clone_or_copy_into(src, fout)
        fout.flush()
        os.fsync(fout.fileno())
    return how
