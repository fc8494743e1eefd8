#!/usr/bin/env bash
# Make sure Debian's libfaketime is installed, and print the path of its library.
# Usage: scripts/faketime.sh            (installs with apt-get when missing; root or sudo)
# The HA tier runs one daemon with its clock set back (LD_PRELOAD of this library) to show
# daemons whose clocks differ still agree on heartbeats (tests/ha/test_clock_skew.py). The
# test calls this from a fixture, so a fresh machine needs nothing by hand. Exit 1 (and say
# why) when it cannot be installed.
set -euo pipefail
find_lib() {
  local f
  for f in "${SPOTD_FAKETIME_LIB:-}" /usr/lib/*/faketime/libfaketime.so.1; do
    if [ -n "$f" ] && [ -e "$f" ]; then
      echo "$f"
      return 0
    fi
  done
  return 1
}
find_lib && exit 0
. "$(dirname "$0")/lib/apt.sh"
apt_install libfaketime || exit 1
find_lib || { echo "libfaketime installed, but its library was not found" >&2; exit 1; }
