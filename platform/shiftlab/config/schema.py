"""The experiment config: one YAML file, validated into this object before any work starts.

Besides each section's own checks, the experiment as a whole is checked here: the method gets
the data it declares it needs (``MethodSection``), and model selection cannot peek at a test
set nor, under the zero-shot and DG protocols, at any target label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from shiftlab.config.base import Section
from shiftlab.config.data import DataConfig, DatasetSpec
from shiftlab.config.generate import GenerateConfig
from shiftlab.config.method import MethodConfig
from shiftlab.config.model import ModelConfig
from shiftlab.config.optim import OptimConfig
from shiftlab.config.run import (
    EvaluateConfig,
    RayConfig,
    SelectConfig,
    TrackingConfig,
    TrainConfig,
)
from shiftlab.utils.run_folder import RunFolder
from shiftlab.utils.store import join

# What an experiment's numbers mean, and so which labels training and selection may read:
# zero_shot (the target is known by a text prompt only) and dg (unseen target domains) read
# no target label at all; uda may select on a labelled target split disjoint from the test
# split (an "oracle" validation, flagged wherever it is used); supervised has one domain.
Protocol = Literal["supervised", "uda", "zero_shot", "dg"]
NO_TARGET_LABELS: frozenset[str] = frozenset({"zero_shot", "dg"})


class ExperimentConfig(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    protocol: Protocol | None = None
    seed: int = 0
    # A path (local, NFS) or an object-store URI; runs go to <output_dir>/<name>.
    output_dir: str = "runs"
    data: DataConfig
    generate: GenerateConfig | None = None
    model: ModelConfig
    method: MethodConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_selection(cls, data: Any) -> Any:
        """No ``train.select``: the best val_miou when there are validation sets, else last."""
        if not isinstance(data, dict):
            return data
        train = data.get("train") or {}
        if not isinstance(train, dict) or train.get("select") is not None:
            return data
        has_val = (
            bool((data.get("data") or {}).get("val"))
            if isinstance(data.get("data"), dict)
            else False
        )
        return {**data, "train": {**train, "select": "val_miou" if has_val else "last"}}

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        self._check_method_needs()
        self._check_selection()
        self._check_protocol()
        return self

    def _check_method_needs(self) -> None:
        method = self.method
        needed = set(method.generated_modes)
        have = set(self.generate.modes) if self.generate else set()
        if not needed <= have:
            raise ValueError(
                f"method {method.name!r} trains on generated {sorted(needed)} images: "
                f"add a 'generate' section with modes {sorted(needed)}"
            )
        if method.needs_target_images and self.data.target_unlabelled is None:
            raise ValueError(
                f"method {method.name!r} needs data.target_unlabelled (unlabelled target images)"
            )

    @property
    def selection(self) -> SelectConfig:
        assert self.train.select is not None  # filled by _default_selection
        return self.train.select

    def stage_plan(self) -> list[tuple[str, int]]:
        """(stage, epochs) the trainer runs, in order; stages of 0 epochs are left out."""
        stages = self.method.stage_epochs(self.train.epochs).items()
        return [(stage, int(n)) for stage, n in stages if n > 0]

    def selection_sets(self) -> list[DatasetSpec]:
        """The validation sets whose labels choose the exported model (none for last/epoch)."""
        rule = self.selection
        if rule.rule != "metric":
            return []
        if rule.metric == "val_miou":
            return list(self.data.val)
        wanted = rule.metric.removeprefix("val/").removesuffix("/miou")
        return [s for s in self.data.val if s.display_name == wanted]

    def _check_selection(self) -> None:
        rule = self.selection
        if rule.rule == "metric":
            if not self.data.val:
                raise ValueError(
                    f"train.select: {rule.metric!r} needs data.val sets; without validation "
                    "data select 'last' or {epoch: N}"
                )
            if not self.selection_sets():
                names = [s.display_name for s in self.data.val]
                raise ValueError(
                    f"train.select: {rule.metric!r} names no data.val set (sets: {names})"
                )
        if rule.rule == "epoch":
            self._check_select_epoch(rule)
        for chosen in self.selection_sets():
            for test in self.data.test:
                if chosen.identity() == test.identity():
                    raise ValueError(
                        f"train.select ranks on data.val entry {chosen.display_name!r}, the same data "
                        f"as data.test entry {test.display_name!r} (format, root, split, condition): "
                        "a model chosen on its test set has a meaningless score; validate on a "
                        "separate split, or select 'last' or {epoch: N}"
                    )

    def _check_select_epoch(self, rule: SelectConfig) -> None:
        plan = dict(self.stage_plan())
        if rule.stage is not None and rule.stage not in plan:
            raise ValueError(
                f"train.select.stage: {rule.stage!r} is not a stage with epochs ({list(plan)})"
            )
        limit = plan[rule.stage] if rule.stage is not None else sum(plan.values())
        if rule.epoch is not None and rule.epoch > limit:
            where = f"stage {rule.stage!r}" if rule.stage else "training"
            raise ValueError(f"train.select.epoch: {rule.epoch} but {where} has {limit} epochs")

    def _check_protocol(self) -> None:
        if self.protocol not in NO_TARGET_LABELS:
            return
        target = [
            s.display_name for s in self.data.val if s.domain_for(self.data.source) == "target"
        ]
        if target:
            raise ValueError(
                f"protocol {self.protocol!r} reads no target label, but data.val holds target "
                f"set(s) {target}: report them under data.test, validate on source data (or none) "
                "and select 'last' or {epoch: N}"
            )
        if self.protocol == "zero_shot" and self.data.target_unlabelled is not None:
            raise ValueError(
                "protocol 'zero_shot' knows the target only by its description: remove data.target_unlabelled"
            )

    def selection_uses_target_labels(self) -> bool:
        return any(s.domain_for(self.data.source) == "target" for s in self.selection_sets())

    @property
    def run_folder(self) -> RunFolder:
        """``<output_dir>/<name>``: a folder, or a URI with a node-local working copy."""
        return RunFolder(join(self.output_dir, self.name))

    @property
    def run_dir(self) -> Path:
        """The local folder this process writes the run's files to (see `run_folder`)."""
        return self.run_folder.path()
