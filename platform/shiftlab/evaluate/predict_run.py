"""Predicting many image files: collect, skip what is done, batch, run in-process or on Ray.

::

    jobs (input files or a dataset's images, each with its output name <rel>)
      -> skip jobs whose files all exist (a killed run loses nothing it wrote)
      -> plan batches: same-size images (from the file headers), --batch-size at a time
      -> in-process (threads decode ahead and encode behind the model)
         or a Ray Data actor pool (one planned batch per row, the model loaded once per actor)

Both paths run the same planned batches through the same `Predictor` and `OutputWriter`, so
they write the same bytes. Images that cannot be decoded come back as ``unreadable`` rows
naming the file; the caller reports them and goes on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shiftlab.data.formats import DatasetReader
from shiftlab.data.io import image_size, read_image
from shiftlab.evaluate.predictor import OutputWriter, Predictor
from shiftlab.utils.errors import ConfigError, DataError, ShiftlabError, work_begins
from shiftlab.utils.progress import Progress
from shiftlab.utils.ray_runtime import connect, data_context, forwarded_env
from shiftlab.utils.storage import StorageError, check_shared, explain_os_error

log = logging.getLogger(__name__)

# What a folder is searched for (case-insensitive); a file named on its own is always tried.
PREDICT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class ImageJob:
    """One input image and its output name: ``<rel>`` (POSIX, no extension) under each kind."""

    source: Path
    rel: str


Row = dict[str, str]  # source, rel, status ("written" | "unreadable" | "error"), message
RowHook = Callable[[Row], None]


@dataclass
class PredictSummary:
    out: Path
    total: int = 0  # images found
    written: int = 0
    already_done: int = 0
    unreadable: list[str] = field(default_factory=list)  # one message per file, naming it
    workers: int = 0  # Ray actors (0: in-process)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "total": self.total,
            "written": self.written,
            "already_done": self.already_done,
            "unreadable": list(self.unreadable),
            "workers": self.workers,
            "seconds": self.seconds,
        }


# -- collecting inputs ----------------------------------------------------------------------
def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and path.resolve().is_relative_to(folder)


def _folder_jobs(folder: Path, exclude: Path | None) -> list[ImageJob]:
    jobs = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if (
            path.suffix.lower() in PREDICT_SUFFIXES
            and not any(part.startswith(".") for part in rel.parts)
            and path.is_file()
            and not _inside(path, exclude)
        ):
            jobs.append(ImageJob(path, rel.with_suffix("").as_posix()))
    return jobs


def jobs_from_paths(inputs: Sequence[str | Path], exclude: Path | None = None) -> list[ImageJob]:
    """Files as ``<stem>``; folders searched recursively, each file as its path relative to
    the folder (so ``a/x.png`` and ``b/x.png`` stay apart). Files under ``exclude`` (the output
    folder) are never inputs, or a rerun would predict its own outputs."""
    exclude = exclude.resolve() if exclude is not None else None
    jobs: list[ImageJob] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = _folder_jobs(path, exclude)
            if not found:
                raise DataError(f"{path}: no images ({', '.join(PREDICT_SUFFIXES)}) in the folder")
            jobs += found
        elif path.is_file():
            jobs.append(ImageJob(path, path.stem))
        else:
            raise DataError(f"{path}: no such image file or folder")
    return check_unique(jobs)


def jobs_from_dataset(reader: DatasetReader) -> list[ImageJob]:
    """A dataset's images, each named by its path below the folder all of them share
    (Cityscapes ``<city>/<id>_leftImg8bit``, ACDC ``<seq>/<id>_rgb_anon``, aligned ``<id>``)."""
    images = [s.image for s in reader.samples()]
    base = Path(os.path.commonpath([str(p.parent) for p in images]))
    return check_unique(
        [ImageJob(p, p.relative_to(base).with_suffix("").as_posix()) for p in images]
    )


def check_unique(jobs: list[ImageJob]) -> list[ImageJob]:
    """Two inputs with one output name (``x.png`` and ``x.jpg``, or one file given twice) would
    overwrite each other: an error naming both."""
    seen: dict[str, Path] = {}
    for job in jobs:
        if job.rel in seen:
            raise ConfigError(
                f"{seen[job.rel]} and {job.source}: both would be written as {job.rel}.png; "
                "predict them into separate --out folders or rename one"
            )
        seen[job.rel] = job.source
    return jobs


# -- planning -------------------------------------------------------------------------------
def plan_batches(
    jobs: Sequence[ImageJob], batch_size: int
) -> tuple[list[list[ImageJob]], list[Row]]:
    """Batches of same-size images (sizes from the file headers), at most ``batch_size`` each,
    in input order; files whose header cannot be read come back as unreadable rows."""
    groups: dict[tuple[int, int], list[ImageJob]] = {}
    bad: list[Row] = []
    for job in jobs:
        try:
            groups.setdefault(image_size(job.source), []).append(job)
        except DataError as exc:
            bad.append(_row(job, "unreadable", str(exc)))
    batches = [
        group[i : i + batch_size]
        for group in groups.values()
        for i in range(0, len(group), batch_size)
    ]
    return batches, bad


def _row(job: ImageJob, status: str, message: str = "") -> Row:
    return {"source": str(job.source), "rel": job.rel, "status": status, "message": message}


# -- one batch ------------------------------------------------------------------------------
def decode(job: ImageJob) -> tuple[ImageJob, np.ndarray | str]:
    """The image, or the message saying why it cannot be read (naming the file)."""
    try:
        return job, read_image(job.source)
    except DataError as exc:
        return job, str(exc)


def predict_decoded(
    predictor: Predictor, decoded: Sequence[tuple[ImageJob, np.ndarray | str]]
) -> tuple[list[tuple[ImageJob, np.ndarray, np.ndarray]], list[Row]]:
    """(job, image, train ids) of the readable images of one planned batch, and the rows of
    the unreadable ones. Both paths call this, so their forwards hold the same images."""
    good = [(job, im) for job, im in decoded if isinstance(im, np.ndarray)]
    bad = [_row(job, "unreadable", im) for job, im in decoded if isinstance(im, str)]
    preds = predictor.predict([im for _, im in good]) if good else []
    return [(job, im, p) for (job, im), p in zip(good, preds, strict=True)], bad


# -- in-process -----------------------------------------------------------------------------
def _decoded_batches(
    pool: ThreadPoolExecutor, batches: Sequence[list[ImageJob]], ahead: int
) -> Iterator[list[tuple[ImageJob, np.ndarray | str]]]:
    """Each batch's decoded images in order, with the next ``ahead`` batches decoding meanwhile
    (PIL releases the GIL)."""
    pending: list[list[Future]] = []
    index = 0
    while index < len(batches) or pending:
        while index < len(batches) and len(pending) <= ahead:
            pending.append([pool.submit(decode, job) for job in batches[index]])
            index += 1
        yield [f.result() for f in pending.pop(0)]


Writes = list[tuple[ImageJob, Future]]


def _reap(writes: Writes, on_row: RowHook, out: Path, keep: int) -> Writes:
    """Report the finished writes; wait for the oldest until at most ``keep`` are in flight
    (the images they hold are the memory a slow disk could otherwise pile up)."""
    left: Writes = []
    for i, (job, future) in enumerate(writes):
        if not future.done() and len(writes) - i <= keep:
            left.append((job, future))
            continue
        try:
            future.result()
        except OSError as exc:  # disk full, read-only: one error for the whole run
            raise explain_os_error(out, exc, "--out") from None
        on_row(_row(job, "written"))
    return left


def predict_in_process(
    predictor: Predictor,
    writer: OutputWriter,
    batches: Sequence[list[ImageJob]],
    on_row: RowHook,
    threads: int | None = None,
) -> None:
    """The planned batches through one model here; threads decode ahead and encode behind."""
    threads = threads or max(2, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="predict-io") as pool:
        writes: Writes = []
        keep = 4 * predictor.batch_size
        for decoded in _decoded_batches(pool, batches, ahead=2):
            done, bad = predict_decoded(predictor, decoded)
            for row in bad:
                on_row(row)
            writes += [(job, pool.submit(writer.write, job.rel, im, p)) for job, im, p in done]
            writes = _reap(writes, on_row, writer.out, keep)
        _reap(writes, on_row, writer.out, keep=0)


# -- Ray Data actor pool --------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRequest:
    """What each actor needs to build its own `Predictor` and `OutputWriter` (picklable)."""

    model_dir: str
    overrides: tuple[str, ...]
    device: str | None
    batch_size: int  # images per forward (resolved: --batch-size or evaluate.batch_size)
    out: str
    format: str


class PredictActor:
    """A Ray Data UDF: loads the model once per actor; each row is one planned batch."""

    def __init__(self, request: ModelRequest, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.predictor = Predictor.from_path(
            request.model_dir, request.overrides, request.device, request.batch_size
        )
        self.writer = OutputWriter(request.out, self.predictor.label_space, request.format)

    def _batch(self, text: str) -> list[Row]:
        jobs = [ImageJob(Path(src), rel) for src, rel in json.loads(text)]
        done, rows = predict_decoded(self.predictor, [decode(job) for job in jobs])
        for job, image, pred in done:
            self.writer.write(job.rel, image, pred)
            rows.append(_row(job, "written"))
        return rows

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows: list[Row] = []
        for text in batch["jobs"]:
            try:
                rows += self._batch(str(text))
            except ShiftlabError as exc:
                # Ray Data wraps user exceptions without keeping them: send the error back as a
                # row, and the driver raises it as itself (naming the file).
                rows.append({"status": "error", "message": f"{type(exc).__name__}: {exc}"})
            except OSError as exc:
                err = explain_os_error(self.writer.out, exc, "--out")
                rows.append({"status": "error", "message": f"StorageError: {err}"})
        keys = ("source", "rel", "status", "message")
        return {k: np.array([r.get(k, "") for r in rows], dtype=object) for k in keys}


@dataclass(frozen=True)
class ActorResources:
    size: int
    num_cpus: float
    num_gpus: float
    threads: int


def actor_resources(
    cluster: dict[str, float], workers: int, batches: int, device: str | None
) -> ActorResources:
    """``workers`` actors (no more than there are batches). With GPUs in the cluster and no
    ``--device cpu``: a GPU each (a share when there are fewer GPUs than actors). CPUs: one
    each at most, and together under 90 % of the cluster, or Ray Data's own read tasks starve
    (RAY_NOTES); torch threads follow the share."""
    size = max(1, min(workers, batches))
    cpus, gpus = float(cluster.get("CPU", 1.0)), float(cluster.get("GPU", 0.0))
    use_gpu = gpus >= 1.0 and not (device or "").startswith("cpu")
    num_gpus = min(1.0, gpus / size) if use_gpu else 0.0
    num_cpus = max(0.05, math.floor(min(1.0, 0.9 * cpus / size) * 100) / 100)
    return ActorResources(size, num_cpus, num_gpus, max(1, round(num_cpus)))


def _raise_user_error(text: str) -> None:
    kind, _, message = text.partition(": ")
    raise {"ConfigError": ConfigError, "StorageError": StorageError}.get(kind, DataError)(message)


def predict_with_ray(
    request: ModelRequest,
    batches: Sequence[list[ImageJob]],
    workers: int,
    on_row: RowHook,
    address: str | None = None,
) -> int:
    """The planned batches through a pool of actors; returns how many actors ran."""
    import ray

    connect(address)
    check_shared(request.out, "--out")  # actors on other nodes write there too
    res = actor_resources(ray.cluster_resources(), workers, len(batches), request.device)
    items = [{"jobs": json.dumps([[str(j.source), j.rel] for j in b])} for b in batches]
    env = forwarded_env()
    remote_args: dict[str, Any] = {"runtime_env": {"env_vars": env}} if env else {}
    log.info("predicting %d batch(es) with %d actor(s) (%s)", len(batches), res.size, res)
    data_context()
    stream = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        PredictActor,
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=res.size),
        fn_constructor_kwargs={"request": request, "threads": res.threads},
        num_cpus=res.num_cpus,
        num_gpus=res.num_gpus,
        **remote_args,
    )
    for batch in stream.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(batch["status"])):
            row = {k: str(batch[k][i]) for k in ("source", "rel", "status", "message")}
            if row["status"] == "error":
                _raise_user_error(row["message"])
            on_row(row)
    return res.size


# -- the whole run --------------------------------------------------------------------------
def _counter(summary: PredictSummary, warn: Callable[[str], None], progress: Progress) -> RowHook:
    def on_row(row: Row) -> None:
        progress.update(1)
        if row["status"] == "written":
            summary.written += 1
        else:
            summary.unreadable.append(row["message"])
            warn(row["message"])

    return on_row


def predict_files(
    request: ModelRequest,
    jobs: Sequence[ImageJob],
    writer: OutputWriter,
    workers: int = 0,
    address: str | None = None,
    warn: Callable[[str], None] = log.warning,
) -> PredictSummary:
    """Predict every job whose files are not all there yet; ``warn`` hears each unreadable
    file as it is found. ``workers`` 0 loads the model here (only when something is left to
    do); N > 0 runs N Ray actors, each with its own copy."""
    start = time.perf_counter()
    summary = PredictSummary(out=writer.out, total=len(jobs))
    removed = writer.clean_temp()
    if removed:
        log.info("removed %d temp file(s) a killed run left in %s", removed, writer.out)
    todo = [job for job in jobs if not writer.done(job.rel)]
    summary.already_done = len(jobs) - len(todo)
    batches, bad = plan_batches(todo, request.batch_size)
    with Progress(len(todo), "predict", "images") as progress:
        on_row = _counter(summary, warn, progress)
        for row in bad:
            on_row(row)
        _run_batches(request, batches, writer, on_row, workers, address, summary)
    summary.seconds = time.perf_counter() - start
    return summary


def _run_batches(
    request: ModelRequest,
    batches: list[list[ImageJob]],
    writer: OutputWriter,
    on_row: RowHook,
    workers: int,
    address: str | None,
    summary: PredictSummary,
) -> None:
    if batches:
        work_begins()
        if workers > 0:
            summary.workers = predict_with_ray(request, batches, workers, on_row, address)
        else:
            predictor = Predictor.from_path(
                request.model_dir, request.overrides, request.device, request.batch_size
            )
            predict_in_process(predictor, writer, batches, on_row)
