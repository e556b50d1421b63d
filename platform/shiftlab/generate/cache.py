"""Generated datasets cached by a hash of everything that determines their bytes.

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
``gpus_per_actor``): they change where and how fast, never a byte of the output.

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

**Concurrency**: `ensure_generated` takes a `FileLock` (``<output_root>/.<key>.lock``; for an
object-store output, in the node's cache, see `lock_path`) before generating; a second caller
waits, then finds the modes complete and returns.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from shiftlab.config.data import DatasetSpec
from shiftlab.config.generate import InstructPix2PixConfig
from shiftlab.data.label_spaces import LabelSpace, builtin_label_spaces, get_label_space
from shiftlab.generate.fingerprint import model_fingerprint
from shiftlab.generate.plan import output_root
from shiftlab.utils.store import is_uri, join, local_copy_dir
from shiftlab.utils.version import __version__

if TYPE_CHECKING:
    from shiftlab.config.schema import ExperimentConfig
    from shiftlab.generate.plan import GenerationPlan

log = logging.getLogger(__name__)

# Bump when a change of shiftlab changes the images of an unchanged request.
GENERATOR_VERSION = 1
# Generate fields outside the key: where and how fast (never a byte of output), the source
# (keyed by its identity instead) and the modes (one directory holds every mode).
NOT_KEYED = {"output_root", "num_actors", "cpus_per_actor", "gpus_per_actor", "source", "modes"}


def label_space_record(space: LabelSpace) -> tuple[str, str | None, dict[str, Any]]:
    """(name for dataset.json, label_space.yaml text or None for built-ins, content for the key)."""
    content = space.to_dict()
    if space.name in builtin_label_spaces() and get_label_space(space.name).to_dict() == content:
        return space.name, None, content
    return space.name, yaml.safe_dump(content, sort_keys=False), content


def source_identity(spec: DatasetSpec, reader_root: Path) -> dict[str, Any]:
    """What names the source images, independent of where caches live."""
    identity: dict[str, Any] = {
        "format": spec.format,
        "split": spec.split,
        "condition": spec.condition,
    }
    if spec.format == "procedural":
        from shiftlab.data.procedural_cache import procedural_key

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
    elif spec.root is not None and is_uri(spec.root):
        identity["root"] = spec.root.rstrip("/")  # not the node-local copy's path
    else:
        identity["root"] = str(Path(reader_root).resolve())
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
        "model": model_fingerprint(editor.model) if isinstance(editor, InstructPix2PixConfig) else None,
    }


def cache_key(record: dict[str, Any]) -> str:
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------- the entry point


@dataclass(frozen=True)
class GenerateResult:
    path: Path | str  # a URI string for object-store outputs
    key: str
    generated: int  # images (all modes) this call wrote; 0 when everything was cached
    modes: tuple[str, ...]  # complete modes in the directory
    stats: Any = None  # the pipeline's GenerationStats when this call generated


def complete_modes(plan: GenerationPlan) -> tuple[str, ...]:
    """Modes that dataset.json marks complete, after checking it is this request's directory."""
    from shiftlab.generate.manifest import read_meta

    meta = read_meta(plan.store)
    if meta is None:
        return ()
    if meta.get("cache_key") != plan.key:
        from shiftlab.utils.errors import DataError

        raise DataError(
            f"{join(plan.dataset_dir, 'dataset.json')}: cache key {meta.get('cache_key')!r} does not match "
            f"the request's {plan.key!r} (a foreign or corrupt directory; remove it)"
        )
    return tuple(meta.get("modes", []))


def ensure_generated_report(
    cfg: ExperimentConfig,
    cache_dir: str | Path | None = None,
    address: str | None = None,
    modes: list[str] | None = None,
) -> GenerateResult:
    """`ensure_generated` with a count of what this call generated."""
    from shiftlab.generate.plan import make_plan
    from shiftlab.utils.lock import FileLock

    plan = make_plan(cfg, cache_dir, modes)
    where = dataset_location(plan.dataset_dir)
    done = complete_modes(plan)
    if set(plan.modes) <= set(done):
        log.info("generated set %s is complete (modes %s): reused", where, ", ".join(done))
        return GenerateResult(where, plan.key, 0, done)
    from shiftlab.utils.storage import check_writable

    check_writable(output_root(cfg), "generation output")  # read-only or full: say so up front
    with FileLock(lock_path(plan)):
        # Another caller may have finished it while we waited.
        done = complete_modes(plan)
        if set(plan.modes) <= set(done):
            return GenerateResult(where, plan.key, 0, done)
        from shiftlab.generate.pipeline import run_generation

        stats = run_generation(plan, address=address, ray_num_cpus=cfg.ray.num_cpus)
        return GenerateResult(where, plan.key, stats.written, complete_modes(plan), stats)


def dataset_location(location: str) -> Path | str:
    """A folder as a Path; an object-store URI stays a string."""
    return location if is_uri(location) else Path(location)


def lock_path(plan: GenerationPlan) -> Path:
    """The lock file of a request: next to a folder; for a URI, in this node's cache.

    Object stores offer no create-if-absent through pyarrow, so callers on different nodes
    writing one URI are not kept apart: they write identical bytes (see `lock.py`), the lock
    only saves work, here among the callers of one node (e.g. sweep trials).
    """
    if is_uri(plan.dataset_dir):
        return local_copy_dir(plan.dataset_dir, "locks").with_suffix(".lock")
    folder = Path(plan.dataset_dir)
    return folder.parent / f".{folder.name}.lock"


def ensure_generated(cfg: ExperimentConfig, cache_dir: str | Path | None = None) -> Path | str:
    """THE entry point for other stages: the complete dataset directory of ``cfg.generate``
    (a Path, or the URI string when ``generate.output_root`` is on object storage).

    Generates only what is missing (modes not yet complete, images not yet written); an
    identical request returns the same directory without work. Ray is started (or joined via
    ``cfg.ray.address`` / ``RAY_ADDRESS``) only when something must be generated.
    """
    return ensure_generated_report(cfg, cache_dir, address=cfg.ray.address).path
