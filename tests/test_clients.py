"""Real clients against a real mount: rsync, cp -a, tar, git, sqlite3.

Each test ends by unmounting and remounting and checking that everything is
still byte-identical, with the same metadata, because "it worked while
mounted" proves little about what was committed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import stat
import subprocess
import sysconfig
from pathlib import Path

import pytest

from conftest import FUSE_SKIP_REASON, fuse_available

pytestmark = [pytest.mark.mount, pytest.mark.slow,
              pytest.mark.skipif(not fuse_available(), reason=FUSE_SKIP_REASON)]

CLIENT_TIMEOUT = 300
STDLIB_EXCLUDES = ["__pycache__", "site-packages", "config-3*", "*.a", "idlelib", "ensurepip", "tkinter"]


def run(*cmd, cwd=None, env=None, timeout: float = CLIENT_TIMEOUT) -> str:
    """Run a client; fail the test with its stderr if it exits non-zero."""
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result.stdout


def require(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def snapshot(root: Path, xattrs: bool = True) -> dict[str, tuple]:
    """Everything a faithful copy must preserve, per path: type, mode, owner, size, mtime, content, links, xattrs."""
    out = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISREG(st.st_mode):
                content = sha256_file(path)
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            else:
                content = None
            # a hard link group is named by its first path, so the same grouping compares equal
            link_group = inodes.setdefault(st.st_ino, rel) if stat.S_ISREG(st.st_mode) else None
            attrs = ()
            if xattrs and not stat.S_ISLNK(st.st_mode):
                attrs = tuple(sorted((k, os.getxattr(path, k)) for k in os.listxattr(path)))
            mtime = st.st_mtime_ns if not stat.S_ISDIR(st.st_mode) else None  # dirs: rsync's job, checked by rsync
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                        st.st_size if not stat.S_ISDIR(st.st_mode) else None, mtime, content,
                        link_group, st.st_nlink if stat.S_ISREG(st.st_mode) else None, attrs)
    return out


def rsync_differences(src: Path, dst: Path, *flags: str) -> list[str]:
    """Itemized differences a checksum dry run would transfer from ``src`` to ``dst`` (empty: identical)."""
    out = run("rsync", "-aHAXc", "-n", "-i", "--delete", *flags, f"{src}/", f"{dst}/")
    return [line for line in out.splitlines() if line.strip()]


def assert_same_tree(src: Path, dst: Path) -> None:
    diff = rsync_differences(src, dst)
    assert diff == [], "rsync -c dry run found differences:\n" + "\n".join(diff[:50])
    back = run("rsync", "-rlDc", "-n", "-i", "--delete", f"{dst}/", f"{src}/").splitlines()
    assert back == [], "reverse checksum dry run found differences:\n" + "\n".join(back[:50])


def remount_and_compare(fs, paths: list[Path]) -> None:
    """Unmount, remount, and check that every path looks exactly as before."""
    before = {p: snapshot(p) for p in paths}
    fs.remount()
    for p in paths:
        after = snapshot(p)
        changed = [k for k in before[p].keys() | after.keys() if before[p].get(k) != after.get(k)]
        assert not changed, f"changed by unmount+remount under {p}: {sorted(changed)[:20]}"


def tree_bytes(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


# -- source trees ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory) -> Path:
    """A real tree of thousands of files: this Python's standard library, plus links, xattrs and odd names."""
    require("rsync")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    root = tmp_path_factory.mktemp("clients") / "src"
    excludes = [f"--exclude={e}" for e in STDLIB_EXCLUDES]
    run("rsync", "-a", *excludes, f"{stdlib}/", f"{root}/")
    if sum(1 for p in root.rglob("*") if p.is_file()) < 1500:  # Debian's python3 splits its stdlib into packages
        purelib = Path(sysconfig.get_paths()["purelib"])  # the venv's pure-Python packages: a thousand more files
        (root / "zz-site").mkdir()
        for package in ("pip", "setuptools", "hypothesis", "trio", "_pytest"):
            run("rsync", "-a", "--exclude=__pycache__", f"{purelib / package}/", f"{root}/zz-site/{package}/")
    extras = root / "zz-extras"
    extras.mkdir()
    (extras / "empty").write_bytes(b"")
    (extras / "name with spaces and ünïcödé").write_text("odd name\n")
    (extras / "big.bin").write_bytes(os.urandom(3 << 20))
    os.link(extras / "big.bin", extras / "big-hardlink.bin")
    os.symlink("big.bin", extras / "relative-link")
    os.symlink("/nonexistent/target", extras / "dangling-link")
    os.setxattr(extras / "big.bin", "user.origin", b"test-suite")
    (extras / "private").write_text("secret\n")
    (extras / "private").chmod(0o600)
    os.mkfifo(extras / "fifo")
    files = sum(1 for p in root.rglob("*") if p.is_file())
    assert files >= 1500, f"the source tree has only {files} files"
    return root


@pytest.fixture
def editable_tree(source_tree, tmp_path) -> Path:
    """A private copy of the source tree that a test may edit."""
    dst = tmp_path / "src"
    run("cp", "-a", source_tree, dst)
    return dst


def edit_tree(root: Path, round_: int) -> None:
    """Edits a backup client must carry over: appends, in-place changes, deletions, additions, renames, modes."""
    py = sorted(root.rglob("*.py"))
    for path in py[round_::97][:20]:
        with open(path, "ab") as fh:
            fh.write(f"# appended in round {round_}\n".encode())
    for path in py[round_ + 1::89][:20]:
        data = bytearray(path.read_bytes())
        if data:
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
    for path in py[round_ + 2::211][:10]:
        path.unlink()
    new = root / f"new-in-round-{round_}"
    new.mkdir()
    for i in range(10):
        (new / f"file{i}.txt").write_text(f"round {round_} file {i}\n" * (i + 1))
    (root / "zz-extras" / "private").chmod(0o640 if round_ % 2 else 0o600)
    big = root / "zz-extras" / "big.bin"
    with open(big, "r+b") as fh:  # a small change in the middle of a big file (hard-linked, too)
        fh.seek(1 << 20)
        fh.write(os.urandom(100))


# -- rsync -----------------------------------------------------------------------------------------------


def test_rsync_tree_then_checksum_dry_run_shows_no_difference(mounted_fs, source_tree):
    dst = mounted_fs / "copy"
    run("rsync", "-aHAX", f"{source_tree}/", f"{dst}/")
    assert_same_tree(source_tree, dst)
    remount_and_compare(mounted_fs, [dst])
    assert_same_tree(source_tree, dst)


def test_rsync_again_after_edits_then_inplace(mounted_fs, editable_tree):
    dst = mounted_fs / "copy"
    run("rsync", "-aHAX", f"{editable_tree}/", f"{dst}/")
    edit_tree(editable_tree, 1)
    run("rsync", "-aHAX", "--delete", f"{editable_tree}/", f"{dst}/")  # temp file + rename
    assert_same_tree(editable_tree, dst)
    edit_tree(editable_tree, 2)
    run("rsync", "-aHAX", "--delete", "--inplace", f"{editable_tree}/", f"{dst}/")
    assert_same_tree(editable_tree, dst)
    remount_and_compare(mounted_fs, [dst])
    assert_same_tree(editable_tree, dst)


def test_rsync_link_dest_snapshots(mounted_fs, editable_tree):
    snap1, snap2 = mounted_fs / "snap1", mounted_fs / "snap2"
    run("rsync", "-aH", f"{editable_tree}/", f"{snap1}/")
    before = snapshot(editable_tree, xattrs=False)
    edit_tree(editable_tree, 1)
    after = snapshot(editable_tree, xattrs=False)
    run("rsync", "-aH", "--delete", "--link-dest=../snap1", f"{editable_tree}/", f"{snap2}/")
    assert rsync_differences(editable_tree, snap2, "--no-A", "--no-X") == []
    unchanged = [rel for rel, rec in after.items()
                 if rec[0] == stat.S_IFREG and before.get(rel) == rec and "zz-extras" not in rel]
    changed = [rel for rel, rec in after.items()
               if rec[0] == stat.S_IFREG and rel in before and before[rel][6] != rec[6]]
    assert len(unchanged) > 1000 and changed

    def check_links():
        for rel in unchanged[::10]:
            a, b = (snap1 / rel).lstat(), (snap2 / rel).lstat()
            assert a.st_ino == b.st_ino and b.st_nlink == 2, f"{rel} was not hard-linked to the snapshot"
        for rel in changed:
            assert (snap1 / rel).lstat().st_ino != (snap2 / rel).lstat().st_ino
            assert sha256_file(snap1 / rel) == before[rel][6], f"{rel} changed in the old snapshot"

    check_links()
    remount_and_compare(mounted_fs, [snap1, snap2])
    check_links()


def test_second_copy_of_the_same_tree_costs_almost_no_stored_bytes(mounted_fs, source_tree):
    size = tree_bytes(source_tree)
    run("rsync", "-aHAX", f"{source_tree}/", f"{mounted_fs / 'first'}/")
    first = mounted_fs.stats()
    run("rsync", "-aHAX", f"{source_tree}/", f"{mounted_fs / 'second'}/")
    second = mounted_fs.stats()
    grown = second["stored_bytes"] - first["stored_bytes"]
    assert second["logical_bytes"] - first["logical_bytes"] >= 0.9 * size
    assert grown < 0.05 * size, f"the second copy stored {grown} new bytes for a {size}-byte tree"
    assert second["savings_pct"] > 45


# -- cp -a, tar --------------------------------------------------------------------------------------------


@pytest.fixture
def special_tree(tmp_path) -> Path:
    """Hard links, symlinks, xattrs, ACLs, a FIFO, set-id and sticky modes, nanosecond times."""
    root = tmp_path / "special"
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "a").write_bytes(os.urandom(200_000))
    os.link(root / "a", root / "a-link1")
    os.link(root / "a", root / "dir" / "a-link2")
    (root / "b").write_text("bee\n")
    os.symlink("a", root / "sym-rel")
    os.symlink(str(root / "b"), root / "sym-abs")
    os.symlink("nowhere", root / "sym-dangling")
    os.symlink("dir/sub", root / "sym-dir")
    os.setxattr(root / "a", "user.note", b"hello")
    os.setxattr(root / "b", "user.empty", b"")
    os.setxattr(root / "dir", "user.dir-attr", b"\x00\x01binary")
    if os.geteuid() == 0:
        os.setxattr(root / "b", "trusted.admin", b"root only")
    if shutil.which("setfacl"):
        run("setfacl", "-m", "u:nobody:r,g:nogroup:rw", root / "b")
        run("setfacl", "-d", "-m", "u:nobody:rx", root / "dir")
    os.mkfifo(root / "fifo")
    (root / "dir" / "sticky").mkdir(mode=0o777)
    (root / "dir" / "sticky").chmod(0o1777)
    (root / "setgid").mkdir()
    (root / "setgid").chmod(0o2755)
    (root / "exe").write_text("#!/bin/sh\n")
    (root / "exe").chmod(0o4755)
    os.utime(root / "b", ns=(1_600_000_000_123_456_789, 1_600_000_000_987_654_321))
    os.utime(root / "sym-rel", ns=(1_500_000_000_000_000_001, 1_500_000_000_000_000_002), follow_symlinks=False)
    return root


def acls(root: Path) -> list[str]:
    """getfacl of every path, one block per path, independent of readdir order."""
    out = run("getfacl", "-R", "-p", ".", cwd=root)
    return sorted(block.strip() for block in out.split("\n\n") if block.strip())


def test_cp_a_preserves_hard_links_symlinks_xattrs_and_acls(mounted_fs, special_tree):
    require("cp")
    dst = mounted_fs / "cpa"
    run("cp", "-a", special_tree, dst)
    assert snapshot(dst) == snapshot(special_tree)
    if shutil.which("getfacl"):
        assert acls(dst) == acls(special_tree)
    assert (dst / "a").stat().st_nlink == 3
    remount_and_compare(mounted_fs, [dst])
    assert snapshot(dst) == snapshot(special_tree)


def test_tar_extract_then_every_sha256_matches(mounted_fs, source_tree, tmp_path):
    require("tar")
    archive = tmp_path / "tree.tar"
    run("tar", "-cf", archive, "-C", source_tree, ".")
    dst = mounted_fs / "untarred"
    dst.mkdir()
    run("tar", "-xpf", archive, "-C", dst)
    expected = {str(p.relative_to(source_tree)): sha256_file(p)
                for p in source_tree.rglob("*") if p.is_file() and not p.is_symlink()}
    got = {str(p.relative_to(dst)): sha256_file(p) for p in dst.rglob("*") if p.is_file() and not p.is_symlink()}
    assert got == expected
    remount_and_compare(mounted_fs, [dst])
    got = {str(p.relative_to(dst)): sha256_file(p) for p in dst.rglob("*") if p.is_file() and not p.is_symlink()}
    assert got == expected


# -- git, sqlite -------------------------------------------------------------------------------------------


@pytest.fixture
def git_env(tmp_path) -> dict[str, str]:
    require("git")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="chunkfs test",
               GIT_AUTHOR_EMAIL="test@chunkfs.invalid", GIT_COMMITTER_NAME="chunkfs test",
               GIT_COMMITTER_EMAIL="test@chunkfs.invalid")
    return env


def test_git_init_commit_gc_fsck_and_clone(mounted_fs, source_tree, git_env):
    repo = mounted_fs / "repo"
    run("git", "init", "-q", "-b", "main", repo, env=git_env)
    for sub in ("email", "json", "asyncio"):
        shutil.copytree(source_tree / sub, repo / sub, ignore=shutil.ignore_patterns("__pycache__"))
    run("git", "add", "-A", cwd=repo, env=git_env)
    run("git", "commit", "-q", "-m", "first", cwd=repo, env=git_env)
    for path in sorted((repo / "json").glob("*.py")):
        with open(path, "a") as fh:
            fh.write("# edited\n")
    (repo / "email" / "charset.py").rename(repo / "email" / "charset_renamed.py")
    run("git", "add", "-A", cwd=repo, env=git_env)
    run("git", "commit", "-q", "-m", "second", cwd=repo, env=git_env)
    run("git", "gc", "-q", "--prune=now", cwd=repo, env=git_env)
    run("git", "fsck", "--strict", "--no-progress", cwd=repo, env=git_env)
    clone = mounted_fs / "clone"
    run("git", "clone", "-q", repo, clone, env=git_env)
    run("git", "fsck", "--strict", "--no-progress", cwd=clone, env=git_env)
    assert run("git", "rev-parse", "HEAD", cwd=clone, env=git_env) == run("git", "rev-parse", "HEAD", cwd=repo,
                                                                           env=git_env)
    assert run("git", "status", "--porcelain", cwd=clone, env=git_env) == ""
    remount_and_compare(mounted_fs, [repo, clone])
    run("git", "fsck", "--strict", "--no-progress", cwd=repo, env=git_env)
    assert run("git", "status", "--porcelain", cwd=repo, env=git_env) == ""
    assert run("git", "rev-list", "--count", "HEAD", cwd=clone, env=git_env).strip() == "2"


def test_sqlite_wal_10000_rows_integrity(mounted_fs):
    require("sqlite3")
    db = mounted_fs / "data" / "test.db"
    db.parent.mkdir()
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, blob BLOB)")
        con.execute("CREATE INDEX t_name ON t(name)")
        for batch in range(100):  # many small transactions: the WAL and its shared-memory index at work
            with con:
                con.executemany("INSERT INTO t (name, blob) VALUES (?, ?)",
                                [(f"row-{batch}-{i}", os.urandom(64)) for i in range(100)])
        with con:
            con.execute("UPDATE t SET name = name || '-updated' WHERE id % 7 = 0")
            con.execute("DELETE FROM t WHERE id % 1000 = 0")
            con.executemany("INSERT INTO t (name, blob) VALUES (?, ?)", [(f"refill-{i}", b"x") for i in range(10)])
        con.execute("PRAGMA wal_checkpoint(PASSIVE)")
        digest = hashlib.sha256(repr(con.execute("SELECT * FROM t ORDER BY id").fetchall()).encode()).hexdigest()
    finally:
        con.close()

    def check():
        out = run("sqlite3", db, "PRAGMA integrity_check; SELECT count(*) FROM t;").split()
        assert out == ["ok", "10000"]
        con = sqlite3.connect(db)
        try:
            rows = con.execute("SELECT * FROM t ORDER BY id").fetchall()
        finally:
            con.close()
        assert hashlib.sha256(repr(rows).encode()).hexdigest() == digest

    check()
    mounted_fs.remount()
    check()
