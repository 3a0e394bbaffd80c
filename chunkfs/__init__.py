"""chunkfs: a deduplicating filesystem and content-addressed chunk store."""

__version__ = "0.1.0"

from .errors import ChunkCorruptError, ChunkfsError, StoreLockedError  # noqa: E402


def __getattr__(name: str):
    """``chunkfs.ChunkStore``, imported on first use: the command line's verbs served by a mount's daemon
    (clone, du...) never need the storage engine, whose import is most of their start-up time."""
    if name == "ChunkStore":
        from .store import ChunkStore  # noqa: PLC0415

        return ChunkStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["ChunkStore", "ChunkfsError", "ChunkCorruptError", "StoreLockedError", "__version__"]
