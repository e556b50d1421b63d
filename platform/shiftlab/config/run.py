"""How an experiment runs: training loop, evaluation, Ray resources and MLflow tracking."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from shiftlab.config.augment import AugmentConfig
from shiftlab.config.base import Section


class SelectConfig(Section):
    """Which epoch's model becomes ``best/``: never chosen on a test set.

    Written in YAML as ``select: last``, ``select: {epoch: 65, stage: stage2}`` or a validation
    metric, ``select: val_miou`` / ``select: val/<set>/miou`` (the default, when the experiment
    has validation sets; without any, ``last``).
    """

    rule: Literal["metric", "last", "epoch"] = "metric"
    metric: str = "val_miou"  # rule "metric": the validation metric to maximise
    # rule "epoch": the model after this many epochs (of `stage` when given, else overall).
    epoch: int | None = Field(default=None, ge=1)
    stage: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"rule": "last"} if data == "last" else {"rule": "metric", "metric": data}
        if isinstance(data, dict) and "rule" not in data:
            rule = "epoch" if "epoch" in data else "metric" if "metric" in data else None
            return {**data, "rule": rule} if rule else data
        return data

    @model_validator(mode="after")
    def _complete(self) -> SelectConfig:
        if self.rule == "epoch" and self.epoch is None:
            raise ValueError("rule 'epoch' needs epoch: N")
        if self.rule != "epoch" and (self.epoch is not None or self.stage is not None):
            raise ValueError(f"epoch/stage only go with rule 'epoch', not {self.rule!r}")
        if self.rule == "metric" and not is_validation_metric(self.metric):
            raise ValueError(
                f"{self.metric!r} is not a validation metric (val_miou or val/<set>/miou); "
                "a test set is never used to choose a model"
            )
        return self

    def describe(self) -> str:
        if self.rule == "last":
            return "the last epoch"
        if self.rule == "epoch":
            return f"epoch {self.epoch}" + (f" of stage {self.stage}" if self.stage else "")
        return f"the best {self.metric}"


def is_validation_metric(name: str) -> bool:
    return name == "val_miou" or (name.startswith("val/") and name.endswith("/miou"))


class EarlyStopConfig(Section):
    """End a stage when ``metric`` has not improved by ``min_delta`` for ``patience``
    validations in a row: the next stage (SDGPA's stage 2) starts from that stage's last
    weights; after the last stage, training ends. ``metric`` None: the selection metric (or
    val_miou when the model is selected otherwise). A validation metric only: never a test set.
    """

    patience: int = Field(ge=1)
    min_delta: float = Field(default=0.0, ge=0.0)
    metric: str | None = None

    @model_validator(mode="after")
    def _validation_metric(self) -> EarlyStopConfig:
        if self.metric is not None and not is_validation_metric(self.metric):
            raise ValueError(
                f"metric {self.metric!r} is not a validation metric (val_miou or val/<set>/miou)"
            )
        return self


class TrainConfig(Section):
    epochs: int = Field(default=10, ge=1)  # single-stage methods; sdgpa uses its stage epochs
    batch_size: int = Field(default=4, ge=1)  # per Ray Train worker
    # Cap on iterations per epoch (quick runs, benchmarks); None = one pass over the data.
    iters_per_epoch: int | None = Field(default=None, ge=1)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    num_workers: int = Field(default=1, ge=1)  # DDP workers (processes)
    use_gpu: bool | Literal["auto"] = "auto"
    cpus_per_worker: float = Field(default=1.0, gt=0.0)
    loader_workers: int = Field(default=0, ge=0)  # torch DataLoader processes per worker
    validate_every: int = Field(default=1, ge=1)  # epochs
    checkpoint_every: int = Field(default=1, ge=1)  # epochs
    keep_checkpoints: int = Field(default=2, ge=1)
    max_failures: int = Field(default=2, ge=0)  # worker failures survived by resuming
    # Model selection (see SelectConfig); None: val_miou with validation sets, else last.
    select: SelectConfig | None = None
    early_stop: EarlyStopConfig | None = None
    # A model export (best/ or last/ of an earlier run) whose weights initialise the model:
    # fine-tuning, as mmsegmentation's load_from. model.pretrained is then not read.
    init_from: str | None = None
    torch_threads: int | None = Field(default=None, ge=1)
    # Decode every file training and evaluation will read before workers start (a truncated
    # image fails in seconds, naming the file, not hours later inside a worker).
    verify_data: bool = True

    def early_stop_metric(self) -> str | None:
        """The validation metric early stopping watches (None without early stopping)."""
        if self.early_stop is None:
            return None
        if self.early_stop.metric is not None:
            return self.early_stop.metric
        return (
            self.select.metric
            if self.select is not None and self.select.rule == "metric"
            else "val_miou"
        )


class EvaluateConfig(Section):
    # (H, W) images are resized to before inference (SDGPA: 512x1024), with the resize that
    # generation and training use (`shiftlab.data.transforms.resize_image`); None = native
    # size. Predictions are always scored at the label's own (full) size.
    size: tuple[int, int] | None = None
    scales: list[float] = Field(default_factory=lambda: [1.0])  # multi-scale TTA
    flip: bool = False  # add horizontally flipped passes (logits summed)
    scale_multiple: int = Field(default=32, ge=1)  # scaled sizes rounded to this multiple
    window: tuple[int, int] | None = None  # sliding-window inference crop (H, W)
    window_stride: tuple[int, int] | None = None
    window_batch: int = Field(default=8, ge=1)  # windows per forward (memory vs speed)
    absent_classes: list[str] = Field(default_factory=list)  # logits set to -inf at inference
    batch_size: int = Field(default=2, ge=1)
    overlays: int = Field(default=4, ge=0)  # prediction overlays logged as artifacts
    save_predictions: bool = False

    @model_validator(mode="after")
    def _check(self) -> EvaluateConfig:
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError("scales must be a non-empty list of positive factors")
        if self.window_stride is not None and self.window is None:
            raise ValueError("window_stride needs window")
        return self

    def for_dataset(self, own: EvalOverrides | None) -> EvaluateConfig:
        """These settings with one dataset's own (``evaluate:`` of its val/test entry) on top."""
        if own is None:
            return self
        return self.model_validate({**self.model_dump(), **own.model_dump(exclude_none=True)})


class EvalOverrides(Section):
    """Evaluation settings of one val/test entry (its dataset's published protocol); keys
    left out (or null) take the experiment's ``evaluate`` values."""

    size: tuple[int, int] | None = None
    scales: list[float] | None = None
    flip: bool | None = None
    scale_multiple: int | None = Field(default=None, ge=1)
    window: tuple[int, int] | None = None
    window_stride: tuple[int, int] | None = None
    absent_classes: list[str] | None = None


class RayConfig(Section):
    # None: RAY_ADDRESS if set, else start a local Ray.
    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)  # local Ray only
    # Where Ray Train keeps checkpoints: a local path, NFS, or a URI (s3://, gs://).
    # None: <output_dir>/<name>/ray. Multi-node runs need shared storage.
    storage_path: str | None = None


class TrackingConfig(Section):
    enabled: bool = True
    # None: sqlite:///<output_dir>/mlflow.db (a local store; a server URI for teams).
    tracking_uri: str | None = None
    experiment_name: str | None = None  # None: the experiment name
    tags: dict[str, str] = Field(default_factory=dict)
    # Also log the selected model (best/) in MLflow's pyfunc model format, listed under the
    # run's logged models; off by default: it copies the weights into the artifact store.
    log_model: bool = False
