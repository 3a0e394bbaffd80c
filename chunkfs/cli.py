"""The ``chunkfs`` command: one verb per job, one line per mistake.

Every verb is a short function over the public APIs (ChunkStore, daemon,
mounts).  :func:`main` is the only place that turns failures into output:
a ``ChunkfsError`` or ``OSError`` becomes ``chunkfs: <message>`` on stderr
and exit status 1, a usage mistake becomes one such line and status 2.  A
user never sees a traceback for something they can fix.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import re
import shutil
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import __version__, daemon, mounts
from .errors import ChunkfsError, InvalidArgument
from .mountopts import parse_options
from .settings import (CHUNKERS, DEFAULT_COMPRESSION, StoreSettings, format_compression, format_size,
                       parse_compression, parse_size)

if TYPE_CHECKING:
    from .store import FileId

# The storage engine is imported by the verbs that open a store, not here: clone, snapshot, rmtree and du
# only talk to a mount's daemon, and importing the engine is most of a command's start-up time.

PROG = "chunkfs"
EXIT_FAILURE = 1
EXIT_USAGE = 2

MOUNT_EPILOG = """\
mount options (-o, comma-separated, may be repeated):
  ro                     read-only mount
  allow_other            let other users access the mount (as non-root this
                         needs user_allow_other in /etc/fuse.conf)
  default_permissions    the kernel checks permissions (always on)
  nonempty               allow mounting over a non-empty directory
  log_level=LEVEL        debug, info (default), warning or error
  log_file=PATH          daemon log (default: STORE/chunkfs.log; with -f: stderr)
  cache_size=SIZE        verified-chunk cache, e.g. 256M (default 64M)
  verify=MODE            xxh3 (default) or sha256: how every chunk read is checked
  compression=zstd[:LEVEL]|none
                         how new chunks are compressed (default: the store's)
  compress=behind|inline behind (default): writers store compressible chunks
                         raw, compressed when the mount is idle or by 'chunkfs
                         compress'; inline: compressed as they are written
  read_ahead_kb=N        the mount's read-ahead in KiB (default 1024)
  pack_cache=SIZE        object store: local cache of pack ranges (default 1G)
  upload_backlog=SIZE    object store: bytes not yet uploaded before writes get
                         ENOSPC (default 4G)
  upload_interval=SEC    object store: how often the open pack and an index copy
                         are uploaded (default 60)
  backlog_wait=SEC       object store: how long a write waits for uploads to make
                         room in a full backlog before ENOSPC (default 5)
  request_timeout=SEC    object store: how long a request may wait for an answer
                         before it is retried (default 60)
  writeback_cache        let the kernel cache writes (off by default; see
                         docs/tuning.md before turning it on)
  noreadaround           do not push the rest of a chunk a short read fetched
                         into the kernel's page cache (on by default)
  noatime, nosuid, nodev, noexec, sync, dirsync, auto_unmount, ...
                         passed to FUSE and the kernel
"""

GC_DESCRIPTION = """\
Give back the disk space of chunks no file uses any more, by rewriting packs
(the files chunk data lives in) without their dead records. A chunk's disk
blocks are punched out of its pack when its last reference goes (in a mount,
by its background gc soon after), so what a rewrite gains is the rest: the
partly used blocks around each dead
record. A pack is rewritten only when at least half of the disk space it
holds would come back, so gc never writes (moves) more bytes than it frees;
packs with a little dead space are left alone, and packs with nothing live
are removed without copying. It prints packs removed and rewritten, bytes
moved and bytes reclaimed on disk. The store must not be mounted (a mount
runs the same gc in the background). See docs/tuning.md.
"""

FSCK_EPILOG = """\
exit status:
  0  no damage (data lost before and already marked is still listed)
  1  damage was found and all of it repaired
  2  usage error
  4  damage is left (found without --repair, or not repairable)
  8  could not check (not a store, damaged settings, unreadable index,
     mounted while --repair)
see docs/fsck.md for every finding and what --repair does about it
"""


class UsageError(Exception):
    """An argparse complaint, re-raised so main() prints it as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the usage block and exit
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _size(text: str) -> int:
    """Every size option goes through settings.parse_size: one parser, one set of messages."""
    try:
        return parse_size(text)
    except ChunkfsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r} (use e.g. 60 or 0.5)")
    return value


# argparse takes any argument that starts with '-' and is not a plain negative number for an option, so
# '--avg-size -32K' would be "expected one argument".  Such a value is joined to its option
# ('--avg-size=-32K') and gets the option's own message ("not a size: ... cannot be negative").
_DASHED_VALUE = re.compile(r"^-\.?\d")


def _join_dashed_values(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    takes_value = {opt for p in _all_parsers(parser) for a in p._actions if a.nargs is None and a.option_strings
                   and not isinstance(a, argparse._SubParsersAction) for opt in a.option_strings}
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in takes_value and _DASHED_VALUE.match(arg) and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [parser] + [p for sub in subs for p in sub.choices.values()]


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
    with ChunkStore.open(store_path, readonly=True) as store:  # also: may this user read the store?
        stats = store.stats()
    if mounted_on:
        stats = _ask(_where(mounted_on[0]), "stats")  # the mount's own view: its mode, its live counters
    stats["store"] = os.path.abspath(store_path)
    stats["mountpoints"] = mounted_on
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
    else:
        print(_format_stats(stats))
    return 0


NO_FIGURE = "–"  # a percentage that would mean nothing (no data yet, or overhead outweighing it)


def _format_stats(s: dict) -> str:
    def both(n: int) -> str:
        return f"{format_size(n)} ({n:,} bytes)"

    def pct(value: float | None) -> str:
        return NO_FIGURE if value is None else f"{value:.1f}%"

    def ratio(value: float | None) -> str:
        return NO_FIGURE if value is None else f"{value:.2f}x"

    dictionary = f"dictionary {s['dictionary']}" if s["dictionary"] else "no dictionary yet"
    behind = f"; {s['compression_behind']} behind the writers" if s.get("compression_behind") else ""
    mounted = f" (mounted on {', '.join(s['mountpoints'])})" if s["mountpoints"] else ""
    rows = [
        ("store", s["store"] + mounted),
        ("files", f"{s['files']:,}"),
        ("logical bytes", both(s["logical_bytes"])),
        ("after dedup", f"{both(s['stored_bytes'])}, dedup ratio {ratio(s['dedup_ratio'])}"),
        ("compressed", f"{both(s['packed_bytes'])}, compression ratio {ratio(s['compression_ratio'])} "
                       f"({s['compression']}{behind}, {dictionary})"),
        ("savings", f"{pct(s['savings_pct'])} (dedup {pct(s['dedup_savings_pct'])}, then compression "
                    f"{pct(s['compression_savings_pct'])})"),
        ("chunks", f"{s['unique_chunks']:,} unique, {s['chunk_refs']:,} references "
                   f"({s['chunker']}, average {format_size(s['avg_chunk_size'])})"),
        ("disk bytes", f"{both(s['disk_bytes'])}, savings {pct(s['disk_savings_pct'])}"),
        ("reserve", f"{both(s['reserve_bytes'])} held back so deletes still work on a full disk"),
        ("garbage", f"{both(s['garbage_bytes'])} (reclaim with 'chunkfs gc')"),
        ("replaced", f"{s['retired_refs']:,} references of replaced or deleted big files, dropped in the "
                     "background when the mount is quiet (now: 'chunkfs gc')"),
        ("to compress", f"{both(s['compression_waiting_bytes'])} stored raw or without a dictionary until "
                        "compressed behind the writers (now: 'chunkfs compress')"),
    ]
    rows += _object_store_rows(s.get("object_store"))
    return "\n".join(f"{name + ':':<15}{value}" for name, value in rows)


def _object_store_rows(o: dict | None) -> list[tuple[str, str]]:
    if not o:
        return []
    r = o.get("requests", {})
    cache = o.get("cache", {})
    rows = [
        ("pack data", o["data"] + (f" at {o['endpoint']}" if o.get("endpoint") else "")),
        ("objects", f"{o['objects']:,} packs, {format_size(o['bucket_bytes'])} in the bucket"),
        ("upload backlog", f"{o['upload_backlog_packs']:,} sealed packs, {format_size(o['upload_backlog_bytes'])} "
                           "not yet in the bucket (open pack included)"),
        ("pack cache", f"{format_size(cache.get('bytes', 0))} of {format_size(cache.get('capacity', 0))}"),
        ("requests", f"{r.get('put', 0):,} PUT, {r.get('get', 0):,} GET, {r.get('delete', 0):,} DELETE, "
                     f"{r.get('list', 0):,} LIST, {r.get('errors', 0):,} failed (this mount)"),
    ]
    if o.get("last_error"):
        rows.append(("last error", o["last_error"]))
    return rows


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
    print(json.dumps(report) if args.json else _format_gc(report))
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

        with ChunkStore.open(store_path) as store:
            report = store.compress_waiting()
    if args.json:
        print(json.dumps(report))
    else:
        saved = report["bytes_before"] - report["bytes_after"]
        print(f"compress: rewrote {_count(report['packs_rewritten'], 'pack')}, compressed "
              f"{_count(report['chunks_compressed'], 'chunk')} "
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


def _count(n: int, noun: str) -> str:
    """``1 pack``, ``3 packs``."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def _format_gc(r: dict) -> str:
    def packs(n: int) -> str:
        return _count(n, "pack")

    line = (f"gc: removed {packs(r['packs_removed'])} ({r['packs_rewritten']} rewritten), "
            f"moved {format_size(r['bytes_moved'])} in {r['chunks_moved']:,} live chunks, "
            f"reclaimed {format_size(r['bytes_reclaimed'])}")
    if r["packs_left"]:
        their = "its" if r["packs_left"] == 1 else "their"
        line += (f"; {packs(r['packs_left'])} with {format_size(r['dead_bytes_left'])} dead left as is "
                 f"(a rewrite would free under {r['threshold']:.0%} of {their} disk space)")
    return line


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="chunkfs: a deduplicating filesystem and chunk store.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)

    p = verbs.add_parser("mkfs", help="create a new store")
    p.add_argument("store", metavar="STORE", help="directory to create (absent or empty)")
    p.add_argument("--chunker", choices=CHUNKERS, default="fastcdc", help="chunking method (default fastcdc)")
    p.add_argument("--avg-size", type=_size, metavar="SIZE", help="average chunk size, e.g. 32K (default 32K)")
    p.add_argument("--min-size", type=_size, metavar="SIZE", help="minimum chunk size (default avg/4)")
    p.add_argument("--max-size", type=_size, metavar="SIZE", help="maximum chunk size (default avg*4)")
    p.add_argument("--compression", metavar="zstd[:LEVEL]|none", default=DEFAULT_COMPRESSION,
                   help=f"how chunks are compressed (default {DEFAULT_COMPRESSION}; a mount's -o compression= "
                        "changes it for new chunks)")
    _data_arguments(p, required=False)
    p.set_defaults(func=cmd_mkfs)

    p = verbs.add_parser("restore", help="make a store from its object-store bucket alone",
                         description="Rebuild STORE (absent or empty) from the latest index copy and the packs in "
                                     "the bucket. Stop the machine that writes to the bucket first, unless "
                                     "--replica is given: a replica is read-only, follows the bucket at every "
                                     "mount (-o ro), and never changes it. See docs/object-store.md.")
    p.add_argument("store", metavar="STORE")
    _data_arguments(p, required=True)
    p.add_argument("--replica", action="store_true", help="make a read-only replica that follows the bucket")
    p.set_defaults(func=cmd_restore)

    p = verbs.add_parser("sync", help="commit everything and wait until it is in the object store",
                         description="Commit every closed or fsync'ed file and wait until all pack data and a copy "
                                     "of the index are in the store's bucket (for a store on the local disk: "
                                     "until it is on the disk).")
    p.add_argument("target", metavar="STORE|MOUNTPOINT")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                   help="how long to wait (default %(default).0f)")
    p.set_defaults(func=cmd_sync)

    p = verbs.add_parser("stats", help="show logical and stored bytes, savings and chunk counts")
    p.add_argument("target", metavar="STORE|MOUNTPOINT", help="a store, or a mounted chunkfs")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=cmd_stats)

    p = verbs.add_parser("ingest", help="store a file under a file id (replacing any previous one)")
    p.add_argument("store", metavar="STORE")
    p.add_argument("file_id", metavar="FILE_ID")
    p.add_argument("path", metavar="PATH", help="file to read, or - for standard input")
    p.set_defaults(func=cmd_ingest)

    p = verbs.add_parser("cat", help="write a stored file to standard output")
    p.add_argument("store", metavar="STORE")
    p.add_argument("file_id", metavar="FILE_ID")
    p.set_defaults(func=cmd_cat)

    p = verbs.add_parser("rm", help="delete stored files")
    p.add_argument("store", metavar="STORE")
    p.add_argument("file_ids", metavar="FILE_ID", nargs="+")
    p.set_defaults(func=cmd_rm)

    p = verbs.add_parser("ls", help="list stored file ids")
    p.add_argument("store", metavar="STORE")
    p.add_argument("-l", "--long", action="store_true", help="show sizes too")
    p.set_defaults(func=cmd_ls)

    p = verbs.add_parser("gc", help="reclaim the space of chunks no file uses", description=GC_DESCRIPTION)
    p.add_argument("store", metavar="STORE")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=cmd_gc)

    p = verbs.add_parser("compress", help="compress now the chunks waiting for compression behind the writers",
                         description="A mount compresses behind its writers (-o compress=behind, the default): "
                                     "compressible chunks are stored raw and compressed when the mount is idle. "
                                     "This does it now, and returns when nothing is left to compress (chunks "
                                     "compressed before the store had a dictionary are compressed again with it).")
    p.add_argument("target", metavar="STORE|MOUNTPOINT", help="a store, or a mounted chunkfs")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=cmd_compress)

    p = verbs.add_parser("fsck", help="check a store (and repair it)", epilog=FSCK_EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Check STORE's chunks, files and filesystem for damage. Without --repair "
                                     "it changes nothing and works while the store is mounted.")
    p.add_argument("store", metavar="STORE")
    p.add_argument("--repair", action="store_true",
                   help="fix what can be fixed (the store must not be mounted); files whose data is gone "
                        "keep their size and fail with EIO where it is lost")
    p.add_argument("--verify-data", action="store_true",
                   help="also read every chunk and check its SHA-256 (reads all stored data)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=cmd_fsck)

    p = verbs.add_parser("upgrade", help="convert a store of an older format to this chunkfs's format",
                         description="Convert STORE, made by an older chunkfs, to this version's store format, "
                                     "in place. The store must not be mounted. Safe to interrupt: the store is "
                                     "then either still the old one or already the new one, and running "
                                     "'chunkfs upgrade' again finishes the job.")
    p.add_argument("store", metavar="STORE")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=cmd_upgrade)

    p = verbs.add_parser("clone", help="copy a file or tree inside a mount without copying data (like cp -a)",
                         description="Copy SRC to DST, both on one mounted chunkfs, by metadata: no byte of data "
                                     "is read or written; the copy shares its chunks with the source and is "
                                     "independent of it from then on. Keeps modes, owners (as cp -a run by you "
                                     "would), times, xattrs, ACLs, symlinks, device nodes and hard links. If "
                                     "DST is a directory, the copy goes into it. See docs/usage.md.")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when it worked")
    p.set_defaults(func=cmd_clone)

    p = verbs.add_parser("snapshot", help="make, list or delete read-only snapshots",
                         usage="chunkfs snapshot SRC NAME\n       chunkfs snapshot --list PATH\n"
                               "       chunkfs snapshot --delete PATH NAME",
                         description="Make a read-only clone of SRC named NAME in the directory .snapshots at "
                                     "the root of its mount; nothing can change it. --list lists the "
                                     "snapshots of the mount PATH is on; --delete removes one (its owner or "
                                     "root only).")
    p.add_argument("args", nargs="*", metavar="ARG")
    p.add_argument("--list", action="store_true", help="list the snapshots of the mount PATH is on")
    p.add_argument("--delete", action="store_true", help="delete the snapshot NAME of the mount PATH is on")
    p.add_argument("--wait", action="store_true", help="with --delete: return once its space is freed")
    p.add_argument("--json", action="store_true", help="with --list: print JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when it worked")
    p.set_defaults(func=cmd_snapshot)

    p = verbs.add_parser("rmtree", help="remove a tree of any size at once; its space is freed in the background",
                         description="Remove PATH (a tree of any size, or a file) in one step: it is gone when "
                                     "the command returns, and the daemon deletes its files in the background. "
                                     "Needs the permissions 'rm -rf' would.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--wait", action="store_true", help="return only once everything below PATH is deleted")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when it worked")
    p.set_defaults(func=cmd_rmtree)

    p = verbs.add_parser("du", help="logical, stored, unique and shared bytes of a tree inside a mount",
                         description="For PATH on a mounted chunkfs: logical bytes (what its files add up "
                                     "to), stored bytes (its distinct chunks), unique bytes (chunks nothing "
                                     "outside PATH uses: what deleting it would free) and shared bytes (the "
                                     "rest), from the index, without reading data.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("-d", "--depth", type=int, default=0, metavar="N",
                   help="also every directory down to depth N below PATH (like du -d)")
    p.add_argument("-b", "--bytes", action="store_true", help="exact byte counts instead of K/M/G")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=cmd_du)

    p = verbs.add_parser("mount", help="mount a store", epilog=MOUNT_EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Mount STORE on MOUNTPOINT. Without -f, returns once the mount is ready "
                                     "and leaves a daemon serving it.")
    p.add_argument("store", metavar="STORE")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr")
    p.add_argument("-o", dest="options", action="append", metavar="OPT[,OPT...]", help="mount options (below)")
    p.set_defaults(func=cmd_mount)

    p = verbs.add_parser("umount", help="unmount and wait until everything is committed",
                         description="Unmount MOUNTPOINT, then wait until its daemon has committed "
                                     "everything and exited.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("-z", "--lazy", action="store_true",
                   help="detach even if busy; the daemon exits when the last open file is closed")
    p.add_argument("--timeout", type=_seconds, default=mounts.DEFAULT_UMOUNT_TIMEOUT, metavar="SECONDS",
                   help="how long to wait for the daemon to exit (default %(default).0f)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when it worked")
    p.set_defaults(func=cmd_umount)
    return parser


def _data_arguments(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--data", metavar="s3://BUCKET/PREFIX", required=required,
                   help="keep pack data in this S3 bucket (credentials: the AWS chain, e.g. AWS_PROFILE)")
    p.add_argument("--endpoint", metavar="URL", help="S3 endpoint of a provider other than AWS, e.g. http://host:8333")
    p.add_argument("--region", metavar="REGION", help="the bucket's region")


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
        args = parser.parse_args(_join_dashed_values(sys.argv[1:] if argv is None else argv, parser))
    except UsageError as exc:
        return _error(str(exc), EXIT_USAGE)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return args.func(args)
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


if __name__ == "__main__":
    sys.exit(main())
