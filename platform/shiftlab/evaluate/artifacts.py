"""Evaluation artifacts: prediction PNGs, per-class tables, confusion plot, overlays, metrics.json.

Every file goes through ``shiftlab.utils.atomic``. Figures use matplotlib's object API on an
Agg canvas (no pyplot global state), so they are safe in worker threads and headless machines.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shiftlab.data.label_spaces import LabelSpace
from shiftlab.evaluate.metrics import ConfusionMatrix, SegMetrics
from shiftlab.utils.atomic import write_bytes, write_json, write_png, write_text

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_dirname(name: str) -> str:
    """A dataset display name ("acdc/val/night") as one folder name ("acdc_val_night")."""
    cleaned = _SAFE.sub("_", name).strip("._")
    return cleaned or "dataset"


def write_prediction(path: Path, pred: np.ndarray) -> None:
    """A uint8 train-id PNG, the format `shiftlab score` reads."""
    if pred.ndim != 2:
        raise ValueError(f"prediction must be HxW, got shape {pred.shape}")
    write_png(path, pred.astype(np.uint8))


def overlay_panel(
    image: np.ndarray, label: np.ndarray, pred: np.ndarray, space: LabelSpace
) -> np.ndarray:
    """image | ground-truth colours | prediction colours, side by side (ignore is black)."""
    gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
    return np.concatenate(
        [image, gap, space.colorize(label), gap, space.colorize(pred.astype(np.uint8))], axis=1
    )


def per_class_rows(
    cm: ConfusionMatrix, metrics: SegMetrics, class_names: Sequence[str]
) -> list[dict[str, Any]]:
    m = cm.matrix.cpu().numpy()
    k = cm.num_classes
    tp = np.diag(m[:, :k])
    gt = m.sum(axis=1)
    pred = m[:, :k].sum(axis=0)
    return [
        {
            "class": name,
            "iou": metrics.per_class_iou[i],
            "gt_pixels": int(gt[i]),
            "pred_pixels": int(pred[i]),
            "true_positive": int(tp[i]),
        }
        for i, name in enumerate(class_names)
    ]


def write_per_class_tables(
    out_dir: Path,
    rows: list[dict[str, Any]],
    miou: float,
    subset_miou: dict[str, float] | None = None,
) -> None:
    """per_class_iou.csv (machine) and per_class_iou.md (a table for reports and MLflow; the
    label space's subset mIoUs, e.g. miou13, under the mIoU)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "iou": "" if row["iou"] is None else repr(row["iou"])})
    write_text(out_dir / "per_class_iou.csv", buf.getvalue())

    lines = ["| class | IoU | GT pixels | predicted pixels |", "|---|---:|---:|---:|"]
    for row in rows:
        iou = "-" if row["iou"] is None else f"{100 * row['iou']:.2f}"
        lines.append(f"| {row['class']} | {iou} | {row['gt_pixels']} | {row['pred_pixels']} |")
    lines.append(f"| **mIoU** | **{100 * miou:.2f}** | | |")
    for name, value in (subset_miou or {}).items():
        lines.append(f"| **{name}** | **{100 * value:.2f}** | | |")
    write_text(out_dir / "per_class_iou.md", "\n".join(lines) + "\n")


def confusion_png(cm: ConfusionMatrix, class_names: Sequence[str], title: str = "") -> bytes:
    """The confusion matrix, each ground-truth row normalised to sum 1, as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = cm.num_classes
    m = cm.matrix.cpu().numpy()[:, :k].astype(np.float64)
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    side = max(4.0, 0.45 * k + 2.0)
    fig = Figure(figsize=(side, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(k), labels=list(class_names), rotation=90, fontsize=8)
    ax.set_yticks(range(k), labels=list(class_names), fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    if title:
        ax.set_title(title)
    if k <= 20:  # numbers stay legible up to the 19 Cityscapes classes
        for i in range(k):
            for j in range(k):
                if norm[i, j] >= 0.01:
                    ax.text(
                        j,
                        i,
                        f"{norm[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if norm[i, j] < 0.6 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def per_class_png(metrics: SegMetrics, class_names: Sequence[str], title: str = "") -> bytes:
    """Per-class IoU as horizontal bars (absent classes shown empty, named "n/a"), PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = len(class_names)
    values = [0.0 if v is None else 100.0 * v for v in metrics.per_class_iou]
    fig = Figure(figsize=(6.0, max(2.5, 0.3 * k + 1.2)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(range(k), values, color="#3b75af")
    ax.set_yticks(range(k), labels=list(class_names), fontsize=8)
    ax.invert_yaxis()  # the label space's order, top to bottom
    ax.set_xlim(0, 100)
    ax.axvline(100.0 * metrics.miou, color="#c44e52", linestyle="--", label="mIoU")
    for i, v in enumerate(metrics.per_class_iou):
        ax.text(
            1 if v is None else 100 * v + 1,
            i,
            "n/a" if v is None else f"{100 * v:.1f}",
            va="center",
            fontsize=7,
        )
    ax.set_xlabel("IoU (%)")
    ax.set_title(
        f"{title} (mIoU {100 * metrics.miou:.1f})" if title else f"mIoU {100 * metrics.miou:.1f}"
    )
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_dataset_artifacts(
    out_dir: Path,
    cm: ConfusionMatrix,
    metrics: SegMetrics,
    space: LabelSpace,
    summary: dict[str, Any],
) -> None:
    """Tables, per-class bar chart, confusion plot and metrics.json of one evaluated dataset."""
    rows = per_class_rows(cm, metrics, space.class_names)
    write_per_class_tables(out_dir, rows, metrics.miou, summary.get("subset_miou"))
    title = summary.get("name", "")
    write_bytes(out_dir / "per_class_iou.png", per_class_png(metrics, space.class_names, title))
    write_bytes(out_dir / "confusion.png", confusion_png(cm, space.class_names, title))
    write_json(
        out_dir / "metrics.json",
        {**summary, "per_class_pixels": rows, "confusion": cm.matrix.cpu().tolist()},
    )
