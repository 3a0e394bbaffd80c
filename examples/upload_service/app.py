"""The upload service: an ASGI application (Starlette) that serves one ChunkStore over HTTP.

Routes (every error is a status and a one-line JSON body ``{"error": ...}``):

====================  ==========================================================================
PUT /files/{id}       store the body as file ``id`` (201 new, 200 replaced); JSON with the size,
                      the new and the reused bytes, and the ``ETag``.  412 if If-Match /
                      If-None-Match fail, 413 past the size limit, 507 on a full disk (nothing
                      of the upload is stored; a replaced file keeps its previous version).
GET|HEAD /files/{id}  the file, streamed; ``Range`` (206, several ranges as multipart/byteranges,
                      416 for a range that is malformed or outside the file), ``If-Range``,
                      ``If-None-Match`` (304) and ``If-Match`` (412).
DELETE /files/{id}    204, or 404; If-Match honoured (412).
GET /files            ids and sizes, ``?prefix=&after=&limit=`` (a page; ``next`` is the ``after``
                      of the next page, null on the last).
GET /stats            ``ChunkStore.stats()``.
POST /gc              ``ChunkStore.gc()``: give back the space of deleted and replaced files.
====================  ==========================================================================

409 Conflict: a PUT or DELETE of an id that another PUT or DELETE is still
changing.  The first one goes on and the second is refused at once, rather
than queued behind an upload that may take minutes or silently overwritten
by it; the client can retry.  Downloads never conflict: a GET reads the
version it started with to the end (download.py).

Every store call runs in a worker thread (``anyio.to_thread``), never on the
event loop: uploads take slots of their own (``upload_slots``), so uploads
from slow clients cannot hold every thread while downloads wait, and reads
and listings take the others (``read_slots``).  One big upload holds one
thread and at most about 1 MiB of its body (body.py).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
from collections.abc import Callable

import anyio
from starlette.applications import Starlette
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chunkfs import ChunkStore
from chunkfs.errors import (ChunkCorruptError, ChunkfsError, FileNotFoundInStore, InvalidArgument,
                            StoreFullError)

from .body import BodyTooLarge, RequestBody
from .download import QuietAbort, VersionStream, damaged, plan_for
from .preconditions import etag_of, failed_precondition

log = logging.getLogger("upload_service")

DEFAULT_MAX_UPLOAD = 1024 ** 3
DRAIN_MOST = 8 * 1024 * 1024  # body bytes read and dropped before refusing an upload (body.RequestBody.drain)
MAX_ID_BYTES = 255
LIST_LIMIT, MAX_LIST_LIMIT = 100, 1000
_ID_SEGMENT = re.compile(r"[\w .~+=@,()-]+")
ID_RULE = (f"1 to {MAX_ID_BYTES} bytes of letters, digits, spaces and . _ ~ + = @ , ( ) - "
           "in segments separated by single slashes, none of them '.' or '..'")


class _AnyPath(PathConvertor):
    """Starlette's ``path``, newlines included: an id holding one is then answered 400, not 404."""

    regex = r"[\s\S]*"


register_url_convertor("any_path", _AnyPath())


def id_problem(file_id: str) -> str | None:
    """Why ``file_id`` cannot name a file (None if it can)."""
    segments = file_id.split("/")
    if (not file_id or len(file_id.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES
            or any(s in (".", "..") or not _ID_SEGMENT.fullmatch(s) or s.strip() != s for s in segments)):
        return f"bad file id {file_id[:80]!r}: use {ID_RULE}"
    return None


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers=headers)


class PreconditionFailed(Exception):
    """If-Match / If-None-Match of a PUT or DELETE do not hold."""


class Service:
    """The routes' state: the store, the worker-thread slots, and the ids being changed."""

    def __init__(self, store: ChunkStore, max_upload: int = DEFAULT_MAX_UPLOAD, upload_slots: int = 32,
                 read_slots: int = 32):
        self.store = store
        self.max_upload = max_upload
        self.upload_slots = anyio.CapacityLimiter(upload_slots)
        self.read_slots = anyio.CapacityLimiter(read_slots)
        self.gc_slot = anyio.CapacityLimiter(1)  # one collection at a time
        self.changing: set[str] = set()  # ids a PUT or DELETE is working on (event loop only)

    async def _run(self, fn: Callable, *args, limiter: anyio.CapacityLimiter | None = None):
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiter or self.read_slots)

    # -- /files/{id} -------------------------------------------------------------------------

    async def file(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        problem = id_problem(file_id)
        handler = {"GET": self.get, "HEAD": self.get, "PUT": self.put, "DELETE": self.delete}[request.method]
        if problem:
            answer = error(400, problem)
            if request.method == "PUT":
                return await self._refuse(request, RequestBody(request.stream(), 0), answer)
            return answer
        try:
            return await handler(request, file_id)
        except (ChunkfsError, OSError) as exc:
            return self.failure(exc, file_id)

    async def put(self, request: Request, file_id: str) -> Response:
        body = RequestBody(request.stream(), self.max_upload)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_upload:
            return await self._refuse(request, body, self._too_large())
        if file_id in self.changing:
            return await self._refuse(request, body, error(409, f"{file_id!r} is being changed by another request"))
        self.changing.add(file_id)
        try:
            result, fingerprint, created = await self._run(self._ingest, file_id, body, request.headers,
                                                           limiter=self.upload_slots)
        except BodyTooLarge:
            return await self._refuse(request, body, self._too_large())
        except PreconditionFailed:
            return await self._refuse(request, body, error(412, "precondition failed"))
        except (ChunkfsError, OSError) as exc:  # ingest released what it had stored: nothing is left of it
            return await self._refuse(request, body, self.failure(exc, file_id))
        except ClientDisconnect:
            log.info("upload of %r abandoned: the client went away after %d bytes", file_id, body.received)
            return Response(status_code=400)  # nobody is listening; nothing was stored
        finally:
            self.changing.discard(file_id)
        etag = etag_of(fingerprint)
        answer = {"id": file_id, "size": result.size, "chunks": result.chunks, "new_chunks": result.new_chunks,
                  "new_bytes": result.new_bytes, "reused_bytes": result.size - result.new_bytes, "etag": etag}
        headers = {"etag": etag}
        if created:
            headers["location"] = request.url.path
        return JSONResponse(answer, 201 if created else 200, headers=headers)

    def _ingest(self, file_id: str, body: RequestBody, headers) -> tuple:
        """In a worker thread: check the preconditions, then stream the body into the store."""
        conditional = "if-match" in headers or "if-none-match" in headers
        current = self._fingerprint(file_id) if conditional else None
        if conditional and failed_precondition(headers, etag_of(current) if current else None):
            raise PreconditionFailed
        created = current is None if conditional else not self.store.exists(file_id)
        result = self.store.ingest(file_id, body)
        return result, self._fingerprint(file_id), created

    def _fingerprint(self, file_id: str) -> str | None:
        try:
            with self.store.open_version(file_id, 0, 0) as version:  # holds nothing: size and fingerprint
                return version.fingerprint
        except FileNotFoundInStore:
            return None

    def _too_large(self) -> JSONResponse:
        return error(413, f"the body is larger than this service accepts ({self.max_upload} bytes)")

    async def _refuse(self, request: Request, body: RequestBody, answer: Response) -> Response:
        """``answer`` to an upload whose body will not be stored: first drop what is left of the body.

        Except when the client waits for ``100 Continue`` and has sent nothing:
        it then reads the answer and never sends the body.
        """
        waiting = "100-continue" in request.headers.get("expect", "").lower() and not body.received
        ended = False
        if not waiting:
            with contextlib.suppress(ClientDisconnect, RuntimeError):  # gone, or the stream was read already
                ended = await body.drain(DRAIN_MOST)
        if not ended:
            answer.headers["connection"] = "close"
        return answer

    async def get(self, request: Request, file_id: str) -> Response:
        headers = request.headers
        if request.method == "HEAD" or "if-none-match" in headers or "if-match" in headers:
            size, fingerprint = await self._run(self._size_and_fingerprint, file_id)
            plan = plan_for(headers, size, etag_of(fingerprint))
            if request.method == "HEAD" or not plan.sends_bytes:
                return plan.bare_response()
        version = await self._run(self.store.open_version, file_id)
        plan = plan_for(headers, version.size, etag_of(version.fingerprint))  # the version held decides
        if not plan.sends_bytes:
            await self._run(version.close)
            return plan.bare_response()
        return VersionStream(version, plan, self.read_slots)

    def _size_and_fingerprint(self, file_id: str) -> tuple[int, str]:
        with self.store.open_version(file_id, 0, 0) as version:
            return version.size, version.fingerprint

    async def delete(self, request: Request, file_id: str) -> Response:
        if file_id in self.changing:
            return error(409, f"{file_id!r} is being changed by another request")
        self.changing.add(file_id)
        try:
            if "if-match" in request.headers or "if-none-match" in request.headers:
                current = await self._run(self._fingerprint, file_id)
                if failed_precondition(request.headers, etag_of(current) if current else None):
                    return error(412, "precondition failed")
            existed = await self._run(lambda: self.store.delete(file_id, missing_ok=True))
        finally:
            self.changing.discard(file_id)
        return Response(status_code=204) if existed else error(404, f"no file {file_id!r}")

    # -- listing and stats ----------------------------------------------------------------------

    async def list_files(self, request: Request) -> Response:
        query = request.query_params
        prefix, after, limit = query.get("prefix", ""), query.get("after") or None, query.get("limit", "")
        if limit and not (limit.isdigit() and 1 <= int(limit) <= MAX_LIST_LIMIT):
            return error(400, f"limit must be a number from 1 to {MAX_LIST_LIMIT}")
        limit = int(limit) if limit else LIST_LIMIT
        try:
            files, more = await self._run(self._page, prefix, after, limit)
        except InvalidArgument as exc:
            return error(400, str(exc))
        return JSONResponse({"files": files, "next": files[-1]["id"] if more and files else None})

    def _page(self, prefix: str, after: str | None, limit: int) -> tuple[list[dict], bool]:
        ids = self.store.list_files(prefix=prefix, after=after, limit=limit + 1)
        files = []
        for file_id in ids[:limit]:
            try:
                files.append({"id": file_id, "size": self.store.size(file_id)})
            except FileNotFoundInStore:  # deleted since the listing
                continue
        return files, len(ids) > limit

    async def stats(self, request: Request) -> Response:
        return JSONResponse(await self._run(self.store.stats))

    async def gc(self, request: Request) -> Response:
        """Reclaim the space of deleted and replaced files now; downloads in flight keep their bytes."""
        try:
            report = await self._run(self.store.gc, limiter=self.gc_slot)
        except (ChunkfsError, OSError) as exc:
            return self.failure(exc, "")
        return JSONResponse(report)

    # -- errors -----------------------------------------------------------------------------------

    def failure(self, exc: BaseException, file_id: str) -> JSONResponse:
        """The answer to a store error: a status and one line; details stay in the server's log."""
        if isinstance(exc, FileNotFoundInStore):
            return error(404, f"no file {file_id!r}")
        if isinstance(exc, InvalidArgument):
            return error(400, str(exc))
        if isinstance(exc, StoreFullError) or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
            log.warning("request for %r refused: %s", file_id, exc)
            return error(507, "the server's disk is full: nothing of this request was stored")
        if isinstance(exc, ChunkCorruptError):  # the store has logged which chunk
            return error(500, damaged(file_id))
        log.error("request for %r failed: %s", file_id, exc)
        return error(500, "internal error (the server's log has the details)")


async def _unexpected(request: Request, exc: Exception) -> Response:
    """A bug: a one-line 500 for the client; the traceback goes to the server's log only."""
    return error(500, "internal error (the server's log has the details)")


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return error(exc.status_code, exc.detail, headers=exc.headers)


def create_app(store: ChunkStore, **options) -> Starlette:
    """The ASGI application serving ``store`` (opened for writing; the caller closes it).

    ``options``: ``max_upload`` (bytes), ``upload_slots``, ``read_slots`` (see Service).
    """
    service = Service(store, **options)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        quiet = QuietAbort()
        logging.getLogger("uvicorn.error").addFilter(quiet)
        try:
            yield
        finally:
            logging.getLogger("uvicorn.error").removeFilter(quiet)

    routes = [
        Route("/files", service.list_files, methods=["GET"]),
        Route("/files/{file_id:any_path}", service.file, methods=["GET", "HEAD", "PUT", "DELETE"]),
        Route("/stats", service.stats, methods=["GET"]),
        Route("/gc", service.gc, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error, Exception: _unexpected})
    app.state.service = service
    return app
