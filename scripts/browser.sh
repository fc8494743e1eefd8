#!/usr/bin/env bash
# Make sure Debian's Chromium is installed for the dashboard's browser tests, and print its path.
# Usage: scripts/browser.sh            (installs with apt-get when missing; root or sudo)
# Playwright drives this system browser (`executable_path`); its own browser download cannot
# work where only the package registries are reachable. The tests call this from a fixture, so
# a fresh machine needs nothing by hand. Exit 1 (and say why) when it cannot be installed.
set -euo pipefail
for candidate in "${SPOTD_CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
  if [ -n "$candidate" ] && [ -x "$candidate" ]; then
    echo "$candidate"
    exit 0
  fi
done
. "$(dirname "$0")/lib/apt.sh"
apt_install chromium || exit 1
echo /usr/bin/chromium
