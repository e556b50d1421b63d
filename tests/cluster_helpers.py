"""A real two-node Ray cluster on one machine, started with the scripts in cluster/local/.

The worker node runs in a private mount namespace with its own tmpfs over ``private/``, so
that one folder is node-local (as a node's local disk is on a real cluster) while the rest of
the tmp dir is shared (as NFS is). Each node is a ``ray start --block`` process in its own
session, so tearing down kills exactly this cluster, never another Ray on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
NO_JOB_AGENT = "No available agent to submit job"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def can_unshare_mount() -> bool:
    try:
        subprocess.run(["unshare", "--mount", "true"], check=True, capture_output=True, timeout=10)
        return True
    except (OSError, subprocess.SubprocessError):
        return False


def listening_addresses(port: int) -> set[str]:
    """IPv4 addresses listening on ``port`` (from /proc/net/tcp, no extra packages)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr_hex, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            raw = bytes.fromhex(addr_hex)[::-1]
            found.add(socket.inet_ntoa(raw))
    return found


def accepts_connections(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``.

    Not `listening_addresses`: the GCS listens on the IPv6 wildcard (dual stack), which
    /proc/net/tcp does not list, so waiting for it there ran into the deadline every time.
    """
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class LocalCluster:
    root: Path
    gcs_port: int
    dashboard_port: int
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def private(self) -> Path:
        return self.root / "private"

    def python(
        self, code: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess:
        """Run a driver script against this cluster (one ray.init per process)."""
        proc = subprocess.run(
            [sys.executable, "-c", code],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"driver failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
            )
        return proc

    def run(
        self,
        *argv: str,
        timeout: float = 300,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        deadline = time.monotonic() + 120
        while True:
            proc = subprocess.run(
                list(argv),
                env={**self.env, **(env or {})},
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=REPO,
            )
            # A node's job agent starts after the node; Ray says to submit again later.
            if NO_JOB_AGENT not in proc.stderr or time.monotonic() > deadline:
                break
            time.sleep(3)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{argv} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
            )
        return proc

    def nodes(self) -> list[dict]:
        out = self.python(
            "import json, ray; ray.init(address='auto', log_to_driver=False);"
            "print(json.dumps([{'id': n['NodeID'], 'res': n['Resources']} for n in ray.nodes() if n['Alive']]))",
            timeout=60,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait(timeout=30)
        if self.private.is_mount():
            subprocess.run(["umount", "-l", str(self.private)], check=False)


def start_two_node_cluster(
    cpus: int = 2, gpus: int = 1, private_worker: bool = True
) -> LocalCluster:
    root = Path(tempfile.mkdtemp(prefix="sl-", dir="/tmp"))  # short: Ray's socket paths are limited
    (root / "shared").mkdir()
    (root / "private").mkdir()
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        SHIFTLAB_CACHE_DIR=str(root / "shared" / "cache"),
        PYTHONUNBUFFERED="1",
    )
    cluster = LocalCluster(root=root, gcs_port=free_port(), dashboard_port=free_port(), env=env)
    env["RAY_ADDRESS"] = cluster.address
    head_env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    head = subprocess.Popen(
        [
            str(REPO / "cluster/local/start_head.sh"),
            "--port",
            str(cluster.gcs_port),
            "--dashboard-port",
            str(cluster.dashboard_port),
            "--num-cpus",
            str(cpus),
            "--num-gpus",
            str(gpus),
            "--temp-dir",
            str(root / "r"),
            "--block",
        ],
        env=head_env,
        stdout=open(root / "head.log", "w"),  # noqa: SIM115 (the node owns it)
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    cluster.procs.append(head)
    worker_cmd = [
        str(REPO / "cluster/local/start_worker.sh"),
        "--address",
        cluster.address,
        "--num-cpus",
        str(cpus),
        "--num-gpus",
        str(gpus),
        "--dashboard-agent-listen-port",
        "0",
        "--metrics-export-port",
        "0",
        "--block",
    ]
    if private_worker:
        # the worker node sees its own empty tmpfs at private/: a node-local directory
        script = f"mount -t tmpfs tmpfs {root / 'private'} && exec " + " ".join(worker_cmd)
        worker_cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    deadline = time.time() + 90
    while time.time() < deadline:
        if accepts_connections(cluster.gcs_port):
            break
        if head.poll() is not None:
            raise RuntimeError(f"head died: {(root / 'head.log').read_text()[-3000:]}")
        time.sleep(0.5)
    time.sleep(3)
    worker = subprocess.Popen(
        worker_cmd,
        env=env,
        stdout=open(root / "worker.log", "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    cluster.procs.append(worker)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if len(cluster.nodes()) == 2:
                return cluster
        except AssertionError:
            pass
        if worker.poll() is not None:
            cluster.stop()
            raise RuntimeError(f"worker died: {(root / 'worker.log').read_text()[-3000:]}")
        time.sleep(2)
    cluster.stop()
    raise RuntimeError("the second node did not join within 120 s")
