#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite on CPU. Extra arguments go to pytest:
#   bash scripts/test.sh                 # everything (~minutes on 2 cores)
#   bash scripts/test.sh -m "not slow"   # the quick loop
# tests/test_demo.py drives the gradio demo in Debian's chromium (headless, through playwright, whose
# own browser download is never used): when `chromium` is not on PATH it is installed with apt-get,
# as root or through passwordless sudo. FASTVIDEO_SKIP_BROWSER=1 skips both the install and the test;
# FASTVIDEO_SKIP_SETUP=1 skips scripts/setup.sh (an environment set up already).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[[ ${FASTVIDEO_SKIP_SETUP:-0} == 1 ]] || PYTHON="$PYTHON" bash scripts/setup.sh

install_chromium() {
  local sudo=()
  if [[ $(id -u) != 0 ]]; then
    if ! sudo -n true 2>/dev/null; then
      echo "[test] chromium is missing and apt-get needs root: sudo apt-get install chromium" >&2
      return
    fi
    sudo=(sudo -n)
  fi
  local install=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium)
  echo "[test] chromium is not on PATH; installing Debian's: ${install[*]}"
  if ! "${install[@]}"; then
    echo "[test] the install failed; running apt-get update and trying again"
    "${sudo[@]}" apt-get update -q && "${install[@]}" || echo "[test] could not install chromium" >&2
  fi
}

if [[ ${FASTVIDEO_SKIP_BROWSER:-0} != 1 ]] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    install_chromium
  else
    echo "[test] no chromium and no apt-get: install Chromium as \`chromium\` on PATH for tests/test_demo.py" >&2
  fi
fi
exec "$PYTHON" -m pytest tests "$@"
