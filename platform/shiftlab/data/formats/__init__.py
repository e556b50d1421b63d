"""Dataset readers, one per on-disk format, behind one function: ``open_dataset``."""

from __future__ import annotations

from pathlib import Path

from shiftlab.config.data import DatasetSpec
from shiftlab.data.formats.acdc import ACDCReader
from shiftlab.data.formats.aligned import AlignedReader
from shiftlab.data.formats.base import DatasetReader, LabelStats, Sample
from shiftlab.data.formats.cityscapes import CityscapesReader
from shiftlab.data.formats.falcon import FalconReader
from shiftlab.data.formats.folder import FolderReader
from shiftlab.data.formats.gta5 import GTA5Reader
from shiftlab.data.formats.shiftlab_dir import META_FILE, ShiftlabReader
from shiftlab.data.procedural_cache import ensure_procedural
from shiftlab.utils.errors import ConfigError
from shiftlab.utils.store import open_store

READERS: dict[str, type[DatasetReader]] = {
    r.format: r
    for r in (
        CityscapesReader,
        ACDCReader,
        GTA5Reader,
        FalconReader,
        AlignedReader,
        FolderReader,
        ShiftlabReader,
    )
}
FORMATS = (*READERS, "procedural")

__all__ = [
    "FORMATS",
    "READERS",
    "DatasetReader",
    "LabelStats",
    "Sample",
    "label_space_name",
    "open_dataset",
    "open_dataset_args",
]


def label_space_name(spec: DatasetSpec) -> str:
    """The label space a dataset spec is read in: its own, or its format's default."""
    if spec.label_space:
        return spec.label_space
    fmt = "aligned" if spec.format == "procedural" else spec.format
    return READERS[fmt].default_label_space


def open_dataset_args(
    format: str,
    root: str | Path,
    split: str = "train",
    condition: str | None = None,
    label_space: str | None = None,
    split_file: str | None = None,
    unknown_to_ignore: bool = False,
    limit: int | None = None,
) -> DatasetReader:
    if format not in READERS:
        raise ConfigError(f"unknown dataset format {format!r}; formats: {', '.join(FORMATS)}")
    # A folder is read in place; object storage through this node's copy (dataset.json last).
    root = open_store(root).readable_root(last=META_FILE)
    return READERS[format](
        root,
        split=split,
        condition=condition,
        label_space=label_space,
        split_file=split_file,
        unknown_to_ignore=unknown_to_ignore,
        limit=limit,
    )


def open_dataset(spec: DatasetSpec, cache_dir: str | Path | None = None) -> DatasetReader:
    """A reader for a config's dataset spec; procedural scenes are rendered (once) into the cache."""
    root = spec.root
    fmt = spec.format
    if fmt == "procedural":
        root, fmt = str(ensure_procedural(spec, cache_dir)), "aligned"
    assert root is not None
    return open_dataset_args(
        fmt,
        root,
        split=spec.split,
        condition=spec.condition,
        label_space=spec.label_space,
        split_file=spec.split_file,
        unknown_to_ignore=spec.unknown_to_ignore,
        limit=spec.limit,
    )
