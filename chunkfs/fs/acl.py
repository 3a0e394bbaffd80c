"""POSIX ACLs: the ``system.posix_acl_*`` xattr format, and keeping mode bits and ACL in step.

The adapter asks the kernel for FUSE_POSIX_ACL, so the kernel enforces ACLs
(it reads ``system.posix_acl_access`` through getxattr and caches it).  Per
the FUSE contract, keeping the rest consistent is the filesystem's job, as a
local filesystem does it in the kernel (fs/posix_acl.c):

* setting an access ACL sets the mode's permission bits from it (the group
  bits come from the mask entry when there is one), and an ACL that says no
  more than the mode is not stored at all;
* chmod rewrites the ACL's owner, mask (or owning group) and other entries;
* a new inode in a directory with a default ACL inherits it: the access ACL
  is the default ACL masked by the requested mode, and a new directory also
  gets the default ACL as its own.

One difference from a local filesystem remains: the kernel applies the
umask before the request reaches us (pyfuse3 cannot ask for FUSE_DONT_MASK),
so a file created in a directory with a default ACL gets the requested mode
minus the umask, masked by the ACL, where ext4 would ignore the umask.

Format (little-endian): u32 version 2, then per entry u16 tag, u16 perm, u32 id.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass

from ..errors import FSError

ACCESS = b"system.posix_acl_access"
DEFAULT = b"system.posix_acl_default"
VERSION = 2
HEADER = struct.Struct("<I")
ENTRY = struct.Struct("<HHI")
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
NO_ID = 0xFFFFFFFF
TAGS = (USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER)


@dataclass
class AclEntry:
    tag: int
    perm: int
    id: int = NO_ID


def parse(raw: bytes) -> list[AclEntry]:
    """Decode and validate an ACL; EINVAL for anything the kernel would not produce."""
    body = len(raw) - HEADER.size
    if body < 0 or body % ENTRY.size or HEADER.unpack_from(raw)[0] != VERSION:
        raise FSError(errno.EINVAL)
    entries = [AclEntry(*ENTRY.unpack_from(raw, HEADER.size + i * ENTRY.size)) for i in range(body // ENTRY.size)]
    tags = [e.tag for e in entries]
    if any(t not in TAGS for t in tags) or any(e.perm & ~7 for e in entries):
        raise FSError(errno.EINVAL)
    if entries and any(tags.count(t) != 1 for t in (USER_OBJ, GROUP_OBJ, OTHER)):
        raise FSError(errno.EINVAL)
    if tags.count(MASK) > 1 or ((USER in tags or GROUP in tags) and MASK not in tags):
        raise FSError(errno.EINVAL)
    return entries


def encode(entries: list[AclEntry]) -> bytes:
    return HEADER.pack(VERSION) + b"".join(ENTRY.pack(e.tag, e.perm, e.id) for e in entries)


def is_minimal(entries: list[AclEntry]) -> bool:
    """True if the ACL says nothing the mode bits do not (owner, owning group, other only)."""
    return all(e.tag in (USER_OBJ, GROUP_OBJ, OTHER) for e in entries)


def _find(entries: list[AclEntry], tag: int) -> AclEntry | None:
    return next((e for e in entries if e.tag == tag), None)


def permission_bits(entries: list[AclEntry]) -> int:
    """The rwxrwxrwx bits an access ACL implies (group bits from the mask if present)."""
    group = _find(entries, MASK) or _find(entries, GROUP_OBJ)
    return (_find(entries, USER_OBJ).perm << 6) | (group.perm << 3) | _find(entries, OTHER).perm


def chmod(raw: bytes, mode: int) -> bytes:
    """The access ACL after chmod to ``mode``."""
    entries = parse(raw)
    _find(entries, USER_OBJ).perm = (mode >> 6) & 7
    (_find(entries, MASK) or _find(entries, GROUP_OBJ)).perm = (mode >> 3) & 7
    _find(entries, OTHER).perm = mode & 7
    return encode(entries)


def inherit(default_raw: bytes, mode: int) -> tuple[int, bytes | None]:
    """(mode, access ACL or None) of a new inode under a default ACL, as posix_acl_create_masq does."""
    entries = parse(default_raw)
    if not entries:
        return mode, None
    owner, other = _find(entries, USER_OBJ), _find(entries, OTHER)
    owner.perm &= (mode >> 6) & 7
    other.perm &= mode & 7
    group = _find(entries, MASK) or _find(entries, GROUP_OBJ)
    group.perm &= (mode >> 3) & 7
    bits = (owner.perm << 6) | (group.perm << 3) | other.perm
    mode = (mode & ~0o777) | bits
    return mode, None if is_minimal(entries) else encode(entries)
