"""Write procedural layouts to disk in the aligned and the Cityscapes folder layouts."""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from shiftlab.utils.atomic import write_json, write_png
from shiftlab.utils.errors import ConfigError

from .render import check_appearances, check_size, render_scene

SPLITS = ("train", "val", "test")
CITY = "proc"  # the Cityscapes "city" folder of every procedural sample


def sample_id(layout_index: int) -> str:
    """Cityscapes-like ``city_sequence_frame`` id of a layout."""
    return f"{CITY}_{layout_index:06d}_000019"


def _paths(out: Path, split: str, sid: str, appearances: Sequence[str]) -> dict[str, Path]:
    """Every file of one sample: ``label``, ``cs_label`` and ``img:<app>`` / ``cs_img:<app>``."""
    paths = {
        "label": out / "labels" / split / f"{sid}.png",
        # The Cityscapes layout repeats the labels under each appearance, as ACDC-style
        # readers expect one self-contained root per condition.
    }
    for app in appearances:
        paths[f"img:{app}"] = out / "images" / app / split / f"{sid}.png"
        cs = out / "cityscapes" / app
        paths[f"cs_img:{app}"] = cs / "leftImg8bit" / split / CITY / f"{sid}_leftImg8bit.png"
        paths[f"cs_label:{app}"] = cs / "gtFine" / split / CITY / f"{sid}_gtFine_labelIds.png"
    return paths


def _split_counts(
    layouts: int, val_layouts: int | None, test_layouts: int | None
) -> dict[str, int]:
    if int(layouts) < 1:
        raise ConfigError(f"procedural layouts must be >= 1, got {layouts}")
    n_val = max(1, int(layouts) // 4) if val_layouts is None else int(val_layouts)
    n_test = n_val if test_layouts is None else int(test_layouts)
    if n_val < 0 or n_test < 0:
        raise ConfigError(f"procedural val/test layouts must be >= 0, got {n_val}/{n_test}")
    return {"train": int(layouts), "val": n_val, "test": n_test}


def _check_resume(meta_path: Path, meta: dict[str, Any]) -> None:
    """Resuming into a folder made with other settings would mix two datasets."""
    if not meta_path.exists():
        return
    try:
        old = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{meta_path}: unreadable procedural metadata ({exc})") from exc
    for key in ("size", "seed", "generator", "splits"):
        if old.get(key) != meta[key]:
            raise ConfigError(
                f"{meta_path}: existing dataset has {key}={old.get(key)!r}, requested "
                f"{meta[key]!r}; use another output folder"
            )


def _write_layout(
    out: Path, split: str, index: int, names: list[str], seed: int, hw: tuple[int, int]
) -> tuple[int, int]:
    """Render one layout if any of its files is missing; (files written, files kept)."""
    paths = _paths(out, split, sample_id(index), names)
    missing = {k: p for k, p in paths.items() if not p.exists()}
    if missing:
        rendered = render_scene(index, seed, hw, names)
        for key, path in missing.items():
            kind, _, app = key.partition(":")
            write_png(
                path, rendered.label if kind in ("label", "cs_label") else rendered.images[app]
            )
    return len(missing), len(paths) - len(missing)


def _workers(jobs: int) -> int:
    """Processes to render with: the CPUs this process may use, for enough layouts to pay."""
    cpus = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    return 1 if jobs < 32 else max(1, min(cpus, 8))


def write_procedural(
    out: Path,
    layouts: int,
    appearances: Sequence[str],
    size: tuple[int, int],
    seed: int,
    val_layouts: int | None = None,
    test_layouts: int | None = None,
) -> dict[str, Any]:
    """Render and write ``layouts`` train (+ val, test) layouts under ``out``.

    Layout indices are consecutive across splits (train first), so splits never share a
    layout. Existing files are kept (a killed run resumes); since rendering is deterministic
    the result is byte-identical to an uninterrupted run, whichever process rendered which
    layout (many layouts are rendered by a pool of processes). Returns a summary.
    """
    out = Path(out)
    names = check_appearances(appearances)
    h, w = check_size(size)
    counts = _split_counts(layouts, val_layouts, test_layouts)
    meta = {
        "label_space": "cityscapes",
        "appearances": names,
        "splits": counts,
        "size": [h, w],
        "seed": int(seed),
        "generator": "shiftlab.procedural",
    }
    meta_path = out / "aligned.json"
    _check_resume(meta_path, meta)
    splits = [split for split in SPLITS for _ in range(counts[split])]
    jobs = [(out, split, index, names, int(seed), (h, w)) for index, split in enumerate(splits)]
    workers = _workers(len(jobs))
    if workers > 1:
        # spawn, not fork: the caller may hold threads (Ray, torch) a forked child would inherit.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = list(pool.map(_write_layout, *zip(*jobs, strict=True), chunksize=8))
    else:
        done = [_write_layout(*job) for job in jobs]
    write_json(meta_path, meta)
    return {
        "out": str(out),
        "layouts": len(jobs),
        "splits": counts,
        "appearances": names,
        "size": [h, w],
        "seed": int(seed),
        "files_written": sum(d[0] for d in done),
        "files_skipped": sum(d[1] for d in done),
    }
