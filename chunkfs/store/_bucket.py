"""One S3 bucket prefix, through boto3: where an object-store backend keeps packs and metadata.

The only module that imports boto3.  It names the objects (``PREFIX/packs/
<id:08x>.pack``, ``PREFIX/meta/settings.json``, ``PREFIX/meta/index/
<generation>.mdb``, ``PREFIX/meta/dictionaries/<id:04x>.zdict``), counts requests by kind for ``chunkfs stats``, and turns
every botocore failure into a chunkfs error with one readable line: a
missing object is :class:`PackMissingError` (or ``None`` where absence is an
answer), everything else :class:`ObjectStoreError`.

Credentials come from the standard AWS chain (environment, shared
credentials and config files, profiles via ``AWS_PROFILE``, instance
metadata): never from the command line or the store's settings file, which
name only the bucket, prefix, endpoint and region.  Connections are bounded
(``MAX_CONNECTIONS``), and connect/read timeouts with a bounded number of
retries (botocore's "standard" mode: exponential backoff with jitter on
throttling, 5xx and timeouts) keep a dead endpoint from hanging anything.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..errors import ObjectStoreError, PackMissingError, SettingsError

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 16
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0
MAX_ATTEMPTS = 5  # botocore's retries, with backoff, per request
PROBE_ATTEMPTS = 2  # a mount or mkfs should say "cannot reach" within seconds, not minutes
PACK_DIR = "packs/"
META_SETTINGS = "meta/settings.json"
META_INDEX_DIR = "meta/index/"
META_FILES = "meta/"  # + a published file's path in the store directory: meta/dictionaries/0001.zdict

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class DataLocation:
    """Where pack data lives: ``s3://BUCKET/PREFIX`` plus an optional endpoint and region."""

    bucket: str
    prefix: str = ""
    endpoint: str = ""
    region: str = ""

    @classmethod
    def parse(cls, url: str, endpoint: str | None = None, region: str | None = None) -> "DataLocation":
        """Parse ``s3://BUCKET[/PREFIX]``; SettingsError for anything else."""
        match = re.match(r"^s3://([^/]+)(?:/(.*))?$", url or "")
        if not match:
            raise SettingsError(f"data location {url!r} is not of the form s3://BUCKET/PREFIX")
        bucket, prefix = match.group(1), (match.group(2) or "").strip("/")
        if not _BUCKET_RE.match(bucket) or ".." in bucket:
            raise SettingsError(f"{bucket!r} is not a valid bucket name (3-63 lower-case letters, digits, '.', '-')")
        if endpoint and not re.match(r"^https?://[^/\s]+/?$", endpoint):
            raise SettingsError(f"endpoint {endpoint!r} is not an http(s)://HOST[:PORT] URL")
        return cls(bucket, prefix, (endpoint or "").rstrip("/"), region or "")

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def describe(self) -> str:
        return self.url + (f" at {self.endpoint}" if self.endpoint else "")


def pack_name(pack: int) -> str:
    return f"{PACK_DIR}{pack:08x}.pack"


def _crc32(pieces: Iterator) -> str:
    crc = 0
    for piece in pieces:
        crc = zlib.crc32(piece, crc)
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


def _md5(pieces: Iterator):
    md5 = hashlib.md5(usedforsecurity=False)
    for piece in pieces:
        md5.update(piece)
    return md5


PIECE = 8 << 20  # bytes read at a time for a checksum of a file being uploaded


def _file_pieces(fd: int, size: int, name: str) -> Iterator[bytes]:
    done = 0
    while done < size:
        piece = os.pread(fd, min(PIECE, size - done), done)
        if not piece:
            raise ObjectStoreError(f"{name} became shorter while it was being uploaded")
        done += len(piece)
        yield piece


class _FileBody(io.RawIOBase):
    """The first ``size`` bytes of the file ``fd`` as a seekable request body (botocore seeks back to
    resend it), read with ``pread``: no file offset is shared with anyone else using ``fd``."""

    def __init__(self, fd: int, size: int, progressed: Callable[[], None]):
        super().__init__()
        self._fd, self._size, self._pos = fd, size, 0
        self._progressed = progressed  # called as the body is read out: the upload moves

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence] + offset
        return self._pos

    def readinto(self, buffer) -> int:
        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            return 0
        got = os.preadv(self._fd, [memoryview(buffer)[:want]], self._pos)
        self._pos += got
        self._progressed()
        return got


def md5_of(data) -> str:
    """The hex MD5 of ``data``: what a bucket's listing gives as the ETag of an object stored by one PUT."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class Bucket:
    """The objects under one :class:`DataLocation`, with request counters; thread-safe."""

    def __init__(self, location: DataLocation, attempts: int = MAX_ATTEMPTS,
                 connect_timeout: float = CONNECT_TIMEOUT, read_timeout: float = READ_TIMEOUT):
        import boto3  # noqa: PLC0415 (only an object-store store needs it)
        from botocore.config import Config  # noqa: PLC0415

        self.location = location
        self.counts = {"put": 0, "get": 0, "delete": 0, "list": 0, "head": 0, "errors": 0}
        self.bytes_in = self.bytes_out = 0
        self._md5_only = False  # the server ignores x-amz-checksum-*: uploads carry a Content-MD5 (see put)
        self.last_progress = time.monotonic()  # when a request last ended or a body last sent bytes
        self._lock = threading.Lock()
        config = Config(max_pool_connections=MAX_CONNECTIONS, connect_timeout=connect_timeout,
                        read_timeout=read_timeout, retries={"max_attempts": attempts, "mode": "standard"},
                        s3={"addressing_style": "path" if location.endpoint else "auto",
                            "payload_signing_enabled": False},  # the body's checksum (signed) covers it
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required")
        session = boto3.session.Session()
        try:
            self.client = session.client("s3", endpoint_url=location.endpoint or None,
                                         region_name=location.region or None, config=config)
        except Exception as exc:  # noqa: BLE001 (botocore's configuration errors have no common base)
            raise ObjectStoreError(f"{location.describe()}: cannot set up the S3 client: {exc}") from None
        from botocore import exceptions as bce  # noqa: PLC0415

        self._bce = bce

    def _progressed(self) -> None:
        self.last_progress = time.monotonic()

    def idle(self) -> float:
        """Seconds since a request last ended (answered or failed) or an upload last sent bytes."""
        return time.monotonic() - self.last_progress

    def _count(self, kind: str, sent: int = 0, received: int = 0) -> None:
        self._progressed()
        with self._lock:
            self.counts[kind] += 1
            self.bytes_out += sent
            self.bytes_in += received

    def _error(self, exc: Exception, doing: str) -> Exception:
        """The chunkfs error for a botocore failure of ``doing`` (one line, no traceback)."""
        with self._lock:
            self.counts["errors"] += 1
        where = self.location.describe()
        bce = self._bce
        if isinstance(exc, bce.NoCredentialsError):
            return ObjectStoreError(f"{where}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
                                    "AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials)")
        if isinstance(exc, bce.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchBucket",) or (doing == "check the bucket" and status == 404):
                return ObjectStoreError(f"{where}: bucket {self.location.bucket!r} does not exist")
            if code in ("NoSuchKey", "404") or status == 404:
                return PackMissingError(f"{doing}: object is missing")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403") or status == 403:
                return ObjectStoreError(f"{where}: access denied ({code}): check the AWS credentials")
            return ObjectStoreError(f"{where}: cannot {doing}: {code or status} {err.get('Message', '')}".strip())
        if isinstance(exc, (bce.EndpointConnectionError, bce.ConnectTimeoutError)):
            return ObjectStoreError(f"{where}: cannot reach the object store ({exc})")
        if isinstance(exc, (bce.ReadTimeoutError, bce.ConnectionClosedError, bce.BotoCoreError, OSError)):
            return ObjectStoreError(f"{where}: cannot {doing}: {exc}")
        return ObjectStoreError(f"{where}: cannot {doing}: {exc.__class__.__name__}: {exc}")

    # -- requests ----------------------------------------------------------------------

    def check(self) -> None:
        """Fail with one line if the bucket is missing, forbidden or unreachable."""
        try:
            self.client.head_bucket(Bucket=self.location.bucket)
        except Exception as exc:  # noqa: BLE001 (mapped to one line)
            raise self._error(exc, "check the bucket") from None
        finally:
            self._count("head")

    def put(self, name: str, data: bytes) -> None:
        """Upload ``data`` as one object; return once the store confirmed it holds exactly these bytes."""
        self._put(name, data, len(data), lambda: iter((data,)))

    def put_file(self, name: str, fd: int, size: int) -> None:
        """Upload the first ``size`` bytes of the file ``fd`` as one object, streamed from the file.

        A pack is not held in memory while it is uploaded (four uploads at
        once would hold 256 MiB); its checksum is taken in a first pass over
        the file.  Only ``pread`` is used, so ``fd`` may be shared.
        """
        self._put(name, _FileBody(fd, size, self._progressed), size, lambda: _file_pieces(fd, size, name))

    def _put(self, name: str, body, size: int, pieces: Callable[[], Iterator]) -> None:
        """Upload ``body`` (``size`` bytes; ``pieces()`` yields them, for the checksums) and check it was stored.

        The request carries the body's CRC32 (``x-amz-checksum-crc32``, S3's
        additional checksums): the server refuses a body damaged on the way
        (BadDigest) and answers with the checksum it stored, which must be
        ours.  A CRC32 costs a fifth of an MD5 (zlib: ~2 GB/s, MD5 ~0.4 GB/s
        here), and that CPU is taken from the writers.  A server that
        answers without the checksum does not know these headers: from then
        on this bucket sends a ``Content-MD5`` instead, which every S3 server
        checks, and the ETag (the MD5 of a single-part object) must match.
        """
        md5 = _md5(pieces()) if self._md5_only else None
        crc = None if md5 else _crc32(pieces())
        check = {"ContentMD5": base64.b64encode(md5.digest()).decode()} if md5 else {"ChecksumCRC32": crc}
        try:
            reply = self.client.put_object(Bucket=self.location.bucket, Key=self.location.key(name), Body=body,
                                           ContentLength=size, **check)
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, f"upload {name}") from None
        finally:
            self._count("put", sent=size)
        stored = reply.get("ChecksumCRC32")
        if md5 is None and stored == crc:
            return
        if md5 is None and stored:
            raise ObjectStoreError(f"{self.location.describe()}: upload of {name} stored different bytes "
                                   f"(CRC32 {stored}, sent {crc})")
        if md5 is None:
            if not self._md5_only:
                log.info("%s does not confirm CRC32 checksums: uploads carry a Content-MD5 instead",
                         self.location.describe())
            self._md5_only = True
            md5 = _md5(pieces())
        etag = str(reply.get("ETag", "")).strip('"')
        if etag and "-" not in etag and etag != md5.hexdigest():
            raise ObjectStoreError(f"{self.location.describe()}: upload of {name} stored different bytes "
                                   f"(ETag {etag}, MD5 {md5.hexdigest()})")

    def get(self, name: str, start: int | None = None, end: int | None = None) -> bytes:
        """The object's bytes ``[start, end)`` (all of it without a range); PackMissingError if absent."""
        kwargs = {"Bucket": self.location.bucket, "Key": self.location.key(name)}
        if start is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        got = 0
        try:
            data = self.client.get_object(**kwargs)["Body"].read()
            got = len(data)
            return data
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, self._bce.ClientError) and \
                    exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""  # starts at or past the end
            raise self._error(exc, f"read {name}") from None
        finally:
            self._count("get", received=got)

    def get_or_none(self, name: str) -> bytes | None:
        try:
            return self.get(name)
        except PackMissingError:
            return None

    def delete(self, name: str) -> None:
        try:
            self.client.delete_object(Bucket=self.location.bucket, Key=self.location.key(name))
        except Exception as exc:  # noqa: BLE001
            error = self._error(exc, f"delete {name}")
            if not isinstance(error, PackMissingError):
                raise error from None
        finally:
            self._count("delete")

    def listing(self, under: str) -> Iterator[tuple[str, int]]:
        """(name below the prefix, size) of every object whose name starts with ``under``."""
        for name, size, _ in self.listing_etags(under):
            yield name, size

    def listing_etags(self, under: str) -> Iterator[tuple[str, int, str]]:
        """(name below the prefix, size, ETag) of every object whose name starts with ``under``.

        The ETag of an object uploaded in one PUT is its MD5 (what :meth:`put` checks).
        """
        start = self.location.key(under)
        cut = len(self.location.key(""))
        token = None
        while True:
            kwargs = {"Bucket": self.location.bucket, "Prefix": start}
            if token:
                kwargs["ContinuationToken"] = token
            try:
                page = self.client.list_objects_v2(**kwargs)
            except Exception as exc:  # noqa: BLE001
                raise self._error(exc, f"list {under}") from None
            finally:
                self._count("list")
            for item in page.get("Contents", []):
                yield item["Key"][cut:], int(item["Size"]), str(item.get("ETag", "")).strip('"')
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def stats(self) -> dict:
        with self._lock:
            return {"requests": dict(self.counts), "bytes_uploaded": self.bytes_out,
                    "bytes_downloaded": self.bytes_in}
