"""How an experiment runs: training loop, evaluation, Ray resources and MLflow tracking."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from shiftlab.config.augment import AugmentConfig
from shiftlab.config.base import Section


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
    # Model selection: a metric on the validation split only; the test split is never used.
    select_metric: str = "val_miou"
    torch_threads: int | None = Field(default=None, ge=1)


class EvaluateConfig(Section):
    # (H, W) images are resized to before inference (SDGPA: 512x1024); None = native size.
    size: tuple[int, int] | None = None
    scales: list[float] = Field(default_factory=lambda: [1.0])  # multi-scale TTA
    flip: bool = False  # add horizontally flipped passes (logits summed)
    scale_multiple: int = Field(default=32, ge=1)  # scaled sizes rounded to this multiple
    window: tuple[int, int] | None = None  # sliding-window inference crop (H, W)
    window_stride: tuple[int, int] | None = None
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
