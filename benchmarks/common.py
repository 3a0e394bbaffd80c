"""Small helpers every benchmark module shares: disk usage, timing, subprocesses, result records.

Savings are always computed here, the same way for every tool, so that no tool
is measured by a kinder rule than another.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

MB = 1_000_000  # throughput is reported in MB/s (10^6 bytes), as disk tools do
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def chunkfs_cli() -> list[str]:
    """This checkout's CLI, run with this interpreter (not whatever `chunkfs` is first on PATH)."""
    return [sys.executable, "-m", "chunkfs.cli"]


def checkout_env() -> dict:
    """Environment additions that make a child Python import this checkout's chunkfs first."""
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": REPO + (os.pathsep + path if path else "")}


def du_bytes(path: str | os.PathLike) -> int:
    """Allocated bytes under ``path`` as ``du -s --block-size=1`` counts them.

    Counts st_blocks (what the disk really holds: sparse holes are free, a
    4 KiB block per small file is not) and each hard-linked inode once.
    """
    path = os.fspath(path)
    seen: set[tuple[int, int]] = set()
    total = _blocks_once(path, seen)
    for root, dirs, files in os.walk(path):  # yields nothing for a plain file
        for name in [*dirs, *files]:
            total += _blocks_once(os.path.join(root, name), seen)
    return total


def _blocks_once(path: str, seen: set) -> int:
    try:
        st = os.lstat(path)
    except FileNotFoundError:  # a tool's temp file vanished mid-walk
        return 0
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return 0
    seen.add(key)
    return st.st_blocks * 512


ADDRESS_BYTES = 32  # a chunk's SHA-256 address (docs/store-format.md)


def savings_pct(data_bytes: int, logical_bytes: int) -> float | None:
    """1 − stored / logical, in percent; None when nothing was stored."""
    if not logical_bytes:
        return None
    return round(100.0 * (1.0 - data_bytes / logical_bytes), 2)


def run(cmd: list[str], cwd=None, env=None, timeout: float | None = None, check: bool = True,
        stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    """Run a command with captured text output; raise ToolError with its stderr tail on failure."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, timeout=timeout, stdin=stdin,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ToolError(f"{' '.join(cmd[:3])}… exited {proc.returncode}: {' | '.join(tail)}")
    return proc


class ToolError(RuntimeError):
    """A tool under test failed: the harness records it as a failed cell and goes on."""


class Timer:
    """Wall-clock stopwatch (``with Timer() as t: ...; t.seconds``)."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


@dataclass
class Result:
    """One tool on one workload: what it occupies, how long it took, and how it was set up.

    ``empty_bytes`` is the du of the freshly initialised, empty repository (or
    pool, or store): a fixed cost that does not grow with the data.  The
    headline ``savings_pct`` is computed from ``disk_bytes - empty_bytes`` so
    that small benchmark scales do not penalise a tool for a one-off cost;
    ``raw_savings_pct`` keeps the figure with it included.
    """

    tool: str
    workload: str
    status: str = "ok"  # ok | skipped | error
    message: str = ""
    logical_bytes: int = 0
    disk_bytes: int = 0
    empty_bytes: int = 0
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)

    @property
    def data_bytes(self) -> int:
        return max(0, self.disk_bytes - self.empty_bytes)

    @property
    def savings_pct(self) -> float | None:
        return savings_pct(self.data_bytes, self.logical_bytes) if self.status == "ok" else None

    @property
    def raw_savings_pct(self) -> float | None:
        return savings_pct(self.disk_bytes, self.logical_bytes) if self.status == "ok" else None

    @property
    def chunking_alone_pct(self) -> float | None:
        """chunkfs only: the savings in unique chunk bytes, before any byte of index, pack header
        or block rounding.  The on-disk figure can only be lower, so this bounds what any
        metadata layout could reach with the same chunks."""
        stored = self.settings.get("store_stored_bytes")
        if self.status != "ok" or stored is None:
            return None
        return savings_pct(stored, self.logical_bytes)

    @property
    def address_floor_pct(self) -> float | None:
        """chunkfs only: chunking alone less one 32-byte SHA-256 address per unique chunk, the one
        record any layout of this design must keep per chunk; no index format can do better."""
        stored, chunks = self.settings.get("store_stored_bytes"), self.settings.get("store_unique_chunks")
        if self.status != "ok" or stored is None or chunks is None:
            return None
        return savings_pct(stored + ADDRESS_BYTES * chunks, self.logical_bytes)

    @property
    def mb_per_s(self) -> float | None:
        if self.status != "ok" or self.seconds <= 0:
            return None
        return round(self.logical_bytes / MB / self.seconds, 1)

    def to_json(self) -> dict:
        out = asdict(self)
        out.update(data_bytes=self.data_bytes, savings_pct=self.savings_pct,
                   raw_savings_pct=self.raw_savings_pct, chunking_alone_pct=self.chunking_alone_pct,
                   address_floor_pct=self.address_floor_pct, mb_per_s=self.mb_per_s)
        return out

    def line(self) -> str:
        """One human line for the progress log."""
        head = f"{self.workload:<14} {self.tool:<18}"
        if self.status != "ok":
            return f"{head} {self.status}: {self.message}"
        return (f"{head} savings {self.savings_pct:6.2f}%  ingest {self.seconds:7.2f} s"
                f"  {self.mb_per_s or 0:7.1f} MB/s")


def skipped(tool: str, workload: str, message: str) -> Result:
    return Result(tool=tool, workload=workload, status="skipped", message=message)


def failed(tool: str, workload: str, message: str) -> Result:
    return Result(tool=tool, workload=workload, status="error", message=message)
