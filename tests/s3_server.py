"""An S3-compatible server on 127.0.0.1 for the object-storage tests.

The server is moto's (an HTTP implementation of the S3 API); everything shiftlab runs against
it is the real client stack: pyarrow's ``S3FileSystem`` (shiftlab's stores, Ray Train and Tune
storage) and boto3 (MLflow artifacts). Its address goes into the environment when the test
session starts, before any Ray process exists, so every Ray worker inherits it the way
cluster nodes get their endpoint and credentials from their environment.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

BUCKET = "shiftlab-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def configure_environment() -> int:
    """Point every AWS client of this session (and its children) at the local server."""
    port = _free_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="shiftlab-test",
        AWS_SECRET_ACCESS_KEY="shiftlab-test",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    return port


class Server:
    """moto's server in a process of its own: a request never waits for this test process
    (a sweep driver running in it holds the GIL for seconds at a time), and a client killed
    in mid-request cannot leave a lock taken inside the test process."""

    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto's S3 server did not start on port {port}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start(port: int) -> Server:
    """Start the server and create the test bucket."""
    import boto3

    server = Server(port)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    return server


def keys(prefix: str) -> dict[str, int]:
    """Object key -> size under ``prefix`` of the test bucket, read with boto3 (not pyarrow).

    Folder markers (keys ending in "/", which some clients create) are left out.
    """
    import boto3

    out: dict[str, int] = {}
    pages = (
        boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    )
    for page in pages:
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):  # folder markers some clients (Ray) create
                out[obj["Key"]] = int(obj["Size"])
    return out


def read(key: str) -> bytes:
    import boto3

    return boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()


def delete(key: str) -> None:
    import boto3

    boto3.client("s3").delete_object(Bucket=BUCKET, Key=key)
