"""The generation pipeline on a real local Ray: paired views, cache key, kill + resume, locking."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shiftlab.cli.main import main as cli_main
from shiftlab.config import load_experiment
from shiftlab.data.formats import open_dataset_args
from shiftlab.data.io import read_label_raw
from shiftlab.data.label_spaces import get_label_space
from shiftlab.generate.cache import ensure_generated, ensure_generated_report
from shiftlab.generate.patching import patch_seed
from shiftlab.generate.pipeline import ActorResources, actor_resources
from shiftlab.generate.plan import make_plan
from shiftlab.utils.atomic import clone_or_copy
from shiftlab.utils.lock import FileLock

pytestmark = pytest.mark.slow

N_IMAGES = 6
SRC_HW = (96, 192)  # resized to 64x128: labels stay 96x192 and are resized when read
CS_IDS = np.array([7, 8, 26, 23, 0], dtype=np.uint8)


def _make_source(root: Path, n: int) -> None:
    """A Cityscapes-layout train split of smooth, noisy scenes with labelIds masks."""
    rng = np.random.default_rng(0)
    h, w = SRC_HW
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([xx * 200 // w + 30, yy * 200 // h + 30, (xx + yy) * 200 // (h + w) + 30], -1)
    for k in range(n):
        sid = f"town_{k:06d}_000019"
        img = np.clip(base + rng.integers(-25, 25, base.shape), 0, 255).astype(np.uint8)
        lab = CS_IDS[rng.integers(0, len(CS_IDS), (h, w))]
        for path, arr in (
            (root / "leftImg8bit/train/town" / f"{sid}_leftImg8bit.png", img),
            (root / "gtFine/train/town" / f"{sid}_gtFine_labelIds.png", lab),
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src")
    _make_source(root, N_IMAGES)
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from shiftlab.generate.pipeline_builder import build_tiny_instruct_pix2pix

    return build_tiny_instruct_pix2pix(tmp_path_factory.mktemp("ip2p") / "tiny", seed=0)


def _experiment(tmp: Path, source: Path, out: Path, editor: str, name: str = "photometric") -> Path:
    path = tmp / f"exp-{name}.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            name: gen-test
            data:
              source: {{format: cityscapes, root: {source}, split: train}}
            generate:
              preset: night
              editor: {editor}
              resize: [64, 128]
              tile: 64
              output_root: {out}
            model: {{name: deeplabv3plus, backbone: resnet18, pretrained: none}}
            method: {{name: source_only}}
            """
        )
    )
    return path


def _photometric(
    tmp: Path, source: Path, overrides: list[str] | None = None, out: Path | None = None
):
    path = _experiment(tmp, source, out or tmp / "gen", "{kind: photometric}")
    return load_experiment(path, overrides or [])


def _ip2p_yaml(tmp: Path, source: Path, model: Path, out: Path) -> Path:
    editor = f"{{kind: instruct-pix2pix, model: {model}, steps: 2, batch_size: 2}}"
    return _experiment(tmp, source, out, editor, name=f"ip2p-{model.name}")


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _stamps(root: Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()
    }


def _source_label(source: Path, sid: str) -> Path:
    return source / "gtFine/train/town" / f"{sid}_gtFine_labelIds.png"


def _check_complete_and_paired(root: Path, source: Path, modes: tuple[str, ...]) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["modes"] == list(modes) and meta["resize"] == [64, 128]
    ids = sorted(f"town_{k:06d}_000019" for k in range(N_IMAGES))
    for view in ("source", *modes):
        assert sorted(p.stem for p in (root / view).glob("*.png")) == ids, view
    reader = open_dataset_args("shiftlab", root, condition=modes[-1])
    samples = reader.samples()
    assert [s.id for s in samples] == ids
    assert reader.view_names() == sorted(("source", *modes))
    space = get_label_space("cityscapes")
    for s in samples:
        shapes = {reader.read_image(s, v).shape for v in ("source", *modes)}
        assert shapes == {(64, 128, 3)}
        # labels: the source's bytes, unchanged; read back at the image size by nearest sampling
        assert s.label.read_bytes() == _source_label(source, s.id).read_bytes()
        decoded = reader.read_label(s)
        src_raw = read_label_raw(_source_label(source, s.id))
        assert decoded.shape == (64, 128)
        rows = ((np.arange(64) + 0.5) * 96 / 64).astype(int)
        cols = ((np.arange(128) + 0.5) * 192 / 128).astype(int)
        np.testing.assert_array_equal(decoded, space.decode(src_raw[rows][:, cols]))
    # the edit changed the images, and the intermediate edit only part of each one
    s = samples[0]
    src = reader.read_image(s, "source").astype(int)
    for mode in modes:
        changed = np.abs(reader.read_image(s, mode).astype(int) - src).sum(-1) > 0
        assert changed.mean() > (0.3 if mode == "intermediate" else 0.9)
        if mode == "intermediate":
            assert changed.mean() < 0.75


def _check_manifests(root: Path, modes: tuple[str, ...], seed: int) -> None:
    resolved_root = root.resolve()
    for mode in modes:
        for man in sorted((root / "manifest" / mode).glob("*.json")):
            rec = json.loads(man.read_text())
            assert rec["mode"] == mode and rec["id"] == man.stem
            assert rec["prompt"] == "Make it evening" and rec["seed"] == seed
            assert rec["editor"]["kind"] in ("photometric", "instruct-pix2pix")
            assert rec["shiftlab_version"]
            assert [p["seed"] for p in rec["patches"]] == [
                patch_seed(seed, rec["id"], mode, k) for k in range(len(rec["patches"]))
            ]
            assert len(rec["patches"]) == (2 if mode == "target" else 1)
            for key in ("image", "source_image", "label"):
                assert not Path(rec[key]).is_absolute()
                target = (root / rec[key]).resolve()
                assert target.is_relative_to(resolved_root) and target.is_file()
            for value in rec["origin"].values():
                assert not Path(value).is_absolute() and ".." not in Path(value).parts


# --------------------------------------------------------------------------- photometric


def test_photometric_set_is_complete_paired_and_reused(ray_local, source, tmp_path) -> None:
    cfg = _photometric(tmp_path, source)
    result = ensure_generated_report(cfg)
    root = result.path
    assert root.parent == tmp_path / "gen" and root.name == result.key[:24]
    assert result.generated == 2 * N_IMAGES and result.modes == ("intermediate", "target")
    _check_complete_and_paired(root, source, ("intermediate", "target"))
    _check_manifests(root, ("intermediate", "target"), seed=42)
    # labels are copies (reflinks where the filesystem has them): never links of any kind
    label = root / "labels" / "town_000000_000019.png"
    original = _source_label(source, "town_000000_000019")
    assert not label.is_symlink() and label.read_bytes() == original.read_bytes()
    assert label.stat().st_ino != original.stat().st_ino
    assert not [p for p in root.rglob(".*")]  # no temp files
    assert not list((tmp_path / "gen").glob("*.lock"))  # lock released

    # An identical request: same directory, no work, not a file touched.
    before = _stamps(root)
    again = ensure_generated_report(_photometric(tmp_path, source))
    assert again.path == root and again.generated == 0 and _stamps(root) == before
    assert ensure_generated(cfg) == root


def test_cli_prints_directory(ray_local, source, tmp_path, capsys) -> None:
    exp = _experiment(tmp_path, source, tmp_path / "gen", "{kind: photometric}")
    assert cli_main(["generate", str(exp), "generate.modes=[intermediate]", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert Path(out["path"]).is_dir() and out["generated"] == N_IMAGES
    assert out["modes"] == ["intermediate"]
    assert cli_main(["generate", str(exp), "--modes", "intermediate"]) == 0
    assert capsys.readouterr().out.strip() == out["path"]


def test_key_changes_with_request_and_outputs_never_mix(
    ray_local, source, tmp_path, tiny_model
) -> None:
    base = _photometric(tmp_path, source)
    key = make_plan(base).key
    # Anything that determines the images gives another key (plans only: no generation).
    changed = {
        "prompt": ["generate.prompt=make it rain"],
        "seed": ["generate.seed=1"],
        "tile": ["generate.tile=32"],
        "resize": ["generate.resize=[32,64]"],
        "strength": ["generate.editor.strength=0.5"],
        "limit": ["generate.limit=3"],
    }
    keys = {name: make_plan(_photometric(tmp_path, source, ov)).key for name, ov in changed.items()}
    assert len(set(keys.values())) == len(keys) and key not in keys.values()
    # ... but not where or how fast, nor which modes (one directory holds every mode)
    same = [
        ["generate.output_root=" + str(tmp_path / "elsewhere")],
        ["generate.num_actors=1", "generate.cpus_per_actor=0.5"],
        ["generate.modes=[target]"],
    ]
    for ov in same:
        assert make_plan(_photometric(tmp_path, source, ov)).key == key
    # InstructPix2Pix: guidance scales, steps and the weights' content are keyed.
    import shutil

    copy = tmp_path / "model-copy"
    shutil.copytree(tiny_model, copy)
    ip_exp = _ip2p_yaml(tmp_path, source, copy, tmp_path / "g")
    ip_key = make_plan(load_experiment(ip_exp)).key
    for ov in (
        ["generate.editor.guidance_scale=5"],
        ["generate.editor.image_guidance_scale=1.2"],
        ["generate.editor.steps=3"],
    ):
        assert make_plan(load_experiment(ip_exp, ov)).key != ip_key
    assert make_plan(load_experiment(ip_exp)).key == ip_key
    weights = next(copy.rglob("diffusion_pytorch_model.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # weights changed in place, same path and size
    weights.write_bytes(bytes(data))
    assert make_plan(load_experiment(ip_exp)).key != ip_key

    # A changed seed, target first: a new directory; then both modes: only intermediate is made.
    out = tmp_path / "gen2"
    first = ensure_generated_report(
        _photometric(tmp_path, source, ["generate.seed=5", "generate.modes=[target]"], out)
    )
    assert first.generated == N_IMAGES and first.modes == ("target",)
    assert not (first.path / "intermediate").exists()
    assert open_dataset_args("shiftlab", first.path).view_names() == ["source", "target"]
    target_stamps = _stamps(first.path / "target")
    both = ensure_generated_report(_photometric(tmp_path, source, ["generate.seed=5"], out))
    assert both.path == first.path and both.generated == N_IMAGES
    assert _stamps(first.path / "target") == target_stamps
    _check_complete_and_paired(both.path, source, ("intermediate", "target"))
    # A different request never writes into another's directory.
    other = ensure_generated_report(
        _photometric(tmp_path, source, ["generate.seed=6", "generate.modes=[target]"], out)
    )
    assert other.path != both.path and _stamps(first.path / "target") == target_stamps
    a = np.asarray(Image.open(both.path / "target/town_000000_000019.png"))
    b = np.asarray(Image.open(other.path / "target/town_000000_000019.png"))
    assert not np.array_equal(a, b)


def test_concurrent_callers_generate_once(ray_local, source, tmp_path) -> None:
    cfg = _photometric(tmp_path, source, ["generate.seed=11"])
    results: list = []
    errors: list = []

    def call() -> None:
        try:
            results.append(ensure_generated_report(cfg))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len({r.path for r in results}) == 1
    assert sorted(r.generated for r in results) == [0, 2 * N_IMAGES]


# ------------------------------------------------------------------------ lock (no Ray)


def test_lock_excludes_other_processes_and_breaks_stale_locks(tmp_path) -> None:
    path = tmp_path / ".x.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""\
            import sys, time
            from shiftlab.utils.lock import FileLock
            lock = FileLock({str(path)!r}); lock.acquire(); print("held", flush=True)
            sys.stdin.readline(); lock.release()
            """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        other = FileLock(path, poll_s=0.05)
        assert not other.try_acquire()
        with pytest.raises(TimeoutError):
            other.acquire(timeout_s=0.3)
    finally:
        holder.kill()  # dies holding the lock: it becomes stale (same host, dead pid)
        holder.wait()
    assert path.exists()
    lock = FileLock(path, poll_s=0.05)
    lock.acquire(timeout_s=10)
    assert lock.waited and json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not path.exists()
    # A lock whose owner lives elsewhere is stale only when its heartbeat stops.
    path.write_text(json.dumps({"pid": 1, "host": "another-node", "token": "t"}))
    assert not FileLock(path, stale_after_s=60).is_stale(FileLock(path).owner())
    old = time.time() - 120
    os.utime(path, (old, old))
    assert FileLock(path, stale_after_s=60).is_stale(FileLock(path).owner())


def test_labels_are_copied_atomically_never_linked(tmp_path) -> None:
    src = tmp_path / "a" / "l.png"
    src.parent.mkdir()
    Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).save(src)
    dst = tmp_path / "out" / "labels" / "x.png"
    assert clone_or_copy(src, dst) in ("reflink", "copy")
    assert dst.read_bytes() == src.read_bytes() and not dst.is_symlink()
    assert dst.stat().st_ino != src.stat().st_ino  # not a hard link: edits of src cannot reach it
    before = dst.read_bytes()
    with open(src, "r+b") as fh:  # an edit in place, as an image editor would save it
        fh.write(b"X")
    assert dst.read_bytes() == before
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(".")]


def test_actor_resources_follow_the_cluster(source, tmp_path, tiny_model) -> None:
    plan = make_plan(_photometric(tmp_path, source))
    # 2 CPUs: two actors that leave room for Ray Data's own tasks
    res = actor_resources(plan, {"CPU": 2.0}, units=10)
    assert res.size == 2 and res.num_cpus < 1.0 and res.num_gpus == 0 and res.threads == 1
    assert actor_resources(plan, {"CPU": 2.0}, units=1).size == 1
    ip2p = make_plan(load_experiment(_ip2p_yaml(tmp_path, source, tiny_model, tmp_path / "g")))
    assert actor_resources(ip2p, {"CPU": 16.0, "GPU": 4.0}, units=100) == ActorResources(
        4, 1.0, 1.0, 1
    )


# ------------------------------------------------------------- InstructPix2Pix + kill test

_KILLED_RUN = """
import sys
import ray
from shiftlab.config import load_experiment
from shiftlab.generate.cache import ensure_generated
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
cfg = load_experiment(sys.argv[1], ["generate.output_root=" + sys.argv[2]])
print(ensure_generated(cfg), flush=True)
"""


def _session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (zombies, already dead, are left out)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp session ...": comm may hold spaces, so split after ")"
            state, _ppid, _pgrp, session = stat.read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue
        if int(session) == sid and state != "Z":
            pids.append(int(stat.parent.name))
    return pids


def _kill_session(sid: int) -> None:
    """SIGKILL a driver and every process of its session, until none is left.

    Not `killpg`: Ray gives each worker process a process group of its own, so killing the
    driver's group leaves the editor actor running, and it can finish every unit before it
    notices that its raylet is gone (CI once saw the "killed" run complete).
    """
    deadline = time.monotonic() + 30
    while (pids := _session_members(sid)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
    assert not pids, f"processes of the killed run still alive: {pids}"


@pytest.fixture(scope="module")
def ip2p_reference(ray_local, source, tiny_model, tmp_path_factory) -> tuple[Path, Path]:
    """An uninterrupted run of the tiny InstructPix2Pix pipeline: (experiment file, dataset dir)."""
    tmp = tmp_path_factory.mktemp("ip2p-ref")
    exp = _ip2p_yaml(tmp, source, tiny_model, tmp / "gen")
    result = ensure_generated_report(load_experiment(exp))
    assert result.generated == 2 * N_IMAGES
    return exp, result.path


def test_instruct_pix2pix_set_is_complete_and_paired(ip2p_reference, source) -> None:
    _exp, root = ip2p_reference
    _check_complete_and_paired(root, source, ("intermediate", "target"))
    _check_manifests(root, ("intermediate", "target"), seed=42)
    rec = json.loads((root / "manifest/target/town_000000_000019.json").read_text())
    # the night preset's scales, the configured steps and the device that ran it
    assert (rec["guidance_scale"], rec["image_guidance_scale"], rec["steps"]) == (20.0, 1.7, 2)
    assert rec["device"] == "cpu" and rec["editor"]["model"]


def test_killed_run_resumes_to_identical_bytes(ip2p_reference, tmp_path) -> None:
    exp, reference = ip2p_reference
    out = tmp_path / "killed"
    script = tmp_path / "run.py"
    script.write_text(_KILLED_RUN)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(exp), str(out)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    total = 2 * N_IMAGES
    written = 0
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            written = len(list(out.glob("*/manifest/*/*.json")))
            if written:
                break
            time.sleep(0.02)
    finally:
        _kill_session(proc.pid)  # the driver and the local Ray it started
        proc.wait()
    assert 0 < written < total, f"kill landed after {written} of {total} images"
    dirs = list(out.iterdir())
    assert any(p.name.endswith(".lock") for p in dirs)  # the killed owner's lock is left behind

    result = ensure_generated_report(load_experiment(exp, ["generate.output_root=" + str(out)]))
    assert result.path.name == reference.name  # the key does not depend on the output root
    assert 0 < result.generated < total
    got, want = _files(result.path), _files(reference)
    assert sorted(got) == sorted(want)
    different = [name for name in want if got[name] != want[name]]
    assert not different, different
    assert not [p for p in out.rglob(".*")], "temp or lock files left over"


# ------------------------------------------------------------------- reader (no Ray)


def test_reader_shows_complete_views_and_resizes_labels(tmp_path) -> None:
    from shiftlab.data.transforms import resize_label
    from shiftlab.generate.plan import check_sample_id
    from shiftlab.utils.errors import DataError

    root = tmp_path / "set"
    raw = CS_IDS[np.random.default_rng(0).integers(0, len(CS_IDS), (6, 8))]
    for sid in ("a", "b"):
        for view in ("source", "target"):
            (root / view).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(root / view / f"{sid}.png")
        (root / "labels").mkdir(exist_ok=True)
        Image.fromarray(raw).save(root / "labels" / f"{sid}.png")
    # an intermediate mode still being generated: one image only, not listed as complete
    (root / "intermediate").mkdir()
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(root / "intermediate" / "a.png")
    meta = {
        "label_space": "cityscapes",
        "modes": ["target"],
        "views": ["source", "target"],
        "resize": [3, 4],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    reader = open_dataset_args("shiftlab", root)
    assert reader.view_names() == ["source", "target"]
    label = reader.read_label(reader.samples()[0])
    expected = get_label_space("cityscapes").decode(raw[[1, 3, 5]][:, [1, 3, 5, 7]])
    np.testing.assert_array_equal(label, expected)
    assert resize_label(raw, (6, 8)) is raw
    # without a resize, a label of another size is an error naming the file
    (root / "dataset.json").write_text(json.dumps(dict(meta, resize=None)))
    with pytest.raises(DataError, match="does not match image"):
        open_dataset_args("shiftlab", root).read_label(reader.samples()[0])
    for bad in ("", "..", ".hidden", "a/b", "a\\b"):
        with pytest.raises(DataError):
            check_sample_id(bad, root)
    check_sample_id("aachen_000000_000019", root)


def test_actor_errors_name_the_file(ray_local, tmp_path) -> None:
    from shiftlab.utils.errors import DataError

    src = tmp_path / "src"
    _make_source(src, 2)
    broken = src / "leftImg8bit/train/town/town_000001_000019_leftImg8bit.png"
    broken.write_bytes(broken.read_bytes()[:100])  # truncated PNG
    with pytest.raises(DataError, match="town_000001_000019_leftImg8bit.png"):
        ensure_generated(_photometric(tmp_path, src))
    assert not list((tmp_path / "gen").glob("*/dataset.json"))
    assert not list((tmp_path / "gen").glob("*.lock"))


def test_an_actor_without_the_drivers_source_copy_makes_its_own(tmp_path, monkeypatch) -> None:
    """A node that does not share the driver's cache renders procedural sources itself (found
    by their paths relative to the source root) and writes the same bytes."""
    import dataclasses
    import shutil

    from shiftlab.generate.writer import UnitWorker

    demo = Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml"
    monkeypatch.setenv("SHIFTLAB_CACHE_DIR", str(tmp_path / "driver-cache"))
    cfg = load_experiment(demo, ["data.source.layouts=3", f"output_dir={tmp_path / 'runs'}"])
    plan = make_plan(cfg)
    assert plan.source_spec is not None and UnitWorker(plan).source_root is None  # same node
    UnitWorker(plan).process("target", plan.units()[0])
    reference = _files(Path(plan.dataset_dir))

    shutil.rmtree(tmp_path / "driver-cache")  # another node: the driver's copy is not there
    monkeypatch.setenv("SHIFTLAB_CACHE_DIR", str(tmp_path / "node-cache"))
    elsewhere = dataclasses.replace(plan, dataset_dir=str(tmp_path / "node-out"))
    worker = UnitWorker(elsewhere)
    assert (
        worker.source_root is not None and (tmp_path / "node-cache") in worker.source_root.parents
    )
    worker.process("target", plan.units()[0])
    assert (
        _files(tmp_path / "node-out") == reference and len(reference) == 3 * 4
    )  # src, label, img, json


def test_a_source_edited_in_place_regenerates_exactly_that_image(ray_local, tmp_path) -> None:
    """Edit a source image and its label in place (same inode, as `cp` over them does): the
    set never mixes the new label with the old edit; the next generate redoes that sample only."""
    source = tmp_path / "src"
    _make_source(source, N_IMAGES)
    cfg = _photometric(tmp_path, source)
    first = ensure_generated_report(cfg)
    root = Path(first.path)
    assert first.generated == 2 * N_IMAGES and first.stale == 0
    before, stamps = _files(root), _stamps(root)
    victim = "town_000002_000019"
    img_path = source / "leftImg8bit/train/town" / f"{victim}_leftImg8bit.png"
    lab_path = _source_label(source, victim)
    rng = np.random.default_rng(7)
    new_img = rng.integers(0, 256, (*SRC_HW, 3), dtype=np.uint8)
    new_lab = CS_IDS[rng.integers(0, len(CS_IDS), SRC_HW)]
    for path, arr in ((img_path, new_img), (lab_path, new_lab)):
        with open(path, "r+b") as fh:  # in place: the same inode, new content
            fh.truncate(0)
            Image.fromarray(arr).save(fh, format="PNG")
    # Until the next check the set is still consistent with itself (nothing reached into it).
    assert _files(root) == before
    again = ensure_generated_report(cfg)
    assert again.stale == 1 and again.generated == 2  # the victim's two modes, nothing else
    after = _files(root)
    changed = sorted(k for k in after if after[k] != before.get(k))
    assert all(victim in k for k in changed if k != "sources.json"), changed
    assert {f"labels/{victim}.png", f"target/{victim}.png", f"intermediate/{victim}.png"} <= set(
        changed
    )
    # the set's label is the new label and its source view the new image, resized as generation does
    assert np.array_equal(np.asarray(Image.open(root / "labels" / f"{victim}.png")), new_lab)
    from shiftlab.data.transforms import resize_image

    assert np.array_equal(
        np.asarray(Image.open(root / "source" / f"{victim}.png")), resize_image(new_img, (64, 128))
    )
    untouched = [k for k in before if victim not in k and k not in ("sources.json", "dataset.json")]
    assert all(_stamps(root)[k] == stamps[k] for k in untouched)  # not even rewritten
    # a third run: nothing stale, nothing generated; touching a file without changing it is fine
    os.utime(img_path)
    third = ensure_generated_report(cfg)
    assert (third.stale, third.generated) == (0, 0)
