"""An HTTP upload service over ChunkStore: the embedding example (README.md beside this file)."""
