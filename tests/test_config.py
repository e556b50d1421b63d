from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shiftlab.config import flatten, load_experiment, save_resolved
from shiftlab.utils.errors import ConfigError

DEMO = Path(__file__).parent.parent / "experiments" / "demo.yaml"


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_shipped_experiment_validates(weights_env):
    files = sorted((Path(__file__).parent.parent / "experiments").glob("*.yaml"))
    assert files
    for path in files:
        if path.name.startswith("_"):
            continue  # bases meant to be extended
        cfg = load_experiment(path)
        assert cfg.name


def test_overrides_are_typed_and_switch_union_members():
    cfg = load_experiment(
        DEMO, ["optim.lr=0.05", "train.augment.crop=[64,64]", "method.zodi_weight=0.1"]
    )
    assert (
        cfg.optim.lr == 0.05
        and cfg.train.augment.crop == (64, 64)
        and cfg.method.zodi_weight == 0.1
    )
    cfg = load_experiment(DEMO, ["generate=null", "method={name: source_only}"])
    assert cfg.method.name == "source_only"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("optim.lrr=0.1", "optim.lrr: unknown key"),
        ("optim.lr=-1", "optim.lr: Input should be greater than 0"),
        ("train.batch_size=four", "train.batch_size: Input should be a valid integer"),
        ("method.zodi_weight=99", "method.zodi_weight: Input should be less than or equal to 10"),
        ("model.output_stride=12", "model.output_stride"),
        ("data.source.format=nope", "data.source.format"),
        ("generate=null", "add a 'generate' section"),
    ],
)
def test_bad_values_name_file_and_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_experiment(DEMO, [override])
    assert "demo.yaml" in str(err.value)
    assert fragment in str(err.value)


def resolved_demo() -> str:
    """demo.yaml as one self-contained file (it extends a base next to it)."""
    return yaml.safe_dump(load_experiment(DEMO).model_dump(mode="json"))


def test_unknown_top_level_key_and_bad_yaml(tmp_path):
    base = resolved_demo()
    with pytest.raises(ConfigError, match="exp.yaml: trian: unknown key"):
        load_experiment(write(tmp_path, base + "trian: {epochs: 3}\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_experiment(DEMO, ["optim.lr"])


def test_extends_and_env(tmp_path, monkeypatch):
    write(tmp_path, resolved_demo(), "_base.yaml")
    child = write(
        tmp_path,
        "extends: _base.yaml\nname: child\noptim: {lr: 0.01}\ndata:\n  source: {format: folder, root: '${DATA_ROOT}/x'}\n",
    )
    monkeypatch.setenv("DATA_ROOT", "/mnt/data")
    cfg = load_experiment(child)
    assert cfg.name == "child" and cfg.optim.lr == 0.01 and cfg.optim.optimizer == "adamw"
    assert cfg.data.source.root == "/mnt/data/x"
    assert cfg.data.val[0].name == "night_val"  # inherited
    monkeypatch.delenv("DATA_ROOT")
    with pytest.raises(ConfigError, match="DATA_ROOT"):
        load_experiment(child)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_experiment(DEMO, ["seed=7"])
    path = save_resolved(cfg, tmp_path / "resolved.yaml")
    again = load_experiment(path)
    assert again == cfg
    assert yaml.safe_load(path.read_text())["optim"]["momentum"] == 0.9  # defaults are written out
    flat = flatten(cfg.model_dump(mode="json"))
    assert flat["seed"] == 7 and flat["method.name"] == "sdgpa"
