"""Generated datasets, run directories, checkpoints and MLflow artifacts on object storage.

Everything goes through a real S3 client stack (pyarrow ``S3FileSystem``, boto3) to an S3 server
on 127.0.0.1 (`s3_server.py`); what lands in the bucket is checked with boto3, independently of
the pyarrow code that wrote it.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from shiftlab.data.formats import open_dataset_args
from shiftlab.generate.cache import ensure_generated_report
from shiftlab.utils.errors import ConfigError, DataError
from shiftlab.utils.storage import StorageError, check_writable
from shiftlab.utils.store import ArrowStore, download_tree, local_copy_dir, upload_tree

import s3_server
from train_fixtures import experiment, make_aligned


@pytest.fixture
def prefix(s3_bucket) -> str:
    """A fresh key prefix per test: ``s3://bucket/<test-id>``."""
    return f"{s3_bucket}/{uuid.uuid4().hex[:10]}"


def _key(uri: str) -> str:
    return uri.split("://", 1)[1].split("/", 1)[1]


# ------------------------------------------------------------------------- the store


def test_store_writes_whole_objects_lists_and_copies_trees(prefix, tmp_path) -> None:
    store = ArrowStore(prefix)
    store.write_bytes("a/b/one.json", b'{"x": 1}\n')
    store.write_bytes("a/two.png", b"\x89PNG" + bytes(5000))
    store.write_bytes(".hidden", b"h")
    objects = s3_server.keys(_key(prefix))
    assert objects == {
        f"{_key(prefix)}/a/b/one.json": 9,
        f"{_key(prefix)}/a/two.png": 5004,
        f"{_key(prefix)}/.hidden": 1,
    }
    assert store.is_file("a/two.png") and not store.is_file("a") and not store.is_file("a/none")
    assert store.names("a") == {"two.png"} and store.names("missing") == set()
    assert dict(store.files()) == {"a/b/one.json": 9, "a/two.png": 5004}  # hidden names skipped
    assert store.clean_temp(("a",)) == 0  # object stores never hold our temp objects

    local = tmp_path / "copy"
    assert download_tree(store, local) == 2
    assert (local / "a/b/one.json").read_bytes() == b'{"x": 1}\n'
    assert download_tree(store, local, skip_same_size=True) == 0  # nothing changed
    (local / "a/new.txt").write_text("new")
    target = ArrowStore(f"{prefix}-up")
    assert upload_tree(local, target, "sub") == 3
    assert s3_server.read(f"{_key(prefix)}-up/sub/a/new.txt") == b"new"


def test_unusable_uris_fail_up_front_naming_them(s3_bucket) -> None:
    with pytest.raises(StorageError, match="s3://no-such-bucket-here/runs"):
        check_writable("s3://no-such-bucket-here/runs", "run directory")
    with pytest.raises(ConfigError, match="query string"):
        ArrowStore(f"{s3_bucket}/x?endpoint_override=elsewhere")
    assert check_writable(f"{s3_bucket}/ok") == f"{s3_bucket}/ok"
    assert not s3_server.keys("ok/")  # the probe object is gone again


def test_output_dir_on_object_storage_needs_an_mlflow_server(prefix, tmp_path) -> None:
    from shiftlab.train.experiment import run_experiment

    cfg = experiment(
        tmp_path,
        tmp_path,
        "needs-server",
        {"name": "sdgpa"},
        output_dir=prefix,
        generate={"preset": "night", "editor": {"kind": "photometric"}},
    )
    with pytest.raises(ConfigError, match="tracking.tracking_uri"):
        run_experiment(cfg)  # before generating anything
    assert s3_server.keys(_key(prefix)) == {}


# ------------------------------------------------------------------ generated datasets


@pytest.fixture(scope="module")
def aligned():
    with tempfile.TemporaryDirectory(prefix="shiftlab-test-s3-data-") as tmp:
        yield make_aligned(
            Path(tmp) / "aligned", {"train": 8, "val": 2, "test": 2}, ["noon", "night"]
        )


def _generation_cfg(tmp: Path, data_root: Path, output_root: str):
    return experiment(
        tmp,
        data_root,
        "s3-gen",
        {"name": "sdgpa", "stage1_epochs": 1, "stage2_epochs": 1},
        generate={
            "preset": "night",
            "editor": {"kind": "photometric"},
            "tile": 32,
            "output_root": output_root,
        },
        tracking={"enabled": False},
    )


@pytest.mark.slow
def test_generated_set_on_s3_equals_a_local_one_and_resumes(
    ray_local, prefix, aligned, tmp_path
) -> None:
    local = ensure_generated_report(_generation_cfg(tmp_path, aligned, str(tmp_path / "gen")))
    remote = ensure_generated_report(_generation_cfg(tmp_path, aligned, f"{prefix}/gen"))
    assert remote.key == local.key and remote.path == f"{prefix}/gen/{local.key[:24]}"
    assert remote.generated == local.generated == 16  # 8 images x (intermediate, target)

    # Byte for byte the local folder's files, written as objects (read back with boto3).
    base = _key(str(remote.path))
    want = {
        p.relative_to(local.path).as_posix(): p.read_bytes()
        for p in sorted(Path(local.path).rglob("*"))
        if p.is_file()
    }
    objects = s3_server.keys(base + "/")
    assert sorted(k[len(base) + 1 :] for k in objects) == sorted(want)
    for rel, data in want.items():
        assert s3_server.read(f"{base}/{rel}") == data, rel

    # Reused without work; a lost image (and its manifest) is generated again, identically.
    assert (
        ensure_generated_report(_generation_cfg(tmp_path, aligned, f"{prefix}/gen")).generated == 0
    )
    for rel in ("target/train_003.png", "manifest/target/train_003.json"):
        s3_server.delete(f"{base}/{rel}")
    meta = json.loads(s3_server.read(f"{base}/dataset.json"))
    s3_server.delete(f"{base}/dataset.json")  # as if killed before the mode was marked complete
    again = ensure_generated_report(_generation_cfg(tmp_path, aligned, f"{prefix}/gen"))
    assert again.generated == 1
    assert s3_server.read(f"{base}/target/train_003.png") == want["target/train_003.png"]
    assert json.loads(s3_server.read(f"{base}/dataset.json")) == meta

    # Readers see the set through a node-local copy that has every view.
    reader = open_dataset_args("shiftlab", str(remote.path), condition="target")
    assert Path(reader.root) == local_copy_dir(str(remote.path), "datasets")
    assert [s.id for s in reader.samples()] == sorted(f"train_{i:03d}" for i in range(8))
    assert (Path(reader.root) / "target/train_003.png").read_bytes() == want["target/train_003.png"]


def test_a_uri_without_a_dataset_is_an_error_naming_it(prefix) -> None:
    with pytest.raises(DataError, match=prefix):
        open_dataset_args("shiftlab", f"{prefix}/nothing-here")


@pytest.mark.slow
def test_a_source_dataset_on_s3_gives_the_same_images(ray_local, prefix, aligned, tmp_path) -> None:
    """Sources may live on object storage too: read through a per-node copy, keyed by URI."""
    upload_tree(aligned, ArrowStore(f"{prefix}/aligned"))
    from_disk = ensure_generated_report(_generation_cfg(tmp_path, aligned, str(tmp_path / "a")))
    cfg = _generation_cfg(tmp_path, aligned, str(tmp_path / "b"))
    cfg = cfg.model_copy(
        update={
            "data": cfg.data.model_copy(
                update={"source": cfg.data.source.model_copy(update={"root": f"{prefix}/aligned"})}
            )
        }
    )
    from_s3 = ensure_generated_report(cfg)
    assert from_s3.key != from_disk.key  # another source identity ...
    for view in ("source", "intermediate", "target", "labels"):
        a = {p.name: p.read_bytes() for p in (Path(from_disk.path) / view).iterdir()}
        b = {p.name: p.read_bytes() for p in (Path(from_s3.path) / view).iterdir()}
        assert a == b and len(a) == 8, view  # ... the same pixels
    meta = json.loads((Path(from_s3.path) / "dataset.json").read_text())
    assert meta["source"]["root"] == f"{prefix}/aligned"


# -------------------------------------------- whole experiments and sweeps on object storage


@pytest.mark.slow
def test_sweep_on_s3_finishes_and_resumes_from_its_uri(ray_local, prefix, tmp_path, capsys) -> None:
    """Everything on s3://: the generated set, each trial's run directory (config, exported
    models, evaluation), Ray Train checkpoints, MLflow artifacts, Tune state, sweep.json and the
    leaderboard. (DDP workers on two nodes reading from S3: tests/test_cluster.py.)"""
    from shiftlab.cli.main import main
    from shiftlab.sweep.driver import SweepOptions, resume_sweep, run_sweep
    from shiftlab.sweep.state import SweepState
    from shiftlab.tracking import runs

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"parameters": {"method.zodi_weight": {"grid": [0.0, 0.1]}}}))
    db = tmp_path / "mlflow.db"
    overrides = [
        f"output_dir={prefix}/sweeps",
        "data.source.layouts=4",
        "data.val.0.layouts=4",
        "data.test.0.layouts=4",
        "method.stage1_epochs=1",
        "method.stage2_epochs=1",
        "train.batch_size=2",
        "train.cpus_per_worker=0.99",
        "train.torch_threads=1",
        "evaluate.overlays=0",
    ]
    options = SweepOptions(name="on-s3", tracking_uri=f"sqlite:///{db}", max_concurrent=1)
    outcome = run_sweep(
        Path(__file__).parents[1] / "experiments" / "demo.yaml", space, overrides, options
    )
    uri = f"{prefix}/sweeps/on-s3"
    assert outcome.location == uri and outcome.errors == 0 and outcome.trials == 2
    base = _key(uri)
    objects = set(s3_server.keys(base + "/"))
    assert {f"{base}/sweep.json", f"{base}/leaderboard.json", f"{base}/leaderboard.txt"} <= objects
    assert any(k.startswith(f"{base}/tune/") for k in objects)  # Tune wrote its state there
    trial_models = sorted(
        k
        for k in objects
        if k.startswith(f"{base}/trials/") and k.endswith("best/model.safetensors")
    )
    assert len(trial_models) == 2, sorted(objects)
    assert SweepState.load(uri).status == "finished"
    # Generated views went to <output_dir>/generated on S3, not to a local folder.
    assert any(
        k.endswith("dataset.json") for k in s3_server.keys(f"{_key(prefix)}/sweeps/generated/")
    )
    assert not Path("s3:").exists() and not (tmp_path / "s3:").exists()

    # One trial's run directory: what training, Ray Train and evaluation wrote there.
    trial = trial_models[0].removesuffix("/best/model.safetensors")
    rel = {k[len(trial) + 1 :] for k in objects if k.startswith(trial + "/")}
    assert {
        "config.yaml",
        "mlflow_run.json",
        "best/model.safetensors",
        "best/config.yaml",
        "last/model.safetensors",
        "eval/summary.json",
    } <= rel, sorted(rel)
    assert any(r.startswith("ray/train-") and "/checkpoint_" in r for r in rel), sorted(rel)
    saved = yaml.safe_load(s3_server.read(f"{trial}/config.yaml"))
    assert saved["output_dir"] == f"{uri}/trials"
    # Its MLflow artifacts (evaluation files) are objects under <output_dir>/mlartifacts.
    run_id = json.loads(s3_server.read(f"{trial}/mlflow_run.json"))["run_id"]
    run = MlflowClient(f"sqlite:///{db}").get_run(run_id)
    assert run.info.artifact_uri.startswith(f"{prefix}/sweeps/mlartifacts/")
    artifacts = s3_server.keys(_key(run.info.artifact_uri) + "/")
    assert any(k.endswith("evaluation/summary.json") for k in artifacts), sorted(artifacts)
    # `shiftlab evaluate` takes the URI of an exported model and publishes its eval/ there.
    best_uri = f"s3://{s3_server.BUCKET}/{trial}/best"
    assert main(["evaluate", best_uri, "--no-predictions", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed) >= {"night_val", "night_test"}
    assert f"{trial}/best/eval/summary.json" in s3_server.keys(f"{trial}/best/eval/")

    client = runs.client_for(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("demo")

    def children() -> dict[str, int]:
        found = [
            r for r in client.search_runs([exp.experiment_id]) if runs.PARENT_TAG in r.data.tags
        ]
        assert {r.info.status for r in found} == {"FINISHED"}
        return {r.info.run_id: r.info.end_time for r in found}

    ended = children()
    assert len(ended) == 2
    # A resume names the sweep by its URI and runs nothing twice.
    again = resume_sweep(uri)
    assert again.errors == 0 and len(again.board.rows) == 2
    # Even when Tune's state is lost (a driver killed after its trials finished but before Tune
    # saved), the trials see their FINISHED runs and report them instead of training again.
    for key in s3_server.keys(f"{base}/tune/"):
        s3_server.delete(key)
    third = resume_sweep(uri)
    assert third.errors == 0 and [r.stats() for r in third.board.rows] == [
        r.stats() for r in again.board.rows
    ]
    assert children() == ended  # the same two runs, neither reopened nor re-ended
