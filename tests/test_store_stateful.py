"""Random ingest / re-ingest / patch / truncate / delete / gc / reopen against a dict model.

After every step every file reads back as the model says, and ``check_store``
recounts every refcount from all manifests and every pack's accounting from
its records.  After gc no record in any pack lacks a reference, and every
referenced chunk's bytes exist and hash to its address.  Patches replace
entries in the middle of files, with holes among the new chunks, so manifest
runs are split, merged and cut at holes (files here span several runs).
"""

import random
import shutil
import tempfile

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from chunkfs import ChunkStore
from chunkfs.fsck import check_store
from chunkfs.store import TO_END, Patch, hole_ref

from conftest import make_backend

BLOCKS = [random.Random(i).randbytes(random.Random(i).choice([300, 2000, 5000, 9000])) for i in range(12)]
NAMES = st.sampled_from(["a", "b", "c", "d", b"\x00e"])


@st.composite
def contents(draw):
    """Files built from a small pool of blocks, so they overlap and dedup a lot."""
    picks = draw(st.lists(st.integers(0, len(BLOCKS) - 1), max_size=8))
    data = b"".join(BLOCKS[i] for i in picks)
    if draw(st.booleans()) and data:
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.binary(max_size=40)) + data[cut:]
    return data


class StoreMachine(RuleBasedStateMachine):
    backend_kind = "local"

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.path = self.dir + "/store"
        self.backend = make_backend(self.backend_kind)
        self.store = ChunkStore.create(self.path, min_size=256, avg_size=1024, max_size=4096, backend=self.backend)
        self.model: dict = {}

    @rule(name=NAMES, data=contents())
    def ingest(self, name, data):
        self.store.ingest(name, data)
        self.model[name] = data

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete(self, data):
        name = data.draw(st.sampled_from(sorted(self.model, key=repr)))
        self.store.delete(name)
        del self.model[name]

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def patch(self, data):
        """Replace the entries starting in [entry i, entry j) by new chunks and holes laid from entry i."""
        name = data.draw(st.sampled_from(sorted(self.model, key=repr)))
        old = self.model[name]
        entries = self.store.manifest(name)
        i = data.draw(st.integers(0, len(entries)))
        j = data.draw(st.integers(i, len(entries)))
        start = entries[i].offset if i < len(entries) else len(old)
        room = (entries[j].offset if j < len(entries) else start + 20_000) - start
        pieces = data.draw(st.lists(st.tuples(st.booleans(), st.integers(1, 3000)), max_size=6))
        refs, new = [], b""
        for is_hole, length in pieces:
            length = min(length, room - len(new))
            if length <= 0:
                break
            if is_hole:
                refs.append(hole_ref(length))
                new += bytes(length)
            else:
                piece = random.Random(len(new) + length).randbytes(length)
                refs.append(self.store.put_chunk(piece))
                new += piece
        end = start + len(new)
        if j < len(entries):  # what the removed entries covered and the new ones do not is a hole now
            size, old_end = len(old), entries[j].offset
            model = old[:start] + new + bytes(old_end - end) + old[old_end:]
        else:  # everything from ``start`` on was replaced: past the new chunks, the file is a hole
            size, old_end = (max(len(old), end) if data.draw(st.booleans()) else end), TO_END
            model = old[:start] + new + bytes(size - end)
        self.store.commit_file(name, [Patch(start, old_end, refs)], size)
        self.model[name] = model

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def truncate(self, data):
        """Cut a file at a chunk boundary, then give it any size from there (a hole if it grows)."""
        name = data.draw(st.sampled_from(sorted(self.model, key=repr)))
        old = self.model[name]
        entries = self.store.manifest(name)
        cut = data.draw(st.sampled_from([e.offset for e in entries] + [len(old)]))
        size = data.draw(st.integers(cut, cut + 50_000))
        self.store.commit_file(name, [Patch(cut, TO_END, [])], size)
        self.model[name] = old[:cut].ljust(size, b"\0")

    @rule()
    def gc(self):
        self.store.gc(min_dead_fraction=0)  # compact every pack with a dead record
        report = check_store(self.store, verify_data=True)
        assert report.clean, report.findings
        assert report.garbage_bytes == 0
        assert self.store.stats()["garbage_bytes"] == 0

    @rule()
    def reopen(self):
        self.store.close()
        self.store = ChunkStore.open(self.path, backend=self.backend)
        assert self.store.recovery.clean

    @invariant()
    def reads_match_model_and_counts_are_exact(self):
        assert sorted(self.store.list_files(), key=repr) == sorted(self.model, key=repr)
        for name, data in self.model.items():
            assert self.store.read(name) == data
        report = check_store(self.store)
        assert report.clean, report.findings
        stats = self.store.stats()
        assert stats["logical_bytes"] == sum(map(len, self.model.values()))
        assert stats["files"] == len(self.model)

    def teardown(self):
        self.store.close()
        shutil.rmtree(self.dir)


class MemoryStoreMachine(StoreMachine):
    """The same machine with packs in a MemoryBackend (kept across reopen): the store keeps the backend contract."""

    backend_kind = "memory"


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.pytestmark = [pytest.mark.slow]
TestStoreMachine.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
TestMemoryStoreMachine = MemoryStoreMachine.TestCase
TestMemoryStoreMachine.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
