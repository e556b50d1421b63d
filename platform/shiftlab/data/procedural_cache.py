"""Procedural scenes as a dataset: rendered once into a cache folder named by their parameters."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from shiftlab.config.data import DatasetSpec
from shiftlab.data.procedural import write_procedural
from shiftlab.utils.atomic import write_json
from shiftlab.utils.store import local_cache_dir

RENDERER_VERSION = 1


def default_cache_dir() -> Path:
    return local_cache_dir()


def procedural_key(spec: DatasetSpec) -> str:
    params = {
        "layouts": spec.layouts,
        "val_layouts": spec.val_layouts,
        "test_layouts": spec.test_layouts,
        "appearances": sorted(spec.appearances),
        "size": list(spec.size),
        "seed": spec.seed,
        "renderer": RENDERER_VERSION,
    }
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def ensure_procedural(spec: DatasetSpec, cache_dir: str | Path | None = None) -> Path:
    """Render the scenes of ``spec`` unless a complete copy is cached; return the aligned root."""
    out = Path(cache_dir or default_cache_dir()) / "procedural" / procedural_key(spec)
    done = out / ".complete"
    if not done.is_file():
        # write_procedural skips finished files, so concurrent or killed renders converge.
        write_procedural(
            out,
            layouts=spec.layouts,
            appearances=spec.appearances,
            size=(spec.size[0], spec.size[1]),
            seed=spec.seed,
            val_layouts=spec.val_layouts,
            test_layouts=spec.test_layouts,
        )
        write_json(done, {"key": procedural_key(spec)})
    return out
