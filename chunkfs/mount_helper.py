"""``mount.chunkfs``: the helper mount(8) runs for ``-t chunkfs`` / ``-t fuse.chunkfs`` and fstab lines.

mount(8) calls ``/sbin/mount.<type> SPEC DIR [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]``
(see mount(8), "External helpers").  The helper drops the options that are
mount(8)'s and fstab's own business (``defaults``, ``noauto``, ``_netdev``,
``nofail``, ``x-systemd.*``, ...), then mounts exactly like ``chunkfs mount``
in the background: it returns once the mount is ready, which is what mount(8)
and systemd expect of a helper.

Exit codes follow mount(8): 0 mounted, 1 wrong usage, 32 mount failure.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import daemon
from .errors import ChunkfsError, InvalidArgument
from .mountopts import is_mount8_only, parse_options, split_options

EXIT_USAGE = 1
EXIT_MOUNT_FAILURE = 32
TYPES = ("chunkfs", "fuse.chunkfs")


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise _UsageError(message)


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="mount(8) helper for chunkfs: mount STORE on MOUNTPOINT.")
    parser.add_argument("store", metavar="STORE")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS")
    parser.add_argument("-s", dest="sloppy", action="store_true", help="ignore unknown options")
    parser.add_argument("-f", dest="fake", action="store_true", help="check everything, mount nothing")
    parser.add_argument("-n", dest="no_mtab", action="store_true", help="accepted; there is no mtab to write")
    parser.add_argument("-v", dest="verbose", action="store_true", help="say what is being mounted")
    parser.add_argument("-t", dest="type", metavar="TYPE", help="chunkfs or fuse.chunkfs")
    parser.add_argument("-N", dest="namespace", metavar="NS", help="not supported")
    return parser


def chunkfs_options(texts: list[str], sloppy: bool) -> tuple[list[str], list[str]]:
    """Split mount(8)'s option strings into those chunkfs takes and those it drops (with -s, unknown ones too)."""
    kept, dropped = [], []
    for item in (i for text in texts for i in split_options(text)):
        if is_mount8_only(item):
            dropped.append(item)
            continue
        if sloppy:
            try:
                parse_options(item)
            except InvalidArgument:
                dropped.append(item)
                continue
        kept.append(item)
    return kept, dropped


def run(args: argparse.Namespace, prog: str) -> None:
    if args.type is not None and args.type not in TYPES:
        raise _UsageError(f"unsupported type {args.type!r} (use {' or '.join(TYPES)})")
    if args.namespace is not None:
        raise _UsageError("-N (mount namespaces) is not supported")
    kept, dropped = chunkfs_options(args.options, args.sloppy)
    opts = parse_options(",".join(kept))
    if args.fake:  # -f: check everything, mount nothing, and say so
        daemon.check_mountable(args.store, args.mountpoint, opts)
    if args.verbose:
        ignored = f" (ignoring {','.join(dropped)})" if dropped else ""
        print(f"{prog}: {'would mount' if args.fake else 'mounting'} {args.store} on {args.mountpoint} "
              f"with options '{opts.as_string() or 'none'}'{ignored}")
    if not args.fake:
        daemon.mount(args.store, args.mountpoint, opts, foreground=False)


def main(argv: Sequence[str] | None = None) -> int:
    prog = os.path.basename(sys.argv[0]) if argv is None else "mount.chunkfs"
    if prog.endswith(".py"):  # python -m chunkfs.mount_helper
        prog = "mount.chunkfs"
    try:
        args = build_parser(prog).parse_args(argv)
        run(args, prog)
    except _UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except ChunkfsError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_MOUNT_FAILURE
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{prog}: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_MOUNT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
