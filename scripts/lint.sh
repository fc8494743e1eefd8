#!/usr/bin/env bash
# make lint: ruff (check and format), mypy --strict over the whole package, import-linter contracts.
# Usage: scripts/lint.sh [ruff|mypy|imports ...] (default: all four checks)
# LINT_DIR (default build/lint) is where the shadow trees and import-linter's cache go.
#
# The package `spotd` is assembled from four folders by setuptools' package-dir mapping
# (daemon/ -> spotd, recovery/ -> spotd.recovery, ...). mypy and import-linter find packages on
# the file system, where that mapping does not exist, so both read a shadow tree in build/lint/
# that lays the folders out as the installed package is: symlinks for mypy (its messages then
# name the real files), and a copy for import-linter (grimp does not follow directory links).
# Both are rebuilt on every run: they are cheap, and a stale copy would check yesterday's code.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
LINT_DIR=${LINT_DIR:-build/lint}
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
      shadow "$LINT_DIR/mypy" link
      # messages name the real files, not the links
      set +e
      MYPYPATH="$LINT_DIR/mypy" $BIN/mypy --strict -p spotd 2>&1 \
        | sed -E "s#^$LINT_DIR/mypy/spotd/(recovery|serve|lb)/#\\1/#; s#^$LINT_DIR/mypy/spotd/#daemon/#"
      [ "${PIPESTATUS[0]}" = 0 ] || rc=1
      set -e ;;
    imports)
      echo "== import-linter contracts"
      shadow "$LINT_DIR/imports" copy
      PYTHONPATH="$LINT_DIR/imports" $BIN/lint-imports --no-logo --cache-dir "$LINT_DIR/cache" \
        .importlinter || rc=1 ;;
    *) echo "unknown check $check (ruff, mypy, imports)" >&2; exit 2 ;;
  esac
done
exit $rc
