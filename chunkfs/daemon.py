"""The mounting lifecycle: checks, the background daemon and its readiness pipe, signals, exit.

``chunkfs mount`` (without ``-f``) re-executes Python as ``python -m
chunkfs.daemon`` in a new session; that process forks once more (so it is
re-parented to init and never a zombie of the caller) and writes its progress
to a pipe the caller reads:

    pid <n>        the daemon's pid, first
    ok             the mount is in the kernel's mount table: the caller returns 0
    error <text>   mounting failed: the caller prints the text and returns 1

Re-executing instead of forking the caller keeps trio, pyfuse3 and LMDB out of
any process that forked after importing them.  If the pipe closes without
``ok``, or nothing arrives in time, the caller removes whatever got mounted, so
a failed ``chunkfs mount`` never leaves a mount behind.

The daemon serves until the filesystem is unmounted (``chunkfs umount``,
``fusermount3 -u``, ``umount``) or it receives SIGTERM, SIGINT or SIGHUP, which
it turns into an unmount of its own mountpoint (see _SignalStopper): the
request loop then ends normally and every open file is committed before the
store is closed.  Only then does the process exit, and it exits even if a
library left a thread behind (a daemon that logs "done" and then hangs would
make ``chunkfs umount`` wait for nothing).
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from . import mounts
from .errors import ChunkfsError, MountError, StoreLockedError
from .mountopts import DEFAULT_READ_AHEAD_KB, MountOptions, parse_options
from .settings import format_size, read_settings

log = logging.getLogger("chunkfs.daemon")

LOG_NAME = "chunkfs.log"
READY_TIMEOUT = 120.0
LOG_FORMAT = "%(asctime)s chunkfs[%(process)d] %(levelname)s %(name)s: %(message)s"


def default_log_file(store: str) -> str:
    """Background daemons log beside their store: always writable by whoever may mount it."""
    return os.path.join(store, LOG_NAME)


# -- checks before mounting -----------------------------------------------------


def check_mountable(store: str, mountpoint: str, opts: MountOptions) -> tuple[str, str]:
    """Refuse, with one clear line, everything that would make the mount fail or misbehave.

    Returns the absolute store path and the canonical mountpoint.  The store's
    lock is checked again, authoritatively, when the daemon opens the store.
    """
    store = os.path.abspath(store)
    read_settings(store)  # not a store, newer format, damaged settings
    already = mounts.mounts_of_store(store)
    if already:
        raise MountError(f"{store}: already mounted on {already[0].mountpoint}")
    mountpoint = mounts.canonical_path(mountpoint)
    _check_mountpoint(mountpoint, store, opts)
    return store, mountpoint


def _check_mountpoint(mountpoint: str, store: str, opts: MountOptions) -> None:
    entry = mounts.mount_at(mountpoint)
    if entry is not None:
        raise MountError(f"{mountpoint}: already a mountpoint ({entry.fstype} from {entry.source})")
    _check_apart(mountpoint, store)
    try:
        if not os.path.isdir(mountpoint):
            what = "does not exist" if not os.path.lexists(mountpoint) else "is not a directory"
            raise MountError(f"{mountpoint}: mountpoint {what}")
        if not opts.nonempty and os.listdir(mountpoint):
            raise MountError(f"{mountpoint}: mountpoint is not empty (use -o nonempty to mount over it)")
    except OSError as exc:
        raise MountError(f"{mountpoint}: cannot use as mountpoint: {exc.strerror}") from None


def _check_apart(mountpoint: str, store: str) -> None:
    """The mount and the store must not contain each other.

    The daemon reaches its store by path (new packs, staging files, the log):
    a mount on the store or inside it (its own ``staging/``, say), or over a
    directory the store lies in, would hide the store from its own daemon.
    """
    real_mountpoint, real_store = os.path.realpath(mountpoint), os.path.realpath(store)
    if real_mountpoint == real_store:
        raise MountError(f"{mountpoint}: cannot mount a store on itself; choose a mountpoint outside {store}")
    if real_mountpoint.startswith(real_store.rstrip("/") + "/"):
        raise MountError(f"{mountpoint}: mountpoint is inside the store {store}; choose one outside it")
    if real_store.startswith(real_mountpoint.rstrip("/") + "/"):
        raise MountError(f"{mountpoint}: the store {store} is inside the mountpoint, which the mount would "
                         "hide from its own daemon; choose another mountpoint")


# -- the caller's side ------------------------------------------------------------


def mount(store: str, mountpoint: str, opts: MountOptions, foreground: bool = False) -> None:
    """Mount ``store`` on ``mountpoint``: in this process if ``foreground``, else via a daemon.

    Returns once the mount is ready (background) or once it is unmounted again
    (foreground); raises a ChunkfsError, with nothing mounted, if it cannot mount.
    """
    store, mountpoint = check_mountable(store, mountpoint, opts)
    if foreground:
        serve(store, mountpoint, opts, Reporter(None), foreground=True)
    else:
        _spawn(store, mountpoint, opts)


def _spawn(store: str, mountpoint: str, opts: MountOptions) -> None:
    log_path = os.path.abspath(opts.log_file or default_log_file(store))
    try:
        log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise MountError(f"{log_path}: cannot open log file: {exc.strerror}") from None
    read_fd, write_fd = os.pipe()
    cmd = [sys.executable, "-m", "chunkfs.daemon", "--ready-fd", str(write_fd), "--log-file", log_path,
           "-o", opts.as_string(), store, mountpoint]
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                                pass_fds=(write_fd,), start_new_session=True, cwd="/", env=_child_env())
    finally:
        os.close(write_fd)
        os.close(log_fd)
    try:
        pid, status, message = _read_report(read_fd, READY_TIMEOUT)
    finally:
        os.close(read_fd)
        proc.wait()  # the intermediate process exits right after forking the daemon
    if status == "ok":
        return
    _clean_up_failed_mount(store, mountpoint, pid, status)
    if status == "error":
        raise MountError(message)
    tail = _last_line(log_path)
    detail = f": {tail}" if tail else ""
    if status == "timeout":
        raise MountError(f"the daemon did not get ready within {READY_TIMEOUT:.0f} s and was stopped; see {log_path}")
    raise MountError(f"the daemon exited before the mount was ready{detail} (log: {log_path})")


def _child_env() -> dict[str, str]:
    """Make the daemon import this very chunkfs, wherever it was imported from."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _read_report(fd: int, timeout: float) -> tuple[int | None, str, str]:
    """Read the daemon's report lines until ``ok``/``error``, EOF ("died") or the deadline ("timeout")."""
    deadline = time.monotonic() + timeout
    buf, pid = b"", None
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return pid, "timeout", ""
        data = os.read(fd, 4096)
        if not data:
            return pid, "died", ""
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            word, _, rest = line.decode(errors="replace").partition(" ")
            if word == "pid" and rest.isdigit():
                pid = int(rest)
            elif word in ("ok", "error"):
                return pid, word, rest


def _clean_up_failed_mount(store: str, mountpoint: str, pid: int | None, status: str) -> None:
    """Stop a daemon that never got ready and remove any mount it made."""
    if pid is not None and status == "timeout":
        _kill(pid)
    for entry in mounts.mounts_of_store(store):
        if entry.mountpoint == mountpoint:
            mounts.fusermount(mountpoint, lazy=True)


def _kill(pid: int, grace: float = 10.0) -> None:
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        if not select.select([pidfd], [], [], grace)[0]:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - 4096))
            lines = [ln for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


# -- the daemon's side --------------------------------------------------------------


class Reporter:
    """The daemon's end of the readiness pipe (or nothing, in the foreground)."""

    def __init__(self, fd: int | None):
        self._fd = fd
        self._lock = threading.Lock()

    def send(self, line: str) -> None:
        with self._lock:
            if self._fd is None:
                return
            try:
                os.write(self._fd, line.replace("\n", " ").encode() + b"\n")
            except OSError:  # the caller is gone (killed): nobody to tell
                pass

    def finish(self, line: str) -> None:
        """Send the final word and close: the caller stops reading at EOF."""
        self.send(line)
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def serve(store: str, mountpoint: str, opts: MountOptions, reporter: Reporter, foreground: bool) -> None:
    """Open the store, mount, serve until unmounted, commit and close.  Blocks."""
    from . import fuse_adapter  # noqa: PLC0415 (imports pyfuse3; only the daemon needs it)
    from .store import ChunkStore  # noqa: PLC0415

    _setup_logging(opts, foreground)
    log.info("mounting %s on %s (options: %s)", store, mountpoint, opts.as_string() or "none")
    try:
        store_obj = ChunkStore.open(store, readonly=opts.readonly and _is_replica(store), verify=opts.verify,
                                    cache_size=opts.cache_size, data_options=opts.data_options or None,
                                    compression=opts.compression, compress=opts.compress)
    except StoreLockedError as exc:
        raise MountError(f"{exc}; is it mounted or in use by another chunkfs command?") from None
    read_ahead = opts.read_ahead_kb if opts.read_ahead_kb is not None else DEFAULT_READ_AHEAD_KB
    log.info("chunk cache %s, verify %s, writeback cache %s, read-around %s, read-ahead %d KiB, chunking %s",
             format_size(store_obj.cache.capacity), store_obj.verify, "on" if opts.writeback_cache else "off",
             "on" if opts.read_around else "off", read_ahead, opts.chunking)
    with store_obj, _ReadyWatcher(store, mountpoint, reporter, read_ahead, opts.read_ahead_kb is not None) as watcher, \
            _SignalStopper(mountpoint, watcher), SyncRequests(store_obj) as sync_requests:
        fuse_adapter.run(store_obj, mountpoint, opts.fuse_options(store),  # closes the store itself
                         writeback_cache=opts.writeback_cache, read_around=opts.read_around, chunking=opts.chunking,
                         control=_control_channel(store, opts, sync_requests))
        if not watcher.seen.is_set():
            raise MountError(f"{mountpoint}: the filesystem stopped before it was mounted; see the log")
    log.info("daemon done: %s closed", store)


def _control_channel(store: str, opts: MountOptions, sync_requests: "SyncRequests"):
    """A starter for the control socket of this mount (chunkfs clone, snapshot, rmtree, du: control.py)."""
    from .control import socket_path  # noqa: PLC0415 (only the daemon serves it)
    from .control_server import ControlServer, MountAccess  # noqa: PLC0415
    from .fs.tools import TreeOps  # noqa: PLC0415

    access = MountAccess(os.getuid(), os.getgid(), allow_other=opts.allow_other or "allow_root" in opts.fuse,
                         allow_root="allow_root" in opts.fuse)

    def start(core, kernel_cache):
        sync_requests.settle = core.files.settle_staged  # a sync first commits what is staged (fs/behind.py)
        return ControlServer(socket_path(store, os.getuid()), TreeOps(core, kernel_cache), access).start()

    return start


class _ReadyWatcher:
    """Reports ``ok`` once the store's mount shows in the kernel's mount table.

    The mount table, not a callback, is the test: reading it sends the
    filesystem no request (the daemon may not be serving yet, so stat-ing the
    mountpoint could deadlock), and "visible in the mount table" is exactly
    what the caller of ``chunkfs mount`` needs before it returns.
    """

    def __init__(self, store: str, mountpoint: str, reporter: Reporter, read_ahead_kb: int | None = None,
                 read_ahead_asked: bool = False):
        self.store = store
        self.mountpoint = mountpoint
        self.reporter = reporter
        self.read_ahead_kb = read_ahead_kb
        self.read_ahead_asked = read_ahead_asked
        self.seen = threading.Event()
        self.entry: mounts.MountEntry | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="chunkfs-ready", daemon=True)

    def __enter__(self) -> "_ReadyWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        entry = mounts.wait_until_mounted(self.mountpoint, self.store, self._stop)
        if entry is not None:
            self.entry = entry
            if self.read_ahead_kb is not None:
                wait_for_init(entry)
                set_read_ahead(entry, self.read_ahead_kb, self.read_ahead_asked)  # before "ok": reads get it
            self.seen.set()
            log.info("mounted %s on %s", entry.store, entry.mountpoint)
            self.reporter.finish("ok")


def wait_for_init(entry: mounts.MountEntry) -> None:
    """Return once the kernel has processed the daemon's FUSE INIT reply.

    The mount shows in mountinfo before that, and processing the reply
    lowers the mount's read-ahead to the max_readahead libfuse agreed to
    (128 KiB): a read-ahead set earlier is lost.  Every request waits for
    INIT, so a stat of the mountpoint returning (answered by the loop in the
    main thread) means it is done.
    """
    try:
        os.stat(entry.mountpoint)
    except OSError as exc:
        log.debug("stat of %s before setting read-ahead: %s", entry.mountpoint, exc.strerror)


def set_read_ahead(entry: mounts.MountEntry, kb: int, asked: bool) -> None:
    """Set the mount's read-ahead through its backing device info in sysfs (writable by root only).

    The kernel reads ahead ``read_ahead_kb`` on sequential reads and sends
    reads of up to that size; FUSE mounts start at 128 KiB.  Failing to set
    the default is not worth a warning at every mount by a user; failing to
    set what the user asked for is.
    """
    path = f"/sys/class/bdi/{entry.device}/read_ahead_kb"
    try:
        with open(path, "w") as fh:
            fh.write(f"{kb}\n")
    except OSError as exc:
        log.log(logging.WARNING if asked else logging.DEBUG,
                "cannot set read_ahead_kb=%d (%s: %s); the kernel's default stays", kb, path, exc.strerror)


def _is_replica(store: str) -> bool:
    """A read-only replica of an object store (chunkfs restore --replica) is opened read-only."""
    return bool(read_settings(store).data.get("replica"))


SYNC_REQUEST = "sync-request"  # in STORE/bucket: the token of the latest 'chunkfs sync'
SYNC_DONE = "sync-done"  # in STORE/bucket: "<token> ok" or "<token> error <message>"


class SyncRequests:
    """SIGUSR1 from ``chunkfs sync``: commit, upload everything, then answer in STORE/bucket/sync-done.

    A signal needs no channel of its own and reaches the daemon however the
    filesystem is used; the answer goes through a file because the signal
    carries none.  The work runs in a thread (uploads may take a while).
    """

    def __init__(self, store):
        self.store = store
        self.settle: Callable[[], None] | None = None  # commits staged files first (set once the core exists)
        self._previous = None
        self._busy = threading.Lock()

    def __enter__(self) -> "SyncRequests":
        self._previous = signal.signal(signal.SIGUSR1, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGUSR1, self._previous)

    def _handle(self, _signum, _frame) -> None:
        threading.Thread(target=self._sync, name="chunkfs-sync", daemon=True).start()

    def _sync(self) -> None:
        folder = os.path.join(self.store.path, "bucket")
        with self._busy:
            try:
                with open(os.path.join(folder, SYNC_REQUEST), encoding="ascii") as fh:
                    token = fh.read().strip()
            except OSError:
                return
            try:
                if self.settle is not None:
                    self.settle()
                self.store.flush()
                answer = f"{token} ok"
                log.info("chunkfs sync: everything committed is in the object store")
            except (ChunkfsError, OSError) as exc:
                answer = f"{token} error {_one_line(exc)}"
                log.warning("chunkfs sync failed: %s", _one_line(exc))
            tmp = os.path.join(folder, SYNC_DONE + ".tmp")
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(answer + "\n")
            os.replace(tmp, os.path.join(folder, SYNC_DONE))


class _SignalStopper:
    """SIGTERM, SIGINT and SIGHUP stop the filesystem in two stages.

    First signal: unmount, as ``chunkfs umount`` would.  If files are open
    there, the mount is detached lazily instead: it disappears from the
    namespace at once, the daemon keeps serving the open files, and exits
    (committing everything) when the last one is closed, so no application
    sees an error.  Second signal: abort the FUSE connection, so the request
    loop ends now; files still open see ENOTCONN from then on, and everything
    written before is committed on the normal way out.

    The work runs in a thread: a signal handler must not block the loop, and
    unmounting needs the loop to keep answering the kernel meanwhile.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self, mountpoint: str, watcher: "_ReadyWatcher"):
        self.mountpoint = mountpoint
        self.watcher = watcher
        self.count = 0
        self._previous: dict = {}

    def __enter__(self) -> "_SignalStopper":
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)

    def _handle(self, signum, _frame) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.count == 1:
            log.info("received %s: unmounting %s", name, self.mountpoint)
            work = self._unmount
        else:
            log.warning("received %s again: aborting the FUSE connection; files still open on %s "
                        "fail from now on", name, self.mountpoint)
            work = self._abort
        threading.Thread(target=work, name="chunkfs-stop", daemon=True).start()

    def _unmount(self) -> None:
        self.watcher.seen.wait(READY_TIMEOUT)  # a signal before the mount appeared unmounts it once it does
        result = mounts.fusermount(self.mountpoint)
        if result.returncode == 0 or mounts.mount_at(self.mountpoint) is None:
            return
        log.warning("%s is busy (%s); detached it lazily: the daemon exits when the last open file is "
                    "closed (signal again to stop now)", self.mountpoint, result.stderr.strip())
        result = mounts.fusermount(self.mountpoint, lazy=True)
        if result.returncode != 0:
            log.error("cannot unmount %s: %s", self.mountpoint, result.stderr.strip())

    def _abort(self) -> None:
        entry = self.watcher.entry
        if entry is not None and not mounts.abort_connection(entry):
            log.error("cannot stop now: fusectl is not mounted on %s (mount -t fusectl none %s); "
                      "close the files open on %s instead", mounts.FUSECTL, mounts.FUSECTL, self.mountpoint)


class _PrivateLogHandler(logging.handlers.WatchedFileHandler):
    """Reopens a rotated log as 0600, whatever the umask: it names users' files and paths."""

    def _open(self):
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)


def _setup_logging(opts: MountOptions, foreground: bool) -> None:
    """Foreground: stderr unless log_file= is given.  Background: the log file (stderr goes there too)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if foreground and opts.log_file is None:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        handler = _PrivateLogHandler(opts.log_file)  # survives logrotate
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(opts.log_level)
    logging.captureWarnings(True)


# -- entry point of the re-executed daemon -------------------------------------------------


def _daemon_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="chunkfs-daemon", description="internal: started by 'chunkfs mount'")
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--log-file", required=True)
    parser.add_argument("-o", dest="options", default="")
    parser.add_argument("store")
    parser.add_argument("mountpoint")
    return parser.parse_args(argv)


def daemon_main(argv: list[str] | None = None) -> None:
    """Fork into the background, serve, report; never returns (exits with os._exit)."""
    args = _daemon_args(sys.argv[1:] if argv is None else argv)
    if os.fork():
        os._exit(0)  # the intermediate: the caller waits for it, the daemon is re-parented
    os.set_inheritable(args.ready_fd, False)  # fusermount3 (auto_unmount) must not hold the pipe open
    reporter = Reporter(args.ready_fd)
    reporter.send(f"pid {os.getpid()}")
    code = 1
    try:
        opts = parse_options(args.options)
        opts.log_file = args.log_file
        serve(args.store, args.mountpoint, opts, reporter, foreground=False)
        code = 0
    except (ChunkfsError, OSError) as exc:
        log.error("mount failed: %s", exc)
        reporter.finish(f"error {_one_line(exc)}")
    except BaseException as exc:  # noqa: BLE001 (report anything rather than die silently)
        log.exception("chunkfs daemon crashed")
        reporter.finish(f"error internal error: {exc.__class__.__name__}: {exc} (see {args.log_file})")
    _exit(code)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, ChunkfsError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    return str(exc)


def _exit(code: int) -> None:
    """Exit now, even if a library left a non-daemon thread running (it would block exit)."""
    stuck = [t.name for t in threading.enumerate()
             if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if stuck:
        log.warning("threads still running at exit: %s", ", ".join(stuck))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    daemon_main()
