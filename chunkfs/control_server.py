"""The daemon's end of the control channel (protocol and socket placement: control.py).

One thread accepts connections; each request runs in a thread of its own, so
a long clone never holds up a ``du`` or a ``snapshot --list``.  The caller's
credentials come from the socket (SO_PEERCRED) and /proc; the mount's own
rule comes first, as the kernel applies it to every request through the mount:
without ``allow_other`` only the user who mounted it (and, with
``allow_root``, root) may use it.  Every other check is the core's
(fs/tools.py, fs/access.py).

A clone or snapshot stops between two of its transactions when its client
goes away (Ctrl-C) or the filesystem is being unmounted; what it made so far
is deleted in the background (fs/clone.py).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import socket
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .control import VERSION, encode, peer_credentials, read_line, text
from .errors import ChunkfsError, FSError, PathError, errno_for
from .fs.access import Credentials
from .fs.tools import TreeOps

log = logging.getLogger(__name__)

STOP_WAIT = 30.0  # seconds unmounting waits for requests to notice they must stop
REQUEST_WAIT = 60.0  # seconds a client has to send its request (and to read the answer)
MAX_REQUEST = 64 * 1024  # bytes of one request line
MAX_REQUESTS = 32  # served at once; more are refused (EAGAIN) rather than each given a thread


@dataclass(frozen=True)
class MountAccess:
    """Who may use the mount at all (the kernel's rule for requests through it, and libfuse's allow_root)."""

    owner_uid: int
    owner_gid: int
    allow_other: bool = False
    allow_root: bool = False

    def admits(self, uid: int, gid: int) -> bool:
        if self.allow_other and not self.allow_root:
            return True
        return (uid == self.owner_uid and gid == self.owner_gid) or (self.allow_root and uid == 0)


class ControlServer:
    """Serves the control socket at ``path`` for ``ops``; :meth:`start` before mounting, :meth:`stop` after."""

    def __init__(self, path: str, ops: TreeOps, access: MountAccess):
        self.path, self.ops, self.access = path, ops, access
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._slots = threading.BoundedSemaphore(MAX_REQUESTS)
        self._lock = threading.Lock()
        self._acceptor: threading.Thread | None = None

    def start(self) -> "ControlServer":
        _prepare_dir(os.path.dirname(self.path))
        try:
            os.unlink(self.path)  # left by a daemon that died: nobody answers it any more
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        listener.bind(self.path)
        os.chmod(self.path, 0o666)  # every user may ask; the daemon checks who asks and what they may do
        listener.listen(16)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, name="chunkfs-control", daemon=True)
        self._acceptor.start()
        log.info("control socket %s", self.path)
        return self

    def stop(self) -> None:
        """Refuse new requests, let running ones stop at their next step, remove the socket."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()
        if self._listener is not None:
            self._listener.close()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(STOP_WAIT)

    # -- connections ---------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopping.is_set():
            if not select.select([self._listener], [], [], 0.2)[0]:
                continue
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            if not self._slots.acquire(blocking=False):
                with conn:
                    _send(conn, _failure(errno.EAGAIN, "the chunkfs daemon is busy with other requests; retry"))
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), name="chunkfs-request", daemon=True)
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(REQUEST_WAIT)  # a client that connects and says nothing does not hold a slot
                pid, uid, gid = peer_credentials(conn)
                _send(conn, self._answer(conn, pid, uid, gid))
        finally:
            self._slots.release()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _answer(self, conn: socket.socket, pid: int, uid: int, gid: int) -> dict:
        op = "?"
        try:
            try:  # read it all first: closing a socket with unread data would reset the client's end
                request = json.loads(read_line(conn, MAX_REQUEST) or b"null")
            except (ValueError, ChunkfsError, OSError):
                request = None
            if not self.access.admits(uid, gid):
                raise PathError(errno.EACCES, b"/", "this mount is not open to other users (mount it with "
                                "-o allow_other)")
            if not isinstance(request, dict) or request.get("v") != VERSION:
                return _failure(errno.EPROTO, "not a chunkfs control request of this version")
            op = str(request.get("op"))
            cred = Credentials.of_process(pid, uid, gid)
            result = self._dispatch(op, request, cred, lambda: self._stopping.is_set() or _gone(conn))
            return {"ok": True, "result": result}
        except ChunkfsError as exc:
            if isinstance(exc, FSError) or exc.refusal:  # an answer (EACCES, EEXIST...), not a failure
                log.info("control request %s by uid %d refused: %s", op, uid, exc)
            else:
                log.error("control request %s by uid %d failed: %s", op, uid, exc)
            return _failure(errno_for(exc), str(exc), getattr(exc, "path", None))
        except Exception:  # noqa: BLE001 (a request must never take the daemon down)
            log.exception("control request %s by uid %d failed unexpectedly", op, uid)
            return _failure(errno.EIO, "internal error in the chunkfs daemon (see its log)")

    def _dispatch(self, op: str, req: dict, cred: Credentials, should_stop: Callable[[], bool]) -> object:
        ops = self.ops
        path = lambda key: os.fsencode(str(req.get(key, "")))  # noqa: E731
        if op == "clone":
            result = ops.clone(cred, path("src"), path("dst"), should_stop)
        elif op == "snapshot":
            result = ops.snapshot(cred, path("src"), path("name"), should_stop)
        elif op == "snapshot-list":
            return [dict(s, name=text(s["name"])) for s in ops.snapshots(cred)]
        elif op == "snapshot-delete":
            result = ops.delete_snapshot(cred, path("name"), bool(req.get("wait")), should_stop)
        elif op == "rmtree":
            result = ops.rmtree(cred, path("path"), bool(req.get("wait")), should_stop)
        elif op == "compress":
            result = ops.compress(should_stop)
            log.info("compress by uid %d: %s", cred.uid, result)
            return result
        elif op == "stats":
            return ops.stats()
        elif op == "du":
            return [dict(u, path=text(u["path"])) for u in ops.du(cred, path("path"), int(req.get("depth") or 0))]
        else:
            return _unknown(op)
        log.info("%s by uid %d: %s", op, cred.uid, {k: v for k, v in result.items() if k != "path"} | {
            "path": text(result["path"])})
        return dict(result, path=text(result["path"]))


def _unknown(op: str) -> object:
    raise PathError(errno.EINVAL, b"/", f"unknown control request {op!r}")


def _send(conn: socket.socket, answer: dict) -> None:
    try:
        conn.sendall(encode(answer))
    except OSError:
        pass  # the client went away: nobody to tell


def _failure(err: int, message: str, path: bytes | None = None) -> dict:
    return {"ok": False, "errno": err, "message": message, "path": text(path) if path is not None else None}


def _gone(conn: socket.socket) -> bool:
    """The client closed its end (Ctrl-C): no one waits for the answer."""
    try:
        return select.select([conn], [], [], 0)[0] != [] and conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _prepare_dir(path: str) -> None:
    """The socket directory: the daemon's user's own, searchable by everyone, never someone else's."""
    os.makedirs(path, mode=0o755, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ChunkfsError(f"{path}: not a directory of uid {os.getuid()}; cannot put the control socket there")
    if st.st_mode & 0o022:
        os.chmod(path, 0o755)
