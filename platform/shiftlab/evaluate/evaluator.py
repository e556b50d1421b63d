"""Evaluate a model on labelled datasets: one streaming confusion matrix per dataset.

``evaluate_model`` is the building block (the training loop calls it for validation);
``evaluate_checkpoint`` loads a checkpoint directory and runs its val and test sets (or given
datasets), writing per dataset under ``<out>/<name>/``:

- ``predictions/<id>.png``: uint8 train ids at the label's full size (``shiftlab score`` input),
- ``per_class_iou.csv`` / ``.md``, ``confusion.png`` (row-normalised), ``metrics.json``,
- ``overlays/<id>.png`` for the first ``evaluate.overlays`` images.

Model selection uses the val sets only; each result says its ``"role"`` (``val`` or ``test``:
never used to choose) apart from the dataset's own ``"split"`` (``val``, ``test``, ``train``...).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shiftlab.config.data import DatasetSpec
from shiftlab.config.run import EvaluateConfig
from shiftlab.config.schema import ExperimentConfig
from shiftlab.data.formats import DatasetReader, Sample, open_dataset
from shiftlab.data.label_spaces import LabelSpace
from shiftlab.data.transforms import Normalization
from shiftlab.evaluate.artifacts import (
    overlay_panel,
    safe_dirname,
    write_dataset_artifacts,
    write_prediction,
)
from shiftlab.evaluate.inference import absent_class_indices, predict_logits
from shiftlab.evaluate.metrics import ConfusionMatrix, subset_mious
from shiftlab.models.checkpoint import LABEL_SPACE_FILE, load_model
from shiftlab.utils.atomic import write_json, write_png
from shiftlab.utils.errors import ConfigError, DataError
from shiftlab.utils.progress import Progress

log = logging.getLogger(__name__)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# -- data -----------------------------------------------------------------------------------
def _load(reader: DatasetReader, sample: Sample) -> tuple[Sample, np.ndarray, np.ndarray]:
    if sample.label is None:
        raise DataError(
            f"sample {sample.id!r} of {reader.root} (split {reader.split!r}) has no label: "
            "evaluation needs a labelled split"
        )
    return sample, reader.read_image(sample), reader.read_label(sample)


def iter_batches(
    reader: DatasetReader, samples: Sequence[Sample], batch_size: int, threads: int | None = None
) -> Iterator[list[tuple[Sample, np.ndarray, np.ndarray]]]:
    """Batches of (sample, image, label) in sample order; images of one batch share a size.

    PNG decoding runs in a small thread pool (PIL releases the GIL) a few batches ahead of the
    model, so the GPU is not left waiting on the disk.
    """
    threads = threads or max(1, min(4, os.cpu_count() or 1))
    ahead = max(2, threads) * batch_size
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="eval-read") as pool:
        pending: list[Future] = []
        batch: list[tuple[Sample, np.ndarray, np.ndarray]] = []
        index = 0
        while index < len(samples) or pending:
            while index < len(samples) and len(pending) < ahead:
                pending.append(pool.submit(_load, reader, samples[index]))
                index += 1
            item = pending.pop(0).result()
            if batch and item[1].shape != batch[0][1].shape:
                yield batch
                batch = []
            batch.append(item)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


# -- evaluation -----------------------------------------------------------------------------
PredictionHook = Callable[[Sample, np.ndarray, np.ndarray, np.ndarray], None]


@torch.no_grad()
def stream_confusion(
    model: nn.Module,
    reader: DatasetReader,
    cfg: EvaluateConfig,
    *,
    device: str | torch.device | None = None,
    norm: Normalization = Normalization(),
    samples: Sequence[Sample] | None = None,
    on_prediction: PredictionHook | None = None,
    num_classes: int | None = None,
    progress: str | None = None,
) -> ConfusionMatrix:
    """One confusion matrix over ``samples`` (default: all of the reader's).

    ``on_prediction(sample, image, label, pred)`` sees every prediction (uint8 train ids at
    the label's size). Pass a shard of the samples per worker and sum the matrices
    (``ConfusionMatrix.merge`` or an all-reduce of ``.matrix``) for distributed validation.
    The model's train/eval mode is restored afterwards. ``progress``: show the images done
    under this name (`shiftlab.utils.progress`).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    space = reader.label_space
    k = num_classes or space.num_classes
    absent_class_indices(cfg.absent_classes, space.class_names)  # fail before any inference
    cm = ConfusionMatrix(k, space.ignore_index, device=device)
    samples = reader.samples() if samples is None else samples
    was_training = model.training
    model.eval()
    shown = Progress(len(samples), progress, "images") if progress else None
    try:
        for batch in iter_batches(reader, samples, cfg.batch_size):
            logits = predict_logits(
                model, [b[1] for b in batch], cfg, k, space.class_names, norm=norm, device=device
            )
            pred = logits.argmax(dim=1)
            gt = torch.from_numpy(np.stack([b[2] for b in batch])).to(device)
            cm.update(pred, gt)
            if on_prediction is not None:
                pred_np = pred.to(torch.uint8).cpu().numpy()
                for (sample, image, label), p in zip(batch, pred_np, strict=True):
                    on_prediction(sample, image, label, p)
            if shown is not None:
                shown.update(len(batch))
    finally:
        model.train(was_training)
        if shown is not None:
            shown.close()
    return cm


def _summary(
    result: dict[str, Any],
    metrics: Any,
    space: LabelSpace,
    cfg: EvaluateConfig,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """metrics.json of one dataset: the result, what was scored and how."""
    return {
        **result,
        "num_pixels": metrics.num_pixels,
        "label_space": space.name,
        "evaluate": cfg.model_dump(mode="json"),
        **extra,
    }


class PredictionWriter:
    """An ``on_prediction`` hook: train-id PNGs (``shiftlab score`` input) and the first
    ``overlays`` overlay panels of a dataset, under ``out``."""

    def __init__(self, out: Path, space: LabelSpace, save_predictions: bool, overlays: int) -> None:
        self.out, self.space = out, space
        self.save, self.overlays_left = save_predictions, overlays

    @property
    def needed(self) -> bool:
        return self.save or self.overlays_left > 0

    def __call__(
        self, sample: Sample, image: np.ndarray, label: np.ndarray, pred: np.ndarray
    ) -> None:
        if self.save:
            write_prediction(self.out / "predictions" / f"{sample.id}.png", pred)
        if self.overlays_left > 0:
            panel = overlay_panel(image, label, pred, self.space)
            write_png(self.out / "overlays" / f"{sample.id}.png", panel)
            self.overlays_left -= 1


def _prediction_writer(
    cfg: EvaluateConfig,
    space: LabelSpace,
    out_dir: str | Path | None,
    save_predictions: bool | None,
    overlays: int | None,
) -> PredictionWriter | None:
    """The writer of predictions and overlays when artifacts go to ``out_dir``, else None."""
    if out_dir is None:
        return None
    save = cfg.save_predictions if save_predictions is None else save_predictions
    return PredictionWriter(
        Path(out_dir), space, save, cfg.overlays if overlays is None else overlays
    )


def evaluate_model(
    model: nn.Module,
    reader: DatasetReader,
    cfg: EvaluateConfig,
    *,
    device: str | torch.device | None = None,
    norm: Normalization = Normalization(),
    out_dir: str | Path | None = None,
    save_predictions: bool | None = None,
    overlays: int | None = None,
    name: str = "",
    role: str = "val",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` on one dataset; with ``out_dir`` also every artifact.

    ``save_predictions`` / ``overlays`` default to ``cfg.save_predictions`` / ``cfg.overlays``
    and only take effect with an ``out_dir``.
    """
    space = reader.label_space
    writer = _prediction_writer(cfg, space, out_dir, save_predictions, overlays)
    start = time.perf_counter()
    samples = reader.samples()
    hook = writer if writer is not None and writer.needed else None
    cm = stream_confusion(
        model,
        reader,
        cfg,
        device=device,
        norm=norm,
        samples=samples,
        on_prediction=hook,
        progress=f"evaluate {name or reader.root}",
    )
    seconds = time.perf_counter() - start
    metrics = cm.compute()
    per_class = metrics.named(space.class_names)
    result = {
        "miou": metrics.miou,
        "per_class": per_class,
        "subset_miou": subset_mious(per_class, space.subsets),  # e.g. cityscapes16's miou13
        "pixel_accuracy": metrics.pixel_accuracy,
        "role": role,
        "split": reader.split,
    }
    if writer is not None:
        extra = {"name": name, "num_samples": len(samples), "seconds": seconds, **(extra or {})}
        write_dataset_artifacts(
            writer.out, cm, metrics, space, _summary(result, metrics, space, cfg, extra)
        )
    log.info(
        "%s (%s): mIoU %.4f over %d images in %.1fs",
        name or reader.root,
        role,
        metrics.miou,
        len(samples),
        seconds,
    )
    return result


# -- checkpoints ----------------------------------------------------------------------------
def checkpoint_datasets(
    cfg: ExperimentConfig, specs: Sequence[DatasetSpec] | None, label_space: str | None = None
) -> list[tuple[DatasetSpec, str]]:
    """(spec, "val" | "test") pairs: the config's val + test sets, or the given specs.

    A given spec that is one of the config's val sets stays "val"; any other is reported as
    "test" (it is never used to choose a checkpoint). Specs without a label space inherit the
    source's, so a model trained on e.g. falcon7 is scored in falcon7 (``label_space``: where
    the model's own copy of that space is, e.g. an export's label_space.yaml).
    """
    if specs is None:
        pairs = [(s, "val") for s in cfg.data.val] + [(s, "test") for s in cfg.data.test]
    else:
        pairs = [(s, "val" if s in cfg.data.val else "test") for s in specs]
    if not pairs:
        raise ConfigError(
            "nothing to evaluate: the checkpoint's config has no data.val or data.test sets"
        )
    src_space = cfg.data.source.label_space and (label_space or cfg.data.source.label_space)
    if src_space:
        pairs = [
            (s if s.label_space else s.model_copy(update={"label_space": src_space}), role)
            for s, role in pairs
        ]
    names = [s.display_name for s, _ in pairs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(
            f"datasets share the display name(s) {dupes}; give each val/test set a distinct 'name'"
        )
    return pairs


def _check_label_space(reader: DatasetReader, model_space: LabelSpace, name: str) -> None:
    if tuple(reader.label_space.class_names) != tuple(model_space.class_names):
        raise ConfigError(
            f"dataset {name!r} uses label space {reader.label_space.name!r} "
            f"({reader.label_space.num_classes} classes) but the model was trained in "
            f"{model_space.name!r} ({model_space.num_classes} classes); set its label_space"
        )


def evaluate_checkpoint(
    checkpoint_dir: str | Path,
    specs: Sequence[DatasetSpec] | None = None,
    out_dir: str | Path | None = None,
    save_predictions: bool = True,
    device: str | torch.device | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, dict[str, Any]]:
    """Evaluate a model folder; returns {display name: {miou, per_class, pixel_accuracy, split}}.

    ``overrides`` (``key=value``) change the saved config before use, e.g.
    ``evaluate.scales=[0.75,1,1.25]``. Artifacts go to ``out_dir`` (default
    ``<checkpoint_dir>/eval``), one folder per dataset named after its display name.
    """
    checkpoint_dir = Path(checkpoint_dir)
    dev = torch.device(device) if device is not None else default_device()
    loaded = load_model(checkpoint_dir, list(overrides), device=dev)
    cfg = loaded.config
    out_root = Path(out_dir) if out_dir is not None else checkpoint_dir / "eval"
    results: dict[str, dict[str, Any]] = {}
    own_space = str(checkpoint_dir / LABEL_SPACE_FILE)
    for spec, role in checkpoint_datasets(cfg, specs, own_space):
        name = spec.display_name
        reader = open_dataset(spec)
        _check_label_space(reader, loaded.label_space, name)
        results[name] = evaluate_model(
            loaded.network,
            reader,
            cfg.evaluate.for_dataset(spec.evaluate),
            device=dev,
            norm=loaded.normalization,
            out_dir=out_root / safe_dirname(name),
            save_predictions=save_predictions,
            name=name,
            role=role,
            extra={
                "checkpoint": str(checkpoint_dir),
                "experiment": cfg.name,
                "dataset": spec.model_dump(mode="json"),
            },
        )
    write_json(out_root / "summary.json", results)
    return results
