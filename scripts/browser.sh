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
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "chromium is not installed and this user cannot apt-get install it" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "chromium is not installed and there is no apt-get to install it" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get install -y -q chromium >&2 || {
  "${SUDO[@]}" apt-get update -q >&2
  "${SUDO[@]}" apt-get install -y -q chromium >&2
}
echo /usr/bin/chromium
