"""Messy inputs, as a new user makes them: each ends in one ``shiftlab: error:`` line that names
the file, key or path, with the exit code of its kind (2 a bad command line, 3 a bad config or
bad data found before any work), no Python traceback, and nothing half-written.

One parametrised case per input; the builders make the files in a fresh folder each time.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shiftlab.cli.main import main

from layouts import make_cityscapes, make_falcon, make_gta5, rgb, save

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "experiments" / "demo.yaml"
REFERENCE = ROOT / "experiments" / "demo_source_only.yaml"


@dataclass
class Case:
    """``argv`` (paths under the case's folder as ``{t}``), what the error must say, and
    paths (under the folder) that must not exist afterwards."""

    argv: list[str]
    says: list[str]
    code: int = 3
    setup: Callable[[Path], None] | None = None
    absent: list[str] = field(default_factory=list)


def tiny_experiment(t: Path, **extra: str) -> None:
    """A procedural experiment small enough to fail fast (or train in seconds)."""
    lines = {
        "name": "tiny",
        "output_dir": str(t / "runs"),
        "data": "{source: {format: procedural, split: train, condition: noon, layouts: 2, size: [32, 64]},"
        " val: [{name: v, format: procedural, split: val, condition: noon}]}",
        "model": "{name: deeplabv3plus, backbone: resnet18, pretrained: none}",
        "method": "{name: source_only}",
        **extra,
    }
    (t / "exp.yaml").write_text("".join(f"{k}: {v}\n" for k, v in lines.items()))


def write(rel: str, text: str) -> Callable[[Path], None]:
    def setup(t: Path) -> None:
        (t / rel).parent.mkdir(parents=True, exist_ok=True)
        (t / rel).write_text(textwrap.dedent(text))

    return setup


def cityscapes(t: Path) -> None:
    make_cityscapes(t / "cs", "val", h=16, w=32)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def exported_model(t: Path) -> None:
    from shiftlab.config.loader import validate_dict
    from shiftlab.data.label_spaces import get_label_space
    from shiftlab.models import create_model
    from shiftlab.models.checkpoint import export_model

    cityscapes(t)
    cfg = validate_dict(
        {
            "name": "m",
            "data": {
                "source": {"format": "cityscapes", "root": str(t / "cs"), "split": "val"},
                "val": [
                    {"format": "cityscapes", "root": str(t / "cs"), "split": "val", "name": "v"}
                ],
            },
            "model": {
                "name": "deeplabv3plus",
                "backbone": "resnet18",
                "pretrained": "none",
                "decoder_channels": 8,
                "low_level_channels": 8,
            },
            "method": {"name": "source_only"},
        },
        "test",
    )
    export_model(
        t / "best", cfg, create_model(cfg.model, 19), get_label_space("cityscapes"), {"epoch": 1}
    )


def predictions(values: int | np.ndarray) -> Callable[[Path], None]:
    def setup(t: Path) -> None:
        cityscapes(t)
        for lab in (t / "cs" / "gtFine" / "val").rglob("*_labelIds.png"):
            sid = lab.name.removesuffix("_gtFine_labelIds.png")
            pred = np.full((16, 32), values, np.uint8) if isinstance(values, int) else values
            save(t / "pred" / f"{sid}.png", pred)

    return setup


def _dup_ids(t: Path) -> None:
    rng = np.random.default_rng(0)
    save(t / "f" / "images" / "x.png", rgb(rng, 8, 8))
    save(t / "f" / "images" / "x.jpg", rgb(rng, 8, 8))
    save(t / "f" / "labels" / "x.png", np.zeros((8, 8), np.uint8))


def _truncated_image(t: Path) -> None:
    make_gta5(t / "g", n=2, h=16, w=16)
    truncate(t / "g" / "images" / "00001.png")


def _eight_bit_falcon(t: Path) -> None:
    make_falcon(t / "fa", n=1)
    lab = next((t / "fa" / "train" / "Segmentation").glob("*.png"))
    Image.fromarray(np.full((6, 10), 16, np.uint8)).save(lab)


def _unknown_values(t: Path) -> None:
    make_gta5(t / "g", n=1, h=8, w=8)
    save(t / "g" / "labels" / "00001.png", np.full((8, 8), 200, np.uint8), palette=True)


def _size_mismatch(t: Path) -> None:
    make_gta5(t / "g", n=1, h=8, w=8)
    save(t / "g" / "labels" / "00001.png", np.zeros((4, 8), np.uint8), palette=True)


def _orphan_label(t: Path) -> None:
    make_gta5(t / "g", n=2, h=8, w=8)
    (t / "g" / "images" / "00002.png").unlink()


def _missing_label(t: Path) -> None:
    make_gta5(t / "g", n=2, h=8, w=8)
    (t / "g" / "labels" / "00002.png").unlink()


def _empty_weights(t: Path) -> None:
    exported_model(t)
    (t / "best" / "model.safetensors").write_bytes(b"")


def _truncated_weights(t: Path) -> None:
    exported_model(t)
    truncate(t / "best" / "model.safetensors")


def _file_in_the_way(t: Path) -> None:
    exported_model(t)
    (t / "blocker").write_text("a file, not a folder")


def _tiny_with_file_output(t: Path) -> None:
    tiny_experiment(t)
    (t / "runs").write_text("a file where the runs folder should be")


def _tiny_truncated_source(t: Path) -> None:
    make_gta5(t / "g", n=2, h=32, w=32)
    truncate(t / "g" / "images" / "00002.png")
    tiny_experiment(t, data="{source: {format: gta5, root: " + str(t / "g") + ", split: all}}")


CASES: dict[str, Case] = {
    # -- the command line: exit 2 --------------------------------------------------------------
    "unknown command": Case(["trian"], ["invalid choice"], code=2),
    "unknown dataset format": Case(["data", "inspect", "nope", "{t}"], ["invalid choice"], code=2),
    "missing required option": Case(["score", "gta5", "{t}"], ["--predictions"], code=2),
    # -- configs: exit 3 -----------------------------------------------------------------------
    "missing experiment file": Case(["config", "{t}/nope.yaml"], ["nope.yaml", "file not found"]),
    "invalid YAML": Case(
        ["config", "{t}/e.yaml"], ["e.yaml", "not valid YAML"], setup=write("e.yaml", "name: [x\n")
    ),
    "unquoted ${VAR} in a flow mapping": Case(
        ["config", "{t}/e.yaml"],
        ["e.yaml", "must be quoted"],
        setup=write("e.yaml", "name: x\ndata:\n  source: {format: gta5, root: ${DATA}/g}\n"),
    ),
    "unknown key": Case(
        ["config", str(DEMO), "optim.lrr=0.1"], ["demo.yaml", "optim.lrr: unknown key"]
    ),
    "wrong type": Case(
        ["config", str(DEMO), "train.batch_size=four"], ["train.batch_size", "valid integer"]
    ),
    "out of range": Case(["config", str(DEMO), "optim.lr=-1"], ["optim.lr", "greater than 0"]),
    "override without '='": Case(["config", str(DEMO), "optim.lr"], ["optim.lr", "key.path=value"]),
    "unset variable": Case(
        ["config", "{t}/e.yaml"],
        ["e.yaml", "model.pretrained", "SHIFTLAB_NOT_SET_EVER"],
        setup=write(
            "e.yaml",
            "name: x\nmodel: {name: deeplabv3plus, pretrained: '${SHIFTLAB_NOT_SET_EVER}'}\n",
        ),
    ),
    "extends cycle": Case(
        ["config", "{t}/a.yaml"],
        ["a.yaml", "cycle"],
        setup=lambda t: (
            write("a.yaml", "extends: b.yaml\n")(t),
            write("b.yaml", "extends: a.yaml\n")(t),
        ),
    ),
    "pretrained left out": Case(
        ["config", str(DEMO), "model={name: deeplabv3plus, backbone: resnet18}"],
        ["model.pretrained", "none for random initialisation"],
    ),
    "pretrained empty": Case(
        ["config", str(DEMO), "model.pretrained=''"], ["model.pretrained", "empty"]
    ),
    "unknown method": Case(["config", str(DEMO), "method={name: magic}"], ["method"]),
    "selecting on the test set": Case(
        [
            "config",
            str(REFERENCE),
            "data.test=[{name: again, format: procedural, split: val, condition: noon}]",
        ],
        ["'noon_val'", "'again'"],
    ),
    "selection by a test metric": Case(
        ["config", str(DEMO), "train.select=test_miou"], ["train.select", "not a validation metric"]
    ),
    "zero-shot validating on the target": Case(
        ["config", str(DEMO), "protocol=zero_shot"],
        ["zero_shot", "night_val"],
    ),
    "select an epoch past the end": Case(
        ["config", str(DEMO), "train.select={epoch: 99}"],
        ["train.select.epoch", "99"],
    ),
    "user label space with a bad value": Case(
        ["data", "inspect", "folder", "{t}/f", "--label-space", "{t}/space.yaml"],
        ["space.yaml", "raw value"],
        setup=lambda t: (
            _dup_ids(t),
            write("space.yaml", "name: s\nclasses:\n  - {name: a, values: [70000]}\n")(t),
        ),
    ),
    "missing label space file": Case(
        ["data", "inspect", "gta5", "{t}", "--label-space", "{t}/nope.yaml"], ["nope.yaml"]
    ),
    "generate without a generate section": Case(
        ["generate", "{t}/exp.yaml"],
        ["generate", "no 'generate' section"],
        setup=tiny_experiment,
        absent=["runs"],
    ),
    "generate --modes unknown": Case(
        ["generate", str(DEMO), "--modes", "sunrise"], ["--modes", "sunrise"]
    ),
    # -- sweeps ---------------------------------------------------------------------------------
    "sweep metric typo": Case(
        ["sweep", str(DEMO), "--space", "{t}/s.yaml", "output_dir={t}/runs"],
        ["s.yaml", "val_mIoU", "val_miou"],
        setup=write(
            "s.yaml", "metric: val_mIoU\nparameters: {method.zodi_weight: {grid: [0.0, 0.1]}}\n"
        ),
        absent=["runs"],
    ),
    "sweep ranking on a test metric": Case(
        ["sweep", str(DEMO), "--space", "{t}/s.yaml", "output_dir={t}/runs"],
        ["test_miou", "never on a test set"],
        setup=write(
            "s.yaml", "metric: test_miou\nparameters: {method.zodi_weight: {grid: [0.0, 0.1]}}\n"
        ),
        absent=["runs"],
    ),
    "sweep key that does not exist": Case(
        ["sweep", str(DEMO), "--space", "{t}/s.yaml", "output_dir={t}/runs"],
        ["s.yaml", "method.zodi_wieght"],
        setup=write("s.yaml", "parameters: {method.zodi_wieght: {grid: [0.0, 0.1]}}\n"),
        absent=["runs"],
    ),
    "sweep distribution unknown": Case(
        ["sweep", str(DEMO), "--space", "{t}/s.yaml", "output_dir={t}/runs"],
        ["s.yaml", "normal"],
        setup=write("s.yaml", "parameters: {optim.lr: {normal: [0.1, 0.2]}}\n"),
        absent=["runs"],
    ),
    "resume of a folder that is no sweep": Case(
        ["sweep", "--resume", "{t}/nowhere"], ["nowhere", "not a sweep run directory"]
    ),
    "compare a sweep that does not exist": Case(
        ["compare", "nosuchsweep", "--tracking-uri", "sqlite:///{t}/none.db"],
        ["none.db"],
    ),
    # -- datasets: exit 3 -----------------------------------------------------------------------
    "dataset root missing": Case(
        ["data", "inspect", "gta5", "{t}/nope"], ["nope", "not a directory"]
    ),
    "empty split": Case(
        ["data", "inspect", "cityscapes", "{t}/cs", "--split", "train"],
        ["cs", "no samples"],
        setup=cityscapes,
    ),
    "image without a label": Case(
        ["data", "inspect", "gta5", "{t}/g", "--split", "all"],
        ["00002.png", "no label"],
        setup=_missing_label,
    ),
    "label without an image": Case(
        ["data", "inspect", "gta5", "{t}/g", "--split", "all"],
        ["00002.png", "no image"],
        setup=_orphan_label,
    ),
    "label of another size": Case(
        ["data", "inspect", "gta5", "{t}/g", "--split", "all"],
        ["00001.png", "does not match"],
        setup=_size_mismatch,
    ),
    "8-bit mask for a 16-bit space": Case(
        ["data", "inspect", "falcon", "{t}/fa"], ["8-bit mask", "16"], setup=_eight_bit_falcon
    ),
    "label values outside the space": Case(
        ["score", "gta5", "{t}/g", "--split", "all", "--predictions", "{t}/g/labels"],
        ["00001.png", "200"],
        setup=_unknown_values,
    ),
    "two files of one sample id": Case(
        ["data", "inspect", "folder", "{t}/f"], ["x.png", "x.jpg", "'x'"], setup=_dup_ids
    ),
    "truncated image (--verify)": Case(
        ["data", "inspect", "gta5", "{t}/g", "--split", "all", "--verify"],
        ["00001.png", "truncated"],
        setup=_truncated_image,
    ),
    # -- scoring: exit 3 ------------------------------------------------------------------------
    "predictions outside the label space": Case(
        ["score", "cityscapes", "{t}/cs", "--split", "val", "--predictions", "{t}/pred"],
        ["pred", "40", "outside"],
        setup=predictions(40),
    ),
    "labelIds scored as train ids": Case(
        ["score", "cityscapes", "{t}/cs", "--split", "val", "--predictions", "{t}/pred"],
        ["26", "raw label ids"],
        setup=predictions(26),
    ),
    "missing prediction": Case(
        ["score", "cityscapes", "{t}/cs", "--split", "val", "--predictions", "{t}/nope"],
        ["nope"],
        setup=cityscapes,
    ),
    # -- models and outputs: exit 3 -------------------------------------------------------------
    "not a model folder": Case(
        ["evaluate", "{t}", "--device", "cpu"], ["meta.json", "best/ or last/"]
    ),
    "zero-byte weights": Case(
        ["evaluate", "{t}/best", "--device", "cpu"],
        ["model.safetensors", "empty"],
        setup=_empty_weights,
    ),
    "truncated weights": Case(
        ["evaluate", "{t}/best", "--device", "cpu"],
        ["model.safetensors", "cannot be read"],
        setup=_truncated_weights,
    ),
    "evaluate --out under a file": Case(
        ["evaluate", "{t}/best", "--device", "cpu", "--out", "{t}/blocker/eval"],
        ["blocker", "not a directory"],
        setup=_file_in_the_way,
        absent=["best/eval"],
    ),
    "evaluate override out of range": Case(
        ["evaluate", "{t}/best", "--device", "cpu", "evaluate.scales=[]"],
        ["evaluate.scales"],
        setup=exported_model,
    ),
    "analyze --out under a file": Case(
        ["analyze", "gta5:{t}/g:all", "gta5:{t}/g:all", "--out", "{t}/blocker/gap"],
        ["blocker", "not a directory"],
        setup=lambda t: (make_gta5(t / "g", n=1), (t / "blocker").write_text("x")),
    ),
    "output_dir under a file": Case(
        ["train", "{t}/exp.yaml"], ["runs", "not a directory"], setup=_tiny_with_file_output
    ),
    "pretrained file missing": Case(
        ["train", "{t}/exp.yaml", "model.pretrained={t}/r18.pth"],
        ["model.pretrained", "r18.pth", "does not exist"],
        setup=tiny_experiment,
        absent=["runs/tiny/ray"],
    ),
    "truncated training image": Case(
        ["train", "{t}/exp.yaml"],
        ["00002.png", "truncated"],
        setup=_tiny_truncated_source,
        absent=["runs/tiny/ray"],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_ends_in_one_clear_line(name: str, tmp_path: Path, capsys) -> None:
    case = CASES[name]
    if case.setup is not None:
        case.setup(tmp_path)
    argv = [a.replace("{t}", str(tmp_path)) for a in case.argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == case.code, err
    assert "Traceback" not in err
    if case.code == 3:
        errors = [line for line in err.splitlines() if line.startswith("shiftlab: error:")]
        assert len(errors) == 1, err
    for fragment in case.says:
        assert fragment.replace("{t}", str(tmp_path)) in err, (fragment, err)
    for rel in case.absent:
        assert not (tmp_path / rel).exists(), rel
    leftovers = [p for p in tmp_path.rglob("*.tmp")]
    assert not leftovers, leftovers  # nothing half-written


def test_there_are_at_least_forty_cases() -> None:
    assert len(CASES) >= 40


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`shiftlab ... --json | head -c 1`: no BrokenPipeError traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "shiftlab", "config", str(DEMO), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(1)
    proc.stdout.close()  # the reader goes away before shiftlab has written everything
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_files_get_the_permissions_of_the_umask(tmp_path: Path) -> None:
    """Files shiftlab writes are readable by the team (0666 / 0777 less the umask), not 0600."""
    script = textwrap.dedent(f"""
        import os
        os.umask(0o022)
        from pathlib import Path
        from shiftlab.utils.atomic import clone_or_copy, make_temp_dir, write_text
        root = Path({str(tmp_path)!r})
        write_text(root / "config.yaml", "x: 1")
        (root / "src.png").write_bytes(b"png")
        clone_or_copy(root / "src.png", root / "labels" / "copy.png")
        print(oct(make_temp_dir(root / "best").stat().st_mode & 0o777))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0o755"
    assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "labels" / "copy.png").stat().st_mode & 0o777 == 0o644


def test_an_empty_training_checkpoint_says_so(tmp_path: Path) -> None:
    from shiftlab.models.checkpoint import load_training_state
    from shiftlab.utils.errors import DataError

    (tmp_path / "state.pt").write_bytes(b"")
    with pytest.raises(DataError, match="state.pt: the checkpoint file is empty"):
        load_training_state(tmp_path)
    torch.save({"epoch": 1}, tmp_path / "state.pt")
    truncate(tmp_path / "state.pt")
    with pytest.raises(DataError, match="cannot be loaded"):
        load_training_state(tmp_path)
