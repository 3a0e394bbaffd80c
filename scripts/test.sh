#!/usr/bin/env bash
# Run the test suite: bootstrap (idempotent), then pytest from the repo root.
# Arguments go to pytest, e.g.  bash scripts/test.sh -m "not slow" -x  (levels: tests/README.md);
# with none it runs every test, as CI does.
# Exit code is pytest's, except that "no tests collected" (5) counts as failure.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
VENV="${CHUNKFS_VENV:-$REPO/.venv}"

bash "$REPO/scripts/bootstrap.sh" || exit $?

cd "$REPO" || exit 1
"$VENV/bin/python" -m pytest "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
  echo "test.sh: pytest collected no tests: failing" >&2
  exit 1
fi
exit $rc
