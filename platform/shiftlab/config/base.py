"""The base class of every config section: strict, typed, immutable after validation."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section. Unknown keys are errors (a typo must never be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def check_pretrained_value(value: str) -> str:
    """A model's ``pretrained`` setting: a weights path, or ``none`` (explicit random init)."""
    if not value.strip():
        raise ValueError(
            "empty (is its environment variable set to nothing?): give a local weights file "
            "or folder, or none for random initialisation"
        )
    return value.strip()


class ModelSection(Section):
    """The config of a model family (each names itself and where its weights come from)."""

    name: str
    pretrained: str


class MethodSection(Section):
    """The config of an adaptation method. What the method needs from the experiment is
    declared here, on its config class, so the schema and the trainer read it from one place
    and a new method touches only ``methods/`` and its config class."""

    name: str

    # Generated views the method trains on (a `generate` section must produce these modes).
    generated_modes: ClassVar[frozenset[str]] = frozenset()
    # Whether it reads unlabelled target images (data.target_unlabelled).
    needs_target_images: ClassVar[bool] = False

    def stage_epochs(self, epochs: int) -> dict[str, int]:
        """Training stages in order and their epochs (``epochs``: train.epochs); stages with
        0 epochs are skipped by the trainer."""
        return {"train": epochs}
