"""The experiment config: one YAML file, validated into this object before any work starts."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from shiftlab.config.base import Section
from shiftlab.config.data import DataConfig
from shiftlab.config.generate import GenerateConfig
from shiftlab.config.method import MethodConfig
from shiftlab.config.model import ModelConfig
from shiftlab.config.optim import OptimConfig
from shiftlab.config.run import EvaluateConfig, RayConfig, TrackingConfig, TrainConfig
from shiftlab.utils.run_folder import RunFolder
from shiftlab.utils.store import join

# Methods that read generated views, and the modes they need.
_NEEDS_GENERATED = {"sdgpa": {"intermediate", "target"}}


class ExperimentConfig(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    seed: int = 0
    # A path (local, NFS) or an object-store URI; runs go to <output_dir>/<name>.
    output_dir: str = "runs"
    data: DataConfig
    generate: GenerateConfig | None = None
    model: ModelConfig  # type: ignore[valid-type]
    method: MethodConfig  # type: ignore[valid-type]
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        needed = _NEEDS_GENERATED.get(self.method.name, set())
        if needed:
            have = set(self.generate.modes) if self.generate else set()
            if not needed <= have:
                raise ValueError(
                    f"method {self.method.name!r} trains on generated {sorted(needed)} images: "
                    f"add a 'generate' section with modes {sorted(needed)}"
                )
        if self.method.name == "classmix" and self.data.target_unlabelled is None:
            raise ValueError("method 'classmix' needs data.target_unlabelled (unlabelled target images)")
        return self

    @property
    def run_folder(self) -> RunFolder:
        """``<output_dir>/<name>``: a folder, or a URI with a node-local working copy."""
        return RunFolder(join(self.output_dir, self.name))

    @property
    def run_dir(self) -> Path:
        """The local folder this process writes the run's files to (see `run_folder`)."""
        return self.run_folder.path()
