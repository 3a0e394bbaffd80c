"""Worker thread pools made on first use, so that importing chunkfs starts no threads.

The store's hashing helper and the stream pumps of open files each keep one;
threads are reused for the life of the process (they are cheap while idle).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable


class LazyPool:
    """A ThreadPoolExecutor of ``workers`` threads named ``name``, created by the first ``submit``."""

    def __init__(self, workers: int, name: str):
        self.workers, self.name = workers, name
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable, *args) -> concurrent.futures.Future:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix=self.name)
            return self._pool.submit(fn, *args)
