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


# A whole sweep on object storage (generated set, trial folders, checkpoints, MLflow artifacts,
# Tune state), killed and resumed from its URI: tests/test_sweep.py. DDP workers on two nodes
# reading from S3: tests/test_cluster.py.
