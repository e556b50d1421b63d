"""A real two-node Ray cluster on one machine: auth, loopback binding, shared storage."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

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
    out = cluster.run("ray", "status", "--address", cluster.address)
    assert "2.0 GPU" in out.stdout
    env_without = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")}
    env_without["HOME"] = str(cluster.root / "nohome")
    import subprocess

    denied = subprocess.run(["ray", "status", "--address", cluster.address], env=env_without,
                            capture_output=True, text=True, timeout=60)
    assert denied.returncode != 0


def test_node_local_output_path_is_refused(cluster):
    code = (
        "from shiftlab.utils.ray_runtime import ensure_ray; from shiftlab.utils.storage import check_shared;"
        "ensure_ray(); import sys; check_shared(sys.argv[1]); print('SHARED')"
    )
    ok = cluster.run("python", "-c", code, str(cluster.shared / "runs"))
    assert "SHARED" in ok.stdout
    bad = cluster.run("python", "-c", code, str(cluster.private / "runs"), check=False)
    assert bad.returncode != 0
    assert "node-local" in bad.stderr and str(cluster.private / "runs") in bad.stderr
