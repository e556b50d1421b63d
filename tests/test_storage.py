"""Unwritable and full output locations: a clear error naming the place, nothing corrupted.

A real read-only and a real tiny (full) tmpfs are mounted, so the errors come from the kernel,
not from a mock. Needs root (mount); skipped elsewhere.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from shiftlab.config import load_experiment
from shiftlab.utils.storage import StorageError, check_writable

DEMO = Path(__file__).parent.parent / "experiments" / "demo.yaml"
SMALL = ["data.source.layouts=12", "data.val.0.layouts=12", "data.test.0.layouts=12"]


def _mount(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )


@pytest.fixture
def mounts(tmp_path):
    made: list[Path] = []

    def mount(name: str, options: str) -> Path:
        path = tmp_path / name
        if not _mount(path, options):
            pytest.skip("needs permission to mount tmpfs")
        made.append(path)
        return path

    yield mount
    for path in made:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_read_only_location_is_refused_by_name(mounts, tmp_path):
    ro = mounts("ro", "ro,size=1m")
    with pytest.raises(StorageError, match="read-only") as err:
        check_writable(ro / "runs")
    assert str(ro / "runs") in str(err.value)
    from shiftlab.train.trainer import run_training

    cfg = load_experiment(
        DEMO, [f"output_dir={ro}", "generate=null", "method={name: source_only, source_view: noon}"]
    )
    with pytest.raises(StorageError, match="run directory .*read-only"):
        run_training(cfg)


def test_generate_cli_on_read_only_output_exits_with_the_reason(mounts, capsys):
    from shiftlab.cli.main import main

    ro = mounts("ro2", "ro,size=1m")
    code = main(["generate", str(DEMO), f"output_dir={ro}", *SMALL])
    assert code == 3
    err = capsys.readouterr().err
    assert "read-only" in err and str(ro) in err


def _room_for_part_of_one_mode(generated: Path) -> int:
    """KiB for everything but the generated views plus half of the first one's PNGs (tmpfs
    counts whole 4 KiB pages per file), so the disk fills while the first mode is written."""

    def kib(paths: list[Path]) -> int:
        return sum(-(-p.stat().st_size // 4096) * 4 for p in paths if p.is_file())

    files = list(generated.rglob("*"))
    views = [p for p in files if p.parent.name in ("intermediate", "target")]
    first = [p for p in views if p.parent.name == "intermediate"]
    return kib([p for p in files if p not in views]) + kib(first) // 2 + 64


def test_disk_full_mid_generation_is_clear_and_corrupts_nothing(mounts, tmp_path, ray_local):
    from shiftlab.generate.cache import ensure_generated

    reference = ensure_generated(load_experiment(DEMO, [f"output_dir={tmp_path / 'ref'}", *SMALL]))
    full = mounts("full", f"size={_room_for_part_of_one_mode(reference)}k")
    with pytest.raises(StorageError, match="no space left") as err:
        ensure_generated(load_experiment(DEMO, [f"output_dir={full}", *SMALL]))
    assert "generation output" in str(err.value)
    written = [p for p in full.rglob("*") if p.is_file()]
    assert any(p.suffix == ".png" and p.parent.name in ("intermediate", "target") for p in written)
    # The set's root holds the generated views' PNGs (its manifest/ has mode folders too).
    root = next(
        p.parent.parent
        for p in written
        if p.suffix == ".png" and p.parent.name in ("intermediate", "target")
    )
    assert (
        not (root / "dataset.json").exists() or "target" not in (root / "dataset.json").read_text()
    )
    for path in written:
        assert not path.name.endswith(".tmp"), f"temp file left: {path}"
        rel = path.relative_to(root)
        if rel.parts[0] in ("intermediate", "target", "labels", "source"):
            # every file that exists is complete: byte-identical to the uninterrupted run
            assert path.read_bytes() == (reference / rel).read_bytes(), rel
