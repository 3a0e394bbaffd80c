#!/usr/bin/env bash
# Quick start: set everything up (scripts/bootstrap.sh), then run chunkfs.
#   CHUNKFS_STORE       store directory   (default /var/lib/chunkfs/default)
#   CHUNKFS_MOUNTPOINT  mount point       (default /mnt/chunkfs)
#   CHUNKFS_VENV        virtualenv        (default .venv in this checkout)
# Run as root on a fresh Debian 12 machine.  Another user can run it once root
# has (the Debian packages and .venv are then in place), with CHUNKFS_STORE and
# CHUNKFS_MOUNTPOINT set to places of their own, where that user may mount FUSE
# filesystems (/dev/fuse open to users, as Debian ships it).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
VENV="${CHUNKFS_VENV:-$REPO/.venv}"
STORE="${CHUNKFS_STORE:-/var/lib/chunkfs/default}"
MOUNTPOINT="${CHUNKFS_MOUNTPOINT:-/mnt/chunkfs}"
CHUNKFS="$VENV/bin/chunkfs"

say() { printf 'quickstart: %s\n' "$*" >&2; }
die() { printf 'quickstart: error: %s\n' "$*" >&2; exit 1; }

owner() { stat -c %U "$1"; }

ensure_store() {
  if [[ -d "$STORE" && ! ( -r "$STORE" && -x "$STORE" ) ]]; then
    die "$STORE belongs to $(owner "$STORE"): run this as $(owner "$STORE"), or set CHUNKFS_STORE to a store of your own"
  fi
  if [[ -d "$STORE" && -n "$(ls -A "$STORE")" ]]; then
    say "using existing store $STORE"
    return
  fi
  mkdir -p "$(dirname "$STORE")" 2>/dev/null && [[ -w "$(dirname "$STORE")" ]] \
    || die "cannot create $STORE: run as root, or set CHUNKFS_STORE to a writable path"
  say "creating store $STORE"
  "$CHUNKFS" mkfs "$STORE"
}

# ---------------------------------------------------------------------------
# MAIN JOB: mount a dedup directory on the store (in the background; the
# command returns once the mount is ready) and say how to use and leave it.
# ---------------------------------------------------------------------------
main_job() {
  if grep -qs " $(realpath -m "$MOUNTPOINT") fuse.chunkfs " /proc/mounts; then
    say "$MOUNTPOINT is already a mounted chunkfs"
  else
    mkdir -p "$MOUNTPOINT" 2>/dev/null \
      || die "cannot create $MOUNTPOINT: run as root, or set CHUNKFS_MOUNTPOINT to a directory of your own"
    "$CHUNKFS" mount "$STORE" "$MOUNTPOINT"
  fi
  cat <<EOF

chunkfs is mounted at $MOUNTPOINT (store: $STORE).
Everything you write there is deduplicated. Try:
    cp -a /usr/share/doc $MOUNTPOINT/doc1 && cp -a /usr/share/doc $MOUNTPOINT/doc2
    $CHUNKFS stats $MOUNTPOINT
Unmount (commits everything, waits for the daemon to exit):
    $CHUNKFS umount $MOUNTPOINT
EOF
}

bash "$REPO/scripts/bootstrap.sh" || exit $?
[[ -x "$CHUNKFS" ]] || die "$CHUNKFS is missing: bootstrap did not install the chunkfs command"
ensure_store
main_job
