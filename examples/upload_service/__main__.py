"""``python -m examples.upload_service STORE``: serve a chunkfs store over HTTP with uvicorn.

The listening socket is bound here, before uvicorn starts, so the line that
names the address (``--port 0`` picks a free port) is printed only once the
socket accepts connections: a script or test can wait for that line.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys

import uvicorn

from chunkfs import ChunkStore
from chunkfs.errors import ChunkfsError, NotAStoreError
from chunkfs.settings import parse_size

from .app import DEFAULT_MAX_UPLOAD, create_app


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m examples.upload_service", description=__doc__.split("\n")[0])
    ap.add_argument("store", help="the chunkfs store directory")
    ap.add_argument("--create", action="store_true", help="make the store (chunkfs mkfs defaults) if it does not exist")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    ap.add_argument("--max-upload", default=str(DEFAULT_MAX_UPLOAD), help="largest body a PUT may send (e.g. 64M, 2G)")
    ap.add_argument("--upload-slots", type=int, default=32, help="uploads stored at once (more wait their turn)")
    ap.add_argument("--read-slots", type=int, default=32, help="worker threads for reads, listings and stats")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ap.add_argument("--no-access-log", dest="access_log", action="store_false", help="no line per request")
    return ap.parse_args(argv)


def open_store(path: str, create: bool) -> ChunkStore:
    try:
        return ChunkStore.open(path)
    except NotAStoreError:
        if not create:
            raise
    return ChunkStore.create(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    try:
        max_upload = parse_size(args.max_upload)
        store = open_store(args.store, args.create)
    except ChunkfsError as exc:
        print(f"upload_service: {exc}", file=sys.stderr)
        return 1
    try:
        sock = socket.create_server((args.host, args.port))
    except OSError as exc:
        store.close()
        print(f"upload_service: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        app = create_app(store, max_upload=max_upload, upload_slots=args.upload_slots, read_slots=args.read_slots)
        config = uvicorn.Config(app, log_level=args.log_level, access_log=args.access_log)
        host, port = sock.getsockname()[:2]
        print(f"upload_service: serving {args.store} on http://{host}:{port}", file=sys.stderr, flush=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            # uvicorn shuts down gracefully on these, then raises the signal again for the handler it found
            # installed: let that be a no-op, so the store below is closed and the exit status is 0.
            signal.signal(sig, lambda *_: None)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
