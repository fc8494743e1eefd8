#!/usr/bin/env bash
# make lint: ruff (check and format), mypy --strict over the whole package, import-linter contracts.
# Usage: scripts/lint.sh [ruff|mypy|imports ...] (default: all four checks)
#
# The package `spotd` is assembled from four folders by setuptools' package-dir mapping
# (daemon/ -> spotd, recovery/ -> spotd.recovery, ...). mypy and import-linter find packages on
# the file system, where that mapping does not exist, so both read a shadow tree in build/lint/
# that lays the folders out as the installed package is: symlinks for mypy (its messages then
# name the real files), and a copy for import-linter (grimp does not follow directory links).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
checks=("$@")
[ ${#checks[@]} -eq 0 ] && checks=(ruff mypy imports)

shadow() {  # shadow DIR MODE(link|copy)
  local dir=$1 mode=$2
  rm -rf "$dir" && mkdir -p "$dir/spotd"
  for entry in daemon/*; do
    case "$entry" in */__pycache__) continue ;; esac
    if [ "$mode" = link ]; then ln -s "$PWD/$entry" "$dir/spotd/"; else cp -r "$entry" "$dir/spotd/"; fi
  done
  for sub in recovery serve lb; do
    if [ "$mode" = link ]; then ln -s "$PWD/$sub" "$dir/spotd/$sub"; else cp -r "$sub" "$dir/spotd/$sub"; fi
  done
}

rc=0
for check in "${checks[@]}"; do
  case "$check" in
    ruff)
      echo "== ruff check"; $BIN/ruff check . || rc=1
      echo "== ruff format --check"; $BIN/ruff format --check . || rc=1 ;;
    mypy)
      echo "== mypy --strict (package spotd)"
      shadow build/lint/mypy link
      # messages name the real files, not the links
      set +e
      MYPYPATH=build/lint/mypy $BIN/mypy --strict -p spotd 2>&1 \
        | sed -E 's#^build/lint/mypy/spotd/(recovery|serve|lb)/#\1/#; s#^build/lint/mypy/spotd/#daemon/#'
      [ "${PIPESTATUS[0]}" = 0 ] || rc=1
      set -e ;;
    imports)
      echo "== import-linter contracts"
      shadow build/lint/imports copy
      PYTHONPATH=build/lint/imports $BIN/lint-imports --config .importlinter || rc=1 ;;
    *) echo "unknown check $check (ruff, mypy, imports)" >&2; exit 2 ;;
  esac
done
exit $rc
