"""The ``chunkfs`` command line: its verbs, their arguments and help, and one line for every usage mistake.

Parsing only: what each verb does is in cli.py, which maps ``args.verb`` to it.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Sequence

from . import __version__, mounts
from .errors import ChunkfsError
from .settings import CHUNKERS, DEFAULT_COMPRESSION, parse_size

PROG = "chunkfs"

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


def join_dashed_values(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
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


def build_parser() -> argparse.ArgumentParser:
    """Every verb's parser; ``args.verb`` names the verb."""
    parser = _Parser(prog=PROG, description="chunkfs: a deduplicating filesystem and chunk store.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    _store_verbs(verbs)
    _file_id_verbs(verbs)
    _maintenance_verbs(verbs)
    _tree_verbs(verbs)
    _mount_verbs(verbs)
    return parser


def _store_verbs(verbs) -> None:
    """The verbs for making, restoring, syncing and measuring a store."""
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

    p = verbs.add_parser("restore", help="make a store from its object-store bucket alone",
                         description="Rebuild STORE (absent or empty) from the latest index copy and the packs in "
                                     "the bucket. Stop the machine that writes to the bucket first, unless "
                                     "--replica is given: a replica is read-only, follows the bucket at every "
                                     "mount (-o ro), and never changes it. See docs/object-store.md.")
    p.add_argument("store", metavar="STORE")
    _data_arguments(p, required=True)
    p.add_argument("--replica", action="store_true", help="make a read-only replica that follows the bucket")

    p = verbs.add_parser("sync", help="commit everything and wait until it is in the object store",
                         description="Commit every closed or fsync'ed file and wait until all pack data and a copy "
                                     "of the index are in the store's bucket (for a store on the local disk: "
                                     "until it is on the disk).")
    p.add_argument("target", metavar="STORE|MOUNTPOINT")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                   help="how long to wait (default %(default).0f)")

    p = verbs.add_parser("stats", help="show logical and stored bytes, savings and chunk counts")
    p.add_argument("target", metavar="STORE|MOUNTPOINT", help="a store, or a mounted chunkfs")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _file_id_verbs(verbs) -> None:
    """The verbs for the store without a mount: files by id."""
    p = verbs.add_parser("ingest", help="store a file under a file id (replacing any previous one)")
    p.add_argument("store", metavar="STORE")
    p.add_argument("file_id", metavar="FILE_ID")
    p.add_argument("path", metavar="PATH", help="file to read, or - for standard input")

    p = verbs.add_parser("cat", help="write a stored file to standard output")
    p.add_argument("store", metavar="STORE")
    p.add_argument("file_id", metavar="FILE_ID")

    p = verbs.add_parser("rm", help="delete stored files")
    p.add_argument("store", metavar="STORE")
    p.add_argument("file_ids", metavar="FILE_ID", nargs="+")

    p = verbs.add_parser("ls", help="list stored file ids")
    p.add_argument("store", metavar="STORE")
    p.add_argument("-l", "--long", action="store_true", help="show sizes too")


def _maintenance_verbs(verbs) -> None:
    """The verbs for space, compression, checks and upgrades."""
    p = verbs.add_parser("gc", help="reclaim the space of chunks no file uses", description=GC_DESCRIPTION)
    p.add_argument("store", metavar="STORE")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")

    p = verbs.add_parser("compress", help="compress now the chunks waiting for compression behind the writers",
                         description="A mount compresses behind its writers (-o compress=behind, the default): "
                                     "compressible chunks are stored raw and compressed when the mount is idle. "
                                     "This does it now, and returns when nothing is left to compress (chunks "
                                     "compressed before the store had a dictionary are compressed again with it).")
    p.add_argument("target", metavar="STORE|MOUNTPOINT", help="a store, or a mounted chunkfs")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")

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

    p = verbs.add_parser("upgrade", help="convert a store of an older format to this chunkfs's format",
                         description="Convert STORE, made by an older chunkfs, to this version's store format, "
                                     "in place. The store must not be mounted. Safe to interrupt: the store is "
                                     "then either still the old one or already the new one, and running "
                                     "'chunkfs upgrade' again finishes the job.")
    p.add_argument("store", metavar="STORE")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _tree_verbs(verbs) -> None:
    """The verbs for copies, snapshots, removal and usage inside a mount (asked of its daemon)."""
    p = verbs.add_parser("clone", help="copy a file or tree inside a mount without copying data (like cp -a)",
                         description="Copy SRC to DST, both on one mounted chunkfs, by metadata: no byte of data "
                                     "is read or written; the copy shares its chunks with the source and is "
                                     "independent of it from then on. Keeps modes, owners (as cp -a run by you "
                                     "would), times, xattrs, ACLs, symlinks, device nodes and hard links. If "
                                     "DST is a directory, the copy goes into it. See docs/usage.md.")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when it worked")

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

    p = verbs.add_parser("rmtree", help="remove a tree of any size at once; its space is freed in the background",
                         description="Remove PATH (a tree of any size, or a file) in one step: it is gone when "
                                     "the command returns, and the daemon deletes its files in the background. "
                                     "Needs the permissions 'rm -rf' would.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--wait", action="store_true", help="return only once everything below PATH is deleted")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when it worked")

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


def _mount_verbs(verbs) -> None:
    """The verbs for mounting and unmounting."""
    p = verbs.add_parser("mount", help="mount a store", epilog=MOUNT_EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Mount STORE on MOUNTPOINT. Without -f, returns once the mount is ready "
                                     "and leaves a daemon serving it.")
    p.add_argument("store", metavar="STORE")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr")
    p.add_argument("-o", dest="options", action="append", metavar="OPT[,OPT...]", help="mount options (below)")

    p = verbs.add_parser("umount", help="unmount and wait until everything is committed",
                         description="Unmount MOUNTPOINT, then wait until its daemon has committed "
                                     "everything and exited.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("-z", "--lazy", action="store_true",
                   help="detach even if busy; the daemon exits when the last open file is closed")
    p.add_argument("--timeout", type=_seconds, default=mounts.DEFAULT_UMOUNT_TIMEOUT, metavar="SECONDS",
                   help="how long to wait for the daemon to exit (default %(default).0f)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when it worked")


def _data_arguments(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--data", metavar="s3://BUCKET/PREFIX", required=required,
                   help="keep pack data in this S3 bucket (credentials: the AWS chain, e.g. AWS_PROFILE)")
    p.add_argument("--endpoint", metavar="URL", help="S3 endpoint of a provider other than AWS, e.g. http://host:8333")
    p.add_argument("--region", metavar="REGION", help="the bucket's region")
