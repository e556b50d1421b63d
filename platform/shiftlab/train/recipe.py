"""The training recipe: one run of one experiment, readable top to bottom.

``Recipe(cfg, session, ...)`` then ``setup()`` and ``run()``::

    setup:      model, method, selection state; restore the latest checkpoint if there is one
    run:        for each stage: data, optimizer + schedule (rebuilt per stage, SDGPA stage 2)
                    for each epoch: train_epoch(), end_epoch()
    end_epoch:  validate -> select -> export best/ and last/ -> checkpoint + report -> MLflow

The recipe is plain PyTorch. Its `Session` (Ray Train's in `worker.py`, or `LocalSession`)
supplies the rank, device, DDP wrapping, the checkpoint to resume from and the reporting,
so the same code trains inside a Ray Train worker and in a unit test.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from shiftlab.config.schema import ExperimentConfig
from shiftlab.data.formats import label_space_name
from shiftlab.data.label_spaces import get_label_space
from shiftlab.data.transforms import Normalization
from shiftlab.evaluate.validation import validate
from shiftlab.methods import build_method
from shiftlab.models import create_model
from shiftlab.models.checkpoint import (
    export_model,
    init_weights_from,
    restore_model,
    rng_state,
    save_training_state,
    set_rng_state,
    trainable_state,
)
from shiftlab.tracking import RunTracker
from shiftlab.train.data import EpochSampler, TrainDataset
from shiftlab.train.optim import amp_dtype, build_optimizer, build_scheduler, clip_gradients
from shiftlab.train.selection import EarlyStopper, Selector
from shiftlab.train.session import Session
from shiftlab.utils.progress import Progress, duration
from shiftlab.utils.run_folder import RunFolder
from shiftlab.utils.seeding import derive_seed, seed_everything

log = logging.getLogger(__name__)


class RecipeHook(Protocol):
    """Called at the start of every epoch (tests inject faults here, never inside a step)."""

    def on_epoch_start(self, recipe: Recipe, epoch: int) -> None: ...


class Recipe:
    def __init__(
        self,
        cfg: ExperimentConfig,
        session: Session,
        *,
        run: RunFolder,
        generated: str | None = None,
        tracker: RunTracker | None = None,
        hooks: Sequence[RecipeHook] = (),
    ) -> None:
        self.cfg = cfg
        self.session = session
        self.device = session.device
        self.run_folder = run
        self.generated = generated
        self.tracker = tracker if session.rank == 0 else None
        self.hooks = list(hooks)
        torch.set_num_threads(
            cfg.train.torch_threads or max(1, math.floor(cfg.train.cpus_per_worker))
        )
        self.label_space = get_label_space(label_space_name(cfg.data.source))
        self.norm = Normalization.from_config(cfg)
        self.plan = cfg.stage_plan()
        self.total_epochs = sum(n for _, n in self.plan)
        self.selector = Selector(cfg.selection, self.total_epochs)
        self.stopper = EarlyStopper(cfg.train.early_stop, cfg.train.early_stop_metric())
        self.start_epoch = 0
        self.logged_through = 0  # the last epoch whose metrics MLflow already has
        self.metrics: dict[str, Any] = {}
        self.epochs_trained = 0  # epochs really trained (early stopping skips some of the plan)
        self.checkpoints_reported = 0  # by this run of the recipe (rank 0 writes them)
        # Seconds per epoch of this run of the recipe: training steps, validation, checkpoint
        # (saving and handing it to the session); the run's ETA and the benchmark use them.
        self.timings: dict[str, list[float]] = {"epoch": [], "validation": [], "checkpoint": []}

    # -- setup --------------------------------------------------------------------------------
    def setup(self) -> None:
        state = self.session.restored_state()
        self._setup_model(state)
        self._setup_method(state)
        if state is not None:
            self.start_epoch = int(state["epoch"])
            self.epochs_trained = int(state.get("epochs_trained", self.start_epoch))
            self.selector.load_state_dict(state.get("selection", {}))
            self.stopper.load_state_dict(state.get("early_stop", {}))
            log.info(
                "rank %d: resuming after epoch %d (%s)",
                self.session.rank,
                self.start_epoch,
                state["stage"],
            )
        self._seed_rng(state)
        self._tag_run()
        self._restored = state

    def _setup_model(self, state: dict[str, Any] | None) -> None:
        seed_everything(derive_seed(self.cfg.seed, "init") % 2**32)  # same weights on every rank
        model = create_model(self.cfg.model, self.label_space.num_classes)
        if state is not None:
            restore_model(model, state["model"])
        elif self.cfg.train.init_from:
            init_weights_from(
                model, self.cfg.train.init_from, self.label_space, self.cfg.model.name
            )
        # A frozen encoder has no gradients: DDP must expect unused parameters.
        find_unused = self.cfg.optim.freeze_encoder_epochs > 0
        self.model = self.session.prepare_model(model, find_unused)
        amp = self.cfg.optim.amp
        self.use_amp = self.device.type == "cuda" and amp != "none"
        self.amp_dtype = amp_dtype(self.cfg.optim)
        self.scaler = torch.amp.GradScaler("cuda") if self.use_amp and amp == "fp16" else None

    def _setup_method(self, state: dict[str, Any] | None) -> None:
        space = self.label_space
        self.method = build_method(
            self.cfg.method,
            space.num_classes,
            space.class_names,
            space.ignore_index,
            seed=self.cfg.seed,
            input_stats=self.norm.stats(),
        )
        if state is not None:
            self.method.load_state_dict(state.get("method", {}))
        self.method.setup(self.model)

    def _seed_rng(self, state: dict[str, Any] | None) -> None:
        # Dropout and other global-RNG draws: rank 0 continues its saved stream, other ranks get
        # their own deterministic one (data randomness is seeded per sample, not from here).
        if state is not None and self.session.rank == 0:
            set_rng_state(state["rng"])
        else:
            seed_everything(
                derive_seed(self.cfg.seed, "rank", self.session.rank, self.start_epoch) % 2**32
            )

    def _tag_run(self) -> None:
        """Where the workers really run (one node or many), recorded with the run."""
        nodes: list[Any] = [self.session.node_id()]
        if _distributed():
            nodes = [None] * dist.get_world_size()
            dist.all_gather_object(nodes, self.session.node_id())
        if self.tracker is None:
            return
        tags: dict[str, Any] = {"world_size": self.session.world_size, "num_nodes": len(set(nodes))}
        if self.start_epoch:
            tags["resumed_from_epoch"] = self.start_epoch
        self.logged_through = (
            self.tracker.safely(lambda t: t.last_step("epoch") or 0, default=0) or 0
        )
        self.tracker.safely(lambda t: t.set_tags(tags))

    def _setup_data(self, stage: str) -> None:
        cfg, session = self.cfg, self.session
        self.dataset = TrainDataset(
            cfg,
            self.method.views(stage),
            self.method.pair_views,
            self.generated,
            rcs=self.method.rare_class_sampling,
        )
        # This rank's share: shuffled, or drawn by rare-class sampling (DAFormer's RCS).
        self.sampler: EpochSampler = self.dataset.sampler(
            derive_seed(cfg.seed, "order", stage), session.rank, session.world_size
        )
        # Every rank gets as many samples (the sampler pads), so all ranks run as many steps;
        # a short last batch is dropped when there is more than one batch.
        self.loader = DataLoader(
            self.dataset,
            batch_size=cfg.train.batch_size,
            sampler=self.sampler,
            num_workers=cfg.train.loader_workers,
            drop_last=len(self.sampler) >= cfg.train.batch_size,
            pin_memory=self.device.type == "cuda",
            persistent_workers=cfg.train.loader_workers > 0,
        )
        self.iters = min(len(self.loader), cfg.train.iters_per_epoch or len(self.loader))

    def _setup_optimizer(self, stage: str, epochs: int, stage_start: int) -> None:
        # A new stage starts with a fresh optimizer and schedule (SDGPA stage 2).
        self.optimizer = build_optimizer(self.model, self.cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, self.cfg.optim, epochs, self.iters)
        state = self._restored
        if state is not None and state.get("stage") == stage and stage_start > 0:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        first_epoch = 0  # overall index of the stage's first epoch (planned lengths)
        for stage, epochs in self.plan:
            stage_start = max(0, self.start_epoch - first_epoch)  # epochs of it already done
            if stage_start < epochs and stage not in self.stopper.stopped:
                self._run_stage(stage, epochs, first_epoch, stage_start)
            first_epoch += epochs
        return self.summary()

    def _run_stage(self, stage: str, epochs: int, first_epoch: int, stage_start: int) -> None:
        self._setup_data(stage)
        self._setup_optimizer(stage, epochs, stage_start)
        for stage_epoch in range(stage_start, epochs):
            epoch = first_epoch + stage_epoch  # 0-based over all stages
            for hook in self.hooks:
                hook.on_epoch_start(self, epoch)
            metrics = self.train_epoch(epoch)
            if self.end_epoch(stage, stage_epoch, epoch, metrics):
                return  # early stopping ended this stage

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over this rank's shard: forward, loss, backward, step (the whole step)."""
        start = time.perf_counter()
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        self.model.train()
        sums: dict[str, float] = defaultdict(float)
        steps = 0
        progress = self._epoch_progress(epoch)
        for batch in self.loader:
            if steps >= self.iters:
                break
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with (
                torch.autocast(self.device.type, dtype=self.amp_dtype)
                if self.use_amp
                else nullcontext()
            ):
                loss, logs = self.method.loss(self.model, batch, epoch * self.iters + steps)
            self.optimizer.zero_grad(set_to_none=True)
            grad_norm = self._backward_and_step(loss)
            self.scheduler.step()
            self.method.after_step(self.model)
            for key, value in logs.items():
                sums[key] += float(value)
            if grad_norm is not None:
                sums["grad_norm"] += grad_norm
            steps += 1
            if progress is not None:
                progress.update(1, loss=sums["loss"] / steps, lr=self._first_lr())
        if progress is not None:
            progress.close()
        metrics = {f"train/{k}": v / max(steps, 1) for k, v in sums.items()}
        metrics.update({f"lr/{k}": v for k, v in self.scheduler.lrs().items()})
        metrics.update({"train/steps": steps, "train/epoch_seconds": time.perf_counter() - start})
        return metrics

    def _epoch_progress(self, epoch: int) -> Progress | None:
        """Steps of this epoch with loss, lr and ETA, shown by rank 0 only."""
        if self.session.rank != 0:
            return None
        return Progress(self.iters, f"epoch {epoch + 1}/{self.total_epochs}", "steps")

    def _first_lr(self) -> float:
        return float(next(iter(self.scheduler.lrs().values()), 0.0))

    def _backward_and_step(self, loss: torch.Tensor) -> float | None:
        if self.scaler is None:
            loss.backward()
            grad_norm = clip_gradients(self.model.parameters(), self.cfg.optim)
            self.optimizer.step()
            return grad_norm
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = clip_gradients(self.model.parameters(), self.cfg.optim)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return grad_norm

    # -- end of an epoch ----------------------------------------------------------------------
    def end_epoch(self, stage: str, stage_epoch: int, epoch: int, metrics: dict[str, Any]) -> bool:
        """Validate, select, export, checkpoint and report one finished epoch; True: stop now."""
        done = epoch + 1
        self.epochs_trained += 1
        stage_index = [s for s, _ in self.plan].index(stage)
        metrics.update({"epoch": done, "stage_index": stage_index})
        if self._validation_due(done):
            start = time.perf_counter()
            metrics.update(validate(self.model, self.cfg, self.device))
            self.timings["validation"].append(time.perf_counter() - start)
        stage_ends = (
            self.stopper.update(done, stage, metrics) or stage_epoch + 1 == dict(self.plan)[stage]
        )
        last = stage_ends and stage == self.plan[-1][0]
        best = self.selector.update(done, stage, stage_epoch + 1, metrics, last)
        metrics.update(self.selector.summary())
        info = {
            "epoch": done,
            "stage": stage,
            "stage_epoch": stage_epoch + 1,
            "metrics": _numbers(metrics),
            "selection": self.cfg.selection.describe(),
        }
        if self.session.rank == 0:
            self._export(info, best=best, last=last)
        if self.session.rank == 0:
            self._say_epoch(done, metrics)
        checkpoint_due = done % self.cfg.train.checkpoint_every == 0 or stage_ends
        self._report(metrics, info, stage, checkpoint_due)
        self._log(metrics, done)
        self.metrics = metrics
        return stage_ends

    def _say_epoch(self, done: int, metrics: dict[str, Any]) -> None:
        """One line per epoch: its time, loss, validation and the whole run's ETA."""
        seconds = self.timings["epoch"]
        seconds.append(float(metrics.get("train/epoch_seconds", 0.0)))
        left = self.total_epochs - done
        eta = left * sum(seconds) / len(seconds)
        shown = [f"loss {metrics['train/loss']:.4f}"] if "train/loss" in metrics else []
        shown += [f"val_miou {metrics['val_miou']:.4f}"] if "val_miou" in metrics else []
        log.info(
            "epoch %d/%d done in %s: %s%s",
            done,
            self.total_epochs,
            duration(seconds[-1]),
            ", ".join(shown) or "no metrics",
            f"; run ETA {duration(eta)} (at most, {left} epoch(s) left)" if left else "",
        )

    def _validation_due(self, done: int) -> bool:
        if not self.cfg.data.val:
            return False
        return done % self.cfg.train.validate_every == 0 or done == self.total_epochs

    def _export(self, info: dict[str, Any], best: bool, last: bool) -> None:
        for name, due in (("best", best), ("last", last)):
            if due:
                export_model(
                    self.run_folder.path(name), self.cfg, self.model, self.label_space, info
                )
                self.run_folder.publish(name)  # object storage: upload; a folder: nothing to do

    def _report(
        self, metrics: dict[str, Any], info: dict[str, Any], stage: str, checkpoint_due: bool
    ) -> None:
        report = dict(metrics, stage=stage)
        self.checkpoints_reported += int(checkpoint_due)
        if not (checkpoint_due and self.session.rank == 0):
            self.session.report(report, None)
            return
        state = {
            **info,
            "model": trainable_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "method": self.method.state_dict(),
            "rng": rng_state(),
            "selection": self.selector.state_dict(),
            "early_stop": self.stopper.state_dict(),
            "epochs_trained": self.epochs_trained,
        }
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="shiftlab-ckpt-") as tmp:
            save_training_state(tmp, self.cfg, state)
            self.session.report(report, Path(tmp))
        self.timings["checkpoint"].append(time.perf_counter() - start)

    def _log(self, metrics: dict[str, Any], done: int) -> None:
        # After the checkpoint: a run resumed from it never logs an epoch MLflow already has.
        if self.tracker is not None and done > self.logged_through:
            self.tracker.safely(lambda t: t.log_metrics(metrics, step=done))
            self.logged_through = done

    def summary(self) -> dict[str, Any]:
        return {
            "epochs": self.total_epochs,
            "epochs_trained": self.epochs_trained,
            "resumed_from": self.start_epoch,
            "stopped_early": dict(self.stopper.stopped),
            **self.selector.summary(),
            "timings": self.timings,
            "metrics": {k: v for k, v in self.metrics.items() if isinstance(v, (int, float, str))},
        }


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
