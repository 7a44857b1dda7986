"""A local S3-protocol endpoint (moto's standalone server) for running the lake on the S3 protocol.

What belongs here: starting and stopping `moto.server` as a separate process on 127.0.0.1, creating a bucket on
it, and the lake URI and delta-rs storage options that reach it. Tests and benchmarks use it to exercise the
lake as it runs on object storage (signed HTTP requests, conditional `PUT`s, no rename); the platform never
starts it. What does not: the lake itself (`infra/lake.py`).

moto's server because it is a pinned PyPI package (no container runtime, no extra binary), speaks the S3 REST
API over real HTTP, and honours `If-None-Match: *` on `PutObject`, which delta-rs' commits rely on. It keeps
objects in memory: it is a test and benchmark endpoint, not storage.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from infra.lake import Lake
from infra.processes import free_port, port_open, stop_process_group

REGION = "us-east-1"
# moto accepts any credentials; delta-rs and Arrow still sign every request with them.
ACCESS_KEY_ID = "optibid-test"
SECRET_ACCESS_KEY = "optibid-test-secret"


class S3ServerError(RuntimeError):
    """The S3 endpoint did not start; the message names its log."""


@dataclass
class S3Server:
    """A running moto S3 server."""

    port: int
    popen: subprocess.Popen
    log: Path

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def storage_options(self) -> dict[str, str]:
        """delta-rs storage options for this endpoint (what `OPTIBID_LAKE_STORAGE_OPTIONS` would hold)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_REGION": REGION,
            "AWS_ALLOW_HTTP": "true",
        }

    def create_bucket(self, bucket: str) -> None:
        import pyarrow.fs as pafs

        filesystem = pafs.S3FileSystem(
            access_key=ACCESS_KEY_ID,
            secret_key=SECRET_ACCESS_KEY,
            region=REGION,
            endpoint_override=f"127.0.0.1:{self.port}",
            scheme="http",
            allow_bucket_creation=True,
        )
        filesystem.create_dir(bucket)

    def lake(self, bucket: str, prefix: str = "lake") -> Lake:
        """A lake at `s3://<bucket>/<prefix>` on this endpoint (the bucket is created if needed)."""
        self.create_bucket(bucket)
        return Lake(f"s3://{bucket}/{prefix}", self.storage_options())

    def requests_logged(self) -> list[str]:
        """The server's request log lines so far (`"PUT /bucket/key HTTP/1.1" 412 -`, ...)."""
        return [line for line in self.log.read_text(errors="replace").splitlines() if '" ' in line]

    def stop(self, timeout: float = 10.0) -> None:
        stop_process_group(self.popen, timeout)


def start_s3_server(log_dir: Path, timeout: float = 60.0) -> S3Server:
    """Start moto's S3 server on a free port of 127.0.0.1; returns once it accepts connections."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = log_dir / f"moto-s3-{port}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = S3Server(port, popen, log)
    deadline = time.monotonic() + timeout
    while not port_open("127.0.0.1", port):
        if popen.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise S3ServerError(f"moto's S3 server did not start on port {port}; see {log}")
        time.sleep(0.2)
    return server
