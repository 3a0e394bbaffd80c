"""The ``chunkfs`` command: one verb per job, one line per mistake.

Every verb is a short function over the public APIs (ChunkStore, daemon,
mounts).  :func:`main` is the only place that turns failures into output:
a ``ChunkfsError`` or ``OSError`` becomes ``chunkfs: <message>`` on stderr
and exit status 1, a usage mistake becomes one such line and status 2.  A
user never sees a traceback for something they can fix.  The verbs'
arguments and help are in cli_parser.py, what is printed for people in
cli_report.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import daemon, mounts
from .cli_parser import PROG, UsageError, build_parser, join_dashed_values
from .cli_report import count_of, format_gc, format_stats
from .errors import ChunkfsError, InvalidArgument
from .mountopts import parse_options
from .settings import StoreSettings, format_compression, format_size, parse_compression

if TYPE_CHECKING:
    from .store import FileId

# The storage engine is imported by the verbs that open a store, not here: clone, snapshot, rmtree and du
# only talk to a mount's daemon, and importing the engine is most of a command's start-up time.

EXIT_FAILURE = 1
EXIT_USAGE = 2

# -- file ids on the command line ------------------------------------------------------
# Store file ids are str or bytes.  A bytes id is written "hex:<hex digits>"; a str
# id that itself starts with "hex:" or "str:" is written with a "str:" prefix.
# So every line 'chunkfs ls' prints is a valid FILE_ID argument.


def parse_file_id(text: str) -> FileId:
    if not text.startswith("hex:") and not _is_utf8(text):  # undecodable bytes in the argument
        raise InvalidArgument(f"{text!r}: a file id is UTF-8 text; write any other bytes as hex:<hex digits>")
    if text.startswith("hex:"):
        try:
            return bytes.fromhex(text[4:])
        except ValueError:
            raise InvalidArgument(f"{text!r}: 'hex:' must be followed by hex digits") from None
    return text[4:] if text.startswith("str:") else text


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def format_file_id(file_id: FileId) -> str:
    if isinstance(file_id, bytes):
        return "hex:" + file_id.hex()
    return "str:" + file_id if file_id.startswith(("hex:", "str:")) else file_id


# -- verbs ------------------------------------------------------------------------------


def _data_location(args) -> dict | None:
    """The --data/--endpoint/--region arguments as a settings 'data' field (None: packs on the local disk)."""
    if args.data is None:
        if args.endpoint or args.region:
            raise InvalidArgument("--endpoint and --region go with --data s3://BUCKET/PREFIX")
        return None
    from .store import data_location  # noqa: PLC0415

    return data_location(args.data, args.endpoint, args.region, replica=getattr(args, "replica", False))


MKFS_OPTIONS = {"chunker": "--chunker", "avg_size": "--avg-size", "min_size": "--min-size", "max_size": "--max-size"}


def cmd_mkfs(args) -> int:
    from .store import ChunkStore  # noqa: PLC0415

    # checked here first, so that a mistake is told in terms of the options the user gave
    StoreSettings.build(args.chunker, args.min_size, args.avg_size, args.max_size, names=MKFS_OPTIONS)
    compression = format_compression(*parse_compression(args.compression))
    data = _data_location(args)
    with ChunkStore.create(args.store, chunker=args.chunker, min_size=args.min_size,
                           avg_size=args.avg_size, max_size=args.max_size, data=data,
                           compression=compression) as store:
        s = store.settings
    where = f", pack data in {data['url']}" if data else ""
    print(f"created chunkfs store {os.path.abspath(args.store)}: {s.chunker} chunks, "
          f"min {format_size(s.min_size)}, avg {format_size(s.avg_size)}, max {format_size(s.max_size)}, "
          f"compression {s.compression}{where}")
    return 0


def cmd_restore(args) -> int:
    from .store import ChunkStore, restore_from_bucket  # noqa: PLC0415

    data = _data_location(args)
    settings, generation = restore_from_bucket(args.store, data)
    if not args.replica:  # recovery runs once, and the store's first index copy of its own is uploaded
        with ChunkStore.open(args.store):
            pass
    kind = "read-only replica" if args.replica else "store"
    print(f"restored {kind} {os.path.abspath(args.store)} from {data['url']} (index copy {generation}, "
          f"{settings.get('chunker')} chunks)")
    return 0


def cmd_sync(args) -> int:
    """Commit and upload everything; for a mounted store, ask its daemon (SIGUSR1) and wait for its answer."""
    store_path, mounted_on = resolve_store(args.target)
    if not mounted_on:
        from .store import ChunkStore  # noqa: PLC0415

        with ChunkStore.open(store_path) as store:
            store.flush()
        return 0
    return _sync_mounted(store_path, mounted_on[0], args.timeout)


def _sync_mounted(store_path: str, mountpoint: str, timeout: float) -> int:
    import secrets  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import time  # noqa: PLC0415

    from .daemon import SYNC_DONE, SYNC_REQUEST  # noqa: PLC0415

    folder = os.path.join(store_path, "bucket")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    try:
        with open(os.path.join(store_path, "lock"), encoding="ascii") as fh:
            pid = int(fh.read().strip())
    except (OSError, ValueError):
        raise InvalidArgument(f"{mountpoint}: cannot find the daemon serving it") from None
    token = secrets.token_hex(8)
    with open(os.path.join(folder, SYNC_REQUEST), "w", encoding="ascii") as fh:
        fh.write(token + "\n")
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(os.path.join(folder, SYNC_DONE), encoding="utf-8") as fh:
                answer = fh.read().strip()
        except FileNotFoundError:
            answer = ""
        if answer.startswith(token + " "):
            status = answer[len(token) + 1:]
            if status == "ok":
                return 0
            return _error(status.removeprefix("error "), EXIT_FAILURE)
        time.sleep(0.05)
    return _error(f"{mountpoint}: sync did not finish within {timeout:.0f} s (it goes on in the daemon)",
                  EXIT_FAILURE)


def resolve_store(target: str) -> tuple[str, list[str]]:
    """A store directory, or a path on a mounted chunkfs: return the store and its mountpoints.

    The mount table is consulted first, so a mountpoint is never stat-ed or
    mistaken for a store directory.
    """
    entry = mounts.chunkfs_mount_containing(target)
    store = entry.store if entry is not None else target
    return store, [m.mountpoint for m in mounts.mounts_of_store(store)]


def cmd_stats(args) -> int:
    from .store import ChunkStore  # noqa: PLC0415

    store_path, mounted_on = resolve_store(args.target)
    with ChunkStore.open(store_path, readonly=True) as store:  # for a mount: may this user read the store?
        stats = None if mounted_on else store.stats()
    if mounted_on:
        stats = _ask(_where(mounted_on[0]), "stats")  # the mount's own view: its mode, its live counters
    stats["store"] = os.path.abspath(store_path)
    stats["mountpoints"] = mounted_on
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
    else:
        print(format_stats(stats))
    return 0


def cmd_ingest(args) -> int:
    from .store import ChunkStore  # noqa: PLC0415

    file_id = parse_file_id(args.file_id)
    with ChunkStore.open(args.store) as store:
        if args.path == "-":
            result = store.ingest(file_id, sys.stdin.buffer)
        else:
            with open(args.path, "rb") as fh:
                result = store.ingest(file_id, fh)
    print(f"{args.file_id}: {format_size(result.size)} in {result.chunks} chunks, "
          f"{result.new_chunks} new ({format_size(result.new_bytes)} stored)")
    return 0


def cmd_cat(args) -> int:
    from .store import ChunkStore  # noqa: PLC0415

    file_id = parse_file_id(args.file_id)
    with ChunkStore.open(args.store, readonly=True) as store, store.open_reader(file_id) as reader:
        shutil.copyfileobj(reader, sys.stdout.buffer, 1024 * 1024)
    sys.stdout.buffer.flush()
    return 0


def cmd_rm(args) -> int:
    from .store import ChunkStore  # noqa: PLC0415

    with ChunkStore.open(args.store) as store:
        for text in args.file_ids:
            store.delete(parse_file_id(text))
    return 0


def cmd_ls(args) -> int:
    from .store import ChunkStore  # noqa: PLC0415

    with ChunkStore.open(args.store, readonly=True) as store:
        for file_id in sorted(store.list_files(), key=lambda f: (isinstance(f, bytes), f)):
            name = format_file_id(file_id)
            print(f"{store.size(file_id):>14,}  {name}" if args.long else name)
    return 0


def cmd_gc(args) -> int:
    from .store import ChunkStore  # noqa: PLC0415

    with ChunkStore.open(args.store) as store, _progress("gc: packs", quiet=args.json, unit="pack") as progress:
        report = store.gc(progress=progress)
    print(json.dumps(report) if args.json else format_gc(report))
    if report.get("stopped_full"):
        print("gc: stopped early: not enough free space to copy live chunks; free some and run it again",
              file=sys.stderr)
    if report.get("skipped_corrupt"):
        print(f"gc: skipped {len(report['skipped_corrupt'])} packs with corrupt chunks: run 'chunkfs fsck'",
              file=sys.stderr)
        return EXIT_FAILURE
    return 0


def cmd_compress(args) -> int:
    """Compress what waits for compression behind the writers, now; for a mount, ask its daemon."""
    store_path, mounted_on = resolve_store(args.target)
    if mounted_on:
        report = _ask(_where(mounted_on[0]), "compress")
    else:
        from .store import ChunkStore  # noqa: PLC0415

        with ChunkStore.open(store_path) as store, \
                _progress("compress: packs", quiet=args.json, unit="pack") as progress:
            report = store.compress_waiting(progress=progress)
    if args.json:
        print(json.dumps(report))
    else:
        saved = report["bytes_before"] - report["bytes_after"]
        print(f"compress: rewrote {count_of(report['packs_rewritten'], 'pack')}, compressed "
              f"{count_of(report['chunks_compressed'], 'chunk')} "
              f"from {format_size(report['bytes_before'])} to {format_size(report['bytes_after'])} "
              f"({format_size(saved)} saved)")
    if report["stopped_full"]:
        print("compress: stopped early: not enough free space to write compressed copies", file=sys.stderr)
        return EXIT_FAILURE
    if report["skipped_corrupt"]:
        print(f"compress: skipped {len(report['skipped_corrupt'])} packs with corrupt chunks: run 'chunkfs fsck'",
              file=sys.stderr)
        return EXIT_FAILURE
    return 0


def cmd_fsck(args) -> int:
    """Check (and repair) a store; the exit status says what was found (see chunkfs/fsck_run.py)."""
    from . import fsck_run  # noqa: PLC0415 (only this verb needs the checker)

    logging.getLogger("chunkfs").addHandler(logging.NullHandler())  # the summary says it all, once
    progress = None if args.json or not sys.stderr.isatty() else fsck_run.TerminalProgress(sys.stderr)
    try:
        result = fsck_run.run_fsck(args.store, repair=args.repair, verify_data=args.verify_data,
                                   progress=progress)
    except (ChunkfsError, OSError) as exc:
        message = str(exc) if isinstance(exc, ChunkfsError) else _os_message(exc)
        return _error(message, fsck_run.EXIT_ERROR)
    finally:
        if progress is not None:
            progress.close()
    print(json.dumps(result.as_dict(), indent=2) if args.json else fsck_run.format_result(result))
    return result.exit_code


@contextlib.contextmanager
def _progress(desc: str, quiet: bool = False, **units):
    """A tqdm bar on standard error if it is a terminal (else None: quiet in scripts), fed (done, total)."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm  # noqa: PLC0415 (only a terminal needs it)

    bar = tqdm(desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True, **units)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()


def cmd_upgrade(args) -> int:
    from .store import upgrade_store  # noqa: PLC0415

    with _progress("upgrade", unit="B", unit_scale=True, unit_divisor=1024) as progress:
        report = upgrade_store(args.store, progress=progress)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    elif report.action == "current":
        print(f"{args.store}: already at store format version {report.to_version}; nothing to do")
    elif report.action == "finished":
        print(f"{args.store}: finished an interrupted upgrade to store format version {report.to_version}")
    else:
        print(f"{args.store}: upgraded from store format version {report.from_version} to {report.to_version}: "
              f"{report.files:,} files, {report.chunks:,} chunk references, {format_size(report.logical_bytes)}")
    return 0


def cmd_mount(args) -> int:
    opts = parse_options(args.options)
    daemon.mount(args.store, args.mountpoint, opts, foreground=args.foreground)
    return 0


def cmd_umount(args) -> int:
    pid = mounts.unmount(args.mountpoint, lazy=args.lazy, timeout=args.timeout)
    if not args.quiet:
        done = f"its daemon (pid {pid}) committed everything and exited" if pid is not None else \
            "no daemon was running"
        print(f"{PROG}: unmounted {mounts.canonical_path(args.mountpoint)}; {done}")
    return 0


# -- verbs served by a mounted filesystem's daemon (control.py) ----------------------------------------


def _ask(place, op: str, **args):
    """One control request; a refusal becomes one line naming the path as the user sees it."""
    from . import control  # noqa: PLC0415

    try:
        return control.call(place.mount, op, **args)
    except control.RemoteError as exc:
        raise ChunkfsError(control.describe(place, exc)) from None


def _where(path: str, follow: bool = False):
    from . import control  # noqa: PLC0415

    return control.locate(path, follow)


def _same_mount(a, b, what: str) -> None:
    if a.mount.mountpoint != b.mount.mountpoint:
        raise InvalidArgument(f"{what} must be on the same chunkfs mount ({a.mount.mountpoint} and "
                              f"{b.mount.mountpoint} are different mounts)")


def _made(result: dict) -> str:
    parts = [f"{result['files']:,} files", f"{result['directories']:,} directories"]
    if result["others"]:
        parts.append(f"{result['others']:,} other")
    if result["hard_links"]:
        parts.append(f"{result['hard_links']:,} hard links")
    return f"{', '.join(parts)}, {format_size(result['bytes'])} without copying data, in {result['seconds']:.2f} s"


def cmd_clone(args) -> int:
    src = _where(args.src)
    dst_path = args.dst
    if os.path.isdir(dst_path):  # as cp: into an existing directory, under the source's name
        dst_path = os.path.join(dst_path, os.path.basename(src.user_path()))
    dst = _where(dst_path)
    _same_mount(src, dst, "SRC and DST")
    result = _ask(src, "clone", src=src.path, dst=dst.path)
    if not args.quiet:
        print(f"cloned {src.user_path()} to {dst.user_path()}: {_made(result)}")
    return 0


def cmd_snapshot(args) -> int:
    if args.list:
        return _list_snapshots(args)
    if args.delete:
        if len(args.args) != 2:
            raise UsageError("snapshot --delete takes PATH NAME: a path on the mount and the snapshot's name")
        place = _where(args.args[0], follow=True)
        result = _ask(place, "snapshot-delete", name=args.args[1], wait=args.wait)
        if not args.quiet:
            freed = "its space is freed" if result["deleted"] else "its space is being freed in the background"
            print(f"deleted snapshot {place.user_path(result['path'])}; {freed}")
        return 0
    if len(args.args) != 2:
        raise UsageError("snapshot takes SRC NAME (or --list PATH, or --delete PATH NAME)")
    src = _where(args.args[0])
    result = _ask(src, "snapshot", src=src.path, name=args.args[1])
    if not args.quiet:
        print(f"snapshot of {src.user_path()} at {src.user_path(result['path'])}: {_made(result)}")
    return 0


def _list_snapshots(args) -> int:
    import pwd  # noqa: PLC0415
    import time  # noqa: PLC0415

    if len(args.args) != 1:
        raise UsageError("snapshot --list takes one PATH on the mount")
    place = _where(args.args[0], follow=True)
    snapshots = _ask(place, "snapshot-list")
    if args.json:
        print(json.dumps(snapshots, indent=2))
        return 0

    def owner(uid: int) -> str:
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return str(uid)

    for snap in snapshots:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap["created_ns"] / 1e9))
        print(f"{created}  {owner(snap['uid']):<12} {snap['type']:<9} {snap['name']}")
    return 0


def cmd_rmtree(args) -> int:
    place = _where(args.path)
    result = _ask(place, "rmtree", path=place.path, wait=args.wait)
    if not args.quiet:
        freed = "its space is freed" if result["deleted"] else "its space is being freed in the background"
        print(f"removed {place.user_path()}; {freed}")
    return 0


def cmd_du(args) -> int:
    if args.depth < 0:
        raise UsageError(f"--depth {args.depth}: must not be negative")
    place = _where(args.path, follow=True)
    usages = _ask(place, "du", path=place.path, depth=args.depth)
    for usage in usages:
        usage["path"] = place.user_path(usage["path"])
    if args.json:
        print(json.dumps(usages, indent=2))
        return 0
    size = str if args.bytes else format_size
    rows = [("logical", "stored", "unique", "shared", "path")]
    for u in sorted(usages, key=lambda u: u["path"], reverse=True):
        rows.append((size(u["logical_bytes"]), size(u["stored_bytes"]), size(u["unique_bytes"]),
                     size(u["shared_bytes"]), u["path"]))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) + "  " + row[4])
    return 0


# -- the parser ---------------------------------------------------------------------------------------


def _error(message: str, code: int) -> int:
    print(f"{PROG}: {one_line(message)}", file=sys.stderr)
    return code


def one_line(text: str) -> str:
    """``text`` with every character that is not printable (newlines, other controls, undecodable bytes)
    written as its escape: a message quoting an argument stays one line on any terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)


def _os_message(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def _print_paths_as_bytes() -> None:
    """A path that is not valid UTF-8 is printed as the bytes it is (as ls does), not a UnicodeEncodeError."""
    try:
        sys.stdout.reconfigure(errors="surrogateescape")
    except (AttributeError, ValueError, io.UnsupportedOperation):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the exit status (0 ok, 1 failure, 2 usage)."""
    _print_paths_as_bytes()
    parser = build_parser()
    try:
        args = parser.parse_args(join_dashed_values(sys.argv[1:] if argv is None else argv, parser))
    except UsageError as exc:
        return _error(str(exc), EXIT_USAGE)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return COMMANDS[args.verb](args)
    except UsageError as exc:  # a combination of arguments the parser cannot see is wrong
        return _error(f"{exc} (see '{PROG} {args.verb} --help')", EXIT_USAGE)
    except BrokenPipeError:  # 'chunkfs cat ... | head': the reader is gone, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except ChunkfsError as exc:
        return _error(str(exc), EXIT_FAILURE)
    except OSError as exc:
        return _error(_os_message(exc), EXIT_FAILURE)
    except KeyboardInterrupt:
        return _error("interrupted", 130)


COMMANDS = {"mkfs": cmd_mkfs, "restore": cmd_restore, "sync": cmd_sync, "stats": cmd_stats, "ingest": cmd_ingest,
            "cat": cmd_cat, "rm": cmd_rm, "ls": cmd_ls, "gc": cmd_gc, "compress": cmd_compress, "fsck": cmd_fsck,
            "upgrade": cmd_upgrade, "clone": cmd_clone, "snapshot": cmd_snapshot, "rmtree": cmd_rmtree,
            "du": cmd_du, "mount": cmd_mount, "umount": cmd_umount}


if __name__ == "__main__":
    sys.exit(main())
