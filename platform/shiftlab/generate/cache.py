"""Generated datasets, cached by their request key (`cache_key.py`): ``ensure_generated``.

**Concurrency**: `ensure_generated` takes a `FileLock` (``<output_root>/.<key>.lock``; for an
object-store output, in the node's cache: `Store.lock_file`) before generating; a second caller
waits, then finds the modes complete and returns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shiftlab.generate.manifest import read_meta, write_meta
from shiftlab.generate.pipeline import run_generation
from shiftlab.generate.plan import GenerationPlan, make_plan, output_root
from shiftlab.generate.sources import (
    Records,
    current_records,
    invalidate,
    read_records,
    stale_ids,
    write_records,
)
from shiftlab.utils.errors import DataError
from shiftlab.utils.lock import FileLock
from shiftlab.utils.storage import check_writable
from shiftlab.utils.store import handle, join

if TYPE_CHECKING:
    from shiftlab.config.schema import ExperimentConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateResult:
    path: Path | str  # a URI string for object-store outputs
    key: str
    generated: int  # images (all modes) this call wrote; 0 when everything was cached
    modes: tuple[str, ...]  # complete modes in the directory
    stats: Any = None  # the pipeline's GenerationStats when this call generated
    stale: int = 0  # samples whose source image or label changed since the set was made


def complete_modes(plan: GenerationPlan) -> tuple[str, ...]:
    """Modes that dataset.json marks complete, after checking it is this request's directory."""
    meta = read_meta(plan.store)
    if meta is None:
        return ()
    if meta.get("cache_key") != plan.key:
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
    """`ensure_generated` with a count of what this call generated (and found stale)."""
    plan = make_plan(cfg, cache_dir, modes)
    where = handle(plan.dataset_dir)
    known = read_records(plan)
    now = current_records(plan, known)  # a stat per source file; hashes only what changed
    if not stale_ids(known, now) and set(plan.modes) <= set(complete_modes(plan)):
        log.info("generated set %s is complete and up to date: reused", where)
        if now != known:
            _record(plan, now)  # a first record, or touched but unchanged files' new mtimes
        return GenerateResult(where, plan.key, 0, complete_modes(plan))
    check_writable(output_root(cfg), "generation output")  # read-only or full: say so up front
    with FileLock(plan.store.lock_file()):
        # Another caller may have finished (or refreshed) it while we waited.
        known = read_records(plan)
        stale = stale_ids(known, now)
        if stale:
            invalidate(plan, stale)
            write_meta(plan, [])  # no mode is complete any more
        stats = None
        if not set(plan.modes) <= set(complete_modes(plan)):
            stats = run_generation(plan, address=address, ray_num_cpus=cfg.ray.num_cpus)
        _record(plan, now)
        written = stats.written if stats is not None else 0
        return GenerateResult(where, plan.key, written, complete_modes(plan), stats, len(stale))


def _record(plan: GenerationPlan, records: Records) -> None:
    try:
        write_records(plan, records)
    except OSError as exc:  # a read-only set still serves; its next check re-hashes
        log.warning("%s: source records not updated (%s)", plan.dataset_dir, exc)


def ensure_generated(cfg: ExperimentConfig, cache_dir: str | Path | None = None) -> Path | str:
    """THE entry point for other stages: the complete dataset directory of ``cfg.generate``
    (a Path, or the URI string when ``generate.output_root`` is on object storage).

    Generates only what is missing (modes not yet complete, images not yet written); an
    identical request returns the same directory without work. Ray is started (or joined via
    ``cfg.ray.address`` / ``RAY_ADDRESS``) only when something must be generated.
    """
    return ensure_generated_report(cfg, cache_dir, address=cfg.ray.address).path
