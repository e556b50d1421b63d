"""`shiftlab ui`: the MLflow UI over a run store, bound to 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from shiftlab.utils.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="serve the MLflow UI for a run store (loopback only by default)")
    p.add_argument(
        "--tracking-uri",
        default="sqlite:///runs/mlflow.db",
        help="backend store (default: the local store of runs under ./runs)",
    )
    p.add_argument(
        "--artifacts",
        default=None,
        help="artifact root served by the server (default: <store dir>/mlartifacts)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="bind address; widen only behind a proxy with auth"
    )
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=run_ui)


def server_command(tracking_uri: str, artifacts: str | None, host: str, port: int) -> list[str]:
    if tracking_uri.startswith("sqlite:///") and artifacts is None:
        artifacts = str(Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts")
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if exe is None:
        raise ConfigError("the mlflow command is not installed in this environment")
    cmd = [
        exe,
        "server",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    if artifacts:
        cmd += ["--artifacts-destination", artifacts]
    return cmd


def run_ui(args: argparse.Namespace) -> int:
    cmd = server_command(args.tracking_uri, args.artifacts, args.host, args.port)
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # 2 processes, not 5
    print(f"MLflow UI: http://{args.host}:{args.port}  (Ctrl-C to stop)", file=sys.stderr)
    os.execv(cmd[0], cmd)
    return 0  # not reached
