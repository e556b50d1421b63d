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

from shiftlab.generate.manifest import read_meta
from shiftlab.generate.pipeline import run_generation
from shiftlab.generate.plan import GenerationPlan, make_plan, output_root
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
    """`ensure_generated` with a count of what this call generated."""
    plan = make_plan(cfg, cache_dir, modes)
    where = handle(plan.dataset_dir)
    done = complete_modes(plan)
    if set(plan.modes) <= set(done):
        log.info("generated set %s is complete (modes %s): reused", where, ", ".join(done))
        return GenerateResult(where, plan.key, 0, done)
    check_writable(output_root(cfg), "generation output")  # read-only or full: say so up front
    with FileLock(plan.store.lock_file()):
        # Another caller may have finished it while we waited.
        done = complete_modes(plan)
        if set(plan.modes) <= set(done):
            return GenerateResult(where, plan.key, 0, done)
        stats = run_generation(plan, address=address, ray_num_cpus=cfg.ray.num_cpus)
        return GenerateResult(where, plan.key, stats.written, complete_modes(plan), stats)


def ensure_generated(cfg: ExperimentConfig, cache_dir: str | Path | None = None) -> Path | str:
    """THE entry point for other stages: the complete dataset directory of ``cfg.generate``
    (a Path, or the URI string when ``generate.output_root`` is on object storage).

    Generates only what is missing (modes not yet complete, images not yet written); an
    identical request returns the same directory without work. Ray is started (or joined via
    ``cfg.ray.address`` / ``RAY_ADDRESS``) only when something must be generated.
    """
    return ensure_generated_report(cfg, cache_dir, address=cfg.ray.address).path
