#!/usr/bin/env bash
# Runs the test suite. Usage: scripts/test.sh [fast|all|ha] [pytest args...]
# Starts what the tests need (PostgreSQL from Debian's packages) and stops it afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
tier="${1:-fast}"; shift || true
PY=.venv/bin/python

# The cluster is the machine's, shared by every checkout: a run registers itself in USERS,
# and the last run to finish stops the cluster if a test run started it. One already online
# before any run (a developer's) is used and left running. (A run that stopped the cluster it
# had started while another checkout's run was using it once cost that run 158 tests.)
USERS=${TMPDIR:-/tmp}/spotd-test-pg-users
mkdir -p "$USERS"
touch "$USERS/$$"
was_online=0
if command -v pg_lsclusters >/dev/null 2>&1 && pg_lsclusters -h 2>/dev/null | grep -q online; then
  was_online=1
fi
if url=$(bash scripts/pg.sh start 2>scripts/.pg.log); then
  export SPOTD_TEST_PG_URL="$url"
  [ "$was_online" = 1 ] || touch "$USERS/started-by-a-test-run"
else
  echo "PostgreSQL could not be started (see scripts/.pg.log); its tests will be skipped" >&2
  [ -n "${CI:-}" ] && { cat scripts/.pg.log >&2; exit 1; }
fi
cleanup() {
  rm -f "$USERS/$$"
  local f
  for f in "$USERS"/[0-9]*; do  # another run still testing against the cluster: leave it
    [ -e "$f" ] || continue
    kill -0 "${f##*/}" 2>/dev/null && return 0
    rm -f "$f"  # a run killed before its cleanup
  done
  if [ -e "$USERS/started-by-a-test-run" ]; then
    rm -f "$USERS/started-by-a-test-run"
    bash scripts/pg.sh stop >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

if [ "$tier" = "all" ]; then
  marks=(--durations=25)  # CI's budget is 45 min: the log names what takes it
elif [ "$tier" = "ha" ]; then  # only the HA tier (tests/ha: several daemons, kills, pauses)
  marks=(-m ha)
else
  marks=(-m "not slow")
fi
set +e
$PY -m pytest -q -p no:cacheprovider "${marks[@]}" "$@"
rc=$?
set -e
exit $rc
