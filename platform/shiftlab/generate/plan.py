"""A generation request resolved into plain, picklable facts: which images, which edits, where.

`make_plan` reads the source listing once in the driver; Ray actors get the plan and never
open the source dataset themselves (they read the image and label files it names).

*Work units.* Each mode's sample ids (sorted) are cut into fixed chunks of `unit_images`
ids. A unit is the smallest piece of work: one actor call edits all of its images together.
Diffusion outputs are only equal to ~1e-4 between different batch compositions (kernels pick
other reduction orders for other batch sizes), which can flip a rounded pixel. Because units
are fixed by the request, every patch is always edited in the same batch with the same
neighbours, so the bytes of every file depend on (request, sample id) only: not on the number
of actors, their order, or whether the run was killed and resumed (a resumed unit is redone
whole and writes only what is missing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shiftlab.config.data import DatasetSpec
from shiftlab.config.generate import InstructPix2PixConfig, PhotometricConfig
from shiftlab.data.formats import open_dataset
from shiftlab.generate.cache_key import cache_key, label_space_record, request_record
from shiftlab.generate.patching import MODES
from shiftlab.utils.atomic import FAST_PNG_LEVEL
from shiftlab.utils.errors import ConfigError, DataError
from shiftlab.utils.store import ArrowStore, LocalStore, join, open_store

if TYPE_CHECKING:
    from shiftlab.config.schema import ExperimentConfig

# Images per unit for editors without a configured batch size (the photometric editor edits
# images independently; a unit of 16 keeps per-call overhead small).
PHOTOMETRIC_UNIT_IMAGES = 16


@dataclass(frozen=True)
class GenerationPlan:
    key: str
    dataset_dir: str  # a folder or an object-store URI (`shiftlab.utils.store`)
    modes: tuple[str, ...]  # requested, in MODES order
    ids: tuple[str, ...]
    images: tuple[str, ...]  # source image files (absolute)
    labels: tuple[str, ...]  # source label files (absolute)
    origin_images: tuple[str, ...]  # relative to the source root, for provenance
    origin_labels: tuple[str, ...]
    editor: InstructPix2PixConfig | PhotometricConfig  # resolved (scales filled)
    prompt: str
    seed: int
    tile: int
    overlap: int
    resize: tuple[int, int] | None
    unit_images: int
    label_space_name: str
    label_space_yaml: str | None  # text of label_space.yaml for non-built-in spaces
    meta: dict[str, Any] = field(default_factory=dict)  # dataset.json without modes
    # Set when the source can be materialised on any node (procedural scenes, a URI root):
    # actors on nodes that do not see the driver's copy open it on their own node.
    source_spec: dict[str, Any] | None = None
    num_actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 1.0
    png_compress_level: int = FAST_PNG_LEVEL  # never a pixel, so not in the key
    overlap_io: bool = True  # several units in flight per actor (pipeline.py)

    @property
    def store(self) -> LocalStore | ArrowStore:
        return open_store(self.dataset_dir)

    def units(self) -> list[tuple[int, ...]]:
        """Index tuples of the fixed work units (the same for every mode)."""
        n, k = len(self.ids), self.unit_images
        return [tuple(range(s, min(s + k, n))) for s in range(0, n, k)]

    def label_name(self, index: int) -> str:
        return self.ids[index] + Path(self.labels[index]).suffix.lower()


def unit_images_for(editor: InstructPix2PixConfig | PhotometricConfig) -> int:
    if isinstance(editor, InstructPix2PixConfig):
        return editor.batch_size
    return PHOTOMETRIC_UNIT_IMAGES


def check_sample_id(sample_id: str, where: Path) -> None:
    """An id becomes a file name: refuse ids that would leave their folder or hide as temp files."""
    bad = (
        not sample_id
        or sample_id in (".", "..")
        or sample_id.startswith(".")
        or any(c in sample_id for c in ("/", "\\", "\0"))
    )
    if bad:
        raise DataError(f"{where}: sample id {sample_id!r} cannot be used as a file name")


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.name


def node_local_source(spec: DatasetSpec) -> bool:
    """Sources read through a per-node cache: procedural scenes and URI roots."""
    return spec.format == "procedural" or (
        spec.root is not None and open_store(spec.root).copied_per_node
    )


def output_root(cfg: ExperimentConfig) -> str:
    """Where generated sets go: ``generate.output_root``, else ``<output_dir>/generated``."""
    gen = cfg.generate
    assert gen is not None
    return str(gen.output_root) if gen.output_root else join(cfg.output_dir, "generated")


def _labelled_samples(reader: Any, limit: int | None, spec: DatasetSpec) -> list[Any]:
    """The source samples to edit; each must have a label and an id usable as a file name."""
    samples = reader.samples()[:limit] if limit else reader.samples()
    for s in samples:
        check_sample_id(s.id, s.image)
        if s.label is None:
            raise DataError(
                f"{s.image}: sample {s.id!r} has no label; generation needs a labelled source "
                f"({spec.display_name})"
            )
    return samples


def make_plan(
    cfg: ExperimentConfig,
    cache_dir: str | Path | None = None,
    modes: list[str] | tuple[str, ...] | None = None,
) -> GenerationPlan:
    """Resolve ``cfg.generate`` against its source dataset into a `GenerationPlan`."""
    gen = cfg.generate
    if gen is None:
        raise ConfigError("generate: the experiment has no 'generate' section")
    spec = gen.source or cfg.data.source
    reader = open_dataset(spec, cache_dir)
    samples = _labelled_samples(reader, gen.limit, spec)
    editor = gen.resolved_editor()
    ls_name, ls_yaml, ls_content = label_space_record(reader.label_space)
    ids = [s.id for s in samples]
    request = request_record(cfg, spec, reader.root, ids, ls_content)
    key = cache_key(request)
    meta = {
        "format": "shiftlab",
        "cache_key": key,
        "label_space": ls_name,
        "resize": list(gen.resize) if gen.resize else None,
        "num_samples": len(ids),
        "generate": request["generate"],
        "source": request["source_spec"],
        "shiftlab_version": request["shiftlab"],
    }
    labels = [s.label for s in samples if s.label is not None]
    return GenerationPlan(
        key=key,
        dataset_dir=join(output_root(cfg), key[:24]),
        modes=tuple(m for m in MODES if m in (modes if modes is not None else gen.modes)),
        ids=tuple(ids),
        images=tuple(str(s.image.resolve()) for s in samples),
        labels=tuple(str(p.resolve()) for p in labels),
        origin_images=tuple(_relative(s.image, reader.root) for s in samples),
        origin_labels=tuple(_relative(p, reader.root) for p in labels),
        editor=editor,
        prompt=gen.prompt or "",
        seed=gen.seed,
        tile=gen.tile,
        overlap=gen.overlap,
        resize=(gen.resize[0], gen.resize[1]) if gen.resize else None,
        unit_images=unit_images_for(editor),
        label_space_name=ls_name,
        label_space_yaml=ls_yaml,
        meta=meta,
        source_spec=spec.model_dump(mode="json") if node_local_source(spec) else None,
        num_actors=gen.num_actors,
        cpus_per_actor=gen.cpus_per_actor,
        gpus_per_actor=gen.gpus_per_actor,
        png_compress_level=gen.png_compress_level,
        overlap_io=gen.overlap_io,
    )
