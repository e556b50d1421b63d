"""A real two-node Ray cluster on one machine: auth, loopback binding, shared storage."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

import cluster_helpers
from cluster_helpers import can_unshare_mount, listening_addresses, start_two_node_cluster

pytestmark = pytest.mark.skipif(
    not can_unshare_mount(), reason="needs mount namespaces (root) for a node-local folder"
)


@pytest.fixture(scope="module")
def cluster():
    c = start_two_node_cluster(cpus=2, gpus=1)
    yield c
    c.stop()


def http_status(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_two_nodes_with_logical_gpus(cluster):
    nodes = cluster.nodes()
    assert len(nodes) == 2
    assert all(n["res"].get("GPU") == 1.0 for n in nodes)


def test_job_server_needs_the_token_and_listens_on_loopback_only(cluster):
    token = (cluster.root / "auth_token").read_text().strip()
    assert http_status(f"{cluster.dashboard}/api/jobs/") == 401
    assert http_status(f"{cluster.dashboard}/api/jobs/", token) == 200
    assert listening_addresses(cluster.dashboard_port) == {"127.0.0.1"}
    # `ray status` prints the autoscaler's view, refreshed some seconds after a node joins.
    deadline = time.monotonic() + 60
    while True:
        out = cluster.run("ray", "status", "--address", cluster.address)
        if "2.0 GPU" in out.stdout or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert "2.0 GPU" in out.stdout
    env_without = {
        k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")
    }
    env_without["HOME"] = str(cluster.root / "nohome")
    import subprocess

    denied = subprocess.run(
        ["ray", "status", "--address", cluster.address],
        env=env_without,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert denied.returncode != 0


def test_node_local_output_path_is_refused(cluster):
    code = (
        "from shiftlab.utils.ray_runtime import connect; from shiftlab.utils.storage import check_shared;"
        "connect(); import sys; check_shared(sys.argv[1]); print('SHARED')"
    )
    ok = cluster.run("python", "-c", code, str(cluster.shared / "runs"))
    assert "SHARED" in ok.stdout
    bad = cluster.run("python", "-c", code, str(cluster.private / "runs"), check=False)
    assert bad.returncode != 0
    assert "node-local" in bad.stderr and str(cluster.private / "runs") in bad.stderr


TINY = [
    "data.source.layouts=4",
    "model.backbone=test_resnet",  # timm's 0.4M-parameter ResNet: checkpoints of MBs
    "data.source.size=[64,128]",
    "data.source.val_layouts=4",  # the val set takes the source's counts
    "data.val.0.size=[64,128]",
    "data.test=[]",
    "train.epochs=1",
    "train.iters_per_epoch=2",
    "train.batch_size=2",
    "train.augment.crop=[64,64]",
    "evaluate.overlays=0",
    "train.use_gpu=false",  # the GPUs of this cluster are logical: gloo, not NCCL
]


def test_job_submitted_to_the_head_trains_ddp_on_both_nodes_and_logs_to_mlflow(cluster):
    """`ray job submit` as on the ray-up / KubeRay clusters, whose image has shiftlab installed;
    its two DDP workers run one on each node (2 CPUs per node, 2 per worker).

    (cluster/runtime_env.yaml ships the checkout as working_dir instead; on this one-machine
    cluster both nodes share one session directory, so the second node's runtime-env agent
    re-extracts the working_dir under the running driver. Real nodes each have their own disk.)
    """
    import mlflow

    db = cluster.shared / "jobs-mlflow.db"
    experiment = cluster_helpers.REPO / "experiments" / "demo_source_only.yaml"
    overrides = [
        f"output_dir={cluster.shared / 'job-runs'}",
        f"tracking.tracking_uri=sqlite:///{db}",
        "name=submitted",
        "train.num_workers=2",
        "train.cpus_per_worker=2",  # 2 CPUs per node: one worker each
        *TINY,
    ]
    runtime_env = {"env_vars": {"SHIFTLAB_CACHE_DIR": str(cluster.shared / "cache")}}
    out = cluster.run(
        "ray",
        "job",
        "submit",
        "--address",
        cluster.dashboard,
        "--runtime-env-json",
        json.dumps(runtime_env),
        "--",
        "shiftlab",
        "train",
        str(experiment),
        *overrides,
        timeout=900,
    )
    assert "succeeded" in out.stdout.lower(), out.stdout[-2000:]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("submitted")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "val_miou" in runs[0].data.metrics
    assert runs[0].data.tags["world_size"] == "2"
    assert runs[0].data.tags["num_nodes"] == "2"  # the two DDP workers ran on different nodes


def test_generation_and_ddp_on_both_nodes_with_everything_on_s3(cluster, s3_bucket):
    """No shared folder for data at all: the cache (procedural source scenes, copies of the
    generated set) is node-local on each node, and everything shared goes through s3://.
    Generation places one actor per logical GPU, on both nodes; each renders the source on its
    node and writes the set to S3, DDP workers on both nodes read it through their node's
    copy, and the run directory, Ray checkpoints and MLflow artifacts go to S3 as well."""
    import uuid

    import mlflow

    import s3_server

    prefix = f"{s3_bucket}/cluster-{uuid.uuid4().hex[:8]}"
    model = cluster.shared / "tiny-ip2p-s3"
    db = cluster.shared / "s3-mlflow.db"
    overrides = [
        f"output_dir={prefix}/runs",
        f"tracking.tracking_uri=sqlite:///{db}",
        "name=on-s3",
        f"generate.editor={{kind: instruct-pix2pix, model: {model}, steps: 2, batch_size: 1}}",
        "generate.tile=64",
        "generate.gpus_per_actor=1",
        "generate.cpus_per_actor=0.5",
        "method.stage1_epochs=1",
        "method.stage2_epochs=1",
        "train.num_workers=2",
        "train.cpus_per_worker=2",  # one DDP worker per node
        *TINY,
    ]
    code = (
        "import json, sys\n"
        "from shiftlab.generate.pipeline_builder import build_tiny_instruct_pix2pix\n"
        "from shiftlab.config import load_experiment\n"
        "from shiftlab.generate.cache import ensure_generated_report\n"
        "from shiftlab.train.experiment import run_experiment\n"
        f"build_tiny_instruct_pix2pix({str(model)!r})\n"
        "cfg = load_experiment('experiments/demo.yaml', sys.argv[1:])\n"
        "res = ensure_generated_report(cfg)\n"
        "print('GEN', json.dumps({'path': str(res.path), 'per_node': res.stats.images_per_node,"
        " 'actors': res.stats.actors, 'gpus': res.stats.resources['num_gpus']}))\n"
        "print('RUN', json.dumps(run_experiment(cfg)))\n"
    )
    cache = cluster.private / "cache"  # the worker node sees its own tmpfs at this path
    out = cluster.run(
        "python", "-c", code, *overrides, timeout=900, env={"SHIFTLAB_CACHE_DIR": str(cache)}
    )
    lines = out.stdout.splitlines()
    gen = json.loads(next(ln for ln in lines if ln.startswith("GEN ")).split(" ", 1)[1])
    summary = json.loads(next(ln for ln in lines if ln.startswith("RUN ")).split(" ", 1)[1])
    assert gen["actors"] == 2 and gen["gpus"] == 1.0  # one actor per logical GPU ...
    assert len(gen["per_node"]) == 2, gen  # ... and both nodes edited images
    assert sum(gen["per_node"].values()) == 8, gen  # 4 images x 2 modes, each exactly once
    assert gen["path"].startswith(f"{prefix}/runs/generated/")
    gen_key = gen["path"].split("://", 1)[1].split("/", 1)[1]
    gen_objects = s3_server.keys(gen_key + "/")
    assert f"{gen_key}/dataset.json" in gen_objects
    assert sum(k.startswith(f"{gen_key}/target/") for k in gen_objects) == 4
    from shiftlab.data.formats import open_dataset_args

    reader = open_dataset_args("shiftlab", gen["path"], condition="target")
    assert len(reader.samples()) == 4
    assert set(reader.samples()[0].views) == {"source", "intermediate", "target"}

    run = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["num_nodes"] == "2" and run.data.tags["world_size"] == "2"
    assert run.data.tags["generated_dir"] == gen["path"]
    run_key = summary["run_dir"].split("://", 1)[1].split("/", 1)[1]
    assert summary["run_dir"] == f"{prefix}/runs/on-s3"
    run_objects = s3_server.keys(run_key + "/")
    assert {
        f"{run_key}/best/model.safetensors",
        f"{run_key}/last/model.safetensors",
        f"{run_key}/eval/summary.json",
    } <= set(run_objects)
    assert any("/checkpoint_" in k for k in run_objects)  # Ray Train's own checkpoints
    assert run.info.artifact_uri.startswith(f"{prefix}/runs/mlartifacts/")
    # The driver's node rendered the source and copied the set into its own cache; the other
    # node did the same in its private one (not visible here).
    assert any((cache / "procedural").iterdir()) and any((cache / "remote" / "datasets").iterdir())


def test_runtime_env_ships_the_checkout_to_the_job(cluster):
    """`ray job submit --runtime-env cluster/runtime_env.yaml`: the job imports the shiftlab it
    shipped (the uploaded working_dir's platform/), not one installed on the node."""
    code = (
        "import os, shiftlab;"
        "print('SHIFTLAB', shiftlab.__file__); print('CACHE', os.environ.get('SHIFTLAB_CACHE_DIR'))"
    )
    out = cluster.run(
        "ray",
        "job",
        "submit",
        "--address",
        cluster.dashboard,
        "--runtime-env",
        str(cluster_helpers.REPO / "cluster" / "runtime_env.yaml"),
        "--",
        "python",
        "-c",
        code,
        timeout=300,
    )
    assert "succeeded" in out.stdout.lower(), out.stdout[-2000:]
    path = next(ln.split(" ", 1)[1] for ln in out.stdout.splitlines() if ln.startswith("SHIFTLAB "))
    assert "working_dir_files" in path and path.endswith("platform/shiftlab/__init__.py"), path
    assert not path.startswith(str(cluster_helpers.REPO)), path  # not the checkout's own copy
    assert "CACHE /mnt/shared/shiftlab-cache" in out.stdout  # the env_vars of the file apply
