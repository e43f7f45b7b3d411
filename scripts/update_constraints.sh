#!/usr/bin/env bash
# Move constraints.txt forward: install the newest releases pyproject.toml allows into a fresh venv,
# run the test suite there, and only if it passes write what was installed as the new pins (for the
# Python version that ran it). Review the diff, then commit it.
#   bash scripts/update_constraints.sh                 # the whole suite (as CI runs it)
#   bash scripts/update_constraints.sh -m "not slow"   # the quick loop only (say so in the commit)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m venv "$work/venv"
VENV_PY="$work/venv/bin/python"
FASTVIDEO_CONSTRAINTS=none PYTHON="$VENV_PY" bash scripts/setup.sh
FASTVIDEO_SKIP_SETUP=1 PYTHON="$VENV_PY" bash scripts/test.sh "$@"
version=$("$VENV_PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
{
  echo "# Pins for scripts/setup.sh: the releases the test suite passed with on Python $version, $(date -u +%F)."
  echo "# Written by bash scripts/update_constraints.sh; torch is chosen by setup.sh, not pinned here."
  "$VENV_PY" -m pip freeze --exclude-editable --disable-pip-version-check |
    grep -viE '^(torch|fastvideo)==' | grep -v '^#' | sed "s/\$/; python_version == \"$version\"/"
} >"$work/constraints.txt"
mv "$work/constraints.txt" constraints.txt
echo "constraints.txt updated: git diff constraints.txt"
