"""Finding mounted chunkfs filesystems, and unmounting one and waiting for its daemon.

The kernel's mount table is the only registry: a chunkfs mount has type
``fuse.chunkfs`` and the (percent-quoted) store path as its source, and the
store's lock file names the process holding the store.  So there is no runtime
file to go stale after a crash or a reboot, and ``findmnt`` shows the same
truth that ``chunkfs stats MOUNTPOINT`` and ``chunkfs umount`` use.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import pwd
import re
import select
import shutil
import subprocess
import time
from dataclasses import dataclass

from .errors import MountError
from .mountopts import decode_fsname

log = logging.getLogger(__name__)

FSTYPE = "fuse.chunkfs"
MOUNTINFO = "/proc/self/mountinfo"
DEFAULT_UMOUNT_TIMEOUT = 60.0
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    mountpoint: str
    fstype: str
    source: str
    device: str = "0:0"  # major:minor of the superblock (for FUSE: names the connection)
    root: str = "/"  # the directory of the filesystem mounted here ("/" unless a bind mount of a subtree)
    owner_uid: int | None = None  # FUSE: the user who mounted it (user_id=), whose daemon serves it

    @property
    def store(self) -> str:
        """The store directory of a chunkfs mount (its fsname, unquoted)."""
        return decode_fsname(self.source)


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (space, tab, newline, backslash)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def read_mounts() -> list[MountEntry]:
    """Every mount this process can see, in mount order."""
    out = []
    with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            fields = line.split()
            sep = fields.index("-")
            out.append(MountEntry(int(fields[0]), _unescape(fields[4]), _unescape(fields[sep + 1]),
                                  _unescape(fields[sep + 2]), fields[2], _unescape(fields[3]),
                                  _user_id(fields[sep + 3] if len(fields) > sep + 3 else "")))
    return out


def _user_id(super_options: str) -> int | None:
    for option in super_options.split(","):
        if option.startswith("user_id=") and option[8:].isdigit():
            return int(option[8:])
    return None


def canonical_path(path: str) -> str:
    """Absolute path with the parent's symlinks resolved, without stat-ing ``path`` itself.

    Stat-ing a mountpoint whose daemon died fails with ENOTCONN, and one whose
    daemon hangs would block: the mount table must be searchable in both cases.
    """
    path = os.path.abspath(path)
    if path == "/":
        return path
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def mount_at(path: str) -> MountEntry | None:
    """The topmost mount of any type at exactly ``path``, if there is one."""
    target = canonical_path(path)
    found = [m for m in read_mounts() if m.mountpoint == target]
    return found[-1] if found else None


def chunkfs_mount_at(path: str) -> MountEntry:
    """The chunkfs mount at ``path``, or a MountError saying what is (not) there."""
    entry = mount_at(path)
    if entry is None:
        raise MountError(f"{path}: not a mountpoint")
    if entry.fstype != FSTYPE:
        raise MountError(f"{path}: not a chunkfs filesystem (it is a {entry.fstype} mount)")
    return entry


def mounts_of_store(store: str) -> list[MountEntry]:
    """Where the store at ``store`` is mounted (normally nowhere or one place)."""
    target = os.path.realpath(store)
    return [m for m in read_mounts() if m.fstype == FSTYPE and os.path.realpath(m.store) == target]


def chunkfs_mount_containing(path: str) -> MountEntry | None:
    """The chunkfs mount ``path`` lies in (the mountpoint itself or anything below it)."""
    target = canonical_path(path)
    best = None
    for m in read_mounts():
        inside = target == m.mountpoint or target.startswith(m.mountpoint.rstrip("/") + "/")
        if inside and (best is None or len(m.mountpoint) >= len(best.mountpoint)):
            best = m
    return best if best is not None and best.fstype == FSTYPE else None


def lock_holder(store: str) -> int | None:
    """The pid holding the store's lock, or None if nobody holds it.

    The lock file names the last holder; probing the flock tells whether that
    holder still has it, so a stale pid (a crashed daemon, a reused pid) is
    never waited for.
    """
    path = os.path.join(store, "lock")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        return None  # we got the lock: nobody holds it (closing the fd drops it again)
    finally:
        os.close(fd)


def fusermount(mountpoint: str, lazy: bool = False) -> subprocess.CompletedProcess:
    """Run ``fusermount3 -u [-z]`` (or ``umount [-l]`` as root without fusermount3)."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool:
        cmd = [tool, "-u"] + (["-z"] if lazy else []) + [mountpoint]
    elif os.geteuid() == 0:
        cmd = ["umount"] + (["-l"] if lazy else []) + [mountpoint]
    else:
        raise MountError("fusermount3 is not installed (Debian: apt-get install fuse3)")
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)


def unmount(mountpoint: str, lazy: bool = False, timeout: float = DEFAULT_UMOUNT_TIMEOUT) -> int | None:
    """Unmount a chunkfs mount and wait until its daemon has exited; returns the daemon's pid.

    The daemon commits everything and closes the store after the kernel lets
    go of the mount, so "the daemon has exited" is what "unmounted and safe"
    means; the unmount syscall alone returns before the last commit.
    """
    entry = chunkfs_mount_at(mountpoint)
    _check_may_unmount(entry)
    pid = lock_holder(entry.store)
    pidfd = _pidfd(pid)
    try:
        result = fusermount(entry.mountpoint, lazy)
        if result.returncode != 0:
            raise MountError(_umount_failure(entry.mountpoint, result.stderr))
        if pidfd is not None and not _wait_readable(pidfd, timeout):
            raise MountError(f"{entry.mountpoint}: unmounted, but the chunkfs daemon (pid {pid}) has not "
                             f"exited after {timeout:.0f} s; see its log (default {entry.store}/chunkfs.log)")
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return pid


def _check_may_unmount(entry: MountEntry) -> None:
    """Only root and the user who mounted it may unmount a FUSE mount: say so, in those words.

    fusermount3 would refuse with "entry for ... not found in /etc/mtab", which
    reads like a broken system rather than someone else's mount.
    """
    uid = entry.owner_uid
    if os.geteuid() == 0 or uid is None or uid == os.geteuid():
        return
    try:
        who = pwd.getpwuid(uid).pw_name
    except KeyError:
        who = f"uid {uid}"
    raise MountError(f"cannot unmount {entry.mountpoint}: permission denied (mounted by another user, {who})")


def _pidfd(pid: int | None) -> int | None:
    """A pidfd pins the process identity, so a recycled pid can never be waited for."""
    if pid is None or pid == os.getpid():
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def _wait_readable(fd: int, timeout: float) -> bool:
    """A pidfd becomes readable when its process exits."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if poller.poll(left * 1000):
            return True


def _umount_failure(mountpoint: str, stderr: str) -> str:
    text = stderr.strip().splitlines()[-1] if stderr.strip() else "unknown error"
    if "busy" in text.lower():
        return (f"{mountpoint}: busy: a process has a file open or its working directory there "
                f"(find it with 'fuser -vm {mountpoint}'); close it and retry, or use --lazy")
    return f"{mountpoint}: unmount failed: {text}"


def wait_until_mounted(mountpoint: str, store: str, stop, interval: float = 0.02) -> MountEntry | None:
    """Poll the mount table until ``store`` appears mounted on ``mountpoint``.

    Reading /proc/self/mountinfo sends no request to the filesystem, so this is
    safe to call from the daemon before its request loop runs.  The mount is
    recognised by place, type and source, never by mount id: the kernel
    reuses the ids of unmounted filesystems at once.  ``stop`` is a
    threading.Event that ends the wait early (the daemon gave up).
    """
    target = canonical_path(mountpoint)
    while not stop.is_set():
        for m in read_mounts():
            if m.mountpoint == target and m.fstype == FSTYPE and m.store == store:
                return m
        stop.wait(interval)
    return None


FUSECTL = "/sys/fs/fuse/connections"


def abort_connection(entry: MountEntry) -> bool:
    """Abort a FUSE connection (fusectl): its daemon's request loop ends, open files get ENOTCONN.

    This is how a daemon is stopped while files are still open on a mount
    that was detached lazily, which no unmount can reach any more.  Returns
    False if fusectl is not mounted (systemd mounts it at boot).
    """
    major, minor = (int(n) for n in entry.device.split(":"))
    path = os.path.join(FUSECTL, str((major << 20) | minor), "abort")
    try:
        with open(path, "w") as fh:
            fh.write("1")
    except FileNotFoundError:
        return False
    return True
