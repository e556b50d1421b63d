"""Predicting with an exported model folder: the notebook entry point and the files it writes.

``load_model(path)`` rebuilds a run's ``best/`` or ``last/`` folder on this machine (cuda if
there is one) from the folder's own four files. A `Predictor` turns uint8 HxWx3 images into
train-id maps through `predict_logits`, with the checkpoint's own ``evaluate`` settings (size,
scales, flip, sliding window, absent classes; ``key=value`` overrides as for ``evaluate``), so
a prediction is the one ``shiftlab evaluate`` would score. An `OutputWriter` stores, per image
``<rel>`` (the input's relative path without its extension):

- ``trainids/<rel>.png``: uint8 train ids (255 is never produced); the ``shiftlab score`` input,
  and the ACDC test server's format (trainIds at the input's size, named after the input:
  ``GOPR0351_frame_000159_rgb_anon.png``),
- ``colour/<rel>.png``: the label space's palette; ``overlay/<rel>.png``: image and colours blended,
- with ``format="cityscapes"`` also ``labelids/<rel>.png``: Cityscapes labelIds (road 7, car 26;
  never train ids). The Cityscapes server (cityscapesScripts ``evalPixelLevelSemanticLabeling``)
  finds a prediction by the pattern ``<city>_<seq>_<frame>*.png`` anywhere under the results
  folder, so keeping the input name (``berlin_000000_000019_leftImg8bit.png``) is enough.

Every file is written whole (temp name, then rename): an image counts as done when all of its
files exist, which is how a rerun knows what to skip.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from shiftlab.config import load_experiment
from shiftlab.config.run import EvaluateConfig
from shiftlab.config.schema import ExperimentConfig
from shiftlab.data.label_spaces import LabelSpace, get_label_space
from shiftlab.evaluate.evaluator import default_device
from shiftlab.evaluate.inference import absent_class_indices, predict_logits
from shiftlab.models.checkpoint import (
    CONFIG_FILE,
    LABEL_SPACE_FILE,
    WEIGHTS_FILE,
    LoadedModel,
    read_meta,
)
from shiftlab.models.checkpoint import load_model as _load_model
from shiftlab.utils.atomic import write_png
from shiftlab.utils.errors import ConfigError, DataError

__all__ = [
    "CITYSCAPES_LABEL_IDS",
    "OUTPUT_FORMATS",
    "LoadedModel",
    "OutputWriter",
    "Predictor",
    "describe_model",
    "labelid_table",
    "load_model",
]

# cityscapesScripts helpers/labels.py: the 19 evaluated classes and their labelIds.
CITYSCAPES_LABEL_IDS = {
    "road": 7,
    "sidewalk": 8,
    "building": 11,
    "wall": 12,
    "fence": 13,
    "pole": 17,
    "traffic light": 19,
    "traffic sign": 20,
    "vegetation": 21,
    "terrain": 22,
    "sky": 23,
    "person": 24,
    "rider": 25,
    "car": 26,
    "truck": 27,
    "bus": 28,
    "train": 31,
    "motorcycle": 32,
    "bicycle": 33,
}
OUTPUT_FORMATS = ("trainids", "cityscapes")
OVERLAY_ALPHA = 0.5  # weight of the class colour in overlay/ images


def load_model(
    path: str | Path,
    overrides: Sequence[str] = (),
    device: str | torch.device | None = None,
) -> LoadedModel:
    """A model folder (a run's ``best/`` or ``last/``) ready for inference, in eval mode.

    The notebook face of `shiftlab.models.checkpoint.load_model`: the device defaults to cuda
    when there is one, so ``shiftlab.load_model(path)`` is all a notebook needs.
    """
    dev = torch.device(device) if device is not None else default_device()
    return _load_model(path, list(overrides), device=dev)


def describe_model(
    path: str | Path, overrides: Sequence[str] = ()
) -> tuple[ExperimentConfig, LabelSpace]:
    """A model folder's config (overrides applied) and label space, without building the
    network: every check a run can make before it loads weights (a Ray driver never does)."""
    directory = Path(path)
    read_meta(directory)
    for name in (WEIGHTS_FILE, CONFIG_FILE, LABEL_SPACE_FILE):
        file = directory / name
        if not file.is_file() or file.stat().st_size == 0:
            raise DataError(f"{file}: missing or empty; the model folder is incomplete")
    cfg = load_experiment(directory / CONFIG_FILE, list(overrides))
    space = get_label_space(str((directory / LABEL_SPACE_FILE).resolve()))
    absent_class_indices(cfg.evaluate.absent_classes, space.class_names)
    return cfg, space


def labelid_table(space: LabelSpace) -> np.ndarray:
    """A (256,) uint8 lookup from this space's train ids to Cityscapes labelIds.

    Found by class name, so every space of Cityscapes classes works (``cityscapes``,
    ``cityscapes_trainids``, a 16-class SYNTHIA subset); any other is a config error.
    """
    unknown = [n for n in space.class_names if n not in CITYSCAPES_LABEL_IDS]
    if unknown:
        raise ConfigError(
            f"--format cityscapes: label space {space.name!r} has no Cityscapes labelIds "
            f"(classes {unknown[:5]} are not Cityscapes classes); use --format trainids"
        )
    table = np.zeros(256, dtype=np.uint8)  # 0 = "unlabeled" (never produced: no ignore output)
    for train_id, name in enumerate(space.class_names):
        table[train_id] = CITYSCAPES_LABEL_IDS[name]
    return table


class Predictor:
    """Train-id maps for uint8 HxWx3 RGB images, as ``evaluate`` computes them.

    ``evaluate`` defaults to the checkpoint's own settings; ``batch_size`` (default
    ``evaluate.batch_size``) caps how many same-size images go through one forward.
    """

    def __init__(
        self,
        model: LoadedModel,
        evaluate: EvaluateConfig | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.model = model
        self.cfg = evaluate or model.config.evaluate
        self.batch_size = batch_size or self.cfg.batch_size
        # An unknown absent class is a config error now, not after the first batch.
        absent_class_indices(self.cfg.absent_classes, model.label_space.class_names)

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        overrides: Sequence[str] = (),
        device: str | torch.device | None = None,
        batch_size: int | None = None,
    ) -> Predictor:
        return cls(load_model(path, overrides, device), batch_size=batch_size)

    @property
    def label_space(self) -> LabelSpace:
        return self.model.label_space

    @torch.no_grad()
    def predict_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(B,H,W) uint8 train ids of images that share one size, in one forward pass."""
        space = self.model.label_space
        logits = predict_logits(
            self.model.network,
            list(images),
            self.cfg,
            space.num_classes,
            space.class_names,
            norm=self.model.normalization,
            device=self.model.device,
        )
        return logits.argmax(dim=1).to(torch.uint8).cpu().numpy()

    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Train-id maps of images of any sizes, in input order: same-size images are batched
        ``batch_size`` at a time (the order of first appearance decides the batches)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(tuple(image.shape), []).append(i)
        out: list[np.ndarray | None] = [None] * len(images)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                for i, pred in zip(
                    chunk, self.predict_batch([images[i] for i in chunk]), strict=True
                ):
                    out[i] = pred
        return [p for p in out if p is not None]


def overlay(image: np.ndarray, colour: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The image with the class colours blended on top (what a researcher looks at first)."""
    mixed = image.astype(np.float32) * (1.0 - alpha) + colour.astype(np.float32) * alpha
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


class OutputWriter:
    """The files of one predicted image under ``out``; ``format`` is ``trainids`` or
    ``cityscapes`` (adds ``labelids/``). Built before any work, so a label space without
    labelIds fails first."""

    def __init__(self, out: str | Path, space: LabelSpace, format: str = "trainids") -> None:
        if format not in OUTPUT_FORMATS:
            raise ConfigError(f"--format {format!r}: formats are {', '.join(OUTPUT_FORMATS)}")
        self.out, self.space, self.format = Path(out), space, format
        self.labelids = labelid_table(space) if format == "cityscapes" else None
        self.kinds = ("trainids", "colour", "overlay") + (
            ("labelids",) if self.labelids is not None else ()
        )

    def paths(self, rel: str) -> dict[str, Path]:
        return {kind: self.out / kind / f"{rel}.png" for kind in self.kinds}

    def done(self, rel: str) -> bool:
        """Every file of ``rel`` exists (each was written whole, so it is complete)."""
        return all(p.is_file() for p in self.paths(rel).values())

    def write(self, rel: str, image: np.ndarray, pred: np.ndarray) -> None:
        if pred.shape != image.shape[:2]:
            raise ValueError(f"{rel}: prediction {pred.shape} does not match the image")
        paths = self.paths(rel)
        colour = self.space.colorize(pred)
        write_png(paths["colour"], colour)
        write_png(paths["overlay"], overlay(image, colour))
        if self.labelids is not None:
            write_png(paths["labelids"], self.labelids[pred])
        write_png(paths["trainids"], pred.astype(np.uint8))

    def clean_temp(self) -> int:
        """Remove temp files a killed run left (``.<name>.<random>.tmp``); returns how many."""
        removed = 0
        for kind in self.kinds:
            folder = self.out / kind
            if folder.is_dir():
                for tmp in folder.rglob(".*.tmp"):
                    tmp.unlink(missing_ok=True)
                    removed += 1
        return removed
