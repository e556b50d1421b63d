"""The generation pipeline on Ray Data: pending work units -> editor actors -> files.

::

    from_items(pending units, one block each)
      -> map_batches(EditorActor, batch_size=1, compute=ActorPoolStrategy(size=N))
      -> small rows (id, mode, status) streamed back to the driver

Each actor builds its editor once (the model load dominates start-up), edits one work unit
per call and writes the results itself: Ray's ``write_images`` names files by uuid, while the
reader pairs views by source id (RAY_NOTES). Only rows of a few bytes travel back.

With ``overlap_io`` (the default) each actor runs up to `UNITS_IN_FLIGHT` calls at once in
threads of its own (Ray Data's ``max_concurrent_calls_per_actor`` with true multi-threading):
one unit is edited while the next is read and the last is encoded and written, the editor
itself taking one unit at a time (`writer.py`). A call still returns only once its unit's
files are on disk, so nothing is reported before it is written, and a unit's error comes
back as that unit's row. Without it, one call at a time, start to finish.

Resources: with GPUs in the cluster, one actor per ``gpus_per_actor`` GPU(s). Without, N CPU
actors (N = ``num_actors`` or CPUs // ``cpus_per_actor``), each asking for at most 90 % of its
CPU share: whole-CPU actors on a small machine leave nothing for Ray Data's own tasks and
stall the stream (RAY_NOTES). Torch and OpenCV threads per actor follow its CPU share.

The driver counts finished units per mode and writes ``dataset.json`` as soon as a mode is
complete, after checking every file of that mode is on disk.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shiftlab.generate.manifest import clean_temp_files, missing_ids, read_meta, write_meta
from shiftlab.generate.plan import GenerationPlan
from shiftlab.generate.writer import STAGES, UNITS_IN_FLIGHT, UnitWorker
from shiftlab.utils.errors import ConfigError, DataError, ShiftlabError, work_begins
from shiftlab.utils.progress import Progress
from shiftlab.utils.ray_runtime import connect, data_context, forwarded_env
from shiftlab.utils.storage import StorageError, check_shared, explain_os_error

log = logging.getLogger(__name__)


# How long the editor actors may take to start (model load) before generation fails.
ACTOR_START_TIMEOUT_S = 900


@dataclass
class GenerationStats:
    written: int = 0  # images written by this run
    redone: int = 0  # images edited again because their unit was partly done
    units: int = 0
    seconds: float = 0.0
    modes_completed: list[str] = field(default_factory=list)
    actors: int = 0
    resources: dict[str, Any] = field(default_factory=dict)
    # From submitting the work to the first actor holding a built editor (process start,
    # imports, model load), and the rate from then on: the throughput once start-up is paid.
    actor_startup_s: float = 0.0
    steady_images_per_s: float = 0.0
    # Ray node id -> images edited there (where the work really ran, for multi-node checks).
    images_per_node: dict[str, int] = field(default_factory=dict)
    # Seconds spent per stage (read, edit, encode, write), summed over the images of this run:
    # wall clock (waits included) and the CPU time of the thread that ran the stage.
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    stage_cpu_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @property
    def images_per_s(self) -> float:
        return (self.written + self.redone) / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ActorResources:
    size: int
    num_cpus: float
    num_gpus: float
    threads: int


def actor_resources(plan: GenerationPlan, cluster: dict[str, float], units: int) -> ActorResources:
    """How many editor actors, and what each asks for, given the cluster's resources."""
    gpus = float(cluster.get("GPU", 0.0))
    cpus = float(cluster.get("CPU", 1.0))
    if gpus >= 1.0 and plan.gpus_per_actor > 0 and plan.editor.kind == "instruct-pix2pix":
        size = plan.num_actors or max(1, int(gpus // plan.gpus_per_actor))
        num_cpus = min(plan.cpus_per_actor, max(0.1, 0.9 * cpus / size))
        return ActorResources(
            min(size, units), num_cpus, plan.gpus_per_actor, max(1, round(num_cpus))
        )
    size = plan.num_actors or max(1, int(cpus // plan.cpus_per_actor))
    num_cpus = min(plan.cpus_per_actor, 0.9 * cpus / size)
    num_cpus = max(0.05, math.floor(num_cpus * 100) / 100)
    return ActorResources(min(size, units), num_cpus, 0.0, max(1, round(num_cpus)))


class EditorActor:
    """A Ray Data UDF: one editor per actor; ``__call__`` edits and writes one unit.

    Calls may run concurrently (``overlap_io``): `UnitWorker.process` serialises the edits.
    """

    def __init__(self, plan: GenerationPlan, threads: int) -> None:
        import cv2

        cv2.setNumThreads(threads)
        if plan.editor.kind == "instruct-pix2pix":
            # Only diffusion editors need torch: importing it costs seconds per actor.
            import torch

            torch.set_num_threads(threads)
        import ray

        self.worker = UnitWorker(plan)
        self.node_id = ray.get_runtime_context().get_node_id()
        self.ready_at = time.time()  # wall clock: start-up is measured by the driver

    def _unit(self, mode: str, start: int, stop: int) -> list[dict[str, Any]]:
        """One unit's rows, each with its share of the unit's stage times; an error as a row."""
        try:
            rows, times = self.worker.process_timed(mode, list(range(start, stop)))
        except ShiftlabError as exc:
            # Ray Data wraps exceptions of user code without keeping the original: send a
            # user error back as a row, so the driver raises it as itself (naming the file).
            return [_error_row(mode, f"{type(exc).__name__}: {exc}")]
        except OSError as exc:  # disk full, read-only, permissions: say so plainly
            err = explain_os_error(self.worker.plan.dataset_dir, exc, "generation output")
            return [_error_row(mode, f"StorageError: {err}")]
        share = 1.0 / max(1, len(rows))
        for row in rows:
            for name in STAGES:
                row[f"wall_{name}"] = times.wall[name] * share
                row[f"cpu_{name}"] = times.cpu[name] * share
        return rows

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows: list[dict[str, Any]] = []
        for mode, start, stop in zip(batch["mode"], batch["start"], batch["stop"], strict=True):
            rows += self._unit(str(mode), int(start), int(stop))
        columns: dict[str, np.ndarray] = {
            key: np.array([r.get(key, "") for r in rows], dtype=object)
            for key in ("id", "mode", "status", "error")
        }
        for name in STAGES:
            for kind in ("wall", "cpu"):
                key = f"{kind}_{name}"
                columns[key] = np.array([r.get(key, 0.0) for r in rows], dtype=np.float64)
        columns["ready_at"] = np.full(len(rows), self.ready_at, dtype=np.float64)
        columns["node"] = np.array([self.node_id] * len(rows), dtype=object)
        return columns


def _error_row(mode: str, error: str) -> dict[str, Any]:
    return {"id": "", "mode": mode, "status": "error", "error": error}


def _add_stage_times(stats: GenerationStats, batch: dict[str, np.ndarray]) -> None:
    for name in STAGES:
        stats.stage_seconds[name] += float(np.sum(batch[f"wall_{name}"]))
        stats.stage_cpu_seconds[name] += float(np.sum(batch[f"cpu_{name}"]))


def _raise_user_error(text: str) -> None:
    kind, _, message = text.partition(": ")
    raise {"ConfigError": ConfigError, "StorageError": StorageError}.get(kind, DataError)(message)


def _finish_mode(plan: GenerationPlan, mode: str, completed: list[str]) -> None:
    left = missing_ids(plan, mode)
    if left:
        first = plan.ids[min(left)]
        raise DataError(
            f"{plan.dataset_dir}: mode {mode!r} finished with {len(left)} image(s) missing (first: {first!r})"
        )
    completed.append(mode)
    write_meta(plan, completed)
    log.info("generated mode %s complete: %s", mode, plan.dataset_dir)


def _pending_units(plan: GenerationPlan, completed: list[str]) -> list[dict[str, Any]]:
    """The work units still to edit, mode-major (the first mode completes, and is usable,
    before the second starts); modes with nothing left are marked complete here."""
    units = plan.units()
    todo: list[dict[str, Any]] = []
    for mode in plan.modes:
        if mode in completed:
            continue
        missing = missing_ids(plan, mode)
        pending = [u for u in units if any(i in missing for i in u)]
        if not pending:
            _finish_mode(plan, mode, completed)
        todo += [{"mode": mode, "start": u[0], "stop": u[-1] + 1} for u in pending]
    return todo


def _actor_pool(plan: GenerationPlan, res: ActorResources) -> Any:
    """The editor actors: with ``overlap_io``, each runs `UNITS_IN_FLIGHT` calls at once.

    In flight = running: no unit waits queued behind a busy actor while another is idle.
    """
    import ray

    if not plan.overlap_io:
        return ray.data.ActorPoolStrategy(size=res.size)
    return ray.data.ActorPoolStrategy(
        size=res.size,
        max_concurrent_calls_per_actor=UNITS_IN_FLIGHT,
        max_tasks_in_flight_per_actor=UNITS_IN_FLIGHT,
        enable_true_multi_threading=True,
    )


def _editor_stream(plan: GenerationPlan, todo: list[dict[str, Any]], res: ActorResources) -> Any:
    """Ray Data: one block per unit through a pool of editor actors; small rows come back."""
    import ray

    # Dispatch only once every actor holds its editor: otherwise the first actor to load its
    # model takes the whole queue while the others are still starting (GPUs left idle).
    data_context().wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
    env = forwarded_env()
    remote_args: dict[str, Any] = {"runtime_env": {"env_vars": env}} if env else {}
    return ray.data.from_items(todo, override_num_blocks=len(todo)).map_batches(
        EditorActor,
        batch_size=1,
        batch_format="numpy",
        compute=_actor_pool(plan, res),
        fn_constructor_kwargs={"plan": plan, "threads": res.threads},
        num_cpus=res.num_cpus,
        num_gpus=res.num_gpus,
        **remote_args,
    )


class _Tally:
    """Counts the rows coming back: completes each mode when its last image arrives, keeps the
    statistics, reports progress."""

    def __init__(
        self,
        plan: GenerationPlan,
        todo: list[dict[str, Any]],
        completed: list[str],
        stats: GenerationStats,
    ) -> None:
        self.plan, self.completed, self.stats = plan, completed, stats
        self.left = {m: 0 for m in dict.fromkeys(r["mode"] for r in todo)}
        for r in todo:
            self.left[r["mode"]] += r["stop"] - r["start"]
        self.total = sum(self.left.values())
        self.processed = 0
        self.progress = Progress(self.total, "generate", "images")
        self.submitted = time.time()
        self.first_ready = float("inf")

    def add(self, batch: dict[str, np.ndarray]) -> None:
        if len(batch["ready_at"]):
            self.first_ready = min(self.first_ready, float(np.min(batch["ready_at"])))
        for node in batch["node"]:
            self.stats.images_per_node[str(node)] = self.stats.images_per_node.get(str(node), 0) + 1
        for mode, status, error in zip(batch["mode"], batch["status"], batch["error"], strict=True):
            self._row(str(mode), str(status), str(error))
        self.progress.update(len(batch["mode"]))

    def _row(self, mode: str, status: str, error: str) -> None:
        if status == "error":
            _raise_user_error(error)
        self.processed += 1
        self.left[mode] -= 1
        if status == "written":
            self.stats.written += 1
        else:
            self.stats.redone += 1
        if self.left[mode] == 0:
            _finish_mode(self.plan, mode, self.completed)

    def close(self) -> None:
        self.progress.close()
        if self.processed and self.first_ready < float("inf"):
            self.stats.actor_startup_s = max(0.0, self.first_ready - self.submitted)
            self.stats.steady_images_per_s = self.processed / max(
                time.time() - self.first_ready, 1e-9
            )


def run_generation(
    plan: GenerationPlan,
    address: str | None = None,
    ray_num_cpus: int | None = None,
) -> GenerationStats:
    """Generate every missing file of the plan's modes (the caller holds the directory lock)."""
    start = time.perf_counter()
    removed = clean_temp_files(plan.store)
    if removed:
        log.info(
            "removed %d temp file(s) left by an interrupted run in %s", removed, plan.dataset_dir
        )
    meta = read_meta(plan.store)
    completed = list(meta.get("modes", [])) if meta else []
    stats = GenerationStats()
    todo = _pending_units(plan, completed)
    if todo:
        import ray

        work_begins()
        connect(address, ray_num_cpus)
        check_shared(plan.dataset_dir, "generation output")  # actors on other nodes write here too
        res = actor_resources(plan, ray.cluster_resources(), len(todo))
        stats.actors = res.size
        stats.resources = {
            "num_cpus": res.num_cpus,
            "num_gpus": res.num_gpus,
            "threads": res.threads,
        }
        tally = _Tally(plan, todo, completed, stats)
        log.info(
            "generating %d image(s) in %d unit(s) of %s into %s with %d actor(s) (%s)",
            tally.total,
            len(todo),
            ", ".join(tally.left),
            plan.dataset_dir,
            res.size,
            stats.resources,
        )
        for batch in _editor_stream(plan, todo, res).iter_batches(
            batch_size=None, batch_format="numpy"
        ):
            tally.add(batch)
            _add_stage_times(stats, batch)
        tally.close()
        stats.units = len(todo)
    stats.seconds = time.perf_counter() - start
    stats.modes_completed = list(completed)
    log.info(
        "generation done: %d written, %d re-edited, %.1f s, %.2f images/s "
        "(actor start-up %.1f s, then %.2f images/s)",
        stats.written,
        stats.redone,
        stats.seconds,
        stats.images_per_s,
        stats.actor_startup_s,
        stats.steady_images_per_s,
    )
    return stats
