"""Dataset references in experiment configs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from shiftlab.config.base import Section
from shiftlab.config.run import EvalOverrides
from shiftlab.utils.store import absolute

DatasetFormat = Literal[
    "cityscapes", "acdc", "gta5", "falcon", "aligned", "folder", "shiftlab", "procedural"
]


class DatasetSpec(Section):
    """One split of one dataset on disk (or the embedded procedural scenes)."""

    format: DatasetFormat
    root: str | None = None
    split: str = "train"
    # ACDC condition, or the view (appearance) of `aligned`, `shiftlab` and `procedural` sets.
    condition: str | None = None
    label_space: str | None = None  # None: the format's own (cityscapes, falcon, ...)
    split_file: str | None = None  # gta5: a list of names, or GTA5's split.mat
    unknown_to_ignore: bool = False  # map raw values outside the label space to ignore
    name: str | None = None  # a display name for metrics (default: format/split[/condition])
    limit: int | None = Field(default=None, ge=1)  # first N samples (debugging, quick runs)
    # Evaluation settings of this set (its published protocol: size, scales, flip, window,
    # absent classes) on top of the experiment's `evaluate` section.
    evaluate: EvalOverrides | None = None
    # Which domain the set's labels belong to; None: inferred, "source" when the set is the
    # source dataset's (same format, root and condition), else "target". Selection on a
    # target set uses target labels (an oracle), which zero-shot and DG protocols forbid.
    domain: Literal["source", "target"] | None = None
    # Procedural scenes: rendered once into a cache directory keyed by these values.
    layouts: int = Field(default=32, ge=1)
    val_layouts: int | None = Field(default=None, ge=1)
    test_layouts: int | None = Field(default=None, ge=1)
    appearances: list[str] = Field(
        default_factory=lambda: ["noon", "sunset", "night", "fog", "rain", "snow"]
    )
    size: tuple[int, int] = (128, 256)
    seed: int = 0

    @model_validator(mode="after")
    def _root_needed(self) -> DatasetSpec:
        if self.format != "procedural" and not self.root:
            raise ValueError(f"format {self.format!r} needs a 'root' directory")
        if self.size[0] < 32 or self.size[1] < 32:
            raise ValueError("size must be at least 32x32")
        return self

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        parts = [self.format, self.split] + ([self.condition] if self.condition else [])
        return "/".join(parts)

    def collection(self) -> tuple[str, str]:
        """(format, where): the dataset as a whole, regardless of split and condition."""
        if self.format == "procedural":
            counts = (
                self.layouts,
                self.val_layouts,
                self.test_layouts,
                tuple(self.size),
                self.seed,
            )
            return self.format, repr(counts)
        return self.format, absolute(self.root or "")

    def identity(self) -> tuple[str, str, str, str | None]:
        """What names the images and labels read: two specs with one identity are the same
        data, however they are named or limited."""
        return (*self.collection(), self.split, self.condition)

    def domain_for(self, source: DatasetSpec) -> Literal["source", "target"]:
        if self.domain is not None:
            return self.domain
        same = self.collection() == source.collection() and self.condition == source.condition
        return "source" if same else "target"


# The scene parameters of a procedural set: other procedural sets of an experiment take the
# source's unless they give their own, so one override of data.source.* moves them all.
_SCENE_KEYS = ("layouts", "val_layouts", "test_layouts", "size", "seed", "appearances")


class DataConfig(Section):
    """The data of an experiment: labelled source, optional unlabelled target, eval sets."""

    @model_validator(mode="before")
    @classmethod
    def _share_scenes(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("source"), dict):
            return data
        source = data["source"]
        if source.get("format") != "procedural":
            return data
        scenes = {k: source[k] for k in _SCENE_KEYS if k in source}

        def fill(spec: Any) -> Any:
            if isinstance(spec, dict) and spec.get("format") == "procedural":
                return {**scenes, **spec}
            return spec

        out = dict(data)
        for key in ("val", "test"):
            if isinstance(out.get(key), list):
                out[key] = [fill(s) for s in out[key]]
        out["target_unlabelled"] = fill(out.get("target_unlabelled"))
        return out

    source: DatasetSpec
    # Unlabelled target images for UDA methods (classmix); labels, if present, are never read.
    target_unlabelled: DatasetSpec | None = None
    # Model selection uses `val` only; `test` is reported, never used to choose.
    val: list[DatasetSpec] = Field(default_factory=list)
    test: list[DatasetSpec] = Field(default_factory=list)
