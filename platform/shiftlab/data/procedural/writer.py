"""Write procedural layouts to disk in the aligned and the Cityscapes folder layouts."""

from __future__ import annotations

import json
from collections.abc import Sequence
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
    the result is byte-identical to an uninterrupted run. Returns a summary.
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
    if meta_path.exists():
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{meta_path}: unreadable procedural metadata ({exc})") from exc
        # Resuming into a folder made with other settings would mix two datasets.
        for key in ("size", "seed", "generator", "splits"):
            if old.get(key) != meta[key]:
                raise ConfigError(
                    f"{meta_path}: existing dataset has {key}={old.get(key)!r}, requested "
                    f"{meta[key]!r}; use another output folder"
                )

    written = skipped = 0
    index = 0
    for split in SPLITS:
        for _ in range(counts[split]):
            sid = sample_id(index)
            paths = _paths(out, split, sid, names)
            missing = {k: p for k, p in paths.items() if not p.exists()}
            skipped += len(paths) - len(missing)
            if missing:
                rendered = render_scene(index, seed, (h, w), names)
                for key, path in missing.items():
                    kind, _, app = key.partition(":")
                    write_png(
                        path,
                        rendered.label if kind in ("label", "cs_label") else rendered.images[app],
                    )
                    written += 1
            index += 1
    write_json(meta_path, meta)
    return {
        "out": str(out),
        "layouts": index,
        "splits": counts,
        "appearances": names,
        "size": [h, w],
        "seed": int(seed),
        "files_written": written,
        "files_skipped": skipped,
    }
