"""The control channel of a mounted chunkfs: where its socket is, what goes over it, and the client's side.

``chunkfs clone``, ``snapshot``, ``rmtree`` and ``du`` ask the daemon of a
mount to do work no system call expresses.  They talk to it over a unix
socket (docs/usage.md#the-control-channel says why a socket and not a
control file): one request per connection, one JSON line each way.  The
daemon learns who asks from the socket itself (SO_PEERCRED: pid, uid, gid;
then the process's groups and capabilities from /proc) and checks every
permission as the kernel would for that user (chunkfs/fs/access.py); the
client only turns paths into paths inside the mount and prints answers.

Where the socket is: ``/run/chunkfs/<key>.sock`` for a daemon run by root,
else ``/run/user/<uid>/chunkfs/<key>.sock`` (``/tmp/chunkfs-<uid>/`` without
such a directory), ``<key>`` naming the store (a hash of its path, which the
mount table gives as the mount's source).  The directory belongs to the
daemon's user, so only that user can have put the socket there; the client
checks that the process answering is that user's.

Requests: ``{"v": 1, "op": OP, ...}``; answers ``{"ok": true, "result": ...}``
or ``{"ok": false, "errno": N, "message": TEXT, "path": PATH or null}``.
Paths are from the root of the mount (``/a/b``), as text with undecodable
bytes as surrogate escapes (os.fsdecode).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import struct
from dataclasses import dataclass

from . import mounts
from .errors import ChunkfsError, FSError, MountError

VERSION = 1
MAX_LINE = 64 * 1024 * 1024  # the longest answer read (a du of many directories)
_PEERCRED = struct.Struct("3i")  # pid, uid, gid


def socket_dir(uid: int) -> str:
    """The directory of the control sockets of daemons run by ``uid``."""
    if uid == 0:
        return "/run/chunkfs"
    run_user = f"/run/user/{uid}"
    return os.path.join(run_user, "chunkfs") if os.path.isdir(run_user) else f"/tmp/chunkfs-{uid}"


def socket_path(store: str, uid: int) -> str:
    """The control socket of the daemon serving ``store`` (its absolute path, as the mount table has it)."""
    key = hashlib.sha256(os.fsencode(store)).hexdigest()[:24]
    return os.path.join(socket_dir(uid), f"{key}.sock")


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix socket."""
    return _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))


def encode(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def read_line(sock: socket.socket, limit: int = MAX_LINE) -> bytes:
    """One newline-terminated line (without it); b"" if the peer closed first."""
    chunks, size = [], 0
    while True:
        data = sock.recv(65536)
        if not data:
            return b""
        chunks.append(data)
        size += len(data)
        if data.endswith(b"\n"):
            return b"".join(chunks)[:-1]
        if size > limit:
            raise MountError(f"a control message longer than {limit} bytes")


def text(path: bytes) -> str:
    return os.fsdecode(path)


class RemoteError(FSError):
    """The daemon refused or failed a request; ``path`` (text, from the mount's root) names where, if it knows."""

    def __init__(self, err: int, message: str, path: str | None):
        self.path = path
        super().__init__(err, message)


# -- the client ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """A path on a chunkfs mount: the mount, and the path from the filesystem's root (``/a/b``)."""

    mount: mounts.MountEntry
    path: str

    def user_path(self, inner: str | None = None) -> str:
        """A path from the filesystem's root as the user sees it, under this mount's mountpoint."""
        inner = self.path if inner is None else inner
        root = self.mount.root.rstrip("/")
        if root and (inner == root or inner.startswith(root + "/")):
            inner = inner[len(root):]
        return self.mount.mountpoint.rstrip("/") + (inner if inner != "/" else "") or "/"


def locate(path: str, follow: bool = False) -> Place:
    """Where ``path`` is on a chunkfs mount.  ``follow``: resolve a symlink in the last component too.

    Parent directories are resolved by the kernel (realpath), so ``..`` and
    symlinks end up as they would for any tool; the last component is kept
    as given unless ``follow`` (``cp -a`` copies a symlink, not its target).
    """
    resolved = os.path.realpath(path) if follow else mounts.canonical_path(path)
    entry = mounts.chunkfs_mount_containing(resolved)
    if entry is None:
        raise MountError(f"{path}: not on a mounted chunkfs filesystem")
    inner = resolved[len(entry.mountpoint.rstrip("/")):] or "/"
    root = entry.root.rstrip("/")
    return Place(entry, (root + inner) if inner != "/" else (root or "/"))


def call(mount: mounts.MountEntry, op: str, **args) -> object:
    """Send one request to the daemon of ``mount`` and return its result; RemoteError if it refused."""
    owner = mount.owner_uid if mount.owner_uid is not None else 0
    path = socket_path(mount.store, owner)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise MountError(f"{mount.mountpoint}: its daemon has no control socket ({path}); it may run an "
                             "older chunkfs: remount it") from None
        except ConnectionRefusedError:
            raise MountError(f"{mount.mountpoint}: its daemon is not answering (has it died? 'chunkfs umount "
                             f"{mount.mountpoint}' and mount again)") from None
        except PermissionError:
            raise MountError(f"{mount.mountpoint}: no access to its control socket {path}") from None
        _, server_uid, _ = peer_credentials(sock)
        if server_uid not in (owner, 0):
            raise MountError(f"{path}: answered by uid {server_uid}, not by the daemon of {mount.mountpoint}")
        try:
            sock.sendall(encode({"v": VERSION, "op": op, **args}))
        except OSError:  # the daemon may have answered and closed already: its answer says why
            pass
        try:
            line = read_line(sock)
        except ConnectionResetError:
            line = b""
    finally:
        sock.close()
    if not line:
        raise MountError(f"{mount.mountpoint}: the daemon closed the connection without an answer "
                         "(did it stop? see its log)")
    try:
        answer = json.loads(line)
    except ValueError:
        raise MountError(f"{mount.mountpoint}: the daemon's answer is not JSON") from None
    if answer.get("ok"):
        return answer.get("result")
    raise RemoteError(int(answer.get("errno") or errno.EIO), str(answer.get("message") or "failed"),
                      answer.get("path"))


def describe(place: Place, exc: RemoteError) -> str:
    """One line for a refusal: the path as the user sees it, then what is wrong."""
    if exc.path is None:
        return str(exc)
    reason = str(exc) if str(exc) != errno.errorcode.get(exc.errno) else os.strerror(exc.errno)
    return f"{place.user_path(exc.path)}: {reason}"


__all__ = ["ChunkfsError", "Place", "RemoteError", "call", "describe", "locate", "peer_credentials",
           "socket_dir", "socket_path"]
