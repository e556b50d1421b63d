"""Search spaces, trial expansion, resource planning and the leaderboard (no Ray needed)."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import yaml

from shiftlab.config import load_experiment
from shiftlab.sweep import leaderboard
from shiftlab.sweep.resources import TrialNeed, max_concurrent_trials, trial_need
from shiftlab.sweep.space import expand_trials, load_space, parse_space, trial_name, validate_space
from shiftlab.tracking import runs
from shiftlab.utils.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "experiments" / "demo.yaml"

OFFROAD = {
    "name": "offroad_tiny",
    "data": {
        "source": {"format": "procedural", "layouts": 2, "size": [64, 64]},
        # a sweep ranks on validation data (val_miou): the experiment must have some
        "val": [
            {"format": "procedural", "split": "val", "layouts": 2, "size": [64, 64], "name": "v"}
        ],
    },
    "model": {"name": "deeplabv3plus", "backbone": "resnet18", "pretrained": "none"},
    "method": {"name": "offroad"},
}


def _space(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_shipped_space_parses() -> None:
    for path in sorted((ROOT / "search_spaces").glob("*.yaml")):
        space = load_space(path)
        assert space.parameters, path


def test_demo_space_validates_against_demo_experiment() -> None:
    cfg = load_experiment(DEMO)
    space = load_space(ROOT / "search_spaces" / "demo.yaml")
    validate_space(space, cfg, str(DEMO))
    trials = expand_trials(space, 1, cfg.seed)
    # 2 x 2 grid, one seed each
    assert len(trials) == 4
    assert {
        (t.params["generate.editor.strength"], t.params["method.zodi_weight"]) for t in trials
    } == {(0.6, 0.0), (0.6, 0.1), (1.0, 0.0), (1.0, 0.1)}
    assert len({t.key for t in trials}) == 4


def test_unknown_key_names_key_and_space_file(tmp_path: Path) -> None:
    cfg = load_experiment(DEMO)
    path = _space(tmp_path, {"parameters": {"method.zodi_wieght": {"grid": [0.0, 0.1]}}})
    with pytest.raises(ConfigError) as exc:
        validate_space(load_space(path), cfg, str(DEMO))
    assert "method.zodi_wieght" in str(exc.value) and str(path) in str(exc.value)


def test_out_of_range_candidate_is_rejected_before_anything_runs(tmp_path: Path) -> None:
    cfg = load_experiment(DEMO)
    # the upper bound of the range breaks the schema (zodi_weight <= 10)
    path = _space(tmp_path, {"parameters": {"method.zodi_weight": {"uniform": [0.0, 50.0]}}})
    with pytest.raises(ConfigError) as exc:
        validate_space(load_space(path), cfg, str(DEMO))
    text = str(exc.value)
    assert "method.zodi_weight" in text and "50.0" in text and str(path) in text
    # a bad choice value of the editor strength (<= 1)
    path = _space(tmp_path, {"parameters": {"generate.editor.strength": {"choice": [0.5, 1.5]}}})
    with pytest.raises(ConfigError, match="generate.editor.strength"):
        validate_space(load_space(path), cfg, str(DEMO))


def test_malformed_distributions(tmp_path: Path) -> None:
    bad = [
        {"parameters": {"optim.lr": {"loguniform": [0.0, 1.0]}}},
        {"parameters": {"optim.lr": {"uniform": [1.0, 0.1]}}},
        {"parameters": {"optim.lr": {"normal": [0, 1]}}},
        {"parameters": {"train.epochs": {"randint": [1.5, 3]}}},
        {"parameters": {"optim.lr": {"grid": []}}},
        {"parameters": {}},
        {"mode": "maximise", "parameters": {"optim.lr": {"grid": [0.1]}}},
        {"seeds": [1, 1], "parameters": {"optim.lr": {"grid": [0.1]}}},
        {"parametres": {"optim.lr": {"grid": [0.1]}}},
    ]
    for data in bad:
        with pytest.raises(ConfigError, match="space.yaml"):
            load_space(_space(tmp_path, data))


def test_class_weights_are_checked_against_the_label_space(tmp_path: Path, weights_env) -> None:
    exp = tmp_path / "offroad.yaml"
    exp.write_text(yaml.safe_dump(OFFROAD))
    cfg = load_experiment(exp)
    ok = _space(tmp_path, {"parameters": {"method.class_weights.road": {"uniform": [1.0, 4.0]}}})
    validate_space(load_space(ok), cfg, str(exp))
    bad = _space(tmp_path, {"parameters": {"method.class_weights.Rockz": {"uniform": [1.0, 4.0]}}})
    with pytest.raises(ConfigError) as exc:
        validate_space(load_space(bad), cfg, str(exp))
    assert "Rockz" in str(exc.value) and "cityscapes" in str(exc.value)
    # class weights outside the method's range fail the schema
    high = _space(tmp_path, {"parameters": {"method.class_weights.road": {"choice": [1.0, 500.0]}}})
    with pytest.raises(ConfigError, match="class_weights"):
        validate_space(load_space(high), cfg, str(exp))


def test_random_expansion_is_deterministic_and_shares_configs_across_seeds(tmp_path: Path) -> None:
    space = parse_space(
        {
            "seeds": [0, 1, 2],
            "parameters": {
                "method.zodi_weight": {"grid": [0.0, 0.1]},
                "optim.lr": {"loguniform": [1e-4, 1e-2]},
                "train.batch_size": {"randint": [1, 4]},
            },
        },
        "s.yaml",
    )
    a = expand_trials(space, 3, sweep_seed=7)
    b = expand_trials(space, 3, sweep_seed=7)
    c = expand_trials(space, 3, sweep_seed=8)
    assert [t.to_dict() for t in a] == [t.to_dict() for t in b]
    assert [t.params for t in a] != [t.params for t in c]
    assert len(a) == 2 * 3 * 3  # grid x samples x seeds
    by_config: dict[str, list] = {}
    for t in a:
        by_config.setdefault(t.config_id, []).append(t)
        assert 1e-4 <= t.params["optim.lr"] <= 1e-2
        assert 1 <= t.params["train.batch_size"] < 4
        assert isinstance(t.params["optim.lr"], float)
    assert all(sorted(x.seed for x in group) == [0, 1, 2] for group in by_config.values())
    assert all(len({str(x.params) for x in group}) == 1 for group in by_config.values())
    assert len({t.key for t in a}) == len(a)
    assert (
        trial_name(3, {"optim.lr": 0.001, "method.zodi_weight": 0.1}, 1)
        == "t03 lr=0.001 zodi_weight=0.1 seed=1"
    )


def test_concurrency_is_what_the_cluster_has() -> None:
    need = TrialNeed(workers=2, cpus_per_worker=0.49, gpus_per_worker=0.0)
    assert need.cpu == pytest.approx(0.99)
    assert max_concurrent_trials(need, {"CPU": 2.0}) == 2
    assert max_concurrent_trials(need, {"CPU": 2.0}, cap=1) == 1
    assert max_concurrent_trials(TrialNeed(1, 0.99, 0.0), {"CPU": 2.0}) == 2
    gpu = TrialNeed(workers=2, cpus_per_worker=1.0, gpus_per_worker=1.0)
    assert max_concurrent_trials(gpu, {"CPU": 16.0, "GPU": 4.0}) == 2
    with pytest.raises(ConfigError) as exc:
        max_concurrent_trials(TrialNeed(2, 1.0, 0.0), {"CPU": 2.0}, total={"CPU": 2.0})
    assert "2.01 CPU" in str(exc.value) and "2 CPU" in str(exc.value)
    with pytest.raises(ConfigError, match="GPU"):
        max_concurrent_trials(gpu, {"CPU": 16.0, "GPU": 1.0})
    cfg = load_experiment(
        DEMO, ["train.num_workers=2", "train.cpus_per_worker=0.49", "train.use_gpu=auto"]
    )
    assert trial_need(cfg, cluster_gpus=0).gpu == 0
    assert trial_need(cfg, cluster_gpus=8).gpu == 2


def test_leaderboard_from_mlflow_ranks_configs_by_mean_over_seeds(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = runs.client_for(uri)
    exp = client.create_experiment("lb", artifact_location=(tmp_path / "art").as_uri())
    parent = runs.create_parent(client, exp, "sw", {})
    values = {"c00": [0.30, 0.34], "c01": [0.50, 0.40], "c02": [0.10, None]}
    params = {"c00": 0.0, "c01": 0.1, "c02": 1.0}
    for cid, vals in values.items():
        for seed, v in enumerate(vals):
            rid = runs.get_or_create_child(
                client,
                exp,
                parent,
                f"{cid}-s{seed}",
                f"t0{seed} zodi_weight={params[cid]} seed={seed}",
                {
                    runs.TAG_CONFIG: cid,
                    runs.TAG_PARAMS: runs.params_json({"method.zodi_weight": params[cid]}),
                    runs.TAG_SEED: str(seed),
                },
            )
            client.log_param(rid, "optim.lr", "0.001")
            client.log_param(rid, "seed", str(seed))
            if v is not None:
                client.log_metric(rid, "val_miou", v - 0.05, step=0)
                client.log_metric(rid, "val_miou", v, step=1)
                client.log_metric(rid, "test_miou", v / 2, step=1)
            runs.close_run(
                client, rid, "FINISHED" if v is not None else "FAILED", early_stopped=False
            )
    # get-or-create by key never duplicates
    again = runs.get_or_create_child(client, exp, parent, "c00-s0", "dup", {})
    runs.close_run(client, again, "FINISHED")
    assert len(runs.children(client, exp, parent)) == 6

    board = leaderboard.build(client, exp, parent, "sw", "val_miou", "max")
    assert [r.config_id for r in board.rows] == ["c01", "c00", "c02"]
    mean, std = board.rows[0].stats()
    assert mean == pytest.approx(0.45) and std == pytest.approx(statistics.stdev([0.5, 0.4]))
    assert board.differing == ["method.zodi_weight"]  # lr is equal everywhere; seed is bookkeeping
    assert board.extra_metrics == ["test_miou"]
    text = board.render()
    assert "0.4500 ± 0.0707" in text and "FAILED" in text
    board_min = leaderboard.build(client, exp, parent, "sw", "val_miou", "min")
    assert board_min.rows[0].config_id == "c02"  # its single finished seed scored lowest


def test_cli_rejects_a_bad_space_before_anything_runs(tmp_path: Path, capsys) -> None:
    from shiftlab.cli.main import main

    space = _space(
        tmp_path,
        {"parameters": {"method.zodi_weight": {"grid": [0.0]}, "optim.lrr": {"grid": [0.1]}}},
    )
    rc = main(
        [
            "sweep",
            str(DEMO),
            "--space",
            str(space),
            "--name",
            "bad",
            f"output_dir={tmp_path / 'runs'}",
        ]
    )
    assert rc == 3
    err = capsys.readouterr().err
    assert "optim.lrr" in err and str(space) in err
    assert not (tmp_path / "runs").exists()  # no run dir, no MLflow store, no Ray
    rc = main(["sweep", "--resume", str(tmp_path / "nowhere")])
    assert rc == 3 and "not a sweep run directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("space", "experiment"),
    [
        ("demo", "demo"),
        ("sdgpa_loss_weights", "sdgpa_night"),
        ("editor_guidance", "sdgpa_night"),
        ("offroad_class_weights", "offroad_falcon10"),
        ("feature_align", "carla4agt_feature_align"),
        ("querydiff_losses", "querydiff_procedural_dg"),
        ("daformer_weights", "carla4agt_uda_daformer"),
    ],
)
def test_shipped_spaces_fit_their_experiments(space: str, experiment: str, weights_env) -> None:
    path = ROOT / "experiments" / f"{experiment}.yaml"
    if not path.is_file():
        pytest.skip(f"{path} not in this checkout")
    validate_space(
        load_space(ROOT / "search_spaces" / f"{space}.yaml"), load_experiment(path), str(path)
    )
