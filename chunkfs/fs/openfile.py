"""The contents of one regular file while it is open: staging, read-your-writes, commit.

A file's committed contents are its manifest in the store (the *base*).
While handles are open, changes live in one of two places, never in memory
beyond a chunk or two:

* **Stream** — a writer that appends at end of file (a new file written front
  to back, or an append to an existing one) is chunked while the bytes arrive:
  each finished chunk is hashed, deduplicated and put (pinned) in the store at
  once, so closing the file only has to cut the last chunk, and nothing is
  written twice.  An append to a committed file restarts chunking at the start
  of its last chunk, whose end was only cut by end-of-file.  A rewrite in
  place streams too, once a run written front to back over the committed
  bytes reaches REWRITE_STREAM_MIN: it starts at the base chunk holding the
  run's first byte, and its commit chunks on into the base until a cut meets
  a base cut, as an overlay's commit does (below).
* **Overlay** — any other write goes to a sparse per-inode staging file at
  the same offset, and an interval set remembers which ranges are dirty.
  Reads merge overlay, base and zeros (for holes and truncated tails).

With chunking behind the writer (``-o chunking=behind``, fs/behind.py), a
file past SMALL_FILE never streams, and its close and fsync may stage the
overlay instead of committing it (staged_changes.py).

A hole (bytes never written: past the old end after a truncate or a write
beyond end of file, or a hole already in the base) is committed as a hole
reference, which stores nothing.  Committing an overlay re-chunks only what
changed and keeps the base's chunks wherever the cuts meet again (rechunk.py).

Thread safety: every public method takes the instance lock and may block on
disk IO or CPU.  This class is also the one place that decides whether a data
call may run on the FUSE event loop: called with ``nowait=True``, ``read``,
``write`` and ``commit`` either finish at once, cheaply, or raise WouldBlock
before changing anything, and the adapter then repeats the call in a worker
thread.  Cheap means: no other thread holds the file, no wait for the stream's
pump, no re-chunking of a big file, and no long read from the disk (see
``read``).  A commit hook runs inside the store's write transaction while that
lock is held: it must only write LMDB records and must not wait for any other lock.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
from collections.abc import Callable

import lmdb

from ..errors import FileNotFoundInStore, FileTooLargeError, StoreFullError, WouldBlock
from ..linux_calls import start_writeback
from ..store import MAX_FILE_SIZE, TO_END, ChunkRef, ChunkStore, ManifestEntry, Patch
from .behind import StagedState
from .chunkrun import ChunkRun
from .intervals import IntervalSet
from .rechunk import READ_BLOCK, RECHUNK_FIRST_BLOCK, BaseEdit, base_entry
from .staged_changes import StagedChanges
from .stream import ChunkStream

log = logging.getLogger(__name__)

Hook = Callable[[lmdb.Transaction], None]
Around = Callable[[ChunkRun], None]
SMALL_FILE = 256 * 1024  # a file this small is read, written and committed on the event loop
# A write that makes a run of at least this many bytes written front to back over a file's committed
# contents streams the rest of the run (a rewrite in place), rather than staging it for re-chunking at commit.
REWRITE_STREAM_MIN = 1024 * 1024
WRITE_BEHIND = 32 * 1024 * 1024  # with chunking behind: staged bytes written between two starts of writeback


def file_id_for(ino: int) -> bytes:
    """The store file id holding an inode's contents."""
    return ino.to_bytes(8, "big")


class _Held:
    """``with`` a FileData's lock (its ``_held``).  A class, not a generator: every read and write of an
    open file passes through it, and a generator-based context manager costs about a microsecond more."""

    __slots__ = ("data", "nowait")

    def __init__(self, data: "FileData", nowait: bool):
        self.data, self.nowait = data, nowait

    def __enter__(self) -> None:
        if not self.data._lock.acquire(blocking=not self.nowait):
            raise WouldBlock(f"inode {self.data.ino} is busy in another thread")

    def __exit__(self, *exc) -> None:
        self.data._lock.release()


class FileData(StagedChanges):
    """See the module docstring.  One instance per inode, shared by all its handles."""

    behind = False  # chunking behind the writer (fs/behind.py): past SMALL_FILE, no stream; set by the opener

    def __init__(self, store: ChunkStore, ino: int, size: int, on_commit: Hook | None = None):
        self.store = store
        self.ino = ino
        self.file_id = file_id_for(ino)
        self.on_commit = on_commit
        self._lock = threading.RLock()
        self._committed = self._stored_size(size)  # size of the base
        self._base_limit = self._committed  # base bytes at or past this were truncated away
        self._size = size
        self._dirty = IntervalSet()
        self._stream: ChunkStream | None = None
        self._staging_fd: int | None = None
        self._staging_path = os.path.join(store.staging_dir, f"{ino:016x}")
        self._recorded: IntervalSet | None = None  # the ranges a live staged record names (fs/behind.py)
        self._staged_as: StagedState | None = None  # and what it says
        self._committing: int | None = None  # the size a commit of the record stores (not the file's size now)
        self._unsent = (MAX_FILE_SIZE, 0)  # staged bytes written since the last start of their writeback

    def _stored_size(self, size: int) -> int:
        try:
            return self.store.size(self.file_id)
        except FileNotFoundInStore:
            return 0

    # -- state ----------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    @property
    def committing_size(self) -> int:
        """The size the commit under way stores (a commit hook's view): the file's, or its staged record's."""
        return self._size if self._committing is None else self._committing

    @property
    def dirty(self) -> bool:
        with self._lock:
            return self._is_dirty()

    def _is_dirty(self) -> bool:
        return bool(self._stream or self._dirty or self._size != self._committed
                    or self._base_limit != self._committed)

    # -- reading ----------------------------------------------------------------

    def _held(self, nowait: bool) -> "_Held":
        """The instance lock; with ``nowait``, WouldBlock rather than wait for a thread that holds it."""
        return _Held(self, nowait)

    def _small(self, end: int = 0) -> bool:
        """Whether the file (grown to ``end``) is small enough that any call on it is cheap.

        A file of at most 256 KiB costs microseconds to read, write or commit,
        less than handing the call to a worker thread and back; untar and rsync
        of many small files spend most of their requests here.
        """
        return max(self._size, end) <= SMALL_FILE

    def read(self, offset: int, length: int, nowait: bool = False,
             around: Around | None = None) -> bytes | memoryview:
        """Bytes ``[offset, offset+length)``, short at end of file.

        With ``nowait`` (the event loop), WouldBlock where the read could wait
        on another thread (a commit, a truncate or a write may hold this file
        for seconds, and a stream's reads wait until its chunks are stored),
        and for a long read that would have to wait for the disk.  Short
        reads (a small file, or at most the store's minimum chunk size: one
        or two chunks) run now, waiting for the disk if need be: their preads
        and xxh3 check cost tens of microseconds, less than the hop to a
        thread and back (cold 4 KiB random reads of a 1 GiB file, 3 runs:
        daemon CPU per read 216 us with the hop, 144 us without).  Long reads
        (the kernel's 128 KiB and read-ahead requests) of a clean file run now
        when the page cache holds every chunk (``ChunkStore.read_view`` with
        ``nowait``): a few microseconds per chunk, while threads and the loop
        taking turns at the GIL cost more (1 GiB through a fresh mount, the
        packs' pages cached, 3 runs: 1.2-1.4 s in threads, 0.65 s here).

        ``around(run)`` gets the whole verified chunks a short read of a clean
        file fetched (for read-around, readaround.py); the caller passes it
        only when nobody can write the file.
        """
        with self._held(nowait):
            end = min(offset + length, self._size)
            if offset >= end:
                return b""
            if self._stream is not None:
                if nowait:
                    raise WouldBlock(f"inode {self.ino} is being streamed")
                return self._read_streamed(offset, end)
            short = end - offset <= self.store.settings.min_size or self._small()
            if self._is_dirty() or not short:
                if nowait and not short:
                    if self._is_dirty():
                        raise WouldBlock(f"inode {self.ino}: a long read of a changed file")
                    return self._checked(self.store.read_view(self.file_id, offset, end - offset, nowait=True),
                                         end - offset)
                return self._read_merged(offset, end)
            run = ChunkRun(self.ino, *self.store.read_chunks(self.file_id, offset, end - offset), self._size)
            data = self._checked(run.slice(offset, end), end - offset)
            if around is not None:
                around(run)
            return data

    def _read_merged(self, start: int, end: int, dirty: IntervalSet | None = None,
                     base_limit: int | None = None) -> bytes | memoryview:
        """The file's bytes: staged where ``dirty`` (default: the overlay) says, the base elsewhere."""
        pieces = [self._read_staging(lo, hi) if changed else self._read_base(lo, hi, base_limit)
                  for lo, hi, changed in (self._dirty if dirty is None else dirty).split(start, end)]
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)  # a clean file's read: no copy of a copy

    def _read_base(self, start: int, end: int, base_limit: int | None = None) -> bytes | memoryview:
        """Committed bytes below the base limit, zeros beyond (holes, truncated tails)."""
        split = min(max(self._base_limit if base_limit is None else base_limit, start), end)
        if split == start:
            return bytes(end - start)
        data = self._checked(self.store.read_view(self.file_id, start, split - start), split - start)
        return b"".join((data, bytes(end - split))) if end > split else data

    def _checked(self, data: bytes | memoryview, length: int) -> bytes | memoryview:
        """``data`` if the store gave all ``length`` bytes asked for (the file's size says it has them)."""
        if len(data) != length:
            raise StoreFullError(f"inode {self.ino}: stored contents shorter than expected")
        return data

    def _read_staging(self, start: int, end: int) -> bytes:
        data = os.pread(self._staging_fd, end - start, start)
        return data + bytes(end - start - len(data))  # a sparse tail reads as zeros

    def _read_streamed(self, start: int, end: int) -> bytes:
        stream = self._stream
        stream.quiesce()
        out = bytearray(self._read_merged(start, min(end, stream.start)) if start < stream.start else b"")
        pos = max(start, stream.start)
        if pos < min(end, stream.chunked_end):
            i = _index_at(stream.offsets, pos)
            while pos < min(end, stream.chunked_end):
                ref, base = stream.refs[i], stream.offsets[i]
                data = self.store.get_chunk(ref.address, file_id=self.file_id)
                piece = data[pos - base : min(end, base + ref.length) - base]
                out += piece
                pos += len(piece)
                i += 1
        if pos < min(end, stream.end):
            tail = stream.unput()
            out += tail[pos - stream.chunked_end : min(end, stream.end) - stream.chunked_end]
            pos = min(end, stream.end)
        if pos < end:  # a rewrite stream: the base goes on after it
            out += self._read_merged(pos, end)
        return bytes(out)

    # -- writing ----------------------------------------------------------------

    def write(self, offset: int, data: bytes, nowait: bool = False) -> int:
        """Write ``data`` at ``offset``; returns how much was written.

        As ext4 does, a write that would run past MAX_FILE_SIZE writes what
        fits (a short write), and one that starts at or past it fails with
        EFBIG (man 2 write).  With ``nowait`` (the event loop): an append to
        a stream that only hands its bytes to the pump, and any write into the
        staging file (a pwrite, as a passthrough does), run now; one that
        would wait for the pump or commit the stream raises WouldBlock.
        """
        with self._held(nowait):
            cheap = not nowait or self._small(offset + len(data))
            if self._stream is not None and self._stream.chunker is None and not cheap:
                raise WouldBlock(f"inode {self.ino}: a failed stream must commit first")
            self._settle_failed_stream()
            if not data:
                return 0
            if self._recorded is not None and self._recorded.overlaps(offset, offset + len(data)):
                if not cheap:
                    raise WouldBlock(f"inode {self.ino}: a staged file is committed before its staged bytes change")
                self._commit_recorded()
            if offset >= MAX_FILE_SIZE:
                raise FileTooLargeError(f"inode {self.ino}: write at offset {offset} is past the maximum file "
                                        f"size ({MAX_FILE_SIZE} bytes)")
            data = data[: MAX_FILE_SIZE - offset]
            if self._stream is None and offset == self._size and self._can_stream(offset + len(data)):
                if self._base_limit and not cheap:
                    raise WouldBlock(f"inode {self.ino}: an append re-reads the last chunk")
                self._start_stream()
            if self._stream is None and offset < self._size and self._continues_a_rewrite(offset, len(data)):
                if not cheap:
                    raise WouldBlock(f"inode {self.ino}: a rewrite starts streaming")
                self._start_rewrite_stream(offset)
            if self._stream is not None:
                if offset == self._stream.end and not (self.behind and offset + len(data) > SMALL_FILE):
                    return self._append_to_stream(data, nowait=not cheap)
                if not cheap:
                    raise WouldBlock(f"inode {self.ino}: a write out of order commits the stream first")
                if self.behind:
                    self._stream_to_overlay()  # a commit here could keep half of one write(2) after a crash
                else:
                    self._materialize_stream()
            self._write_overlay(offset, data)  # a pwrite into the page cache: cheap enough for the loop
            return len(data)

    def _append_to_stream(self, data: bytes, nowait: bool) -> int:
        stream = self._stream
        stream.check(nowait)  # a full disk fails this write before it accepts anything
        stream.submit(bytes(data), nowait)  # a caller's reusable buffer must not change under the pump
        self._size = max(self._size, stream.end)  # accepted: from here on the bytes are kept
        return len(data)

    def _can_stream(self, end: int) -> bool:
        """Streaming needs the file to equal its (possibly truncated) base: no overlay.

        Chunking behind the writer streams only a small file (committed at
        close, fs/behind.py): a bigger one grows in the overlay.
        """
        if self.behind and end > SMALL_FILE:
            return False
        return not self._dirty and self._size == self._base_limit

    def _start_stream(self) -> None:
        """Begin chunking at the start of the last base chunk (its end was only end-of-file)."""
        start = 0
        if self._base_limit:
            last = self._base_entry(self._base_limit - 1)
            start = last.offset if last is not None else self._base_limit  # a hole at the end stays one
        stream = self._stream = ChunkStream(self.store, start)
        for pos in range(start, self._base_limit, READ_BLOCK):
            stream.feed_now(self._read_base(pos, min(pos + READ_BLOCK, self._base_limit)))

    def _continues_a_rewrite(self, offset: int, length: int) -> bool:
        """Whether a write at ``offset`` makes a run written front to back over the base worth streaming.

        The run is this write alone or, if the overlay holds exactly one run
        of changes ending where this write begins, that run and this write;
        it must reach REWRITE_STREAM_MIN bytes, so scattered writes (a
        database's pages) stay in the overlay.  The file must be its base,
        unextended, untruncated and without holes, whose chunking would
        stop the stream (an overlay's commit handles those: rechunk.py).
        """
        if self.behind or self._small() or self._size != self._committed or self._base_limit != self._committed:
            return False
        begin = offset
        if self._dirty:
            if len(self._dirty) != 1:
                return False
            lo, hi = next(iter(self._dirty))
            if hi != offset:
                return False
            begin = lo
        return offset + length - begin >= REWRITE_STREAM_MIN and \
            self.store.data_bytes(self.file_id) == self._committed

    def _start_rewrite_stream(self, offset: int) -> None:
        """Stream from the base chunk holding the run's first byte: that chunk's base bytes, then the run's."""
        lo, hi = next(iter(self._dirty), (offset, offset))
        first = self._base_entry(lo)
        start = first.offset if first is not None else lo
        stream = self._stream = ChunkStream(self.store, start)
        for pos in range(start, lo, READ_BLOCK):
            stream.feed_now(self._read_base(pos, min(pos + READ_BLOCK, lo)))
        for pos in range(lo, hi, READ_BLOCK):
            stream.feed_now(self._read_staging(pos, min(pos + READ_BLOCK, hi)))
        self._dirty.clear()
        if self._staging_fd is not None:
            os.ftruncate(self._staging_fd, 0)

    def _materialize_stream(self) -> None:
        """A non-sequential change ends a stream: commit what streamed, then use the overlay."""
        self._commit_locked(None)

    def _settle_failed_stream(self) -> None:
        """A stream whose commit failed (e.g. ENOSPC) must commit before anything else changes."""
        if self._stream is not None and self._stream.chunker is None:
            self._commit_locked(None)

    def _write_overlay(self, offset: int, data: bytes) -> None:
        fd = self._staging()
        view = memoryview(data)
        pos = offset
        try:
            while view:
                n = os.pwrite(fd, view, pos)
                view, pos = view[n:], pos + n
        except OSError as exc:
            if exc.errno in (28, 122):
                raise StoreFullError(f"no space left to stage writes ({exc.strerror})") from None
            raise
        self._dirty.add(offset, offset + len(data))
        self._size = max(self._size, offset + len(data))
        self.store.note_activity()
        if self.behind:
            self._write_behind(fd, offset, offset + len(data))

    def _write_behind(self, fd: int, start: int, end: int) -> None:
        """Start the disk writing staged bytes back every WRITE_BEHIND bytes written, so that an fsync
        finds little left to flush (the staging file is what a fsync makes durable in this mode)."""
        lo, hi = self._unsent
        lo, hi = min(lo, start), max(hi, end)
        if hi - lo >= WRITE_BEHIND:
            start_writeback(fd, lo, hi - lo)
            lo, hi = MAX_FILE_SIZE, 0
        self._unsent = (lo, hi)

    def _staging(self) -> int:
        if self._staging_fd is None:
            self._staging_fd = os.open(self._staging_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        return self._staging_fd

    def truncate(self, size: int) -> None:
        if size > MAX_FILE_SIZE:
            raise FileTooLargeError(f"inode {self.ino}: size {size} is past the maximum file size "
                                    f"({MAX_FILE_SIZE} bytes)")
        with self._lock:
            self._settle_failed_stream()
            if size == self._size:
                return
            if self._recorded is not None and size < self._size:
                self._commit_locked(None)  # a staged record's bytes must stay as it names them
            if self._stream is not None:
                self._materialize_stream()
            if size < self._size:
                self._dirty.clip(size)
                self._base_limit = min(self._base_limit, size)
                if self._staging_fd is not None:
                    os.ftruncate(self._staging_fd, size)
            self._size = size

    # -- committing ---------------------------------------------------------------

    def commit(self, hook: Hook | None = None, nowait: bool = False) -> bool:
        """Chunk, deduplicate and commit what changed; False if nothing had.

        With ``nowait`` (the event loop), WouldBlock unless nothing changed or
        the file is small.
        """
        with self._held(nowait):
            if nowait and self._is_dirty() and not self._small():
                raise WouldBlock(f"inode {self.ino}: a commit of a big file")
            return self._commit_locked(hook)

    def cheap_to_close(self, purge: bool = False) -> bool:
        """Whether committing and closing the file now (and with ``purge``, deleting its contents) is cheap.

        A probe for the event loop: nothing stays held, so a thread may take
        the file right after; then the loop waits for it, which is only slower.
        """
        if not self._lock.acquire(blocking=False):
            return False
        try:
            return self._small() or (not purge and not self._is_dirty() and self._stream is None)
        finally:
            self._lock.release()

    def _commit_locked(self, hook: Hook | None) -> bool:
        if not self._is_dirty():
            return False
        hook = hook or self.on_commit
        if self._stream is not None:
            self._commit_stream(hook)
        else:
            self._commit_overlay(hook)
        self._committed = self._base_limit = self._size
        self._recorded = self._staged_as = None  # the commit dropped the record too (the hook's transaction)
        return True

    def _commit_stream(self, hook: Hook | None) -> None:
        stream = self._stream
        stream.quiesce()
        if stream.chunker is not None and stream.end < self._base_limit:
            stream.kept_from = self._realign(stream)  # remembered: a failed commit is tried again
        stream.finish()
        self.store.commit_file(self.file_id, [Patch(stream.start, stream.kept_from, stream.refs)], self._size, hook)
        self._stream = None

    def _realign(self, stream: ChunkStream) -> int:
        """A rewrite stream that ended inside the base: chunk on into the base until a cut meets a base cut.

        Returns where the patch ends (the base chunks from there on are kept),
        or TO_END if the cuts never meet before the end of the file.  The
        base bytes fed become the stream's (its ``end`` moves over them), so
        after a failure (a full disk) a second try goes on where it stopped.
        """
        if stream.rewritten_end is None:
            stream.rewritten_end = stream.end
        edit = self._edit()
        stream.drain()
        stream.chunker.eager = True  # the first cuts past the run are all it needs
        step = max(RECHUNK_FIRST_BLOCK, stream.chunker.ready_at)
        while stream.end < self._base_limit:
            block = self._read_base(stream.end, min(stream.end + step, self._base_limit))
            step = min(2 * step, READ_BLOCK)
            cut = stream.chunked_end
            chunks = stream.chunker.feed(block)
            stream.end += len(block)
            for chunk in chunks:
                cut += len(chunk)
                stream.backlog.append(chunk)
                if cut >= stream.rewritten_end and edit.reusable_run_end(cut) is not None:
                    stream.chunker, stream.end = None, cut  # what it held beyond the cut is the base's already
                    return cut
            stream.drain()
        return TO_END

    def _commit_overlay(self, hook: Hook | None) -> None:
        self._commit_edit(self._edit(), self._size, hook)
        self._dirty.clear()
        if self._staging_fd is not None:
            os.ftruncate(self._staging_fd, 0)

    def _commit_edit(self, edit: BaseEdit, size: int, hook: Hook | None) -> None:
        """Re-chunk what ``edit`` says changed and commit it as the file's contents at ``size``."""
        patches: list[Patch] = []
        pinned: list[ChunkRef] = []
        try:
            edit.rechunk(patches, pinned)
            self.store.commit_file(self.file_id, patches, size, hook)
        except BaseException:
            self.store.release(pinned)  # commit_file unpins only on success
            raise

    def _edit(self) -> BaseEdit:
        """This commit's view of the file: its base and what changed over it (the lock is held throughout)."""
        return BaseEdit(self.store, self.file_id, self._dirty, self._size, self._base_limit, self._committed,
                        self._read_merged)

    def _base_entry(self, offset: int) -> ManifestEntry | None:
        """The base chunk covering ``offset``; None in a hole."""
        return base_entry(self.store, self.file_id, offset)

    # -- ending ---------------------------------------------------------------------

    def discard(self) -> None:
        """Drop uncommitted changes and their pins (the file is being deleted)."""
        with self._lock:
            if self._stream is not None:  # nothing more is put: just let go of what was
                self._stream.quiesce()
                self.store.release(self._stream.refs)
                self._stream = None
            self._dirty.clear()
            self._size = self._base_limit = self._committed
            self._recorded = self._staged_as = None

    def close(self, keep_staging: bool = False) -> None:
        """Let go of the staging file; with ``keep_staging``, leave it for the next mount to replay."""
        with self._lock:
            if keep_staging:
                self._dirty.clear()
                self._size = self._base_limit = self._committed
                if self._staging_fd is not None:
                    os.close(self._staging_fd)
                    self._staging_fd = None
                return
            if self._is_dirty():
                log.warning("inode %d closed with uncommitted changes; discarding them", self.ino)
                self.discard()
            if self._staging_fd is not None:
                os.close(self._staging_fd)
                self._staging_fd = None
                try:
                    os.unlink(self._staging_path)
                except FileNotFoundError:
                    pass


def _index_at(offsets: list[int], pos: int) -> int:
    return bisect.bisect_right(offsets, pos) - 1
