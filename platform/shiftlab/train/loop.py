"""The per-worker training function that Ray Train runs on every DDP rank.

Each epoch: train on this rank's shard, validate (confusion matrices summed over ranks),
``ray.train.report`` on every rank with a checkpoint from rank 0, MLflow metrics from rank 0,
and the best/last model exported to ``<run_dir>/best`` and ``<run_dir>/last``. On (re)start
``ray.train.get_checkpoint()`` restores model, optimizer, scheduler, method state, RNG and the
epoch counter, so a run whose worker died continues where its last checkpoint left off.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from shiftlab.config.loader import validate_dict
from shiftlab.train.checkpoint import (
    label_space_name,
    load_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unwrap,
)
from shiftlab.utils.errors import ConfigError
from shiftlab.utils.run_folder import RunFolder
from shiftlab.utils.seeding import derive_seed, seed_everything

log = logging.getLogger(__name__)


def stage_plan(method: Any, cfg: Any) -> list[tuple[str, int]]:
    """(stage, epochs) in order; stages with 0 epochs are dropped."""
    plan = [(s, method.stage_epochs(s, cfg.train.epochs)) for s in method.stages()]
    return [(s, n) for s, n in plan if n > 0]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _maybe_fault(fault: dict | None, epoch: int, rank: int) -> None:
    """Test hook: kill this worker process once (a marker file records that it happened)."""
    if not fault or int(fault["epoch"]) != epoch or int(fault.get("rank", 0)) != rank:
        return
    marker = Path(fault["marker"])
    if marker.exists():
        return
    # Ray Train registers a checkpoint once the controller has polled every rank's report; a
    # worker that dies with its report still queued loses that checkpoint. A real failure
    # comes long after the last report, so wait for the controller to take it (then one more
    # poll interval for the other ranks) before dying.
    try:
        from ray.train.v2._internal.execution.context import get_train_context

        get_train_context().get_result_queue().join()
    except Exception:  # noqa: BLE001 - internal API; fall back to waiting only
        pass
    time.sleep(float(fault.get("settle_s", 5.0)))
    marker.write_text(f"killed rank {rank} in epoch {epoch}\n")
    os._exit(1)


def _move(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def export_model(directory: Path, cfg: Any, model: nn.Module, info: dict[str, Any]) -> None:
    """Write a model-only checkpoint directory, replacing any previous one as a whole."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    save_checkpoint(tmp, cfg, {"model": unwrap(model).state_dict(), **info})
    old = directory.with_name(f".{directory.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


@torch.no_grad()
def validate(model: nn.Module, cfg: Any, num_classes: int, device: torch.device) -> dict[str, float]:
    """mIoU per validation set, each rank scoring its share of the images, matrices summed."""
    from shiftlab.data.formats import open_dataset
    from shiftlab.evaluate.evaluator import (
        Normalization,
        checkpoint_datasets,
        eval_config_for,
        stream_confusion,
    )

    rank = dist.get_rank() if _distributed() else 0
    world = dist.get_world_size() if _distributed() else 1
    # The bare model: DDP's forward syncs buffers collectively, and ranks may hold different
    # numbers of validation images.
    net = unwrap(model)
    metrics: dict[str, float] = {}
    mious = []
    for spec, _ in checkpoint_datasets(cfg, list(cfg.data.val)):
        reader = open_dataset(spec)
        shard = reader.samples()[rank::world]  # no padding: each image counted once
        cm = stream_confusion(
            net, reader, eval_config_for(spec, cfg.evaluate), device=device, norm=Normalization.from_config(cfg),
            samples=shard, num_classes=num_classes,
        )
        if world > 1:
            dist.all_reduce(cm.matrix)
        result = cm.compute()
        name = spec.display_name
        metrics[f"val/{name}/miou"] = result.miou
        metrics[f"val/{name}/pixel_accuracy"] = result.pixel_accuracy
        mious.append(result.miou)
    if mious:
        metrics["val_miou"] = float(sum(mious) / len(mious))
    return metrics


def input_stats(cfg: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) the training inputs are normalised with ((0, 1): not normalised)."""
    aug = cfg.train.augment
    if not aug.normalize:
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return tuple(aug.mean), tuple(aug.std)


def preflight(cfg: Any, generated: str | Path | None) -> None:
    """Config and data errors, raised in the driver before any worker starts (a worker error
    would be retried ``max_failures`` times)."""
    from shiftlab.data.label_spaces import get_label_space
    from shiftlab.methods import build_method
    from shiftlab.train.data import TrainDataset

    metric = cfg.train.select_metric
    if metric != "val_miou" and not (metric.startswith("val/") and metric.endswith("/miou")):
        raise ConfigError(
            f"train.select_metric: {metric!r} is not a validation metric (val_miou or "
            "val/<set>/miou); the test split is never used for selection"
        )
    space = get_label_space(label_space_name(cfg))
    method = build_method(cfg.method, space.num_classes, space.class_names, space.ignore_index, seed=cfg.seed)
    plan = stage_plan(method, cfg)
    if not plan:
        raise ConfigError(f"method {cfg.method.name!r}: no stage has any epochs")
    for stage, _ in plan:
        TrainDataset(cfg, method.views(stage), method.pair_views, generated)  # views exist?


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    import ray.train
    import ray.train.torch

    from shiftlab.data.label_spaces import get_label_space
    from shiftlab.methods import build_method
    from shiftlab.models import create_model
    from shiftlab.train.data import TrainDataset
    from shiftlab.train.optim import amp_dtype, build_optimizer, build_scheduler, clip_gradients

    if config.get("cwd") and Path(config["cwd"]).is_dir():
        os.chdir(config["cwd"])  # relative dataset paths mean the driver's directory
    cfg = validate_dict(config["cfg"], "training config")
    generated = config.get("generated")
    run = RunFolder(config["run_location"])
    tracker = config.get("tracker")
    fault = config.get("fault")

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    threads = cfg.train.torch_threads or max(1, math.floor(cfg.train.cpus_per_worker))
    torch.set_num_threads(threads)
    device = ray.train.torch.get_device()

    space = get_label_space(label_space_name(cfg))
    num_classes = space.num_classes
    seed_everything(derive_seed(cfg.seed, "init") % 2**32)  # same initial weights everywhere
    model = create_model(cfg.model, num_classes)
    method = build_method(
        cfg.method, num_classes, space.class_names, space.ignore_index, seed=cfg.seed,
        input_stats=input_stats(cfg),
    )
    plan = stage_plan(method, cfg)
    total_epochs = sum(n for _, n in plan)

    state: dict[str, Any] | None = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_state(directory)
        model.load_state_dict(state["model"])
        method.load_state_dict(state.get("method", {}))
        log.info("rank %d: resuming after epoch %d (%s)", rank, state["epoch"], state["stage"])
    start_epoch = int(state["epoch"]) if state else 0
    best_score = state.get("best_score") if state else None
    best_epoch = state.get("best_epoch") if state else None

    # Where the workers really run (one node or many), recorded with the run.
    nodes = [ray.get_runtime_context().get_node_id()]
    if _distributed():
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, nodes[0])
        nodes = gathered
    if rank == 0 and tracker is not None:
        tags: dict[str, Any] = {"world_size": world, "num_nodes": len(set(nodes))}
        if state is not None:
            tags["resumed_from_epoch"] = start_epoch
        try:
            tracker.set_tags(tags)
        except Exception as exc:  # noqa: BLE001 - tracking must not kill training
            log.warning("MLflow tags not set: %s", exc)

    # Dropout and other global-RNG draws: rank 0 continues its saved stream; other ranks get
    # their own deterministic stream (data randomness is seeded per sample, not from here).
    if state is not None and rank == 0:
        set_rng_state(state["rng"])
    else:
        seed_everything(derive_seed(cfg.seed, "rank", rank, start_epoch) % 2**32)

    # A frozen encoder has no gradients: DDP must be told to expect unused parameters.
    find_unused = cfg.optim.freeze_encoder_epochs > 0
    model = ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"find_unused_parameters": find_unused}
    )
    method.setup(model)
    use_amp = device.type == "cuda" and cfg.optim.amp != "none"
    dtype = amp_dtype(cfg.optim)
    scaler = torch.amp.GradScaler("cuda") if use_amp and cfg.optim.amp == "fp16" else None
    metrics: dict[str, Any] = {}
    epoch_base = 0
    for stage, stage_epochs in plan:
        if start_epoch >= epoch_base + stage_epochs:
            epoch_base += stage_epochs
            continue
        dataset = TrainDataset(cfg, method.views(stage), method.pair_views, generated)
        sampler = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True,
            seed=derive_seed(cfg.seed, "order", stage) % 2**31,
        )
        loader = DataLoader(
            dataset,
            batch_size=cfg.train.batch_size,
            sampler=sampler,
            num_workers=cfg.train.loader_workers,
            # Every rank gets the same number of samples (DistributedSampler pads), so all
            # ranks run the same number of steps; drop a short last batch when possible.
            drop_last=len(sampler) >= cfg.train.batch_size,
            pin_memory=device.type == "cuda",
            persistent_workers=cfg.train.loader_workers > 0,
        )
        iters = len(loader)
        if cfg.train.iters_per_epoch:
            iters = min(iters, cfg.train.iters_per_epoch)
        # A new stage starts with a fresh optimizer and schedule (SDGPA stage 2).
        optimizer = build_optimizer(model, cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.optim, stage_epochs, iters)
        stage_start = max(0, start_epoch - epoch_base)  # epochs of this stage already done
        if state is not None and state.get("stage") == stage and stage_start > 0:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])

        for stage_epoch in range(stage_start, stage_epochs):
            epoch = epoch_base + stage_epoch  # 0-based over all stages
            t0 = time.perf_counter()
            dataset.set_epoch(epoch)
            sampler.set_epoch(epoch)
            model.train()
            sums: dict[str, float] = defaultdict(float)
            steps = 0
            for batch in loader:
                if steps >= iters:
                    break
                batch = _move(batch, device)
                step = epoch * iters + steps
                with torch.autocast(device.type, dtype=dtype) if use_amp else nullcontext():
                    loss, logs = method.loss(model, batch, step)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                    grad_norm = clip_gradients(model.parameters(), cfg.optim)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    grad_norm = clip_gradients(model.parameters(), cfg.optim)
                    optimizer.step()
                scheduler.step()
                method.after_step(model)
                for k, v in logs.items():
                    sums[k] += float(v)
                if grad_norm is not None:
                    sums["grad_norm"] += grad_norm
                steps += 1
                if steps == 1:
                    _maybe_fault(fault, epoch, rank)
            done = epoch + 1
            metrics = {f"train/{k}": v / max(steps, 1) for k, v in sums.items()}
            metrics.update({f"lr/{k}": v for k, v in scheduler.lrs().items()})
            metrics.update(
                {"epoch": done, "stage_index": [s for s, _ in plan].index(stage),
                 "train/steps": steps, "train/epoch_seconds": time.perf_counter() - t0}
            )
            last = done == total_epochs
            if cfg.data.val and (done % cfg.train.validate_every == 0 or last):
                metrics.update(validate(model, cfg, num_classes, device))
            score = metrics.get(cfg.train.select_metric)
            improved = False
            if score is not None and (best_score is None or score > best_score):
                best_score, best_epoch, improved = float(score), done, True
            if not cfg.data.val and last:
                best_epoch, improved = done, True  # nothing to select on: the final model
            if best_score is not None:
                metrics["best_score"] = best_score
            if best_epoch is not None:
                metrics["best_epoch"] = best_epoch

            info = {"epoch": done, "stage": stage, "stage_epoch": stage_epoch + 1,
                    "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
            if rank == 0:
                for name, due in (("best", improved), ("last", last)):
                    if due:
                        export_model(run.path(name), cfg, model, info)
                        run.publish(name)  # object storage: upload; a folder: nothing to do
                if tracker is not None:
                    try:
                        tracker.log_metrics(metrics, step=done)
                    except Exception as exc:  # noqa: BLE001 - tracking must not kill training
                        log.warning("MLflow metrics for epoch %d not logged: %s", done, exc)

            save = done % cfg.train.checkpoint_every == 0 or last or stage_epoch + 1 == stage_epochs
            report = dict(metrics, stage=stage)
            if save and rank == 0:
                with tempfile.TemporaryDirectory(prefix="shiftlab-ckpt-") as tmp:
                    save_checkpoint(tmp, cfg, {
                        **info,
                        "model": unwrap(model).state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "method": method.state_dict(),
                        "rng": rng_state(),
                        "best_score": best_score,
                        "best_epoch": best_epoch,
                        "mlflow_run_id": tracker.run_id if tracker is not None else None,
                    })
                    ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(report)
        epoch_base += stage_epochs

    if rank != 0:
        return None
    return {
        "epochs": total_epochs,
        "resumed_from": start_epoch,
        "best_score": best_score,
        "best_epoch": best_epoch,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
    }
