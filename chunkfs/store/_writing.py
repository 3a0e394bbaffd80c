"""Storing new chunks: hashed and compressed outside the store's lock, looked up, appended and pinned under it.

``put_many`` is what ``ChunkStore.put_chunks``, ``ingest`` and a stream's
pump call.  Of a batch, only the lookup that decides which chunks are new,
the pack append and the pins run under the store's lock; SHA-256 (on two
cores for a big batch) and compression run before it, so concurrent writers
are not serialised by them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ..hashing import addresses_of
from ._compression import Encoded, encode_chunks, encode_late, record_of
from ._ledger import ChunkRecord
from ._manifests import ChunkRef
from ._packs import CODEC_RAW, CODEC_ZSTD, HEADER_SIZE, MAX_PACK_SIZE, Location, record_size


def put_many(store, chunks: Sequence[bytes | memoryview]) -> tuple[list[ChunkRef], list[bool]]:
    """put_chunks, also saying which chunks' bytes were new to the store.

    Hashing and compression run before the store's lock is taken: only
    the lookup that decides, the appends and the pins run under it.
    """
    store.last_activity = time.monotonic()
    addresses = addresses_of(chunks)
    encoded = _encode_likely_new(store, addresses, chunks)
    with store._lock:
        found, new = _lookup_unpinned(store, addresses)
        placed: dict[bytes, tuple[int, Location]] = {}
        if new:
            ids = store.ledger.new_chunk_ids(len(new))
            how = [encoded.get(i) or encode_late(store.codec, chunks[i]) for i in new.values()]
            records = [record_of(store.codec, chunk, chunks[i], e) for chunk, i, e in zip(ids, new.values(), how)]
            locations = _append_new(store, records)
            _note_waiting(store, how, locations)
            placed = dict(zip(new, zip(ids, locations, (len(chunks[i]) for i in new.values()))))
        written = []
        for address in addresses:
            is_new = address in placed and address not in store.ledger.pins
            if is_new:
                store.ledger.pin_new(address, *placed[address])
            elif not store.ledger.add_pin(address):
                store.ledger.pin_existing(address, *found[address])
            written.append(is_new)
    return [ChunkRef(a, len(c)) for a, c in zip(addresses, chunks)], written

def _note_waiting(store, how: list[Encoded | None], locations: list[Location]) -> None:
    """Count new records that compression behind the writers has work in (_recompress.py)."""
    for encoded, loc in zip(how, locations):
        if encoded is None:
            continue
        if encoded.waiting:
            store.waiting.note(loc.pack, raw=loc.length)
        elif encoded.codec == CODEC_ZSTD and encoded.dictionary == 0:
            store.waiting.note(loc.pack, undictionaried=loc.length)

def _encode_likely_new(store, addresses: list[bytes], chunks: Sequence[bytes | memoryview]) -> dict[int, Encoded]:
    """Compress the chunks that look new (index of the chunk -> its record's bytes), without the lock.

    A look without the lock (an index snapshot, the pins as they are now):
    under the lock the store decides again, and a chunk another writer
    stored meanwhile only costs its compression.  Chunks that compressed
    feed the dictionary's sample.
    """
    if not store.codec.enabled:
        return {}
    todo: dict[bytes, int] = {}
    pins = store.ledger.pins
    with store.index.read() as txn, txn.cursor(db=store.index.lookup) as cursor:
        for i, address in enumerate(addresses):
            if address and address not in todo and address not in pins \
                    and store.ledger.find(txn, address, cursor) is None:
                todo[address] = i
    if not todo:
        return {}
    where = list(todo.values())
    encoded = encode_chunks(store.codec, [chunks[i] for i in where])
    if not store.codec.behind:  # behind the writers, the pass samples what it compresses (_recompress.py)
        store.codec.observe([chunks[i] for i, e in zip(where, encoded) if e.codec != CODEC_RAW])
    return dict(zip(where, encoded))

def _append_new(store, records: list[tuple]) -> list[Location]:
    """Append new chunks' records to the active pack, rolling to a new one where a pack would pass 4 GiB."""
    total = sum(record_size(len(record[1])) for record in records)
    if total <= MAX_PACK_SIZE - HEADER_SIZE:  # nearly always: one append
        store._ensure_active_pack(nbytes=total)
        return store.packs.append_many(records)
    locations: list[Location] = []
    room = MAX_PACK_SIZE - HEADER_SIZE
    start = 0
    while start < len(records):
        stop, size = start, 0
        while stop < len(records) and (stop == start or size + record_size(len(records[stop][1])) <= room):
            size += record_size(len(records[stop][1]))
            stop += 1
        store._ensure_active_pack(nbytes=size)
        locations += store.packs.append_many(records[start:stop])
        start = stop
    return locations

def _lookup_unpinned(store, addresses: list[bytes]) -> tuple[dict, dict]:
    """For chunks no writer pins: (chunk id, record) of those stored, and those new to the store (first index)."""
    found: dict[bytes, tuple[int, ChunkRecord]] = {}
    new: dict[bytes, int] = {}
    todo: dict[bytes, int] = {}
    for i, address in enumerate(addresses):
        if address and address not in store.ledger.pins and address not in todo:
            todo[address] = i
    if todo:
        with store.index.read() as txn, txn.cursor(db=store.index.lookup) as cursor:
            for address, i in todo.items():
                hit = store.ledger.find(txn, address, cursor)
                if hit is not None:
                    found[address] = hit
                else:
                    new[address] = i
    return found, new
