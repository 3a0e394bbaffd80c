"""Chunk identity and fast verification.

A chunk's *address* is the SHA-256 of its bytes: dedup identity must be
collision-resistant, because a false match silently swaps one user's data for
another's.  Each chunk record also keeps an xxh3-128 *checksum* so that every
read can be verified at memory speed; full SHA-256 verification is an option.
Both hash functions release the GIL on large buffers.
"""

from __future__ import annotations

import hashlib

import xxhash

ADDRESS_SIZE = 32
CHECKSUM_SIZE = 16
VERIFY_MODES = ("xxh3", "sha256", "off")


def address_of(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def checksum_of(data: bytes | memoryview) -> bytes:
    return xxhash.xxh3_128_digest(data)
