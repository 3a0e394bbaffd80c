"""Peer tools run on the same bytes as chunkfs: borg, restic, casync, bup and zfs-fuse (dedup=on).

Each peer ingests a workload directory into a fresh repository (or pool), and
is measured by the bytes that repository really occupies (du), minus the du of
the same repository when empty (its fixed cost; the raw figure is kept too).
By default each peer runs with its compression on (``compress``: borg zstd,
restic auto, casync zstd, bup's zlib, zfs-fuse zstd, lz4 or its default
lzjb, whichever it has), as chunkfs does; with ``compress=False`` it is off
wherever the tool allows it, so the figure is dedup alone.  Each peer's
``settings()`` says what it used and where compression could not be turned
off.  Caches the tools keep outside their repository (borg's and
restic's local caches, bup's file index) are kept out of the measured
directory, as they would be on a user's machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

from .common import Result, Timer, ToolError, du_bytes, failed, run

INGEST_TIMEOUT = 3 * 3600
ZFS_COMPRESSION = ("zstd", "lz4", "on")  # the first that zfs-fuse accepts ("on": its default, lzjb)
BORG_CHUNKER = "buzhash,12,23,16,4095"  # min 4 KiB, max 8 MiB, 2^16 mask: ~64 KiB average
CASYNC_CHUNK = "16384:65536:262144"  # casync's own default, stated explicitly
RESTIC_PASSWORD = "chunkfs-bench"


class Peer:
    """A tool under comparison.  Subclasses fill in the commands; :func:`measure` drives them."""

    name = ""
    package = ""  # Debian package providing it
    binary = ""
    version_string = ""  # filled in by setup_peers
    compress = True  # its compression on (set by setup_peers)

    def available(self) -> bool:
        return shutil.which(self.binary) is not None

    def version(self) -> str:
        return ""

    def check(self, scratch: str) -> None:
        """Raise ToolError if the tool cannot run here (called once before any workload)."""

    def settings(self) -> dict:
        return {}

    def prepare(self, repo: str, logical_bytes: int) -> None:
        """Create an empty repository at ``repo`` (a fresh directory)."""
        raise NotImplementedError

    def empty_bytes(self, repo: str) -> int:
        return du_bytes(repo)

    def ingest(self, src: str, repo: str) -> None:
        raise NotImplementedError

    def footprint(self, repo: str) -> int:
        return du_bytes(repo)

    def chunk_stats(self, repo: str) -> dict:
        """What the tool reports about its chunks (average size), where it reports it."""
        return {}

    def cleanup(self, repo: str) -> None:
        shutil.rmtree(repo, ignore_errors=True)

    def teardown(self) -> None:
        """Release anything started in ``check`` (daemons)."""


# -- borg -------------------------------------------------------------------------------

class Borg(Peer):
    name, package, binary = "borg", "borgbackup", "borg"

    def _env(self, repo: str) -> dict:
        home = repo + ".home"  # caches and keys live outside the measured repo
        return {"BORG_BASE_DIR": home, "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
                "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes", "BORG_PASSPHRASE": ""}

    def version(self) -> str:
        return run(["borg", "--version"]).stdout.strip()

    def _compression(self) -> str:
        return "zstd,3" if self.compress else "none"

    def settings(self) -> dict:
        return {"chunker": BORG_CHUNKER, "compression": f"--compression {self._compression()}",
                "encryption": "none"}

    def prepare(self, repo: str, logical_bytes: int) -> None:
        run(["borg", "init", "--encryption", "none", repo], env=self._env(repo))

    def ingest(self, src: str, repo: str) -> None:
        run(["borg", "create", "--compression", self._compression(), "--chunker-params", BORG_CHUNKER,
             f"{repo}::bench", "."], cwd=src, env=self._env(repo), timeout=INGEST_TIMEOUT)

    def chunk_stats(self, repo: str) -> dict:
        info = json.loads(run(["borg", "info", "--json", repo], env=self._env(repo)).stdout)
        stats = info["cache"]["stats"]
        chunks = stats["total_unique_chunks"]
        return {"unique_chunks": chunks,
                "avg_chunk_bytes": round(stats["unique_size"] / chunks) if chunks else None}

    def cleanup(self, repo: str) -> None:
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(repo + ".home", ignore_errors=True)


# -- restic ------------------------------------------------------------------------------

class Restic(Peer):
    name, package, binary = "restic", "restic", "restic"

    def __init__(self) -> None:
        self._can_disable = None  # learnt from --help: repository v2 and --compression arrived in 0.14

    def _env(self, repo: str) -> dict:
        return {"RESTIC_PASSWORD": RESTIC_PASSWORD, "RESTIC_REPOSITORY": repo,
                "RESTIC_CACHE_DIR": repo + ".cache"}

    def version(self) -> str:
        return run(["restic", "version"]).stdout.strip()

    def check(self, scratch: str) -> None:
        self._can_disable = "--compression" in run(["restic", "backup", "--help"]).stdout

    def settings(self) -> dict:
        if self._can_disable:
            comp = f"--compression {'auto' if self.compress else 'off'} (repository v2)"
        else:
            comp = "none: this restic predates compression (repository v1 stores data uncompressed)"
        return {"chunker": "Rabin CDC, 512 KiB min / ~1 MiB avg / 8 MiB max (fixed by restic; its polynomial "
                           "is random per repository, so its savings vary from run to run)",
                "compression": comp, "encryption": "always on (restic cannot disable it)"}

    def prepare(self, repo: str, logical_bytes: int) -> None:
        extra = ["--repository-version", "2"] if self._can_disable else []
        run(["restic", "init", *extra], env=self._env(repo))

    def ingest(self, src: str, repo: str) -> None:
        extra = ["--compression", "auto" if self.compress else "off"] if self._can_disable else []
        run(["restic", "backup", "--quiet", *extra, "."], cwd=src, env=self._env(repo),
            timeout=INGEST_TIMEOUT)

    def chunk_stats(self, repo: str) -> dict:
        out = run(["restic", "stats", "--mode", "raw-data", "--json"], env=self._env(repo)).stdout
        stats = json.loads(out)
        blobs = stats.get("total_blob_count") or 0
        size = stats.get("total_uncompressed_size") or stats.get("total_size") or 0
        return {"unique_blobs": blobs, "avg_chunk_bytes": round(size / blobs) if blobs else None}

    def cleanup(self, repo: str) -> None:
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(repo + ".cache", ignore_errors=True)


# -- casync ------------------------------------------------------------------------------

class Casync(Peer):
    name, package, binary = "casync", "casync", "casync"

    def version(self) -> str:
        return run(["casync", "--version"]).stdout.strip()

    def settings(self) -> dict:
        if self.compress:
            return {"chunker": f"buzhash CDC, min:avg:max = {CASYNC_CHUNK}", "compression": "--compression=zstd"}
        return {"chunker": f"buzhash CDC, min:avg:max = {CASYNC_CHUNK}",
                "compression": "zstd: casync cannot turn chunk compression off (zstd, xz or gzip only), "
                               "so its figures include compression on compressible data"}

    def prepare(self, repo: str, logical_bytes: int) -> None:
        os.makedirs(os.path.join(repo, "store"))

    def ingest(self, src: str, repo: str) -> None:
        run(["casync", "make", f"--store={os.path.join(repo, 'store')}", f"--chunk-size={CASYNC_CHUNK}",
             "--compression=zstd", os.path.join(repo, "index.caidx"), src], timeout=INGEST_TIMEOUT)

    def chunk_stats(self, repo: str) -> dict:
        chunks = sum(len([f for f in files if f.endswith(".cacnk")])
                     for _, _, files in os.walk(os.path.join(repo, "store")))
        return {"unique_chunks": chunks}


# -- bup ------------------------------------------------------------------------------------

class Bup(Peer):
    name, package, binary = "bup", "bup", "bup"

    def _env(self, repo: str) -> dict:
        return {"BUP_DIR": repo, "HOME": repo + ".home"}

    def version(self) -> str:
        return run(["bup", "--version"]).stdout.strip()

    def settings(self) -> dict:
        return {"chunker": "rolling-sum split, ~8 KiB average (fixed by bup)",
                "compression": "zlib level 1 (save's default)" if self.compress else "off (save --compress=0)"}

    def prepare(self, repo: str, logical_bytes: int) -> None:
        os.makedirs(repo + ".home", exist_ok=True)
        run(["bup", "init"], env=self._env(repo))

    def ingest(self, src: str, repo: str) -> None:
        index = repo + ".home/bupindex"  # bup's file index is a cache: keep it out of the repo
        env = self._env(repo)
        run(["bup", "index", "-f", index, src], env=env, timeout=INGEST_TIMEOUT)
        level = [] if self.compress else ["--compress=0"]
        run(["bup", "save", "-f", index, "-n", "bench", *level, src], env=env, timeout=INGEST_TIMEOUT)

    def chunk_stats(self, repo: str) -> dict:
        """bup stores chunks as git blobs: count them (a few small metadata blobs are counted too)."""
        out = run(["git", f"--git-dir={repo}", "cat-file", "--batch-all-objects",
                   "--batch-check=%(objecttype) %(objectsize)"]).stdout
        sizes = [int(size) for kind, size in (ln.split() for ln in out.splitlines()) if kind == "blob"]
        return {"unique_chunks": len(sizes),
                "avg_chunk_bytes": round(sum(sizes) / len(sizes)) if sizes else None}

    def cleanup(self, repo: str) -> None:
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(repo + ".home", ignore_errors=True)


# -- zfs-fuse ---------------------------------------------------------------------------------

class ZfsFuse(Peer):
    """zfs-fuse with dedup=on on a file-backed pool: the closest *mounted* peer.

    The pool's backing file is sparse, so its du is what the pool really
    occupies.  Ingest is ``cp -a`` into the mounted dataset, ``sync``, and
    ``zpool export`` (which commits and unmounts), so late commits are timed.
    """

    name, package, binary = "zfs-fuse", "zfs-fuse", "zfs-fuse"

    def __init__(self) -> None:
        self.pool = f"cfsbench{os.getpid()}"
        self._daemon_pid: int | None = None
        self._empty: dict[str, int] = {}
        self._last_list: list[str] = []  # `zpool list` (alloc, dedupratio) of the last ingested pool
        self._algorithm: str | None = None  # the first of ZFS_COMPRESSION this zfs-fuse accepts

    def version(self) -> str:
        proc = run(["dpkg-query", "-W", "-f", "${Version}", "zfs-fuse"], check=False)
        return f"zfs-fuse {proc.stdout.strip()}" if proc.returncode == 0 else "zfs-fuse"

    def settings(self) -> dict:
        if self.compress:
            what = f"compression={self._algorithm}" + (" (lzjb: this zfs-fuse has no zstd or lz4)"
                                                       if self._algorithm == "on" else "")
        else:
            what = "off (compression=off)"
        return {"chunker": "fixed 128 KiB records (recordsize default), block-level dedup",
                "compression": what, "dedup": "on", "vdev": "sparse file"}

    def check(self, scratch: str) -> None:
        if run(["zpool", "list"], check=False).returncode == 0:
            return  # a daemon is already running: use it, and leave it running afterwards
        pidfile = os.path.join(scratch, "zfs-fuse.pid")
        self._start_daemon(pidfile)
        deadline = time.monotonic() + 15
        while run(["zpool", "list"], check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise ToolError("zfs-fuse daemon started but zpool cannot reach it")
            time.sleep(0.2)
        with open(pidfile) as fh:
            self._daemon_pid = int(fh.read().strip())

    @staticmethod
    def _start_daemon(pidfile: str) -> None:
        """Start zfs-fuse; retry while a previous daemon (which takes seconds to stop) holds its lock."""
        for attempt in range(4):
            if run(["zfs-fuse", "--no-kstat-mount", "--pidfile", pidfile], check=False).returncode == 0:
                return
            time.sleep(2 + 2 * attempt)
        raise ToolError("the zfs-fuse daemon would not start (another zfs-fuse still running, "
                        "holding /var/lock/zfs/zfs_lock?)")

    def _vdev(self, repo: str) -> str:
        return os.path.join(repo, "vdev")

    def _mnt(self, repo: str) -> str:
        return repo + ".mnt"

    def prepare(self, repo: str, logical_bytes: int) -> None:
        os.makedirs(repo)
        os.makedirs(self._mnt(repo), exist_ok=True)
        with open(self._vdev(repo), "wb") as fh:  # sparse: du counts only what zfs writes
            fh.truncate(max(512 << 20, 3 * logical_bytes))
        self._create_pool(repo)
        run(["zpool", "export", self.pool])
        self._empty[repo] = du_bytes(self._vdev(repo))  # measured exported: nothing in flight
        run(["zpool", "import", "-d", repo, self.pool])

    def _create_pool(self, repo: str) -> None:
        """The pool, with the best compression this zfs-fuse has (found at the first pool: it is old)."""
        choices = [self._algorithm] if self._algorithm else list(ZFS_COMPRESSION) if self.compress else ["off"]
        for n, algorithm in enumerate(choices):
            proc = run(["zpool", "create", "-f", "-m", self._mnt(repo), "-O", "dedup=on", "-O",
                        f"compression={algorithm}", "-O", "atime=off", self.pool, self._vdev(repo)],
                       check=n == len(choices) - 1)
            if proc.returncode == 0:
                self._algorithm = algorithm
                return

    def empty_bytes(self, repo: str) -> int:
        return self._empty[repo]

    def ingest(self, src: str, repo: str) -> None:
        run(["cp", "-a", f"{src}/.", self._mnt(repo)], timeout=INGEST_TIMEOUT)
        run(["sync"])
        run(["zpool", "export", self.pool])

    def footprint(self, repo: str) -> int:
        """du of the exported pool's file; then, untimed, what zfs itself counts (ALLOC) for reference."""
        size = du_bytes(self._vdev(repo))
        run(["zpool", "import", "-d", repo, self.pool])
        self._last_list = run(["zpool", "list", "-H", "-o", "alloc,dedupratio", self.pool]).stdout.split()
        run(["zpool", "export", self.pool])
        return size

    def chunk_stats(self, repo: str) -> dict:
        alloc, ratio = (self._last_list or ["?", "?"])[:2]
        return {"zpool_alloc": alloc, "zpool_alloc_bytes": _parse_zfs_size(alloc), "zpool_dedupratio": ratio}

    def cleanup(self, repo: str) -> None:
        if run(["zpool", "list", self.pool], check=False).returncode == 0:
            run(["zpool", "destroy", "-f", self.pool], check=False)
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(self._mnt(repo), ignore_errors=True)

    def teardown(self) -> None:
        if self._daemon_pid is None:
            return
        try:
            os.kill(self._daemon_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        for _ in range(300):  # it takes a few seconds to flush and exit
            if not _alive(self._daemon_pid):
                break
            time.sleep(0.1)
        self._daemon_pid = None


def _parse_zfs_size(text: str) -> int | None:
    """zpool's rounded human size ('130M', '1.21G', '616K') in bytes; None if unparsable."""
    units = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = text[:-1], text[-1:]
    if unit.isdigit():
        number, unit = text, ""
    try:
        return round(float(number) * units[unit.upper()])
    except (ValueError, KeyError):
        return None


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (the daemon's parent is init, which may not reap it) is dead."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


PEERS: dict[str, type[Peer]] = {"borg": Borg, "restic": Restic, "casync": Casync, "bup": Bup,
                                "zfs-fuse": ZfsFuse}


# -- setup and measurement ---------------------------------------------------------------

def _apt_install(packages: list[str]) -> str | None:
    """Install Debian packages; return an error line, or None on success."""
    if not packages:
        return None
    if not shutil.which("apt-get"):
        return "apt-get not found (not a Debian system?)"
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    if run(cmd, env=env, check=False, timeout=1800).returncode == 0:
        return None
    run(["apt-get", "update", "-q"], env=env, check=False, timeout=600)  # a stale list is the usual cause
    proc = run(cmd, env=env, check=False, timeout=1800)
    if proc.returncode == 0:
        return None
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
    return f"apt-get install {' '.join(packages)} failed: {tail[0]}"


def setup_peers(names: list[str], scratch: str, install: bool = True, log=print,
                compress: bool = True) -> dict[str, Peer]:
    """Instantiate, install (from Debian packages) and smoke-check the named peers.

    ``compress``: each with its compression on (else off where it can be).
    A peer that cannot be installed or run here is skipped with one line in the
    log; the rest go ahead.
    """
    peers = {n: PEERS[n]() for n in names}
    for peer in peers.values():
        peer.compress = compress
    missing = [p.package for p in peers.values() if not p.available()]
    if missing and install:
        err = _apt_install(missing)
        if err:
            log(f"peers: {err}; trying the ones that are present")
    ready: dict[str, Peer] = {}
    for name, peer in peers.items():
        if not peer.available():
            log(f"skip {name}: `{peer.binary}` not installed (Debian package {peer.package})")
            continue
        try:
            peer.check(scratch)
            peer.version_string = peer.version()
        except (ToolError, OSError, subprocess.SubprocessError) as exc:
            log(f"skip {name}: cannot run here: {exc}")
            peer.teardown()
            continue
        ready[name] = peer
    return ready


def measure(peer: Peer, workload, scratch: str) -> Result:
    """Ingest one workload with one peer into a fresh repo; du it; clean up."""
    repo = os.path.join(scratch, f"{peer.name}-{workload.name}")
    peer.cleanup(repo)
    try:
        peer.prepare(repo, workload.logical_bytes)
        empty = peer.empty_bytes(repo)
        with Timer() as timer:
            peer.ingest(workload.path, repo)
        result = Result(tool=peer.name, workload=workload.name, logical_bytes=workload.logical_bytes,
                        disk_bytes=peer.footprint(repo), empty_bytes=empty, seconds=timer.seconds,
                        settings={**peer.settings(), **_safe_chunk_stats(peer, repo)})
    except (ToolError, OSError, subprocess.SubprocessError) as exc:
        result = failed(peer.name, workload.name, str(exc))
    finally:
        peer.cleanup(repo)
    return result


def _safe_chunk_stats(peer: Peer, repo: str) -> dict:
    try:
        return peer.chunk_stats(repo)
    except (ToolError, OSError, ValueError, KeyError) as exc:
        return {"chunk_stats_error": str(exc)}
