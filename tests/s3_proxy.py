"""A tiny HTTP proxy on loopback in front of a real S3 server, that throttles and stalls on request.

chunkfs is pointed at the proxy (``--endpoint`` = :attr:`FaultProxy.endpoint`);
every request is passed to the server unchanged and its body streamed both
ways (the Host header too is kept, so the SigV4 signature the client made for
the proxy's address stays valid), except those a rule catches first:

* :meth:`FaultProxy.throttle`: answer ``503 SlowDown`` (S3's "reduce your
  request rate") without passing the request on;
* :meth:`FaultProxy.stall`: hold the request for some seconds before passing
  it on, longer than the client's read timeout, so the client gives up on it;
* :meth:`FaultProxy.hang`: hold the request until the proxy closes, then drop
  the connection without passing it on (an upload under way forever);
* :meth:`FaultProxy.corrupt`: pass the request on with one byte of its body
  changed (damage on the way, which the body's checksum must catch).

With :attr:`FaultProxy.hide_checksums` set, the server's answers lose their
``x-amz-checksum-*`` headers: the proxy plays a server that knows nothing of
S3's additional checksums.

:attr:`FaultProxy.log` records every request (time, method, path, what the
proxy did, which integrity header the request carried) so that a test can see
the retries and the time between them.
"""

from __future__ import annotations

import http.client
import http.server
import threading
import time
from dataclasses import dataclass

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


@dataclass
class Rule:
    method: str
    path_contains: str
    times: int  # requests it still catches
    action: str  # "throttle", "stall", "hang" or "corrupt"
    seconds: float = 0.0


@dataclass
class Seen:
    at: float  # time.monotonic()
    method: str
    path: str
    action: str  # "throttle", "stall", "hang", "corrupt" or "pass"
    status: int | None  # what the server answered (None: no answer passed on)
    checksum: str = ""  # the body's checksum header the request carried: "crc32", "md5" or ""


class FaultProxy:
    """See the module docstring.  ``with FaultProxy(port) as proxy:`` serves in a thread."""

    def __init__(self, upstream_port: int, host: str = "127.0.0.1"):
        self.upstream = (host, upstream_port)
        self.rules: list[Rule] = []
        self.log: list[Seen] = []
        self.hide_checksums = False
        self._lock = threading.Lock()
        self._closing = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, and "100 Continue" for botocore's PUTs

            def log_message(self, *args) -> None:
                pass

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self._server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.upstream[0]}:{self.port}"

    # -- rules ---------------------------------------------------------------------------

    def throttle(self, method: str, path_contains: str, times: int) -> None:
        """The next ``times`` requests ``method`` on a path containing ``path_contains`` get 503 SlowDown."""
        with self._lock:
            self.rules.append(Rule(method, path_contains, times, "throttle"))

    def stall(self, method: str, path_contains: str, times: int, seconds: float) -> None:
        """The next ``times`` such requests are held ``seconds`` before they go on to the server."""
        with self._lock:
            self.rules.append(Rule(method, path_contains, times, "stall", seconds))

    def hang(self, method: str, path_contains: str, times: int) -> None:
        """The next ``times`` such requests never get an answer (until the proxy closes)."""
        with self._lock:
            self.rules.append(Rule(method, path_contains, times, "hang"))

    def corrupt(self, method: str, path_contains: str, times: int) -> None:
        """The next ``times`` such requests reach the server with a byte of their body changed."""
        with self._lock:
            self.rules.append(Rule(method, path_contains, times, "corrupt"))

    def seen(self, method: str, path_contains: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.log if s.method == method and path_contains in s.path]

    def _rule_for(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.times > 0 and rule.method == method and rule.path_contains in path:
                    rule.times -= 1
                    return rule
        return None

    # -- serving -------------------------------------------------------------------------

    def _handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        rule = self._rule_for(request.command, request.path)
        headers = {key.lower() for key in request.headers.keys()}
        checksum = "crc32" if "x-amz-checksum-crc32" in headers else "md5" if "content-md5" in headers else ""
        seen = Seen(time.monotonic(), request.command, request.path, rule.action if rule else "pass", None, checksum)
        with self._lock:
            self.log.append(seen)
        length = int(request.headers.get("Content-Length") or 0)
        if rule is not None and rule.action in ("throttle", "hang"):
            _drain(request.rfile, length)
            if rule.action == "hang":
                self._closing.wait()
                request.close_connection = True
                return
            request.send_response(503, "Slow Down")
            request.send_header("Content-Type", "application/xml")
            request.send_header("Content-Length", str(len(SLOW_DOWN)))
            request.end_headers()
            request.wfile.write(SLOW_DOWN)
            return
        if rule is not None:  # a stall: the request reaches the server late, as if it had been slow
            _drain(request.rfile, length, keep := bytearray())
            if rule.action == "corrupt" and keep:
                keep[len(keep) // 2] ^= 0xFF
            else:
                time.sleep(rule.seconds)
        upstream = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            upstream.putrequest(request.command, request.path, skip_host=True, skip_accept_encoding=True)
            for key, value in request.headers.items():
                if key.lower() not in ("expect", "connection"):
                    upstream.putheader(key, value)
            upstream.endheaders()
            if rule is not None:
                upstream.send(bytes(keep))
            else:
                _copy(request.rfile, upstream.sock.sendall, length)  # streamed: no waiting for the whole body
            reply = upstream.getresponse()
            seen.status = reply.status
            try:
                self._answer(request, reply, self.hide_checksums)
            except (BrokenPipeError, ConnectionResetError):
                request.close_connection = True  # the client gave up waiting (a stalled request)
        finally:
            upstream.close()

    @staticmethod
    def _answer(request: http.server.BaseHTTPRequestHandler, reply: http.client.HTTPResponse,
                hide_checksums: bool) -> None:
        """Pass the server's answer on, its body streamed."""
        head = request.command == "HEAD"
        request.send_response(reply.status, reply.reason)
        for key, value in reply.getheaders():
            if key.lower() in ("connection", "transfer-encoding"):
                continue
            if not (hide_checksums and key.lower().startswith("x-amz-checksum-")):
                request.send_header(key, value)
        body = b"" if head else None
        if not head and reply.getheader("Content-Length") is None:
            body = reply.read()  # no length given: send what there is, with its length
            request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if body is None:
            _copy(reply, request.wfile.write, int(reply.getheader("Content-Length")))
        elif body:
            request.wfile.write(body)

    def __enter__(self) -> "FaultProxy":
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)


def _copy(source, write, length: int, piece: int = 1 << 20) -> None:
    while length > 0:
        data = source.read(min(piece, length))
        if not data:
            raise ConnectionResetError("the body ended early")
        write(data)
        length -= len(data)


def _drain(source, length: int, into: bytearray | None = None) -> None:
    _copy(source, into.extend if into is not None else (lambda data: None), length)
