"""chunkfs: a deduplicating filesystem and content-addressed chunk store."""

__version__ = "0.1.0"

from .errors import ChunkCorruptError, ChunkfsError, StoreLockedError  # noqa: E402
from .store import ChunkStore  # noqa: E402

__all__ = ["ChunkStore", "ChunkfsError", "ChunkCorruptError", "StoreLockedError", "__version__"]
