#!/usr/bin/env bash
# Quick start: set everything up (scripts/bootstrap.sh), then run chunkfs.
#   CHUNKFS_STORE       store directory   (default /var/lib/chunkfs/default)
#   CHUNKFS_MOUNTPOINT  mount point       (default /mnt/chunkfs; used once mounting lands)
# Run as root on a fresh Debian 12 machine; as another user it works once the
# Debian packages are installed and the store's parent directory is writable.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
VENV="${CHUNKFS_VENV:-$REPO/.venv}"
STORE="${CHUNKFS_STORE:-/var/lib/chunkfs/default}"
MOUNTPOINT="${CHUNKFS_MOUNTPOINT:-/mnt/chunkfs}"
CHUNKFS="$VENV/bin/chunkfs"

say() { printf 'quickstart: %s\n' "$*" >&2; }
die() { printf 'quickstart: error: %s\n' "$*" >&2; exit 1; }

ensure_store() {
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
# MAIN JOB. Until mounting lands this ingests sample files twice through the
# CLI and shows the dedup statistics. When it does, replace the body by:
#   mkdir -p "$MOUNTPOINT" && "$CHUNKFS" mount "$STORE" "$MOUNTPOINT"
# ---------------------------------------------------------------------------
main_job() {
  local samples id f n=0
  samples="$(mktemp -d /tmp/chunkfs-quickstart.XXXXXX)"
  trap "rm -rf '$samples'" EXIT   # expanded now: $samples is local

  # Text files every Debian system has, plus 8 MiB of (seeded) random bytes and
  # a copy of it with 100 bytes inserted at the front: content-defined chunking
  # stores almost nothing new for the shifted copy.
  cp /usr/share/common-licenses/{GPL-3,LGPL-3,Apache-2.0,MPL-2.0} "$samples"/ 2>/dev/null || true
  "$VENV/bin/python" - "$samples" <<'EOF'
import random, sys
data = random.Random(42).randbytes(8 << 20)
open(f"{sys.argv[1]}/random.bin", "wb").write(data)
open(f"{sys.argv[1]}/shifted.bin", "wb").write(b"x" * 100 + data)
EOF

  say "ingesting $(ls "$samples" | wc -l) sample files twice (as samples/NAME and copies/NAME)"
  for f in "$samples"/*; do
    for id in "samples/$(basename "$f")" "copies/$(basename "$f")"; do
      "$CHUNKFS" ingest "$STORE" "$id" "$f"   # replaces an earlier one (reruns)
      "$CHUNKFS" cat "$STORE" "$id" | cmp -s - "$f" || die "reading $id back gave different bytes"
      n=$((n + 1))
    done
  done
  say "ingested $n files and read each back identical"
  "$CHUNKFS" stats "$STORE"
}

bash "$REPO/scripts/bootstrap.sh"
[[ -x "$CHUNKFS" ]] || die "$CHUNKFS is missing: bootstrap did not install the chunkfs command"
ensure_store
main_job
