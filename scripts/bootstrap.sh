#!/usr/bin/env bash
# Creates the project's virtual environment on a fresh machine: installs Debian's venv support
# if this Python lacks it, then the package with its test and dev extras (pytest and friends;
# ruff, mypy, import-linter and the type stubs mypy --strict needs, for `make lint`).
# Usage: bootstrap.sh VENV PYTHON
set -euo pipefail
venv="${1:-.venv}"
python="${2:-python3}"
if ! "$python" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "spotd needs Python 3.11 or newer ($python is $("$python" --version 2>&1))" >&2
  exit 1
fi
if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' 2>/dev/null; then
  if command -v apt-get >/dev/null; then
    echo "installing Debian's python3-venv" >&2
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
  fi
fi
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q -U pip
"$venv/bin/python" -m pip install -q -e '.[test,dev]'
touch "$venv/.installed"
