#!/usr/bin/env bash
# Runs the test suite. Usage: scripts/test.sh [fast|all|ha] [pytest args...]
# Starts what the tests need (PostgreSQL from Debian's packages) and stops it afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
tier="${1:-fast}"; shift || true
PY=.venv/bin/python

started_pg=0
# a cluster already online (another run, a developer's) is used and left running
was_online=0
if command -v pg_lsclusters >/dev/null 2>&1 && pg_lsclusters -h 2>/dev/null | grep -q online; then
  was_online=1
fi
if url=$(bash scripts/pg.sh start 2>scripts/.pg.log); then
  export SPOTD_TEST_PG_URL="$url"
  [ "$was_online" = 1 ] || started_pg=1
else
  echo "PostgreSQL could not be started (see scripts/.pg.log); its tests will be skipped" >&2
  [ -n "${CI:-}" ] && { cat scripts/.pg.log >&2; exit 1; }
fi
cleanup() { [ "$started_pg" = 1 ] && bash scripts/pg.sh stop >/dev/null 2>&1 || true; }
trap cleanup EXIT

if [ "$tier" = "all" ]; then
  marks=()
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
