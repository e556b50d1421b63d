"""Generation I/O: the fast PNG encoder is lossless and deterministic; units overlapping their
reading and writing with editing (threads in one worker, concurrent calls in one Ray actor)
write the same bytes as units run one at a time, and errors stay with their unit."""

from __future__ import annotations

import errno
import io
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shiftlab.config import load_experiment
from shiftlab.generate.plan import make_plan
from shiftlab.generate.writer import UnitWorker
from shiftlab.utils.atomic import FAST_PNG_LEVEL, atomic_path, encode_png, encode_png_fast
from shiftlab.utils.errors import ConfigError

CS_IDS = np.array([7, 8, 26, 23, 0], dtype=np.uint8)


def _scene(h: int, w: int, seed: int, noise: int = 25) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([xx * 200 // w + 30, yy * 200 // h + 30, (xx + yy) * 200 // (h + w) + 30], -1)
    return np.clip(base + rng.integers(-noise, noise + 1, base.shape), 0, 255).astype(np.uint8)


def _make_source(root: Path, n: int, hw: tuple[int, int] = (64, 128)) -> None:
    """A Cityscapes-layout train split of noisy scenes with labelIds masks."""
    rng = np.random.default_rng(0)
    for k in range(n):
        sid = f"town_{k:06d}_000019"
        lab = CS_IDS[rng.integers(0, len(CS_IDS), hw)]
        for path, arr in (
            (root / "leftImg8bit/train/town" / f"{sid}_leftImg8bit.png", _scene(*hw, k)),
            (root / "gtFine/train/town" / f"{sid}_gtFine_labelIds.png", lab),
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)


def _config(tmp: Path, source: Path, overrides: list[str] | None = None):
    exp = tmp / "exp.yaml"
    exp.write_text(
        textwrap.dedent(
            f"""\
            name: gen-io
            data:
              source: {{format: cityscapes, root: {source}, split: train}}
            generate:
              preset: night
              editor: {{kind: photometric}}
              resize: [48, 96]
              tile: 48
              output_root: {tmp / "gen"}
            model: {{name: deeplabv3plus, backbone: resnet18, pretrained: none}}
            method: {{name: source_only}}
            """
        )
    )
    return load_experiment(exp, overrides or [])


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img)


# ------------------------------------------------------------------------------ encoder


@pytest.mark.parametrize("level", range(10))
def test_fast_png_round_trips_every_pixel_at_every_level(level: int) -> None:
    arrays = {
        "noise": np.random.default_rng(level).integers(0, 256, (40, 72, 3), dtype=np.uint8),
        "scene": _scene(64, 128, level, noise=4),
        "grey": np.random.default_rng(1).integers(0, 256, (33, 17), dtype=np.uint8),
        "uint16 label": np.random.default_rng(2).integers(0, 65536, (20, 30), dtype=np.uint16),
    }
    for name, array in arrays.items():
        data = encode_png_fast(array, level)
        assert data.startswith(b"\x89PNG"), name
        decoded = _decode(data)
        assert decoded.dtype == array.dtype and np.array_equal(decoded, array), name
        assert encode_png_fast(array, level) == data, name  # deterministic
        # the same pixels as the Pillow encoding every earlier file has
        assert np.array_equal(decoded, _decode(encode_png(array))), name


def test_fast_png_at_sdgpa_and_cityscapes_sizes_is_lossless() -> None:
    for h, w in ((512, 1024), (1024, 2048)):
        image = _scene(h, w, 0, noise=6)
        data = encode_png_fast(image)
        assert np.array_equal(_decode(data), image), (h, w)
        assert encode_png_fast(image) == data


def test_fast_png_refuses_what_it_cannot_write() -> None:
    with pytest.raises(ValueError, match="0..9"):
        encode_png_fast(np.zeros((4, 4, 3), np.uint8), 10)
    with pytest.raises(ValueError, match="float32"):
        encode_png_fast(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        encode_png_fast(np.zeros((4, 4, 4), np.uint8))


# ------------------------------------------------------------------------- config, key


def test_level_and_overlap_are_settings_outside_the_cache_key(tmp_path) -> None:
    source = tmp_path / "src"
    _make_source(source, 3)
    default = make_plan(_config(tmp_path, source))
    assert default.png_compress_level == FAST_PNG_LEVEL == 1 and default.overlap_io
    other = make_plan(
        _config(tmp_path, source, ["generate.png_compress_level=9", "generate.overlap_io=false"])
    )
    # never a pixel of difference: existing sets stay valid whatever the level
    assert (other.png_compress_level, other.overlap_io) == (9, False)
    assert other.key == default.key and other.dataset_dir == default.dataset_dir
    assert "png_compress_level" not in default.meta["generate"]
    for bad in ("-1", "10"):
        with pytest.raises(ConfigError, match="png_compress_level"):
            _config(tmp_path, source, [f"generate.png_compress_level={bad}"])


# ------------------------------------------------------- overlapped units (no Ray)


class _SlowEditor:
    """Wraps an editor: each call takes a while and records when it ran and how many ran."""

    def __init__(self, inner) -> None:
        self.inner, self.batch_size = inner, inner.batch_size
        self.running, self.max_running = 0, 0
        self.intervals: list[tuple[float, float]] = []
        self.lock = threading.Lock()

    def edit(self, images, prompt, seeds):
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        start = time.perf_counter()
        time.sleep(0.15)
        out = self.inner.edit(images, prompt, seeds)
        with self.lock:
            self.running -= 1
            self.intervals.append((start, time.perf_counter()))
        return out


def _units(plan) -> list[tuple[str, tuple[int, ...]]]:
    return [(mode, unit) for mode in plan.modes for unit in plan.units()]


def test_concurrent_units_write_the_bytes_of_units_run_one_at_a_time(tmp_path) -> None:
    source = tmp_path / "src"
    _make_source(source, 40)  # 3 units of 16 per mode: 6 units
    cfg = _config(tmp_path, source, ["generate.output_root=" + str(tmp_path / "seq")])
    sequential = UnitWorker(make_plan(cfg))
    for mode, unit in _units(sequential.plan):
        sequential.process(mode, unit)

    cfg = _config(tmp_path, source, ["generate.output_root=" + str(tmp_path / "overlap")])
    worker = UnitWorker(make_plan(cfg))
    editor = worker.editor = _SlowEditor(worker.editor)
    reads: list[tuple[float, float]] = []
    real_prepare = worker.prepare

    def prepare(mode, unit):
        start = time.perf_counter()
        try:
            return real_prepare(mode, unit)
        finally:
            reads.append((start, time.perf_counter()))

    worker.prepare = prepare  # type: ignore[method-assign]
    with ThreadPoolExecutor(3) as pool:
        rows = [
            r for out in pool.map(lambda u: worker.process(*u), _units(worker.plan)) for r in out
        ]
    assert len(rows) == 2 * 40 and {r["status"] for r in rows} == {"written"}
    assert editor.max_running == 1  # one edit at a time ...
    # ... while other units were read meanwhile
    assert any(a0 < r0 and r1 < a1 for a0, a1 in editor.intervals for r0, r1 in reads)
    seq, ovl = _files(Path(sequential.plan.dataset_dir)), _files(Path(worker.plan.dataset_dir))
    assert sorted(seq) == sorted(ovl) and len(seq) == 40 * (2 + 2 * 2)
    assert [k for k in seq if seq[k] != ovl[k]] == []


def test_a_failed_write_is_its_own_units_error_and_leaves_no_file(tmp_path) -> None:
    source = tmp_path / "src"
    _make_source(source, 40)
    worker = UnitWorker(make_plan(_config(tmp_path, source)))
    root = Path(worker.plan.dataset_dir)
    victim = "target/town_000020_000019.png"  # in the second unit
    real_write = worker.store.write_bytes

    def write_bytes(rel: str, data: bytes) -> None:
        if rel != victim:
            return real_write(rel, data)
        with atomic_path(root / rel) as tmp:  # half a file, then the disk is full
            tmp.write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    worker.store.write_bytes = write_bytes  # type: ignore[method-assign]
    units = [("target", u) for u in worker.plan.units()]
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(worker.process, *u) for u in units]
    errors = [f.exception() for f in futures]
    assert [type(e) for e in errors] == [type(None), OSError, type(None)]
    assert {r["status"] for f in (futures[0], futures[2]) for r in f.result()} == {"written"}
    assert not (root / victim).exists()
    assert not [p for p in root.rglob(".*")]  # no temp file either


# ------------------------------------------------------------------- on a real Ray


@pytest.mark.slow
def test_overlap_on_and_off_generate_identical_files(ray_local, tmp_path) -> None:
    from shiftlab.generate.cache import ensure_generated_report

    source = tmp_path / "src"
    _make_source(source, 40)
    results = {}
    for overlap in (True, False):
        cfg = _config(
            tmp_path,
            source,
            [
                f"generate.output_root={tmp_path / str(overlap)}",
                f"generate.overlap_io={str(overlap).lower()}",
                "generate.num_actors=1",  # every unit through one actor: concurrent calls
                "generate.cpus_per_actor=0.9",
            ],
        )
        results[overlap] = ensure_generated_report(cfg)
    on, off = results[True], results[False]
    assert on.generated == off.generated == 2 * 40 and on.path.name == off.path.name
    got, want = _files(on.path), _files(off.path)
    assert sorted(got) == sorted(want)
    assert [k for k in want if got[k] != want[k]] == []
    for res in (on, off):
        stages = res.stats.stage_seconds
        assert set(stages) == {"read", "edit", "encode", "write"}
        assert all(v > 0 for v in stages.values()), stages
