"""The files of a generated dataset directory: names, provenance records, completeness.

```
<root>/source/<id>.png              source image after `resize` (every view has one size)
<root>/<mode>/<id>.png              intermediate / target edits
<root>/labels/<id>.<ext>            source labels, byte for byte (a copy or a reflink)
<root>/manifest/<mode>/<id>.json    provenance of one edited image
<root>/label_space.yaml             only for label spaces that are not built in
<root>/sources.json                 what the set was made from (see `sources.py`)
<root>/dataset.json                 written last, after each completed mode
```

``<root>`` is a folder or an object-store prefix (`shiftlab.utils.store`); every function here
works on either.

Every path stored in a manifest is relative to the dataset root (``origin`` paths are
relative to the *source* root named in dataset.json), so the directory can be moved and no
stored path leads out of it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from shiftlab.config.generate import InstructPix2PixConfig
from shiftlab.data.formats.shiftlab_dir import META_FILE
from shiftlab.generate.patching import MODES
from shiftlab.utils.atomic import json_bytes
from shiftlab.utils.errors import DataError
from shiftlab.utils.store import Store, join
from shiftlab.utils.version import __version__

if TYPE_CHECKING:
    from shiftlab.generate.plan import GenerationPlan

SOURCE_DIR = "source"
LABEL_DIR = "labels"
MANIFEST_DIR = "manifest"
# Folders that hold per-sample files (temp files of killed writers are cleaned from these).
DATA_DIRS = (SOURCE_DIR, LABEL_DIR, *MODES, MANIFEST_DIR)


def image_rel(mode: str, sample_id: str) -> str:
    return f"{mode}/{sample_id}.png"


def manifest_rel(mode: str, sample_id: str) -> str:
    return f"{MANIFEST_DIR}/{mode}/{sample_id}.json"


def read_meta(store: Store) -> dict[str, Any] | None:
    if not store.is_file(META_FILE):
        return None
    try:
        return json.loads(store.read_bytes(META_FILE))
    except json.JSONDecodeError as exc:
        raise DataError(f"{join(store.location, META_FILE)}: not valid JSON ({exc})") from None


def write_meta(plan: GenerationPlan, modes: list[str] | tuple[str, ...]) -> None:
    """dataset.json with ``modes`` complete; written only after every file of those modes."""
    store = plan.store
    if plan.label_space_yaml is not None:
        store.write_bytes("label_space.yaml", plan.label_space_yaml.encode())
    ordered = [m for m in MODES if m in set(modes)]
    meta = dict(plan.meta, modes=ordered, views=[SOURCE_DIR, *ordered])
    store.write_bytes(META_FILE, json_bytes(meta))


def manifest_record(
    plan: GenerationPlan,
    index: int,
    mode: str,
    provenance: dict[str, Any],
    size: tuple[int, int],
    device: str | None,
) -> dict[str, Any]:
    """The provenance of one edited image (JSON-ready, relative paths only)."""
    sid = plan.ids[index]
    editor = plan.editor
    record: dict[str, Any] = {
        "id": sid,
        "mode": mode,
        "image": image_rel(mode, sid),
        "source_image": f"{SOURCE_DIR}/{sid}.png",
        "label": f"{LABEL_DIR}/{plan.label_name(index)}",
        "origin": {"image": plan.origin_images[index], "label": plan.origin_labels[index]},
        "size": list(size),
        "editor": editor.model_dump(mode="json"),
        "prompt": plan.prompt,
        "seed": plan.seed,
        "tile": plan.tile,
        "overlap": plan.overlap,
        "resize": list(plan.resize) if plan.resize else None,
        "patches": [
            {"index": k, "box": box, "seed": seed}
            for k, (box, seed) in enumerate(
                zip(provenance["boxes"], provenance["seeds"], strict=True)
            )
        ],
        "cache_key": plan.key,
        "shiftlab_version": __version__,
    }
    if isinstance(editor, InstructPix2PixConfig):
        record["guidance_scale"] = editor.guidance_scale
        record["image_guidance_scale"] = editor.image_guidance_scale
        record["steps"] = editor.steps
        record["device"] = device
    return record


def missing_ids(plan: GenerationPlan, mode: str) -> set[int]:
    """Indices of samples that lack any file of ``mode`` (image, manifest, source or label)."""
    store = plan.store
    have_img = store.names(mode)
    have_man = store.names(f"{MANIFEST_DIR}/{mode}")
    have_src = store.names(SOURCE_DIR)
    have_lab = store.names(LABEL_DIR)
    out = set()
    for i, sid in enumerate(plan.ids):
        if (
            f"{sid}.png" not in have_img
            or f"{sid}.json" not in have_man
            or f"{sid}.png" not in have_src
            or plan.label_name(i) not in have_lab
        ):
            out.add(i)
    return out


def clean_temp_files(store: Store) -> int:
    """Remove temp files (``.<name>.<random>.tmp``) that killed writers left; returns the count."""
    return store.clean_temp(DATA_DIRS)
