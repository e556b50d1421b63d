"""Domain-gap analysis between two dataset splits (the off-road report's section on the gap).

For each side: per-channel RGB mean and standard deviation over every pixel of every image,
and the share of each class among labelled (non-ignore) pixels. Then the shifts (B - A) and
the classes with zero pixels on either side (the report found three classes absent from test;
those are the candidates for ``evaluate.absent_classes``).

Statistics stream image by image. Sums of values and of squares are kept as Python/NumPy
integers, so mean and variance are exact (no float accumulation drift over thousands of
images): var = (N * sum(x^2) - sum(x)^2) / N^2.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shiftlab.data.formats import DatasetReader, Sample, open_dataset_args
from shiftlab.utils.atomic import write_bytes, write_json
from shiftlab.utils.errors import ConfigError


@dataclass
class DatasetRef:
    """``FORMAT:ROOT[:SPLIT[:CONDITION]]`` from the command line."""

    format: str
    root: str
    split: str = "train"
    condition: str | None = None

    @classmethod
    def parse(cls, text: str) -> DatasetRef:
        parts = text.split(":")
        if len(parts) < 2 or len(parts) > 4 or not parts[0] or not parts[1]:
            raise ConfigError(
                f"dataset reference {text!r}: expected FORMAT:ROOT[:SPLIT[:CONDITION]], "
                "e.g. falcon:/data/falcon:train"
            )
        split = parts[2] if len(parts) > 2 and parts[2] else "train"
        condition = parts[3] if len(parts) > 3 and parts[3] else None
        return cls(parts[0], parts[1], split, condition)

    def open(self, label_space: str | None = None) -> DatasetReader:
        return open_dataset_args(
            self.format,
            self.root,
            split=self.split,
            condition=self.condition,
            label_space=label_space,
        )

    def __str__(self) -> str:
        return ":".join(
            [self.format, self.root, self.split] + ([self.condition] if self.condition else [])
        )


@dataclass
class SideStats:
    """Running exact sums for one dataset."""

    num_images: int = 0
    num_pixels: int = 0
    channel_sum: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.int64))
    channel_sq: list[int] = field(default_factory=lambda: [0, 0, 0])  # Python ints: no overflow
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    labelled_images: int = 0
    unknown_values: dict[int, int] = field(default_factory=dict)

    def add_image(self, rgb: np.ndarray) -> None:
        flat = rgb.reshape(-1, 3)
        self.num_images += 1
        self.num_pixels += flat.shape[0]
        self.channel_sum += flat.sum(axis=0, dtype=np.int64)
        # per image the squares fit int64 (255^2 * 2^40 pixels), across images Python ints
        sq = np.einsum("ij,ij->j", flat.astype(np.int64), flat.astype(np.int64))
        for c in range(3):
            self.channel_sq[c] += int(sq[c])

    def mean(self) -> list[float]:
        return (
            [int(s) / self.num_pixels for s in self.channel_sum] if self.num_pixels else [0.0] * 3
        )

    def std(self) -> list[float]:
        n = self.num_pixels
        if not n:
            return [0.0] * 3
        out = []
        for c in range(3):
            s, q = int(self.channel_sum[c]), self.channel_sq[c]
            out.append(math.sqrt((n * q - s * s) / (n * n)))  # exact integer numerator
        return out


def _read(reader: DatasetReader, sample: Sample) -> tuple[np.ndarray, Any]:
    image = reader.read_image(sample)
    stats = reader.label_stats(sample) if sample.label is not None else None
    return image, stats


def _stream(reader: DatasetReader, threads: int) -> Iterator[tuple[np.ndarray, Any]]:
    samples = reader.samples()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gap-read") as pool:
        # bounded look-ahead: never more than a few decoded images in memory
        window = 4 * threads
        futures = [pool.submit(_read, reader, s) for s in samples[:window]]
        nxt = len(futures)
        while futures:
            yield futures.pop(0).result()
            if nxt < len(samples):
                futures.append(pool.submit(_read, reader, samples[nxt]))
                nxt += 1


def collect(reader: DatasetReader, threads: int | None = None) -> SideStats:
    stats = SideStats()
    for image, labels in _stream(reader, threads or max(1, min(4, os.cpu_count() or 1))):
        stats.add_image(image)
        if labels is not None:
            stats.labelled_images += 1
            stats.class_pixels += labels.class_pixels
            for v, n in labels.unknown_values.items():
                stats.unknown_values[v] = stats.unknown_values.get(v, 0) + n
    return stats


def _side_dict(ref: str, reader: DatasetReader, st: SideStats) -> dict[str, Any]:
    names = reader.label_space.class_names
    k = len(names)
    labelled = int(st.class_pixels[:k].sum())
    out: dict[str, Any] = {
        "ref": ref,
        "format": reader.format,
        "root": str(reader.root),
        "split": reader.split,
        "condition": reader.condition,
        "num_images": st.num_images,
        "num_pixels": st.num_pixels,
        "rgb_mean": st.mean(),
        "rgb_std": st.std(),
        "labelled_images": st.labelled_images,
    }
    if st.labelled_images:
        out["class_pixels"] = {n: int(st.class_pixels[i]) for i, n in enumerate(names)}
        out["class_share"] = {
            n: (int(st.class_pixels[i]) / labelled if labelled else 0.0)
            for i, n in enumerate(names)
        }
        out["ignore_pixels"] = int(st.class_pixels[k:].sum())
        out["unknown_values"] = {str(v): n for v, n in sorted(st.unknown_values.items())}
    return out


def analyze_domain_gap(
    a: DatasetReader,
    b: DatasetReader,
    ref_a: str = "A",
    ref_b: str = "B",
    threads: int | None = None,
) -> dict[str, Any]:
    """Colour and class statistics of two datasets and their shift (B - A).

    Both readers must use the same label space (class names in the same order). Splits
    without labels give colour statistics only.
    """
    if tuple(a.label_space.class_names) != tuple(b.label_space.class_names):
        raise ConfigError(
            f"{ref_a} uses label space {a.label_space.name!r} and {ref_b} uses "
            f"{b.label_space.name!r}: pass --label-space so both are decoded the same way"
        )
    sa, sb = collect(a, threads), collect(b, threads)
    da, db = _side_dict(ref_a, a, sa), _side_dict(ref_b, b, sb)
    result: dict[str, Any] = {
        "label_space": a.label_space.name,
        "class_names": list(a.label_space.class_names),
        "a": da,
        "b": db,
        "rgb_mean_shift": [mb - ma for ma, mb in zip(da["rgb_mean"], db["rgb_mean"], strict=True)],
        "rgb_std_shift": [sb_ - sa_ for sa_, sb_ in zip(da["rgb_std"], db["rgb_std"], strict=True)],
    }
    if "class_share" in da and "class_share" in db:
        names = result["class_names"]
        result["class_share_shift"] = {
            n: db["class_share"][n] - da["class_share"][n] for n in names
        }
        result["absent_in_a"] = [n for n in names if da["class_pixels"][n] == 0]
        result["absent_in_b"] = [n for n in names if db["class_pixels"][n] == 0]
    return result


def domain_gap_png(result: dict[str, Any]) -> bytes:
    """RGB mean (+/- std) bars of A and B, and per-class pixel-share bars side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    a, b = result["a"], result["b"]
    has_classes = "class_share_shift" in result
    names = result["class_names"]
    width = 5 + (max(6.0, 0.5 * len(names)) if has_classes else 0)
    fig = Figure(figsize=(width, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    grid = (
        fig.add_gridspec(1, 2, width_ratios=[1, max(1.0, len(names) / 4)]) if has_classes else None
    )
    ax = fig.add_subplot(grid[0, 0]) if grid is not None else fig.add_subplot(1, 1, 1)
    x = np.arange(3)
    ax.bar(x - 0.2, a["rgb_mean"], 0.4, yerr=a["rgb_std"], capsize=3, label="A", color="#4c72b0")
    ax.bar(x + 0.2, b["rgb_mean"], 0.4, yerr=b["rgb_std"], capsize=3, label="B", color="#dd8452")
    ax.set_xticks(x, labels=["R", "G", "B"])
    ax.set_ylim(0, 255)
    ax.set_ylabel("pixel value (mean +/- std)")
    ax.set_title("RGB")
    ax.legend()
    if grid is not None:
        ax2 = fig.add_subplot(grid[0, 1])
        xs = np.arange(len(names))
        share_a = [100 * a["class_share"][n] for n in names]
        share_b = [100 * b["class_share"][n] for n in names]
        ax2.bar(xs - 0.2, share_a, 0.4, label="A", color="#4c72b0")
        ax2.bar(xs + 0.2, share_b, 0.4, label="B", color="#dd8452")
        ax2.set_xticks(xs, labels=names, rotation=60, ha="right", fontsize=8)
        for i, n in enumerate(names):  # mark classes absent on one side
            if n in result["absent_in_a"] or n in result["absent_in_b"]:
                ax2.get_xticklabels()[i].set_color("red")
        ax2.set_ylabel("% of labelled pixels")
        ax2.set_title("class share (red: absent on one side)")
        ax2.legend()
    fig.suptitle(f"A: {a['ref']}\nB: {b['ref']}", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_domain_gap(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """``domain_gap.json`` and ``domain_gap.png`` in ``out_dir``, each written atomically."""
    out = Path(out_dir)
    paths = {"json": out / "domain_gap.json", "png": out / "domain_gap.png"}
    write_json(paths["json"], result)
    write_bytes(paths["png"], domain_gap_png(result))
    return paths
