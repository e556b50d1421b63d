"""The cache key of a generated set: a hash of everything that determines its bytes.

A pure function of the request (no Ray, no I/O beyond reading the source listing and the
editor's weights fingerprint); the plan (`plan.py`) names the set's folder after it.

**The key** is the sha256 of a canonical JSON record of

- the source's identity: format, resolved root (procedural scenes: their render key instead,
  since their cache folder moves with ``SHIFTLAB_CACHE_DIR``), split, condition, the label
  space's full content, and the sorted list of sample ids (so ``limit``, split files and
  added or removed images all change it);
- the generate config with the editor resolved (scales filled from the preset or diffusers'
  defaults), prompt, seed, tile, overlap, resize, limit, preset; for InstructPix2Pix the
  content fingerprint of the pipeline directory (`fingerprint.py`), not just its path;
- the generator version (bumped when an algorithm changes the output of a request).

Left out: ``output_root`` and the resources (``num_actors``, ``cpus_per_actor``,
``gpus_per_actor``, ``overlap_io``): they change where and how fast, never a byte of the
output. ``png_compress_level`` is left out too: it changes the files' bytes but never a
pixel (PNG is lossless at every level), so a set made at another level is the same data,
and sets made before the setting existed keep their key.

**Modes are not part of the key**: one directory holds every mode of one request, each
generated at most once, and ``dataset.json["modes"]`` lists the modes that are complete. A
request for ``[target]`` followed by one for ``[intermediate, target]`` reuses the target
images and generates only the intermediate ones. This is what keeps views paired: the
``source``, ``intermediate`` and ``target`` images of one id are always edits of the same
resized source image with the same seeds, in one folder the reader can pair by id. (A key per
mode set would have duplicated the target images of every such pair of requests; a folder
per mode would have needed the reader to join folders by an out-of-band source key.) The
bytes of one mode never depend on which other modes were requested: patch seeds and the
intermediate box are derived from (seed, id, mode), and each mode has its own work units.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from shiftlab.config.data import DatasetSpec
from shiftlab.config.generate import InstructPix2PixConfig
from shiftlab.data.label_spaces import LabelSpace, builtin_label_spaces, get_label_space
from shiftlab.data.procedural_cache import procedural_key
from shiftlab.generate.fingerprint import model_fingerprint
from shiftlab.utils.store import open_store
from shiftlab.utils.version import __version__

if TYPE_CHECKING:
    from shiftlab.config.schema import ExperimentConfig

log = logging.getLogger(__name__)

# Bump when a change of shiftlab changes the images of an unchanged request.
GENERATOR_VERSION = 1
# Generate fields outside the key: where and how fast (never a byte of output), the PNG level
# (never a pixel: lossless at every level; keyed, it would orphan every existing set), the
# source (keyed by its identity instead) and the modes (one directory holds every mode).
NOT_KEYED = {
    "output_root",
    "num_actors",
    "cpus_per_actor",
    "gpus_per_actor",
    "overlap_io",
    "png_compress_level",
    "source",
    "modes",
}


def label_space_record(space: LabelSpace) -> tuple[str, str | None, dict[str, Any]]:
    """(name for dataset.json, label_space.yaml text or None for built-ins, content for the key)."""
    content = space.to_dict()
    if space.name in builtin_label_spaces() and get_label_space(space.name).to_dict() == content:
        return space.name, None, content
    return space.name, yaml.safe_dump(content, sort_keys=False), content


def source_identity(spec: DatasetSpec, reader_root: Path) -> dict[str, Any]:
    """What names the source images wherever they are read from (``reader_root``: the
    reader's folder, used when the spec names none)."""
    identity: dict[str, Any] = {
        "format": spec.format,
        "split": spec.split,
        "condition": spec.condition,
    }
    if spec.format == "procedural":
        identity["root"] = None
        identity["procedural"] = {
            "key": procedural_key(spec),
            "layouts": spec.layouts,
            "val_layouts": spec.val_layouts,
            "test_layouts": spec.test_layouts,
            "appearances": list(spec.appearances),
            "size": list(spec.size),
            "seed": spec.seed,
        }
    else:  # the location as everyone names it (a URI, not this node's copy of it)
        identity["root"] = open_store(spec.root or reader_root).identity
    return identity


def request_record(
    cfg: ExperimentConfig,
    spec: DatasetSpec,
    reader_root: Path,
    ids: list[str],
    label_space_content: dict[str, Any],
) -> dict[str, Any]:
    gen = cfg.generate
    assert gen is not None
    generate = gen.model_dump(mode="json", exclude=NOT_KEYED)
    editor = gen.resolved_editor()
    generate["editor"] = editor.model_dump(mode="json")
    source = source_identity(spec, reader_root)
    return {
        "generator": GENERATOR_VERSION,
        "shiftlab": __version__,
        "generate": generate,
        "source_spec": source,
        "source_ids": sorted(ids),
        "label_space": label_space_content,
        "model": model_fingerprint(editor.model)
        if isinstance(editor, InstructPix2PixConfig)
        else None,
    }


def cache_key(record: dict[str, Any]) -> str:
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()
