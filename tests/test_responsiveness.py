"""The mount stays responsive while a big file is written and committed.

Another process probes the mount the whole time: a lookup of a name that does
not exist, a directory listing, and a ``statx`` with ``AT_STATX_FORCE_SYNC``
of the file being written (so the kernel asks the daemon instead of answering
from its attribute cache).  Each probe must answer within 100 ms (a few
stragglers allowed for scheduling noise, see STRAGGLERS), while 2 GiB
are written and while the file is committed at close, in two shapes: written
front to back (streamed: chunked while it arrives, close finishes one chunk)
and written out of order (staged: close re-chunks all 2 GiB).  The latency
distribution is printed (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = [pytest.mark.mount, pytest.mark.slow]

MiB = 1024 * 1024
FILE_MIB = 2048
LIMIT = 0.100  # seconds
# On a shared 2-core machine a probe is sometimes descheduled for longer than the daemon takes: allow
# a few stragglers (in runs with a stall watchdog in the daemon, no stall there exceeded 30 ms and no
# gen-2 garbage collection 25 ms, while a probe once took 171 ms), but never a slow tail or a long stall.
STRAGGLERS = 0.005  # share of probes of one kind and phase that may exceed LIMIT
CEILING = 0.5  # seconds no probe may exceed

PROBER = textwrap.dedent("""
    import ctypes, json, os, sys, threading, time
    mnt, target = sys.argv[1], sys.argv[2]
    libc = ctypes.CDLL(None, use_errno=True)
    AT_FDCWD, AT_STATX_FORCE_SYNC, STATX_BASIC_STATS = -100, 0x2000, 0x7FF
    buf = ctypes.create_string_buffer(256)

    def statx(path):
        if libc.statx(AT_FDCWD, os.fsencode(path), AT_STATX_FORCE_SYNC, STATX_BASIC_STATS, buf) != 0:
            raise OSError(ctypes.get_errno(), path)

    def missing(i):
        try:
            os.stat(os.path.join(mnt, f"missing-{os.getpid()}-{i}"))
        except FileNotFoundError:
            pass

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    samples, i = [], 0
    print("ready", flush=True)
    while not stop.is_set():
        i += 1
        for name, probe in (("lookup", lambda: missing(i)), ("ls", lambda: os.listdir(mnt)),
                            ("stat", lambda: statx(target))):
            started = time.monotonic()
            probe()
            samples.append((name, started, time.monotonic() - started))
        time.sleep(0.005)
    json.dump(samples, sys.stdout)
""")


class Prober:
    """The probing process; ``samples()`` ends it and returns (kind, start, latency) triples."""

    def __init__(self, mountpoint, target):
        self.proc = subprocess.Popen([sys.executable, "-c", PROBER, str(mountpoint), str(target)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def samples(self) -> list[tuple[str, float, float]]:
        out, _ = self.proc.communicate(timeout=60)
        return [tuple(s) for s in json.loads(out)]


def _block(i: int, bases: list[bytes]) -> bytes:
    base = bases[i % len(bases)]
    return i.to_bytes(8, "little") * 16 + base[128:]


def _distribution(latencies: list[float]) -> str:
    xs = sorted(latencies)
    if not xs:
        return "no samples"

    def pct(p: float) -> float:
        return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000

    return (f"n={len(xs)} median={pct(0.5):.1f} ms p90={pct(0.9):.1f} p99={pct(0.99):.1f} "
            f"max={xs[-1] * 1000:.1f}")


def _write_and_close(mounted_fs, order: list[int]) -> dict[str, list[tuple[str, float, float]]]:
    path = mounted_fs / "big"
    path.write_bytes(b"")
    bases = [os.urandom(MiB) for _ in range(8)]
    prober = Prober(mounted_fs.mountpoint, path)
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            started = time.monotonic()
            for i in order:
                os.pwrite(fd, _block(i, bases), i * MiB)
            written = time.monotonic()
        finally:
            os.close(fd)
        closed = time.monotonic()
        time.sleep(0.2)
    finally:
        samples = prober.samples()
    print(f"\n{FILE_MIB} MiB: write {written - started:.1f} s, close {closed - written:.2f} s")
    assert os.stat(path).st_size == FILE_MIB * MiB
    return {"write": [s for s in samples if started <= s[1] < written],
            "close": [s for s in samples if written <= s[1] < closed]}


def _check(phases: dict[str, list[tuple[str, float, float]]]) -> None:
    problems = []
    for phase, samples in phases.items():
        for kind in ("lookup", "ls", "stat"):
            latencies = [s[2] for s in samples if s[0] == kind]
            print(f"  {phase:5} {kind:6}: {_distribution(latencies)}")
            slow = [lat for lat in latencies if lat > LIMIT]
            if len(slow) > STRAGGLERS * len(latencies) or any(lat > CEILING for lat in slow):
                problems.append(f"{phase} {kind}: {len(slow)} of {len(latencies)} over {LIMIT * 1000:.0f} ms "
                                f"({', '.join(f'{lat * 1000:.0f}' for lat in slow)} ms)")
    assert phases["write"], "no probe answered while the file was written"
    assert not problems, "; ".join(problems)


def test_responsive_while_streaming_a_big_file(mounted_fs):
    _check(_write_and_close(mounted_fs, list(range(FILE_MIB))))


def test_responsive_while_committing_a_staged_big_file(mounted_fs):
    """Written last block first: everything is staged and close re-chunks all of it."""
    phases = _write_and_close(mounted_fs, list(reversed(range(FILE_MIB))))
    assert phases["close"], "no probe answered while the file was committed"
    _check(phases)
