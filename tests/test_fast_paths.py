"""The cheap answers the FUSE adapter relies on for the most frequent requests (no mount).

untar and rsync send, per small file, a negative lookup, a getxattr of an
attribute that is not there (security.capability before every write and
chown, ACLs before chmod) and several setattrs; these paths answer without
exceptions or second transactions, and must still say exactly what the
ordinary calls say.
"""

from __future__ import annotations

import errno
import os
import threading

import pytest

from chunkfs.fs import ROOT_INO, FsCore, SetAttr

from test_fs_core import USER, errno_of, fs, store  # noqa: F401 (the core tests' fixtures and helpers)


def new_file(fs: FsCore, parent: int, name: bytes) -> int:
    fh, inode = fs.create(parent, name, 0o644, os.O_WRONLY, USER)
    fs.flush(fh)
    fs.release(fh)
    return inode.ino


def test_find_answers_none_for_a_missing_name_and_errors_for_a_bad_parent(fs):
    ino = new_file(fs, ROOT_INO, b"f")
    assert fs.find(ROOT_INO, b"missing") is None
    assert fs.find(ROOT_INO, b"f") == fs.getattr(ino)
    assert fs.find(ROOT_INO, b".").ino == ROOT_INO
    assert errno_of(fs.find, ino, b"x") == errno.ENOTDIR
    assert errno_of(fs.find, 999_999, b"x") == errno.ENOENT
    assert errno_of(fs.find, ROOT_INO, b"x" * 256) == errno.ENAMETOOLONG


def test_find_in_a_removed_directory_finds_nothing(fs):
    d = fs.mkdir(ROOT_INO, b"d", 0o755, USER).ino
    fs.rmdir(ROOT_INO, b"d")
    assert fs.find(d, b"x") is None  # still looked up by the kernel: no name can be in it


def test_find_xattr_answers_none_only_for_an_existing_inode(fs):
    ino = new_file(fs, ROOT_INO, b"f")
    assert fs.find_xattr(ino, b"security.capability") is None
    fs.setxattr(ino, b"user.a", b"1")
    assert fs.find_xattr(ino, b"user.a") == b"1"
    assert errno_of(fs.getxattr, ino, b"user.missing") == errno.ENODATA
    assert errno_of(fs.find_xattr, 999_999, b"user.a") == errno.ENOENT


def test_setattr_answers_the_attributes_it_committed(fs):
    fh, inode = fs.create(ROOT_INO, b"f", 0o644, os.O_WRONLY, USER)
    fs.write(fh, 0, b"uncommitted")
    out = fs.setattr(inode.ino, SetAttr(mode=0o600, uid=7, atime_ns=5, mtime_ns=6))
    assert (out.mode & 0o777, out.uid, out.atime_ns, out.mtime_ns) == (0o600, 7, 5, 6)
    assert out.size == len(b"uncommitted")  # the open file's size, not the committed 0
    assert fs.getattr(inode.ino) == out
    fs.flush(fh)
    fs.release(fh)
    assert fs.getattr(inode.ino).mtime_ns == 6  # the explicit time outlives the write's


def test_create_opens_without_reading_the_new_inode_back(fs, monkeypatch):
    monkeypatch.setattr(fs, "_committed_size", lambda ino: pytest.fail("read back a new file's size"))
    fh, inode = fs.create(ROOT_INO, b"f", 0o644, os.O_RDWR, USER)
    fs.write(fh, 0, b"data")
    assert fs.read(fh, 0, 10) == b"data"
    fs.flush(fh)
    fs.release(fh)
    assert fs.getattr(inode.ino).size == 4


def test_index_read_counts_readers_also_when_the_body_raises(store):
    index = store.index
    with pytest.raises(KeyError):
        with index.read():
            raise KeyError("body")
    assert index._readers == 0


def test_map_resize_waits_for_open_readers(store):
    """Growing the map needs every transaction of the process closed (LMDB's rule)."""
    index = store.index
    entered, leave = threading.Event(), threading.Event()

    def reader() -> None:
        with index.read() as txn:
            txn.get(b"x", db=index.inodes)
            entered.set()
            leave.wait()

    size = index.env.info()["map_size"]
    t = threading.Thread(target=reader)
    t.start()
    entered.wait()
    grower = threading.Thread(target=index._grow)
    grower.start()
    grower.join(0.2)
    assert grower.is_alive() and index.env.info()["map_size"] == size
    leave.set()
    grower.join()
    t.join()
    assert index.env.info()["map_size"] == 2 * size
    with index.read() as txn:  # and readers get in again afterwards
        assert txn.get(b"x", db=index.inodes) is None
