"""The upload service example (examples/upload_service), run for real and driven by real clients.

Every test starts the service as its README does (``python -m
examples.upload_service STORE``, uvicorn on 127.0.0.1, a free port) in its
own process, and talks to it with httpx and with curl.  At teardown the
server must stop cleanly on SIGTERM, its log must hold no traceback and no
ERROR line the test did not expect, and the store must pass fsck.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from chunkfs import ChunkStore
from chunkfs.fsck import check_store

REPO = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
BAD_LOG_LINE = re.compile(r"Traceback|\bERROR\b|Exception in ASGI")


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def edited(data: bytes, seed: int, edits: int = 3) -> bytes:
    """``data`` with a few small overwrites and insertions: the next version of a document."""
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(edits):
        pos = rng.randrange(len(out))
        if rng.random() < 0.5:
            out[pos:pos + 20] = rng.randbytes(20)
        else:
            out[pos:pos] = rng.randbytes(30)
    return bytes(out)


class Service:
    """``python -m examples.upload_service STORE --port 0 ...`` in a process of its own."""

    def __init__(self, store: Path, log: Path, *args: str):
        self.store, self.log = store, log
        self.expected: list[re.Pattern] = []
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "examples.upload_service", str(store), "--create",
                                          "--port", "0", *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        self.url = self._wait_for_address()
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def _wait_for_address(self) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = re.search(r"serving .* on (http://127\.0\.0\.1:\d+)", self.log_text())
            if found:
                return found.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.proc.kill()
        pytest.fail(f"the service did not start:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def expect_log(self, *patterns: str) -> None:
        self.expected += [re.compile(p) for p in patterns]

    def put(self, file_id: str, data, **kwargs) -> httpx.Response:
        return self.client.put(f"/files/{file_id}", content=data, **kwargs)

    def get(self, file_id: str, **kwargs) -> httpx.Response:
        return self.client.get(f"/files/{file_id}", **kwargs)

    def curl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=60)

    def stop(self) -> list[str]:
        """SIGTERM, wait; what went wrong (a bad exit, unexpected log lines)."""
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return ["the service did not stop within 60 s of SIGTERM"]
        problems = [] if code == 0 else [f"the service exited {code}"]
        return problems + [f"log: {line}" for line in self.log_text().splitlines()
                           if BAD_LOG_LINE.search(line) and not any(p.search(line) for p in self.expected)]


@pytest.fixture
def start_service(tmp_path):
    """``start(*args, store=None) -> Service``; every service is stopped and its store checked after the test."""
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed (scripts/bootstrap.sh installs it)")
    started: list[Service] = []

    def start(*args: str, store: Path | None = None) -> Service:
        service = Service(store or tmp_path / "store", tmp_path / f"service{len(started)}.log", *args)
        started.append(service)
        return service

    yield start
    problems = [p for s in started for p in s.stop()]
    for store in {s.store for s in started}:
        with ChunkStore.open(store, readonly=True) as opened:
            report = check_store(opened)
        if not report.clean:
            problems.append(f"fsck of {store.name}: {report.findings}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def service(start_service) -> Service:
    return start_service()


# -- uploads, downloads, the answers' figures ------------------------------------------------------

def test_duplicate_versioned_and_random_uploads(service):
    doc = rand(2 * MiB, 1)
    answer = service.put("rand/a", doc)
    assert answer.status_code == 201, answer.text
    first = answer.json()
    assert first["size"] == len(doc) and first["new_bytes"] == len(doc) and first["reused_bytes"] == 0
    assert answer.headers["etag"] == first["etag"] and answer.headers["location"] == "/files/rand/a"

    duplicate = service.put("rand/b", doc).json()  # the same bytes under another name cost nothing
    assert duplicate["new_bytes"] == 0 and duplicate["reused_bytes"] == len(doc)
    assert duplicate["etag"] == first["etag"]
    again = service.put("rand/a", doc)  # replacing a file: 200
    assert again.status_code == 200 and again.json()["new_bytes"] == 0

    versions = [doc]
    for v in range(1, 4):
        versions.append(edited(versions[-1], v))
        result = service.put(f"doc/v{v}", versions[-1]).json()
        assert result["size"] == len(versions[-1])
        assert 0 < result["new_bytes"] < len(doc) // 8, result  # a few chunks around each edit
        assert result["reused_bytes"] > len(doc) * 7 // 8
    other = rand(MiB, 2)
    assert service.put("rand/c", other).json()["new_bytes"] == len(other)

    for file_id, data in [("rand/a", doc), ("rand/b", doc), ("doc/v3", versions[3]), ("rand/c", other)]:
        got = service.get(file_id)
        assert got.status_code == 200 and got.content == data
        assert got.headers["content-length"] == str(len(data)) and got.headers["accept-ranges"] == "bytes"
    stats = service.client.get("/stats").json()
    assert stats["files"] == 6
    assert stats["logical_bytes"] == 2 * len(doc) + sum(map(len, versions[1:])) + len(other)
    assert len(doc) + len(other) < stats["stored_bytes"] < len(doc) * 1.25 + len(other)
    assert stats["savings_pct"] > 60


def test_curl_round_trip(service, tmp_path):
    src, out = tmp_path / "src.bin", tmp_path / "out.bin"
    data = rand(3 * MiB + 123, 3)
    src.write_bytes(data)
    url = f"{service.url}/files/curl/file.bin"
    put = service.curl("-T", str(src), "-w", "\n%{http_code}", url)  # -T: streamed, with Expect: 100-continue
    body, code = put.stdout.decode().rsplit("\n", 1)
    assert code == "201", put
    etag = httpx.Response(200, content=body).json()["etag"]
    assert service.curl("-o", str(out), url).returncode == 0 and out.read_bytes() == data
    ranged = service.curl("-r", "1000000-1999999", url)
    assert ranged.stdout == data[1_000_000:2_000_000]
    head = service.curl("-I", url).stdout.decode()
    assert head.startswith("HTTP/1.1 200") and f"content-length: {len(data)}" in head.lower()
    assert f"etag: {etag}" in head.lower()
    cached = service.curl("-H", f"If-None-Match: {etag}", "-o", "/dev/null", "-w", "%{http_code}", url)
    assert cached.stdout == b"304"
    assert service.curl("-X", "DELETE", "-w", "%{http_code}", url).stdout == b"204"
    missing = service.curl("-w", "\n%{http_code}", url).stdout.decode()
    assert missing.endswith("\n404") and "no file 'curl/file.bin'" in missing
    assert service.curl("-f", "-o", "/dev/null", url).returncode == 22  # curl's "HTTP error"


# -- ranges and conditional requests -------------------------------------------------------------------

def parts_of(response: httpx.Response) -> list[tuple[str, bytes]]:
    """The (Content-Range, bytes) parts of a multipart/byteranges answer."""
    boundary = re.search(r"boundary=(\S+)", response.headers["content-type"]).group(1).encode()
    body = response.content
    assert body.endswith(b"--" + boundary + b"--\r\n")
    out = []
    for part in body.split(b"--" + boundary)[1:-1]:
        head, _, data = part.partition(b"\r\n\r\n")
        assert data.endswith(b"\r\n")
        out.append((re.search(rb"Content-Range: (.*)", head).group(1).decode().strip(), data[:-2]))
    return out


def test_ranges(service):
    data = rand(3 * MiB, 4)
    size = len(data)
    etag = service.put("r", data).headers["etag"]

    def ranged(spec: str, **headers) -> httpx.Response:
        return service.get("r", headers={"Range": spec, **headers})

    for spec, lo, hi in [("bytes=0-0", 0, 1), ("bytes=100-199", 100, 200), ("bytes=2000000-", 2_000_000, size),
                         ("bytes=-500", size - 500, size), ("bytes=3000000-9999999", 3_000_000, size),
                         ("bytes=-99999999", 0, size)]:
        got = ranged(spec)
        assert got.status_code == 206, (spec, got.text)
        assert got.content == data[lo:hi], spec
        assert got.headers["content-range"] == f"bytes {lo}-{hi - 1}/{size}"
        assert got.headers["content-length"] == str(hi - lo)
    multi = ranged("bytes=10-19, 2500000-2500009, -5")
    assert multi.status_code == 206 and multi.headers["content-type"].startswith("multipart/byteranges")
    assert int(multi.headers["content-length"]) == len(multi.content)
    assert parts_of(multi) == [(f"bytes 10-19/{size}", data[10:20]),
                               (f"bytes 2500000-2500009/{size}", data[2_500_000:2_500_010]),
                               (f"bytes {size - 5}-{size - 1}/{size}", data[-5:])]
    merged = ranged("bytes=0-99,50-149")  # overlapping ranges come back as one
    assert merged.status_code == 206 and merged.content == data[:150]
    for spec in ["bytes=5000000-", "bytes=abc", "bytes=9-3", "bytes=", "bytes=-0",
                 "bytes=" + ",".join(f"{i}-{i}" for i in range(17))]:
        bad = ranged(spec)
        assert bad.status_code == 416, spec
        assert bad.headers["content-range"] == f"bytes */{size}" and "error" in bad.json()
    assert ranged("lines=1-2").content == data  # another unit: the whole file (RFC 9110)
    assert ranged("bytes=0-9", **{"If-Range": etag}).status_code == 206
    stale = ranged("bytes=0-9", **{"If-Range": '"0123"'})  # the client's copy is stale: the whole file
    assert stale.status_code == 200 and stale.content == data
    head = service.client.head("/files/r", headers={"Range": "bytes=0-99"})
    assert head.status_code == 206 and head.headers["content-length"] == "100" and head.content == b""

    assert service.put("empty", b"").json()["size"] == 0
    empty = service.get("empty")
    assert empty.status_code == 200 and empty.content == b"" and empty.headers["content-length"] == "0"
    assert service.get("empty", headers={"Range": "bytes=0-"}).status_code == 416


def test_conditional_requests(service):
    old, new = rand(300_000, 5), rand(300_000, 6)
    etag = service.put("c", old).headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    assert service.get("c", headers={"If-None-Match": etag}).status_code == 304
    assert service.get("c", headers={"If-None-Match": f'"x", W/{etag}'}).status_code == 304
    assert service.get("c", headers={"If-None-Match": '"x"'}).content == old
    assert service.get("c", headers={"If-Match": '"x"'}).status_code == 412
    head = service.client.head("/files/c")
    assert head.status_code == 200 and head.headers["etag"] == etag and head.headers["content-length"] == "300000"
    assert service.put("c", new, headers={"If-None-Match": "*"}).status_code == 412  # create-only
    assert service.put("c", new, headers={"If-Match": '"x"'}).status_code == 412
    assert service.get("c").content == old
    replaced = service.put("c", new, headers={"If-Match": etag})
    assert replaced.status_code == 200 and replaced.headers["etag"] != etag
    assert service.get("c", headers={"If-None-Match": etag}).content == new
    assert service.put("fresh", new, headers={"If-None-Match": "*"}).status_code == 201
    assert service.put("fresh", old, headers={"If-Match": replaced.headers["etag"]}).status_code == 200
    assert service.client.delete("/files/c", headers={"If-Match": etag}).status_code == 412
    assert service.client.delete("/files/c", headers={"If-Match": replaced.headers["etag"]}).status_code == 204
    assert service.put("nothing", old, headers={"If-Match": "*"}).status_code == 412


# -- errors ----------------------------------------------------------------------------------------------

def test_clear_errors(start_service):
    service = start_service("--max-upload", "1M")
    for bad in ["", "%2E%2E/x", "a//b", "a/", "a%00b", "x" * 256, "a%0Ab", "a%2F..%2Fb"]:
        for method in ("PUT", "GET", "DELETE"):
            answer = service.client.request(method, f"/files/{bad}", content=b"x" if method == "PUT" else None)
            assert answer.status_code == 400, (bad, method, answer.text)
            assert answer.json()["error"].startswith("bad file id")
    assert service.put("ok/é (1).txt", b"fine").status_code == 201  # letters of any script, spaces, brackets
    assert service.get("missing").status_code == 404 and service.get("missing").json() == {"error": "no file 'missing'"}
    assert service.client.delete("/files/missing").status_code == 404
    assert service.client.post("/files/x", content=b"").status_code == 405
    assert service.client.get("/nowhere").status_code == 404

    assert service.put("big", b"x" * (MiB + 1)).status_code == 413  # Content-Length says too much
    old = rand(1000, 7)
    assert service.put("big", old).status_code == 201

    def chunked(total: int):  # no Content-Length: the limit is found while storing
        for _ in range(total // 65536):
            yield b"y" * 65536

    too_long = service.put("big", chunked(2 * MiB))
    assert too_long.status_code == 413 and "larger than" in too_long.json()["error"]
    assert service.get("big").content == old  # the previous version is untouched
    assert service.put("also-big", chunked(2 * MiB)).status_code == 413
    assert service.get("also-big").status_code == 404  # nothing of it was stored

    def dies(after: int):
        yield b"z" * after
        raise ConnectionAbortedError("the client gave up")

    with pytest.raises(ConnectionAbortedError):
        service.put("abandoned", dies(300_000))
    assert service.get("abandoned").status_code == 404
    assert service.client.get("/stats").json()["files"] == 2

    for i in range(5):
        service.put(f"list/{i}", b"%d" % i)
    pages, after = [], ""
    while True:
        page = service.client.get("/files", params={"prefix": "list/", "limit": 2, "after": after}).json()
        pages.append([(f["id"], f["size"]) for f in page["files"]])
        if page["next"] is None:
            break
        after = page["next"]
    assert pages == [[("list/0", 1), ("list/1", 1)], [("list/2", 1), ("list/3", 1)], [("list/4", 1)]]
    assert [f["id"] for f in service.client.get("/files").json()["files"]][:2] == ["big", "list/0"]
    for limit in ("0", "x", "1001"):
        assert service.client.get("/files", params={"limit": limit}).status_code == 400
    assert service.client.get("/files", params={"prefix": "p" * 600}).json() == {"files": [], "next": None}
    assert service.client.get("/files", params={"after": "a" * 600}).status_code == 400


# -- concurrency -----------------------------------------------------------------------------------------

def test_concurrent_uploads_and_downloads_of_the_same_ids(service):
    """Eight clients upload versions of four ids and read them back, whole and in ranges, all at once.
    Every answer's ETag names one version, and the bytes are that version's; a PUT that collides with
    another of the same id is refused with 409, never interleaved."""
    base = rand(MiB, 8)
    versions = [base]
    for v in range(1, 6):
        versions.append(edited(versions[-1], 100 + v))
    by_etag = {}
    for v, data in enumerate(versions):  # learn each version's ETag (the same for the same bytes)
        by_etag[service.put(f"etag/{v}", data).headers["etag"]] = data
    assert len(by_etag) == len(versions)
    ids = [f"same/{i}" for i in range(4)]
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def count(what: str) -> None:
        with lock:
            seen[what] = seen.get(what, 0) + 1

    def uploader(worker: int) -> None:
        rng = random.Random(worker)
        with httpx.Client(base_url=service.url, timeout=60) as client:
            for _ in range(12):
                answer = client.put(f"/files/{rng.choice(ids)}", content=versions[rng.randrange(len(versions))])
                assert answer.status_code in (200, 201, 409), answer.text
                count(f"PUT {answer.status_code}")

    def downloader(worker: int) -> None:
        rng = random.Random(worker)
        with httpx.Client(base_url=service.url, timeout=60) as client:
            for _ in range(25):
                file_id = rng.choice(ids)
                start = rng.randrange(len(base) - 1000)
                ranged = rng.random() < 0.5
                headers = {"Range": f"bytes={start}-{start + rng.randrange(200_000)}"} if ranged else {}
                answer = client.get(f"/files/{file_id}", headers=headers)
                if answer.status_code == 404:
                    count("GET 404")
                    continue
                source = by_etag[answer.headers["etag"]]
                if ranged:
                    lo, hi = map(int, re.match(r"bytes (\d+)-(\d+)/", answer.headers["content-range"]).groups())
                    assert answer.status_code == 206 and answer.content == source[lo:hi + 1] and lo == start
                    count("GET 206")
                else:
                    assert answer.status_code == 200 and answer.content == source
                    count("GET 200")

    with ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(uploader, w) for w in range(4)] + [pool.submit(downloader, w) for w in range(4)]
        for job in jobs:
            job.result()
    assert seen.get("PUT 201", 0) + seen.get("PUT 200", 0) >= 4, seen
    assert seen.get("GET 206", 0) and seen.get("GET 200", 0), seen
    for file_id in ids:
        answer = service.get(file_id)
        assert answer.content == by_etag[answer.headers["etag"]]


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))


def test_a_big_body_is_streamed_not_held(service):
    """192 MiB go through one PUT while the server's peak memory grows by far less: the body is
    streamed into the store.  (Each MiB is one random block behind its own counter, so the store
    keeps little of it, and the client makes it as it goes.)"""
    block, total = rand(MiB, 25), 192
    service.put("warm-up", rand(4 * MiB, 26))
    before = peak_rss(service.proc.pid)

    def body():
        for i in range(total):
            yield i.to_bytes(8, "big") + block

    answer = service.put("big", body())
    assert answer.status_code == 201 and answer.json()["size"] == total * (MiB + 8)
    assert peak_rss(service.proc.pid) - before < 48 * MiB
    assert service.get("big", headers={"Range": f"bytes={5 * (MiB + 8)}-{5 * (MiB + 8) + 15}"}).content == \
        (5).to_bytes(8, "big") + block[:8]


class HeldBody:
    """A request body that sends ``head`` and then waits for :meth:`finish` before sending ``tail``."""

    def __init__(self, head: bytes, tail: bytes):
        self.head, self.tail = head, tail
        self.sent_head, self.go = threading.Event(), threading.Event()

    def __iter__(self):
        yield self.head
        self.sent_head.set()
        assert self.go.wait(60)
        yield self.tail

    def finish(self) -> None:
        self.go.set()


def test_an_upload_in_flight_blocks_neither_other_requests_nor_the_event_loop(service):
    """While one upload sits half sent (its worker thread waiting for the body), other uploads,
    downloads, listings and stats are answered; a PUT or DELETE of the same id gets 409."""
    held = HeldBody(rand(3 * MiB, 9), rand(MiB, 10))
    result = {}
    upload = threading.Thread(target=lambda: result.setdefault("answer", service.put("slow", iter(held))))
    upload.start()
    try:
        assert held.sent_head.wait(30)
        with httpx.Client(base_url=service.url, timeout=10) as client:  # a stalled loop would time these out
            other = rand(2 * MiB, 11)
            assert client.put("/files/other", content=other).status_code == 201
            assert client.get("/files/other").content == other
            assert client.get("/stats").status_code == 200
            assert client.get("/files").status_code == 200
            conflict = client.put("/files/slow", content=b"second")
            assert conflict.status_code == 409 and "being changed" in conflict.json()["error"]
            assert client.delete("/files/slow").status_code == 409
            assert client.get("/files/slow").status_code == 404  # not committed yet
    finally:
        held.finish()
        upload.join(60)
    assert result["answer"].status_code == 201
    assert service.get("slow").content == held.head + held.tail


def test_a_download_keeps_its_version_while_the_file_is_replaced_deleted_and_collected(service):
    old, new = rand(6 * MiB, 12), rand(6 * MiB, 13)
    etag = service.put("doc", old).headers["etag"]
    with service.client.stream("GET", "/files/doc") as download:
        assert download.headers["etag"] == etag
        stream = download.iter_bytes(64 * 1024)
        received = bytearray(next(stream))
        assert service.put("doc", new).status_code == 200
        assert service.client.delete("/files/doc").status_code == 204
        assert service.client.post("/gc").status_code == 200
        for piece in stream:
            received += piece
    assert bytes(received) == old
    assert service.get("doc").status_code == 404
    stats = service.client.get("/stats").json()
    assert stats["garbage_bytes"] >= len(old) // 2  # the held version is garbage now that it is let go


def test_an_abandoned_download_lets_its_version_go(service):
    """A client that hangs up mid-download releases the version it held: once the file is deleted,
    gc reclaims all of its space (a version still held would keep its packs out of gc)."""
    data = rand(8 * MiB, 24)
    service.put("big", data)
    full = service.client.get("/stats").json()["disk_bytes"]
    with service.client.stream("GET", "/files/big") as download:
        next(download.iter_bytes(64 * 1024))
    assert service.client.delete("/files/big").status_code == 204
    deadline = time.monotonic() + 20
    while True:
        service.client.post("/gc")
        stats = service.client.get("/stats").json()
        if stats["disk_bytes"] < full - 6 * MiB or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert stats["disk_bytes"] < full - 6 * MiB, stats
    assert stats["garbage_bytes"] == 0 and stats["stored_bytes"] == 0


def test_deletes_then_gc_give_the_space_back(service):
    shared = rand(2 * MiB, 14)
    files = {"keep": shared + rand(MiB, 15), "drop/1": shared + rand(MiB, 16), "drop/2": rand(3 * MiB, 17)}
    for file_id, data in files.items():
        assert service.put(file_id, data).status_code == 201
    before = service.client.get("/stats").json()
    for file_id in ("drop/1", "drop/2"):
        assert service.client.delete(f"/files/{file_id}").status_code == 204
        assert service.client.delete(f"/files/{file_id}").status_code == 404
    after_delete = service.client.get("/stats").json()
    assert after_delete["files"] == 1 and after_delete["logical_bytes"] == len(files["keep"])
    assert after_delete["stored_bytes"] == len(files["keep"])  # the shared chunks stay, once
    report = service.client.post("/gc").json()  # dead records were punched out as they died: gc rewrites
    assert report["bytes_moved"] <= report["bytes_reclaimed"]  # a pack only where that gives back more
    after_gc = service.client.get("/stats").json()
    assert after_gc["disk_bytes"] < before["disk_bytes"] - 3 * MiB
    assert service.get("keep").content == files["keep"]


# -- damage and a full disk ------------------------------------------------------------------------------

def damage_chunk_at(store_path: Path, file_id: str, offset: int) -> tuple[int, int]:
    """Flip a byte inside the chunk of ``file_id`` that holds ``offset``; that chunk's [start, end)."""
    with ChunkStore.open(store_path, readonly=True) as store:
        [entry] = store.manifest(file_id, offset, offset + 1)
        with store.index.read() as txn:
            _, location = store.ledger.locate(txn, entry.address)
        pack = store.packs.backend.path(location.pack)
    fd = os.open(pack, os.O_RDWR)
    try:
        where = location.offset + location.length // 2
        os.pwrite(fd, bytes([os.pread(fd, 1, where)[0] ^ 0x5A]), where)
    finally:
        os.close(fd)
    return entry.offset, entry.offset + entry.length


def test_a_damaged_chunk_is_an_error_never_wrong_bytes(service, tmp_path):
    service.expect_log(r"chunkfs\.store: chunk [0-9a-f]+ of file '(early|late)' is corrupt")
    early, late = rand(3 * MiB, 18), rand(3 * MiB, 19)
    service.put("early", early)
    service.put("late", late)
    lo, hi = damage_chunk_at(service.store, "early", 400_000)
    damage_chunk_at(service.store, "late", int(2.5 * MiB))

    whole = service.get("early")  # the damage is in the first piece: an answer before any byte is sent
    assert whole.status_code == 500
    assert whole.json() == {"error": "file 'early' is damaged on the server (a chunk failed verification); "
                                     "nothing was sent"}
    assert b"Traceback" not in whole.content and whole.content.count(b"\n") == 0
    assert service.get("early", headers={"Range": f"bytes={lo + 10}-{lo + 20}"}).status_code == 500
    clean = service.get("early", headers={"Range": f"bytes={hi}-{hi + 99_999}"})
    assert clean.status_code == 206 and clean.content == early[hi:hi + 100_000]

    received = bytearray()  # damage past the first MiB: the status is out, so the transfer is cut short
    with pytest.raises(httpx.RemoteProtocolError):
        with service.client.stream("GET", "/files/late") as download:
            assert download.status_code == 200
            for piece in download.iter_raw():
                received += piece
    assert MiB <= len(received) < len(late) and bytes(received) == late[:len(received)]
    out = tmp_path / "late.bin"
    cut = service.curl("-o", str(out), f"{service.url}/files/late")
    assert cut.returncode == 18  # CURLE_PARTIAL_FILE
    assert out.stat().st_size < len(late) and out.read_bytes() == late[:out.stat().st_size]
    assert service.get("late", headers={"Range": "bytes=0-999"}).content == late[:1000]
    assert "cut off after" in service.log_text()


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs to fill (needs root), as tests/test_disk_full.py makes one."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24M,mode=0700", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_full_disk_answers_507_and_stores_nothing_half(small_disk, start_service, tmp_path):
    service = start_service(store=small_disk / "store")
    service.expect_log()
    keep = rand(MiB, 20)
    assert service.put("keep", keep).status_code == 201
    stored = {}
    for i in range(20):
        data = rand(3 * MiB, 100 + i)
        answer = service.put(f"fill/{i}", data)
        if answer.status_code == 507:
            break
        assert answer.status_code == 201, answer.text
        stored[f"fill/{i}"] = data
    else:
        pytest.fail("the disk never filled")
    assert answer.json() == {"error": "the server's disk is full: nothing of this request was stored"}
    assert service.get(f"fill/{i}").status_code == 404
    assert service.put("keep", rand(4 * MiB, 21)).status_code == 507  # a replacement fails whole
    assert service.get("keep").content == keep
    src = tmp_path / "more.bin"
    src.write_bytes(rand(3 * MiB, 22))
    by_curl = service.curl("-T", str(src), "-w", "\n%{http_code}", f"{service.url}/files/curl")
    assert by_curl.stdout.decode().endswith("\n507") and b"disk is full" in by_curl.stdout
    stats = service.client.get("/stats").json()
    assert stats["files"] == 1 + len(stored)
    assert stats["logical_bytes"] == len(keep) + sum(map(len, stored.values()))
    for file_id, data in stored.items():
        assert service.get(file_id).content == data

    for file_id in list(stored)[:3]:  # deleting works on a full disk, and makes room again
        assert service.client.delete(f"/files/{file_id}").status_code == 204
        del stored[file_id]
    assert service.client.post("/gc").status_code == 200
    again = rand(2 * MiB, 23)
    assert service.put("again", again).status_code == 201
    assert service.get("again").content == again and service.get("keep").content == keep


def test_an_unforeseen_failure_is_a_one_line_500(tmp_path, monkeypatch):
    """A bug in a handler (here: stats raising) answers 500 with one JSON line; the traceback stays in
    the server's log.  In-process, through httpx's ASGI transport: a fault cannot be injected into the
    server process the other tests start."""
    import anyio

    from examples.upload_service.app import create_app

    async def ask(app) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            return await client.get("/stats")

    with ChunkStore.create(tmp_path / "store") as store:
        monkeypatch.setattr(store, "stats", lambda: 1 / 0)
        answer = anyio.run(ask, create_app(store))
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal error (the server's log has the details)"}
    assert "Traceback" not in answer.text and "ZeroDivision" not in answer.text
