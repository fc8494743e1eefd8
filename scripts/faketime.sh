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
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "libfaketime is not installed and this user cannot apt-get install it" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "libfaketime is not installed and there is no apt-get to install it" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get install -y -q libfaketime >&2 || {
  "${SUDO[@]}" apt-get update -q >&2
  "${SUDO[@]}" apt-get install -y -q libfaketime >&2
}
find_lib || { echo "libfaketime installed, but its library was not found" >&2; exit 1; }
