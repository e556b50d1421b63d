"""How many trials fit on the cluster at once.

A trial is a Tune function (0.01 CPU) that runs a Ray Train ``TorchTrainer`` with
``train.num_workers`` workers of ``train.cpus_per_worker`` CPUs (and one GPU each when training
on GPU). If more trials start than fit, their trainers wait for workers forever, so the sweep
runs at most ``floor(available / need)`` trials at once, over CPU and GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shiftlab.config.schema import ExperimentConfig
from shiftlab.utils.errors import ConfigError

# The CPU share of the Tune function that drives one trial's trainer ({"cpu": 0} is refused).
DRIVER_CPU = 0.01
_EPS = 1e-9


@dataclass(frozen=True)
class TrialNeed:
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float

    @property
    def cpu(self) -> float:
        return self.workers * self.cpus_per_worker + DRIVER_CPU

    @property
    def gpu(self) -> float:
        return self.workers * self.gpus_per_worker

    def describe(self) -> str:
        text = f"{self.workers} worker(s) x {self.cpus_per_worker:g} CPU + {DRIVER_CPU:g} = {self.cpu:g} CPU"
        if self.gpu:
            text += f" and {self.workers} x {self.gpus_per_worker:g} = {self.gpu:g} GPU"
        return text


def trial_need(cfg: ExperimentConfig, cluster_gpus: float) -> TrialNeed:
    """The resources of one trial of ``cfg``; ``use_gpu: auto`` trains on GPU where there is one."""
    use_gpu = cfg.train.use_gpu
    if use_gpu == "auto":
        use_gpu = cluster_gpus > 0
    return TrialNeed(
        cfg.train.num_workers, float(cfg.train.cpus_per_worker), 1.0 if use_gpu else 0.0
    )


def max_concurrent_trials(
    need: TrialNeed,
    available: dict[str, float],
    cap: int | None = None,
    total: dict[str, float] | None = None,
) -> int:
    """``min`` over CPU and GPU of ``floor(available / need)``, capped by ``cap``.

    Raises ConfigError when not even one trial fits.
    """
    cpu = float(available.get("CPU", 0.0))
    gpu = float(available.get("GPU", 0.0))
    fits = [math.floor(cpu / need.cpu + _EPS)]
    if need.gpu > 0:
        fits.append(math.floor(gpu / need.gpu + _EPS))
    n = min(fits)
    if n < 1:
        have = f"{cpu:g} CPU" + (f" and {gpu:g} GPU" if need.gpu > 0 else "")
        if total is not None:
            have += f" available (cluster total: {float(total.get('CPU', 0)):g} CPU, {float(total.get('GPU', 0)):g} GPU)"
        raise ConfigError(
            f"one trial needs {need.describe()}, but the cluster has {have}: lower "
            "train.num_workers or train.cpus_per_worker (e.g. train.cpus_per_worker=0.49 for 2 "
            "workers on 2 CPUs), or add nodes"
        )
    if cap is not None:
        if cap < 1:
            raise ConfigError(f"--max-concurrent must be >= 1, got {cap}")
        n = min(n, cap)
    return n
