"""A bounded LRU cache of verified chunks, keyed by address.

Only bytes that passed verification enter it, so a hit needs no re-check.
Addresses are content hashes, so an entry can never go stale: a chunk's bytes
never change, it can only stop being referenced.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class CacheStatistics:
    entries: int
    bytes: int
    capacity: int
    hits: int
    misses: int


class ChunkCache:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._data: OrderedDict[bytes, bytes] = OrderedDict()
        self._bytes = 0
        self._hits = self._misses = 0
        self._lock = threading.Lock()

    def get(self, address: bytes) -> bytes | None:
        with self._lock:
            data = self._data.get(address)
            if data is None:
                self._misses += 1
                return None
            self._data.move_to_end(address)
            self._hits += 1
            return data

    def put(self, address: bytes, data: bytes) -> None:
        if len(data) > self.capacity // 4:
            return  # one huge chunk must not flush everything else
        with self._lock:
            if address in self._data:
                self._data.move_to_end(address)
                return
            self._data[address] = data
            self._bytes += len(data)
            while self._bytes > self.capacity:
                _, old = self._data.popitem(last=False)
                self._bytes -= len(old)

    def discard(self, address: bytes) -> None:
        with self._lock:
            data = self._data.pop(address, None)
            if data is not None:
                self._bytes -= len(data)

    def statistics(self) -> CacheStatistics:
        with self._lock:
            return CacheStatistics(len(self._data), self._bytes, self.capacity, self._hits, self._misses)
