"""scripts/bootstrap.sh and scripts/quickstart.sh, run by a user who is not root.

Root's virtualenv must serve every user once it is ready, and when it cannot
(not ready, made with an interpreter only root can run, in a place the user
cannot write) the scripts say why and what to do in one line, instead of
dying on whatever shell command failed first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import LEVEL_OF_FILE, REPO, fuse_available, kill_process, store_holder

BOOTSTRAP = REPO / "scripts" / "bootstrap.sh"
QUICKSTART = REPO / "scripts" / "quickstart.sh"
USER_PATH = "/usr/local/bin:/usr/bin:/bin"  # not root's PATH (pyenv shims in /root)
THIS_VENV = Path(sys.prefix)


def script_as_nobody(nobody, script: Path, *, fuse_for_everyone: bool = False, **env: str):
    """``bash script`` as nobody, with a user's PATH and the given CHUNKFS_* settings."""
    settings = [f"{name}={value}" for name, value in env.items()]
    return nobody.run("env", f"PATH={USER_PATH}", *settings, "bash", script, fuse_for_everyone=fuse_for_everyone,
                      timeout=300)


def one_error_line(result, prefix: str) -> str:
    assert result.returncode != 0, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith(f"{prefix}: error: "), result.stderr
    assert "unexpected failure" not in result.stderr
    return errors[0]


def test_a_venv_root_has_not_made_ready_says_run_bootstrap_as_root(nobody, public_dir):
    venv = public_dir / "venv"
    venv.mkdir()  # root's, empty: not ready, and not the user's to fill
    line = one_error_line(script_as_nobody(nobody, BOOTSTRAP, CHUNKFS_VENV=venv), "bootstrap")
    assert f"{venv} belongs to root" in line and "as root first" in line and "CHUNKFS_VENV" in line


def test_a_venv_the_user_cannot_create_says_set_chunkfs_venv(nobody, public_dir):
    venv = public_dir / "sub" / "venv"  # public_dir is root's
    line = one_error_line(script_as_nobody(nobody, BOOTSTRAP, CHUNKFS_VENV=venv), "bootstrap")
    assert f"cannot create the virtualenv {venv}" in line and "CHUNKFS_VENV" in line
    assert not venv.parent.exists()


def test_a_venv_made_with_an_interpreter_only_root_can_run_says_so(nobody, public_dir):
    closed = public_dir / "closed"
    closed.mkdir(mode=0o700)
    os.symlink(sys.executable, closed / "python3")
    venv = public_dir / "venv"
    (venv / "bin").mkdir(parents=True)
    os.symlink(closed / "python3", venv / "bin" / "python")
    (venv / "pyvenv.cfg").write_text(f"home = {closed}\n")
    line = one_error_line(script_as_nobody(nobody, BOOTSTRAP, CHUNKFS_VENV=venv), "bootstrap")
    assert f"the python3 in {closed}, which this user cannot run" in line and "CHUNKFS_VENV" in line


@pytest.fixture
def ready_venv(nobody):
    """This test run's virtualenv, ready for this checkout (bootstrap as root), and runnable by nobody."""
    if nobody.python != sys.executable:
        pytest.skip(f"{THIS_VENV} was made with an interpreter other users cannot run: re-create it with "
                    "scripts/bootstrap.sh to run this test")
    subprocess.run(["bash", BOOTSTRAP], env=dict(os.environ, CHUNKFS_VENV=str(THIS_VENV)), check=True,
                   capture_output=True, timeout=600)
    return THIS_VENV


def test_a_user_uses_roots_ready_venv(nobody, ready_venv):
    result = script_as_nobody(nobody, BOOTSTRAP, CHUNKFS_VENV=ready_venv)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == f"bootstrap: ok: system packages present, {ready_venv} up to date"


def test_quickstart_as_a_user_says_where_to_put_the_store(nobody, ready_venv):
    result = script_as_nobody(nobody, QUICKSTART, CHUNKFS_VENV=ready_venv, CHUNKFS_STORE="/var/lib/chunkfs/x")
    line = one_error_line(result, "quickstart")
    assert "CHUNKFS_STORE" in line


@pytest.mark.mount
@pytest.mark.slow
def test_quickstart_as_a_user_mounts_where_fuse_is_open_to_users(nobody, ready_venv, public_dir):
    if not fuse_available():
        pytest.skip("/dev/fuse is absent")
    home = nobody.mkdir(public_dir / "home")
    store, mnt = home / "store", home / "mnt"
    script = home / "try.sh"
    script.write_text(f'set -e\nbash {QUICKSTART}\necho hello > {mnt}/greeting\n'
                      f'{ready_venv}/bin/chunkfs umount -q {mnt}\n{ready_venv}/bin/chunkfs stats --json {store}\n')
    try:
        result = script_as_nobody(nobody, script, fuse_for_everyone=True, CHUNKFS_VENV=ready_venv,
                                  CHUNKFS_STORE=store, CHUNKFS_MOUNTPOINT=mnt)
    finally:
        kill_process(store_holder(store))  # a daemon left running would keep its namespace alive
    assert result.returncode == 0, result.stderr
    assert f"chunkfs is mounted at {mnt}" in result.stdout
    assert '"files": 1' in result.stdout
    assert store.owner() == "nobody"


@pytest.mark.slow
def test_root_makes_a_venv_every_user_can_run(nobody, public_dir):
    venv = public_dir / "venv"
    made = subprocess.run(["bash", BOOTSTRAP], env=dict(os.environ, CHUNKFS_VENV=str(venv)), capture_output=True,
                          text=True, timeout=900)
    assert made.returncode == 0, made.stderr
    result = nobody.run("bash", "-c", f"{venv}/bin/chunkfs --version")
    assert result.returncode == 0, (made.stderr, result.stderr)
    assert result.stdout.startswith("chunkfs ")


def test_every_test_file_has_a_level():
    """`-m LEVEL` (tests/README.md) must not silently miss a file: each one is in conftest.TEST_LEVELS."""
    files = sorted(p.name for p in (REPO / "tests").glob("test_*.py"))
    assert [f for f in files if f not in LEVEL_OF_FILE] == []
